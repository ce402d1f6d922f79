"""A DICOM series is read whole or refused: series checks on the MNI template written as a real MR series."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import torch
from conftest import write_mni_series
from monai.transforms import LoadImage

from maskseg_monai.data import check_dicom_series, write_dicom_seg
from maskseg_monai.transforms import LoadMedicalImaged
from maskseg_monai.utils import BadInputError


def load(folder, **kwargs):
    return LoadMedicalImaged("image", **kwargs)({"image": str(folder)})["image"]


def itk(folder):
    return LoadImage(reader="ITKReader", image_only=True, ensure_channel_first=True)(str(folder))


def test_good_series_equals_itk(mni_series):
    folder, files = mni_series
    series = check_dicom_series(files, folder)
    assert series.regular and series.spacing == pytest.approx(4.0) and len(series.files) == 48
    ours, ref = load(folder), itk(folder)
    assert ours.shape == ref.shape == (1, 50, 59, 48)
    assert torch.equal(ours.as_tensor(), ref.as_tensor())
    assert torch.allclose(ours.affine, ref.affine)


def _truncate(files):
    data = files[20].read_bytes()
    files[20].write_bytes(data[: len(data) - 1000])


def _drop_pixels(files):
    ds = pydicom.dcmread(files[7])
    del ds.PixelData
    ds.save_as(files[7])


def _duplicate(files):
    ds = pydicom.dcmread(files[10])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(files[0].parent / "slice_copy.dcm")


def _rotate(files):
    ds = pydicom.dcmread(files[30])
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 0.0, -1.0]  # a coronal slice in an axial stack
    ds.save_as(files[30])


def _interleave(files):
    """Every other slice belongs to a second series (two series interleaved in one folder)."""
    uid = pydicom.uid.generate_uid()
    for f in files[1::2]:
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID = uid
        ds.save_as(f)


CASES = {
    "truncated": (_truncate, r"slice_020\.dcm: .*truncated file"),
    "missing": (
        lambda files: files[24].unlink(),
        r"not evenly spaced .*slice_023\.dcm .*slice_025\.dcm.*1 slice\(s\) missing",
    ),
    "no_pixel_data": (_drop_pixels, r"slice_007\.dcm: no PixelData"),
    "duplicated": (
        _duplicate,
        r"duplicated slice position.*slice_010\.dcm.*slice_copy\.dcm|slice_copy\.dcm.*slice_010",
    ),
    "orientation": (_rotate, r"slice_030\.dcm have another ImageOrientationPatient"),
    "interleaved": (_interleave, r"holds 2 DICOM series"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_series_is_refused_naming_folder_and_files(mni_series, case):
    folder, files = mni_series
    damage, message = CASES[case]
    damage(files)
    with pytest.raises(ValueError, match=message) as info:
        load(folder)
    assert str(folder) in str(info.value)


def test_missing_slice_accepted_only_on_request_and_resampled(mni_series, caplog):
    folder, files = mni_series
    reference = itk(folder)
    files[24].unlink()
    with pytest.raises(BadInputError, match="--allow_irregular_spacing"):
        load(folder)
    with caplog.at_level("WARNING", logger="maskseg_monai.transforms"):
        img = load(folder, allow_irregular_spacing=True)
    assert "resampled 47 slices onto a regular grid of 48 slices" in caplog.text
    assert img.shape == reference.shape and torch.allclose(img.affine, reference.affine)
    kept = [k for k in range(48) if k != 24]
    assert torch.equal(img[..., kept], reference[..., kept].float())  # original slices untouched
    expected = (reference[..., 23].float() + reference[..., 25].float()) / 2  # linear between the neighbours
    assert torch.allclose(img[..., 24], expected)


def test_tolerance_is_relative(tmp_path):
    files = write_mni_series(tmp_path / "s", step=8)
    ds = pydicom.dcmread(files[3])
    ds.ImagePositionPatient = [0.0, 0.0, 3 * 8 + 0.05]  # 0.6% off the 8 mm spacing: within 1%
    ds.save_as(files[3])
    assert check_dicom_series(files).regular
    with pytest.raises(BadInputError, match=r"tolerance 0\.1%"):
        check_dicom_series(files, spacing_tolerance=0.001)


def test_dicom_seg_on_deidentified_series(mni_series, tmp_path):
    folder, files = mni_series
    for f in files:
        ds = pydicom.dcmread(f)
        for keyword in ("PatientBirthDate", "PatientSex", "StudyDate", "AccessionNumber", "ReferringPhysicianName"):
            delattr(ds, keyword)
        ds.save_as(f)
    img = load(folder)
    mask = (img[0] > 300).numpy().astype(np.uint8)
    path = write_dicom_seg(mask, files, tmp_path / "seg.dcm", affine=img.affine)
    seg = pydicom.dcmread(path)
    referenced = {i.ReferencedSOPInstanceUID for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files}
    assert seg.PatientBirthDate == "" and seg.StudyDate == ""
