"""DICOM/NIfTI input and NIfTI/DICOM SEG output for inference, on pydicom's real 5-slice CT series."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from monai.transforms import LoadImage

from maskseg_monai.data import inference_inputs, list_dicom_series, resolve_dicom_series, write_dicom_seg
from maskseg_monai.data.demo import demo_dicom_series_dir
from maskseg_monai.transforms import LoadMedicalImaged, SaveSegmentationd
from maskseg_monai.utils import safe_stem

SERIES = demo_dicom_series_dir()
SERIES_UID = pydicom.dcmread(next(SERIES.iterdir()), stop_before_pixels=True).SeriesInstanceUID
OTHER_UID = "1.2.826.0.1.3680043.8.498.1"


def itk_image():
    return LoadImage(reader="ITKReader", image_only=True)(str(SERIES))


def asymmetric_mask() -> np.ndarray:
    """Label map ``[X, Y, Z]`` = [16, 16, 5] that no transpose or flip maps onto itself."""
    mask = np.zeros((16, 16, 5), np.uint8)
    mask[2:6, 10:15, 1] = 1
    mask[0, 0, 0] = 1
    mask[9, 1:3, 3:5] = 2
    return mask


@pytest.fixture
def two_series(tmp_path) -> Path:
    """A folder with the CT5N series plus a copy of it under another SeriesInstanceUID, and a non-DICOM file."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    for p in SERIES.iterdir():
        shutil.copy(p, folder / p.name)
        ds = pydicom.dcmread(p)
        ds.SeriesInstanceUID = OTHER_UID
        ds.SOPInstanceUID = f"{OTHER_UID}.{p.name}"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PixelData = (ds.pixel_array + 7).astype(ds.pixel_array.dtype).tobytes()
        ds.save_as(folder / f"other_{p.name}")
    (folder / "notes.txt").write_text("not DICOM")
    return folder


def test_list_and_resolve_single_series():
    series = list_dicom_series(SERIES)
    assert list(series) == [SERIES_UID] and len(series[SERIES_UID]) == 5
    uid, files = resolve_dicom_series(SERIES)
    assert uid == SERIES_UID and files == sorted(SERIES.iterdir())


def test_several_series_need_series_uid(two_series):
    series = list_dicom_series(two_series)
    assert sorted(series) == sorted([SERIES_UID, OTHER_UID]) and all(len(f) == 5 for f in series.values())
    with pytest.raises(ValueError, match="--series_uid") as err:
        resolve_dicom_series(two_series)
    assert str(two_series) in str(err.value) and SERIES_UID in str(err.value) and OTHER_UID in str(err.value)
    assert "(5 files)" in str(err.value)
    uid, files = resolve_dicom_series(two_series, OTHER_UID)
    assert uid == OTHER_UID and all(p.name.startswith("other_") for p in files)
    with pytest.raises(ValueError, match="no series with SeriesInstanceUID 9.9"):
        resolve_dicom_series(two_series, "9.9")


def test_no_dicom_folder(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(ValueError, match="no DICOM series"):
        resolve_dicom_series(tmp_path)
    with pytest.raises(ValueError, match="no input found"):
        inference_inputs(tmp_path)
    with pytest.raises(FileNotFoundError):
        inference_inputs(tmp_path / "missing")


def test_load_selected_series(two_series):
    expected = itk_image()
    for uid, offset in ((SERIES_UID, 0), (OTHER_UID, 7)):
        img = LoadMedicalImaged("image", series_uid=uid)({"image": str(two_series)})["image"]
        assert img.shape == (1, 16, 16, 5)
        np.testing.assert_allclose(img[0].numpy(), expected.numpy() + offset)
        np.testing.assert_allclose(img.affine, expected.affine)
        assert img.meta["filename_or_obj"] == str(two_series) and img.meta["dicom_series_uid"] == uid
    with pytest.raises(ValueError, match="--series_uid"):
        LoadMedicalImaged("image")({"image": str(two_series)})


def test_load_nifti_and_png(tmp_path):
    from PIL import Image

    affine = np.diag([0.5, 0.7, 2.0, 1.0])
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6), np.float32), affine), tmp_path / "vol.nii.gz")
    Image.fromarray(np.zeros((8, 9), np.uint8)).save(tmp_path / "a.png")
    shutil.copytree(SERIES, tmp_path / "series" / "CT5N")
    items = inference_inputs(tmp_path)
    assert [Path(i["image"]).name for i in items] == ["a.png", "vol.nii.gz", "CT5N"]
    assert inference_inputs(tmp_path / "vol.nii.gz") == [{"image": str(tmp_path / "vol.nii.gz"), "name": "vol"}]
    ct = tmp_path / "series" / "CT5N"
    assert inference_inputs(ct) == [{"image": str(ct), "name": "CT5N"}]
    loaded = [LoadMedicalImaged("image")(i)["image"] for i in items]
    assert [tuple(x.shape) for x in loaded] == [(1, 9, 8), (1, 4, 5, 6), (1, 16, 16, 5)]
    np.testing.assert_allclose(loaded[1].affine, affine)
    assert [x.meta["dicom_series_uid"] for x in loaded] == ["", "", SERIES_UID]


@pytest.mark.parametrize("reader", ["ITKReader", "PydicomReader"])
def test_write_dicom_seg_orientation(tmp_path, reader):
    img = LoadImage(reader=reader, image_only=True)(str(SERIES))
    mask = asymmetric_mask()
    if reader == "PydicomReader":  # PydicomReader stacks the slices in the opposite order (negative z spacing)
        assert float(img.affine[2, 2]) < 0
        mask = mask[:, :, ::-1].copy()
    path = write_dicom_seg(mask, list(SERIES.iterdir()), tmp_path / "out" / "ct_seg.dcm", {1: "lesion"}, img.affine)
    seg = pydicom.dcmread(path)
    assert seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["lesion", "label_2"]
    assert all(s.SegmentAlgorithmType == "AUTOMATIC" and s.SegmentAlgorithmName == "maskseg-monai"
               for s in seg.SegmentSequence)  # fmt: skip
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == SERIES_UID
    # ground truth for the slice mapping: the ITK-loaded image, matched to each source file by its pixels
    volume = itk_image().numpy()
    truth = asymmetric_mask()
    sources = {ds.SOPInstanceUID: ds for ds in (pydicom.dcmread(p) for p in SERIES.iterdir())}
    expected_frames = sum(int((truth[:, :, z] == lab).any()) for lab in (1, 2) for z in range(5))
    assert int(seg.NumberOfFrames) == expected_frames == 4
    frames = seg.pixel_array
    for frame, group in zip(frames, seg.PerFrameFunctionalGroupsSequence):
        sop = group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        label = int(group.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        src = sources[sop]
        hu = (src.pixel_array * float(src.RescaleSlope) + float(src.RescaleIntercept)).T  # [X, Y]
        (z,) = [k for k in range(5) if np.array_equal(volume[:, :, k], hu)]
        np.testing.assert_array_equal(frame, (truth[:, :, z] == label).T.astype(frame.dtype))  # [rows, columns]
        assert group.PlanePositionSequence[0].ImagePositionPatient == src.ImagePositionPatient


def test_write_dicom_seg_without_affine_is_itk_layout(tmp_path):
    with_affine = write_dicom_seg(
        asymmetric_mask(), list(SERIES.iterdir()), tmp_path / "a.dcm", None, itk_image().affine
    )
    without = write_dicom_seg(asymmetric_mask(), list(SERIES.iterdir()), tmp_path / "b.dcm")
    np.testing.assert_array_equal(pydicom.dcmread(with_affine).pixel_array, pydicom.dcmread(without).pixel_array)


def test_write_dicom_seg_errors_leave_no_file(tmp_path):
    files = list(SERIES.iterdir())
    with pytest.raises(ValueError, match="does not match the series"):
        write_dicom_seg(asymmetric_mask().transpose(0, 2, 1), files, tmp_path / "bad.dcm")
    with pytest.raises(ValueError, match="not aligned"):
        write_dicom_seg(asymmetric_mask(), files, tmp_path / "bad.dcm", affine=np.diag([0.3, 0.3, 1.0, 1.0]))
    with pytest.raises(ValueError, match="no non-zero label"):
        write_dicom_seg(np.zeros((16, 16, 5), np.uint8), files, tmp_path / "bad.dcm")
    assert list(tmp_path.iterdir()) == []


def test_save_segmentation_writes_nifti_and_seg_together(tmp_path):
    series = tmp_path / "in" / "Doe^John"
    shutil.copytree(SERIES, series)
    img = LoadMedicalImaged("image")({"image": str(series)})["image"]
    pred = img.clone()
    pred.array = torch.as_tensor(asymmetric_mask()[None])
    SaveSegmentationd("pred", tmp_path / "plain", dicom_seg="false")({"pred": pred})
    assert sorted(p.name for p in (tmp_path / "plain").iterdir()) == ["Doe_John_seg.nii.gz"]
    SaveSegmentationd("pred", tmp_path / "out", dicom_seg="true")({"pred": pred})
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["Doe_John_seg.dcm", "Doe_John_seg.nii.gz"]
    seg = pydicom.dcmread(tmp_path / "out" / "Doe_John_seg.dcm")
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == SERIES_UID
    nifti = nib.load(tmp_path / "out" / "Doe_John_seg.nii.gz")
    np.testing.assert_array_equal(np.asarray(nifti.dataobj), asymmetric_mask())


def test_save_segmentation_is_all_or_nothing(tmp_path, monkeypatch):
    """A SEG that fails to write leaves no NIfTI of that input, and the error names the input."""
    import maskseg_monai.transforms.io as io

    img = LoadMedicalImaged("image")({"image": str(SERIES)})["image"]
    pred = img.clone()
    pred.array = torch.as_tensor(asymmetric_mask()[None])

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(io, "write_dicom_seg", broken)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"CT5N: writing its outputs failed, none was kept \(RuntimeError: disk full"):
        SaveSegmentationd("pred", out, dicom_seg=True)({"pred": pred})
    assert list(out.iterdir()) == []  # no NIfTI, no temporary folder


def test_colliding_names_never_overwrite(tmp_path):
    from PIL import Image

    folder = tmp_path / "in"
    for rel in ("scan ß.png", "scan ü.png", "scan_.png", "p1/series/x.png", "p2/series/x.png"):
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / rel)
    for p in ("p1", "p2"):  # the usual patient/study/series layout: two folders named "series"
        (folder / p / "series" / "x.png").unlink()
        shutil.copytree(SERIES, folder / p / "series", dirs_exist_ok=True)
    items = inference_inputs(folder)
    names = [i["name"] for i in items]
    assert len(set(names)) == len(names) == 5
    assert names[3:] == ["p1_series", "p2_series"]
    assert all(n.startswith("scan_") and len(n) == len("scan_") + 8 for n in names[:3])
    assert [i["name"] for i in inference_inputs(folder)] == names  # stable
    saver = SaveSegmentationd("image", tmp_path / "out", output_ext=".png")
    for item in items[:3]:
        saver(LoadMedicalImaged("image")(item))
    assert len(list((tmp_path / "out").iterdir())) == 3
    with pytest.raises(ValueError, match="already written in this run"):
        saver(LoadMedicalImaged("image")({"image": items[0]["image"], "name": items[0]["name"]}))


def test_safe_stem():
    assert safe_stem("../../etc/passwd") == "etc_passwd"
    assert safe_stem("..\\..\\x") == "x"
    assert safe_stem("Doe^John") == "Doe_John"
    assert safe_stem(".hidden") == "hidden"
    assert safe_stem("1.2.840.10008") == "1.2.840.10008"
    for empty in ("", "..", "/", "^^^"):
        stem = safe_stem(empty)
        assert stem.startswith("input_") and len(stem) == 18


def test_folder_inputs_take_jpg_and_report_symlink_loops(tmp_path, caplog):
    from PIL import Image

    folder = tmp_path / "queries"
    folder.mkdir()
    for name in ("a.jpg", "b.JPEG", "c.png"):
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / name)
    (folder / "loop").symlink_to(folder / "loop")  # a link to itself
    (folder / "up").symlink_to(folder)  # a link back to its own folder
    with caplog.at_level("WARNING", logger="maskseg_monai.data"):
        items = inference_inputs(folder)
    assert [Path(i["image"]).name for i in items] == ["a.jpg", "b.JPEG", "c.png"]
    assert f"{folder / 'loop'}: broken or looping symbolic link" in caplog.text
    assert f"{folder / 'up'}: symbolic link to a folder, not followed" in caplog.text
