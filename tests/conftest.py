"""Shared pytest fixtures and settings."""

from __future__ import annotations

import os
import warnings

import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "2")
warnings.filterwarnings("ignore", message=".*torch.meshgrid.*")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip ``cuda``-marked tests cleanly on machines without CUDA."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
UID_ROOT = "1.2.826.0.1.3680043.8.498."


def write_mni_series(folder, step: int = 4, series_uid: str | None = None, orientation=(1, 0, 0, 0, 1, 0)) -> list:
    """Write the MNI ICBM152 2009a T1 template (the copy nilearn ships, as the ``brain3d`` demo set uses it) as a
    real single-frame MR DICOM series, one axial slice per file, every ``step``-th voxel (``step`` mm).

    Returns:
        the slice files in slice order (ascending position along the normal).
    """
    from pathlib import Path

    import nibabel as nib
    import numpy as np
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from maskseg_monai.data.demo_sets import _package_dir

    src = _package_dir("nilearn") / "datasets" / "data" / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
    volume = np.asarray(nib.load(src).dataobj, dtype=np.float32)[::step, ::step, ::step]
    volume = np.rint(volume / max(float(volume.max()), 1.0) * 1000).astype(np.int16)  # [X, Y, Z]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid(UID_ROOT)
    study_uid, frame_uid = generate_uid(UID_ROOT), generate_uid(UID_ROOT)
    orient = np.asarray(orientation, dtype=np.float64)
    normal = np.cross(orient[:3], orient[3:])
    files = []
    for k in range(volume.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = generate_uid(UID_ROOT)
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = MR_IMAGE_STORAGE, meta.MediaStorageSOPInstanceUID
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "MNI^Template", "mni152", "19930101", "O"
        ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime, ds.StudyID = study_uid, "20090101", "120000", "1"
        ds.AccessionNumber, ds.ReferringPhysicianName = "A1", ""
        ds.SeriesInstanceUID, ds.SeriesNumber, ds.Modality = series_uid, 1, "MR"
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame_uid, ""
        ds.Manufacturer, ds.InstanceNumber = "maskseg-monai tests", k + 1
        ds.ImageOrientationPatient = [float(v) for v in orient]
        ds.ImagePositionPatient = [float(v) for v in normal * k * step]
        ds.PixelSpacing, ds.SliceThickness = [float(step), float(step)], float(step)
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = int(volume.shape[1]), int(volume.shape[0])
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelData = np.ascontiguousarray(volume[:, :, k].T).tobytes()  # [row = Y, column = X]
        path = folder / f"slice_{k:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


@pytest.fixture(scope="session")
def _mni_series_source(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mni") / "series"
    write_mni_series(folder)
    return folder


@pytest.fixture
def mni_series(tmp_path, _mni_series_source):
    """A fresh copy of the MNI template as a 4 mm axial MR series (48 slices): its folder and files in slice order."""
    import shutil

    folder = tmp_path / "mni_series"
    shutil.copytree(_mni_series_source, folder)
    return folder, sorted(folder.iterdir())
