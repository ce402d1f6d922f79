"""The inputs of an inference run: image files, NIfTI files and DICOM series folders, and their output names.

A folder may hold several DICOM series; :func:`resolve_dicom_series` picks one (``--series_uid``) and
:mod:`maskseg_monai.data.dicom_series` checks it before it is read. Output names come from the input's path
through :func:`~maskseg_monai.utils.safe_stem` (:func:`output_names`), never from DICOM tag values, and log
messages name only those sanitised names.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from maskseg_monai.utils import output_stem, safe_stem

__all__ = [
    "IMAGE_EXTENSIONS",
    "SERIES_UID_KEY",
    "holds_only",
    "inference_inputs",
    "list_dicom_series",
    "output_names",
    "resolve_dicom_series",
]

logger = logging.getLogger("maskseg_monai.data")

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".nii", ".nii.gz", ".mha", ".nrrd")


SERIES_UID_KEY = "dicom_series_uid"  # meta key set by LoadMedicalImaged: the series read ("" for other inputs)


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


def holds_only(folder: str | os.PathLike, files: Sequence[str | os.PathLike]) -> bool:
    """Whether ``files`` are all the DICOM files directly in ``folder`` (so a reader may read the folder itself)."""
    return {Path(f) for f in files} == {p for p in _candidate_files(Path(folder), False) if _read_header(p) is not None}


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
