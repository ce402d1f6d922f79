"""Medical file input and output for inference: images, NIfTI and DICOM series in; NIfTI and DICOM SEG out.

DICOM series are read with MONAI's ``ITKReader`` (or ``PydicomReader``), which give a series as ``[X, Y, Z]``: ``X``
runs along a row (DICOM column index), ``Y`` down the columns (DICOM row index), ``Z`` along the slice normal, with a
RAS affine. :func:`write_dicom_seg` maps a label map in that layout back onto the source slices through the affine, so
either reader's slice order is handled.

Privacy: output names come from the input file or folder name through :func:`~maskseg_monai.utils.safe_stem`,
never from DICOM tag values, and log messages name only those sanitised names.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pydicom
import torch
from pydicom.errors import InvalidDicomError

from maskseg_monai.utils import BadInputError, atomic_write, output_stem, safe_stem

__all__ = [
    "DEFAULT_SPACING_TOLERANCE",
    "DicomSeries",
    "IMAGE_EXTENSIONS",
    "SERIES_UID_KEY",
    "check_dicom_series",
    "read_resampled_series",
    "list_dicom_series",
    "output_names",
    "resolve_dicom_series",
    "inference_inputs",
    "write_dicom_seg",
]


IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".nii", ".nii.gz", ".mha", ".nrrd")


SERIES_UID_KEY = "dicom_series_uid"  # meta key set by LoadMedicalImaged: the series read ("" for other inputs)


_LPS_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

#: relative slice-spacing tolerance of :func:`check_dicom_series`, highdicom's for "regularly spaced" volumes
DEFAULT_SPACING_TOLERANCE = 0.01

logger = logging.getLogger("maskseg_monai.data")

#: Type 2 attributes of the Patient and General Study modules a SEG copies from its source (may be empty)
_TYPE2_PATIENT_STUDY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)


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


class DicomSeries(NamedTuple):
    """One checked DICOM series.

    Attributes:
        files: the slice files, sorted along the slice normal (ascending position).
        positions: ``[N]`` slice positions along the normal (mm), ascending.
        spacing: the slice spacing (mm): the median gap between neighbouring slices; NaN for a single slice.
        regular: whether every gap is within the tolerance of ``spacing``.
    """

    files: list[Path]
    positions: np.ndarray
    spacing: float
    regular: bool


def _names(files: Sequence[Path], most: int = 5) -> str:
    shown = ", ".join(Path(f).name for f in files[:most])
    return shown + (f" and {len(files) - most} more" if len(files) > most else "")


def _pixel_problem(ds: pydicom.Dataset) -> str | None:
    """Why a slice's pixel data is unusable (absent, or shorter than its Rows x Columns x frames), else ``None``."""
    if "PixelData" not in ds:
        return "no PixelData"
    data = ds.PixelData
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is not None and syntax.is_compressed:
        return None if data else "empty PixelData"
    try:
        expected = (
            int(ds.Rows)
            * int(ds.Columns)
            * int(ds.get("SamplesPerPixel", 1) or 1)
            * int(ds.get("NumberOfFrames", 1) or 1)
        ) * -(-int(ds.BitsAllocated) // 8)
    except (AttributeError, TypeError, ValueError) as e:
        return f"incomplete image attributes ({e})"
    return None if len(data) >= expected else f"PixelData holds {len(data)} of {expected} bytes (truncated file)"


def check_dicom_series(
    files: Sequence[str | os.PathLike],
    folder: str | os.PathLike | None = None,
    spacing_tolerance: float = DEFAULT_SPACING_TOLERANCE,
    allow_irregular_spacing: bool = False,
) -> DicomSeries:
    """Check that DICOM files form one complete, regularly spaced stack of slices, before any tensor is made.

    MONAI's ``LoadImage`` (ITK or pydicom reader) reads a series with a missing or unreadable slice as a shorter
    volume with the spacing averaged over the gap, and says nothing (ITK only warns); this refuses such a series.
    Checks, each failing with a :class:`~maskseg_monai.utils.BadInputError` that names the folder and the files:

    - every file parses with complete ``PixelData`` of its ``Rows x Columns x frames`` size (truncated files);
    - one ``SeriesInstanceUID``, one ``ImageOrientationPatient``, one ``Rows x Columns``, single-frame slices with
      ``ImagePositionPatient``;
    - slice positions projected on the normal are unique (no duplicated slice) and evenly spaced: every gap within
      ``spacing_tolerance`` (relative) of the median gap, so no slice is missing.

    Args:
        files: the series' files (one series, as :func:`resolve_dicom_series` returns them).
        folder: the folder the messages name; defaults to the first file's folder.
        spacing_tolerance: relative tolerance of the slice gaps. Defaults to 1%, as highdicom's.
        allow_irregular_spacing: accept uneven gaps (missing slices) instead of failing: the result has
            ``regular=False`` and :func:`read_resampled_series` puts it on a regular grid. Duplicated slices and the
            other checks still fail.

    Returns:
        :class:`DicomSeries` with the files sorted along the normal.

    Raises:
        BadInputError: on any violation above.
    """
    files = [Path(f) for f in files]
    where = Path(folder) if folder is not None else (files[0].parent if files else Path("."))
    if not files:
        raise BadInputError(f"{where}: no DICOM slice files.")
    headers, bad = [], []
    for f in files:
        try:
            ds = pydicom.dcmread(f)
            problem = _pixel_problem(ds)
        except Exception as e:  # pydicom raises many types on damaged files
            ds, problem = None, f"cannot be read ({type(e).__name__}: {str(e).strip()[:80]})"
        if problem:
            bad.append((f, problem))
        headers.append(ds)
    if bad:
        detail = "; ".join(f"{f.name}: {why}" for f, why in bad[:5])
        raise BadInputError(
            f"{where}: {len(bad)} of {len(files)} slice files are unreadable or incomplete ({detail}). "
            "Re-export the series, or remove those files if the slices are not needed."
        )
    first = headers[0]
    for key in ("SeriesInstanceUID", "ImagePositionPatient", "ImageOrientationPatient"):
        missing = [f for f, ds in zip(files, headers) if key not in ds]
        if missing:
            raise BadInputError(f"{where}: {_names(missing)} lack {key}; cannot place the slices in space.")
    uids = {str(ds.SeriesInstanceUID) for ds in headers}
    if len(uids) > 1:
        raise BadInputError(f"{where}: the files belong to {len(uids)} series ({', '.join(sorted(uids))}).")
    multi = [f for f, ds in zip(files, headers) if int(ds.get("NumberOfFrames", 1) or 1) != 1]
    if multi:
        raise BadInputError(f"{where}: {_names(multi)} are multi-frame; expected one slice per file.")
    orient = np.asarray(first.ImageOrientationPatient, dtype=np.float64)
    other = [f for f, ds in zip(files, headers) if not np.allclose(ds.ImageOrientationPatient, orient, atol=1e-4)]
    if other:
        raise BadInputError(
            f"{where}: {_names(other)} have another ImageOrientationPatient than {files[0].name} "
            f"({[round(v, 4) for v in orient]}): a series must be one stack of parallel slices; put slices of "
            "another orientation (a localizer, another plane) in their own folder."
        )
    size = (int(first.Rows), int(first.Columns))
    other = [f for f, ds in zip(files, headers) if (int(ds.Rows), int(ds.Columns)) != size]
    if other:
        raise BadInputError(f"{where}: {_names(other)} differ in Rows x Columns from {files[0].name} {size}.")
    normal = np.cross(orient[:3], orient[3:])
    pos = np.array([float(np.dot(normal, np.asarray(ds.ImagePositionPatient, dtype=np.float64))) for ds in headers])
    order = np.argsort(pos, kind="stable")
    files, pos = [files[i] for i in order], pos[order]
    if len(files) == 1:
        return DicomSeries(files, pos, float("nan"), True)
    gaps = np.diff(pos)
    scale = max(float(np.abs(pos).max()), 1.0)
    dup = np.flatnonzero(gaps <= 1e-6 * scale)
    if dup.size:
        pairs = "; ".join(f"{files[i].name} and {files[i + 1].name} at {pos[i]:.3f} mm" for i in dup[:5])
        raise BadInputError(
            f"{where}: {dup.size} duplicated slice position(s) along the slice normal ({pairs}); "
            f"{len(files)} files but {len(files) - dup.size} distinct positions. Remove the duplicates."
        )
    spacing = float(np.median(gaps))
    off = np.flatnonzero(np.abs(gaps - spacing) > spacing_tolerance * spacing)
    if off.size and not allow_irregular_spacing:
        where_gaps = "; ".join(
            f"{gaps[i]:.3f} mm between {files[i].name} ({pos[i]:.3f} mm) and {files[i + 1].name} ({pos[i + 1]:.3f} mm)"
            + (f", about {round(gaps[i] / spacing) - 1} slice(s) missing" if gaps[i] > spacing else "")
            for i in off[:5]
        )
        raise BadInputError(
            f"{where}: slices are not evenly spaced (spacing {spacing:.3f} mm, "
            f"tolerance {spacing_tolerance * 100:g}%): "
            f"{where_gaps}. Complete the series, or pass --allow_irregular_spacing true to resample it onto a "
            "regular grid."
        )
    return DicomSeries(files, pos, spacing, not off.size)


def read_resampled_series(series: DicomSeries) -> tuple[np.ndarray, np.ndarray]:
    """Read an irregularly spaced series onto a regular grid, by linear interpolation along the slice normal.

    The grid keeps the first and last slice positions and the series' median spacing. The layout is MONAI
    ``ITKReader``'s: ``[X, Y, Z]`` (``X`` along a row, ``Y`` down the columns, ``Z`` ascending along the normal),
    intensities rescaled by ``RescaleSlope``/``RescaleIntercept``.

    Args:
        series: a :class:`DicomSeries` from :func:`check_dicom_series`.

    Returns:
        the volume ``[X, Y, Z]`` (float32) and its RAS affine ``[4, 4]``.
    """
    slices = [pydicom.dcmread(f) for f in series.files]
    stack = np.stack(
        [
            s.pixel_array.astype(np.float32) * float(s.get("RescaleSlope", 1) or 1)
            + float(s.get("RescaleIntercept", 0) or 0)
            for s in slices
        ],
        axis=-1,
    ).transpose(1, 0, 2)  # [row, column, slice] -> [X = column, Y = row, Z]
    pos = series.positions
    count = int(round((pos[-1] - pos[0]) / series.spacing)) + 1
    grid = pos[0] + np.arange(count) * (pos[-1] - pos[0]) / max(count - 1, 1)
    upper = np.clip(np.searchsorted(pos, grid, side="right"), 1, len(pos) - 1)
    w = ((grid - pos[upper - 1]) / (pos[upper] - pos[upper - 1])).astype(np.float32)
    volume = stack[..., upper - 1] * (1 - w) + stack[..., upper] * w
    affine = _grid_affine(slices)
    affine[:3, 2] = affine[:3, 2] / np.linalg.norm(affine[:3, 2]) * (grid[1] - grid[0] if count > 1 else 1.0)
    return volume.astype(np.float32), _LPS_RAS @ affine


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
    :class:`LoadMedicalImaged` picks its series. Each item also holds ``"name"``, its collision-free output stem
    (:func:`output_names`). Symbolic links to folders are not followed, and a broken or looping
    link is reported as a warning naming it.

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ValueError: when a folder holds no image file and no DICOM series.
    """
    path = Path(path)
    if path.is_file():
        return [{key: str(path), "name": output_names([path])[0]}]
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such file or folder.")
    images = sorted(p for p in path.iterdir() if p.is_file() and p.name.lower().endswith(IMAGE_EXTENSIONS))
    dicom_dirs = [path] if _has_dicom(path) else []
    for root, dirs, files in os.walk(path):  # symbolic links to folders are not followed (no loops)
        for name in sorted(dirs + files):
            link = Path(root) / name
            if link.is_symlink() and not link.exists():
                logger.warning(f"{link}: broken or looping symbolic link, skipped.")
            elif link.is_symlink() and link.is_dir():
                logger.warning(f"{link}: symbolic link to a folder, not followed; pass its target to read it.")
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not (Path(root) / d).is_symlink())
        dicom_dirs += [Path(root) / d for d in dirs if _has_dicom(Path(root) / d)]
    if not images and not dicom_dirs:
        raise ValueError(
            f"{path}: no input found: expected image files ({', '.join(IMAGE_EXTENSIONS)}) or DICOM series folders."
        )
    inputs = images + dicom_dirs
    return [{key: str(p), "name": n} for p, n in zip(inputs, output_names(inputs, path))]


def output_names(inputs: Sequence[str | os.PathLike], root: str | os.PathLike | None = None) -> list[str]:
    """Collision-free output stems for the inputs of one run.

    Each input's stem is its path relative to ``root`` (``p1/series`` -> ``p1_series``; a file loses its image
    extension), sanitised by :func:`~maskseg_monai.utils.safe_stem`; the input itself when it is ``root``. Stems
    that still coincide (case-insensitively, as on macOS and Windows file systems: ``scan ß.png``, ``scan ü.png``
    and ``scan_.png`` all give ``scan``) each get ``_`` and the first 8 hex digits of the SHA-256 of their relative
    path, so every name is stable from run to run and no output overwrites another.

    Example:
        >>> output_names(["in/a.png", "in/p1/series", "in/p2/series"], "in")
        ['a', 'p1_series', 'p2_series']
    """
    rels = []
    for p in inputs:
        p = Path(p)
        rel = p.relative_to(root) if root is not None and p != Path(root) and Path(root) in p.parents else p.name
        rels.append(str(rel))
    stems = [safe_stem(str(Path(r).parent / output_stem(r))) for r in rels]
    counts: dict[str, int] = {}
    for stem in stems:
        counts[stem.lower()] = counts.get(stem.lower(), 0) + 1
    return [
        f"{stem}_{hashlib.sha256(rel.encode('utf-8')).hexdigest()[:8]}" if counts[stem.lower()] > 1 else stem
        for stem, rel in zip(stems, rels)
    ]


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
    for ds in slices:  # de-identified series often lack Type 2 attributes, which the standard allows to be empty
        for keyword in _TYPE2_PATIENT_STUDY:
            if keyword not in ds:
                setattr(ds, keyword, "")
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
