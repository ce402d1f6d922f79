"""Medical file input and output for inference: images, NIfTI and DICOM series in; NIfTI and DICOM SEG out.

DICOM series are read with MONAI's ``ITKReader`` (or ``PydicomReader``), which give a series as ``[X, Y, Z]``: ``X``
runs along a row (DICOM column index), ``Y`` down the columns (DICOM row index), ``Z`` along the slice normal, with a
RAS affine. :func:`write_dicom_seg` maps a label map in that layout back onto the source slices through the affine, so
either reader's slice order is handled.

Privacy: output names come from the input file or folder name through :func:`~maskseg_monai.utils.safe_stem`,
never from DICOM tag values, and log messages name only those sanitised names.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pydicom
import torch
from pydicom.errors import InvalidDicomError

from maskseg_monai.utils import atomic_write

__all__ = [
    "IMAGE_EXTENSIONS",
    "SERIES_UID_KEY",
    "list_dicom_series",
    "resolve_dicom_series",
    "inference_inputs",
    "write_dicom_seg",
]


IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".tif", ".tiff", ".nii", ".nii.gz", ".mha", ".nrrd")


SERIES_UID_KEY = "dicom_series_uid"  # meta key set by LoadMedicalImaged: the series read ("" for other inputs)


_LPS_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _read_header(path: Path) -> pydicom.Dataset | None:
    """The header of a DICOM file, or ``None`` when ``path`` is not a readable DICOM file."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError, TypeError, AttributeError, KeyError, EOFError):
        return None


def _candidate_files(folder: Path, recursive: bool) -> list[Path]:
    files = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in files if p.is_file() and not p.name.startswith("."))


def list_dicom_series(folder: str | os.PathLike, recursive: bool = False) -> dict[str, list[Path]]:
    """Group the DICOM files of a folder by SeriesInstanceUID.

    Only headers are read; non-DICOM files (and DICOM files without a SeriesInstanceUID, such as DICOMDIR) are
    skipped.

    Args:
        folder: folder to scan.
        recursive: also scan sub-folders. The default matches MONAI's readers, which read one folder.

    Returns:
        ``{series_uid: sorted file paths}``, in order of first appearance.

    Raises:
        NotADirectoryError: when ``folder`` is not a folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder}: not a folder.")
    series: dict[str, list[Path]] = {}
    for path in _candidate_files(folder, recursive):
        ds = _read_header(path)
        uid = str(ds.get("SeriesInstanceUID", "")) if ds is not None else ""
        if uid:
            series.setdefault(uid, []).append(path)
    return series


def resolve_dicom_series(folder: str | os.PathLike, series_uid: str | None = None) -> tuple[str, list[Path]]:
    """Pick one DICOM series of a folder.

    Args:
        folder: folder holding the series' files (not scanned recursively).
        series_uid: SeriesInstanceUID to pick; needed when the folder holds several series.

    Returns:
        ``(series_uid, files)``.

    Raises:
        ValueError: when the folder holds no DICOM series, several series and no ``series_uid``, or not the one asked
            for; the message lists the SeriesInstanceUIDs found.
    """
    series = list_dicom_series(folder)
    found = "; ".join(f"{uid} ({len(files)} files)" for uid, files in series.items())
    if not series:
        raise ValueError(f"{folder}: no DICOM series found (no file with a SeriesInstanceUID).")
    if series_uid:
        if series_uid not in series:
            raise ValueError(f"{folder}: no series with SeriesInstanceUID {series_uid}; found: {found}.")
        return series_uid, series[series_uid]
    if len(series) > 1:
        raise ValueError(
            f"{folder}: holds {len(series)} DICOM series: {found}. Pass --series_uid with one of them "
            "(or split the series into separate folders)."
        )
    ((uid, files),) = series.items()
    return uid, files


def _has_dicom(folder: Path) -> bool:
    """Whether a folder directly holds at least one DICOM file with a SeriesInstanceUID."""
    for path in _candidate_files(folder, recursive=False):
        if path.name.lower().endswith(IMAGE_EXTENSIONS):
            continue
        ds = _read_header(path)
        if ds is not None and ds.get("SeriesInstanceUID"):
            return True
    return False


def inference_inputs(path: str | os.PathLike, key: str = "image") -> list[dict[str, str]]:
    """The inputs of an inference run as a MONAI datalist ``[{key: path}, ...]``.

    ``path`` may be a single image file, a DICOM series folder, or a folder of image files (``IMAGE_EXTENSIONS``,
    not recursive) and/or of DICOM series folders (found at any depth). Each DICOM folder is one input;
    :class:`LoadMedicalImaged` picks its series.

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ValueError: when a folder holds no image file and no DICOM series.
    """
    path = Path(path)
    if path.is_file():
        return [{key: str(path)}]
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such file or folder.")
    images = sorted(p for p in path.iterdir() if p.is_file() and p.name.lower().endswith(IMAGE_EXTENSIONS))
    dicom_dirs = [path] if _has_dicom(path) else []
    for root, dirs, _ in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        dicom_dirs += [Path(root) / d for d in dirs if _has_dicom(Path(root) / d)]
    if not images and not dicom_dirs:
        raise ValueError(
            f"{path}: no input found: expected image files ({', '.join(IMAGE_EXTENSIONS)}) or DICOM series folders."
        )
    return [{key: str(p)} for p in images + dicom_dirs]


def _as_numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    return np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x)


def _sorted_slices(source_files: Sequence[str | os.PathLike]) -> list[pydicom.Dataset]:
    """Headers of one series' single-frame slices, sorted along the slice normal; checks they form one grid."""
    if not source_files:
        raise ValueError("source_files is empty: a DICOM SEG needs the source series' files.")
    slices = [pydicom.dcmread(f, stop_before_pixels=True) for f in source_files]
    first = slices[0]
    for f, ds in zip(source_files, slices):
        missing = [k for k in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing") if k not in ds]
        if missing or int(ds.get("NumberOfFrames", 1) or 1) != 1:
            raise ValueError(f"{f}: not a single-frame slice with {', '.join(missing) or 'one frame'}.")
        if ds.SeriesInstanceUID != first.SeriesInstanceUID:
            raise ValueError(f"{f}: belongs to another series than {source_files[0]}; pass the files of one series.")
        same = (ds.Rows, ds.Columns) == (first.Rows, first.Columns)
        if not same or not np.allclose(ds.ImageOrientationPatient, first.ImageOrientationPatient, atol=1e-4):
            raise ValueError(f"{f}: slice size or orientation differs from {source_files[0]}.")
    orient = np.asarray(first.ImageOrientationPatient, dtype=np.float64)
    normal = np.cross(orient[:3], orient[3:])
    return sorted(slices, key=lambda s: float(np.dot(normal, np.asarray(s.ImagePositionPatient, dtype=np.float64))))


def _grid_affine(slices: Sequence[pydicom.Dataset]) -> np.ndarray:
    """LPS affine of the sorted slices' voxel grid indexed ``[column, row, slice]``."""
    orient = np.asarray(slices[0].ImageOrientationPatient, dtype=np.float64)
    d_row, d_col = (float(v) for v in slices[0].PixelSpacing)
    first = np.asarray(slices[0].ImagePositionPatient, dtype=np.float64)
    affine = np.eye(4)
    affine[:3, 0], affine[:3, 1], affine[:3, 3] = orient[:3] * d_col, orient[3:] * d_row, first
    if len(slices) > 1:
        affine[:3, 2] = (np.asarray(slices[-1].ImagePositionPatient, dtype=np.float64) - first) / (len(slices) - 1)
    else:
        affine[:3, 2] = np.cross(orient[:3], orient[3:]) * float(slices[0].get("SliceThickness", 1.0) or 1.0)
    return affine


def _to_slice_grid(mask: np.ndarray, affine: np.ndarray | None, grid: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``mask`` (MONAI layout) resampled without interpolation onto the source grid ``[column, row, slice]``."""
    if affine is None:  # ITKReader layout: [X, Y, Z] with Z ascending along the normal
        if mask.shape != shape:
            raise ValueError(
                f"mask shape {mask.shape} does not match the series ({shape[0]} columns x {shape[1]} rows x "
                f"{shape[2]} slices, the layout MONAI's ITKReader loads)."
            )
        return mask
    to_grid = np.linalg.solve(grid, _LPS_RAS @ np.asarray(affine, dtype=np.float64))  # mask index -> grid index
    perm, offset = np.rint(to_grid[:3, :3]), to_grid[:3, 3]
    aligned = (
        np.allclose(to_grid[:3, :3], perm, atol=1e-2)
        and np.allclose(np.abs(perm).sum(0), 1)
        and np.allclose(np.abs(perm).sum(1), 1)
        and np.allclose(offset, np.rint(offset), atol=1e-2)
    )
    if not aligned:
        raise ValueError(
            "the mask's affine is not aligned with the DICOM series' voxel grid (was the prediction resampled?)."
        )
    index = np.indices(mask.shape).reshape(3, -1)
    target = (perm @ index + np.rint(offset)[:, None]).astype(np.int64)
    if mask.size != int(np.prod(shape)) or (target < 0).any() or (target >= np.asarray(shape)[:, None]).any():
        raise ValueError(f"mask shape {mask.shape} and affine do not cover the series' grid {shape} exactly.")
    out = np.zeros(shape, dtype=mask.dtype)
    out[target[0], target[1], target[2]] = mask.reshape(-1)
    return out


def write_dicom_seg(
    mask: np.ndarray | torch.Tensor,
    source_files: Sequence[str | os.PathLike],
    output_path: str | os.PathLike,
    segment_names: Mapping[int, str] | None = None,
    affine: np.ndarray | torch.Tensor | None = None,
    series_description: str = "maskseg-monai segmentation",
    omit_empty_frames: bool = True,
) -> str:
    """Write a label map as a binary DICOM SEG that references its source series (highdicom).

    One segment per non-zero label (segment numbers 1..N in label order), algorithm type AUTOMATIC, algorithm
    ``maskseg-monai``. Frames reference their source slices (``ReferencedSeriesSequence``, per-frame source images).

    Args:
        mask: integer label map ``[X, Y, Z]`` (or ``[1, X, Y, Z]``) as MONAI's ``ITKReader`` loads the series: ``X``
            along a row, ``Y`` down the columns, ``Z`` along the slice normal.
        source_files: the series' single-frame DICOM files, in any order.
        output_path: the ``.dcm`` file to write, atomically.
        segment_names: ``{label: name}``; other labels are named ``label_<n>``.
        affine: the mask's RAS affine (``meta["affine"]``); when given, slices and axes are matched through it, so
            any slice order (``PydicomReader``'s is descending) or flip is handled. ``None``: ITKReader layout.
        series_description: SeriesDescription of the SEG.
        omit_empty_frames: leave out frames with no pixel of their segment.

    Returns:
        ``str(output_path)``.

    Raises:
        ImportError: when highdicom is not installed.
        ValueError: when the mask has no non-zero label or does not fit the series; nothing is written.
    """
    try:
        import highdicom as hd
        from pydicom.sr.codedict import codes
    except ImportError as e:
        raise ImportError("write_dicom_seg needs highdicom: pip install highdicom") from e

    mask = _as_numpy(mask)
    if mask.ndim == 4 and mask.shape[0] == 1:
        mask = mask[0]
    if mask.ndim != 3:
        raise ValueError(f"mask must be [X, Y, Z] or [1, X, Y, Z], got shape {mask.shape}.")
    if not np.issubdtype(mask.dtype, np.integer) and not np.array_equal(mask, np.round(mask)):
        raise ValueError("mask must hold integer labels.")
    mask = mask.astype(np.int64)
    slices = _sorted_slices(source_files)
    shape = (int(slices[0].Columns), int(slices[0].Rows), len(slices))
    affine = None if affine is None else _as_numpy(affine)
    labels = [int(v) for v in np.unique(mask) if v > 0]
    if not labels:
        raise ValueError("the mask has no non-zero label: a DICOM SEG needs at least one segment.")
    grid = _to_slice_grid(mask, affine, _grid_affine(slices), shape)
    frames = grid.transpose(2, 1, 0)  # [slice, row, column]
    pixel_array = np.stack([frames == label for label in labels], axis=-1).astype(np.uint8)

    import maskseg_monai

    algorithm = hd.AlgorithmIdentificationSequence(
        name="maskseg-monai", family=codes.cid7162.ArtificialIntelligence, version=maskseg_monai.__version__
    )
    names = dict(segment_names or {})
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=i + 1,
            segment_label=str(names.get(label, f"label_{label}"))[:64],
            segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=codes.SCT.Tissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for i, label in enumerate(labels)
    ]
    seg = hd.seg.Segmentation(
        source_images=slices,
        pixel_array=pixel_array,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=int(slices[0].get("SeriesNumber", 0) or 0) + 1000,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="maskseg-monai",
        manufacturer_model_name="maskseg-monai",
        software_versions=maskseg_monai.__version__,
        device_serial_number="0",
        series_description=series_description,
        omit_empty_frames=omit_empty_frames,
    )
    return atomic_write(output_path, lambda tmp: seg.save_as(tmp))
