"""DICOM series read whole or refused: checks of a series' slices before any tensor is made, and the opt-in
resampling of an irregularly spaced series onto a regular grid."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pydicom

from maskseg_monai.utils import BadInputError

__all__ = ["order_slices", "DEFAULT_SPACING_TOLERANCE", "DicomSeries", "check_dicom_series", "read_resampled_series"]

_LPS_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


#: relative slice-spacing tolerance of :func:`check_dicom_series`, highdicom's for "regularly spaced" volumes
DEFAULT_SPACING_TOLERANCE = 0.01


logger = logging.getLogger("maskseg_monai.data")


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
    return order_slices(files, headers, where, spacing_tolerance, allow_irregular_spacing)


def order_slices(
    files: Sequence[Path],
    headers: Sequence[pydicom.Dataset],
    where: str | os.PathLike,
    spacing_tolerance: float = DEFAULT_SPACING_TOLERANCE,
    allow_irregular_spacing: bool = False,
) -> DicomSeries:
    """The geometry checks of :func:`check_dicom_series` on headers already read (pixel data not needed): one
    series, single-frame slices placed in space, one orientation and size, unique and (unless allowed otherwise)
    evenly spaced positions along the normal. ``headers[i]`` is the header of ``files[i]``; messages name ``where``.

    Returns:
        :class:`DicomSeries` with the files sorted along the normal.

    Raises:
        BadInputError: on any violation.
    """
    files = list(files)
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
