"""Medical-image I/O transforms: ``LoadMedicalImaged`` (files, NIfTI, DICOM series folders) and ``SaveDicomSegd``."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import LoadImage, MapTransform

from maskseg_monai.data.dicom import (
    DEFAULT_SPACING_TOLERANCE,
    SERIES_UID_KEY,
    _candidate_files,
    _read_header,
    check_dicom_series,
    read_resampled_series,
    resolve_dicom_series,
    write_dicom_seg,
)
from maskseg_monai.utils import BadInputError, as_bool, output_stem

__all__ = ["SUPPORTED_DICOM_READERS", "output_name_formatter", "LoadMedicalImaged", "SaveDicomSegd"]

logger = logging.getLogger("maskseg_monai.transforms")


SUPPORTED_DICOM_READERS = ("ITKReader", "PydicomReader")


def output_name_formatter(metadict: Mapping | None, saver: Any) -> dict:
    """``SaveImaged(output_name_formatter=...)``: name outputs ``<output_stem(input)>_<postfix><ext>``."""
    subject = (metadict or {}).get("filename_or_obj", "") or f"image_{getattr(saver, '_data_index', 0)}"
    patch_index = (metadict or {}).get("patch_index")
    # MONAI's create_file_basename drops one extension: give it a dummy one so dots in the stem survive
    return {"subject": f"{output_stem(subject)}.in", "idx": patch_index}


class LoadMedicalImaged(MapTransform):
    """Load a 2D image, a NIfTI/MHA/NRRD volume or a DICOM series folder, keeping MONAI's metadata (affine).

    Files go through ``monai.transforms.LoadImage`` with its default reader choice. A folder is read as one DICOM
    series (:func:`resolve_dicom_series` picks it) with ``dicom_reader``; when the folder holds other files too, the
    series' files are linked into a temporary folder first. Before anything is read, the series is checked
    (:func:`~maskseg_monai.data.check_dicom_series`): a truncated, missing, duplicated or differently oriented slice
    is an error naming the folder and the files, never a silently shorter volume. The image's
    ``meta["filename_or_obj"]`` stays the input path and ``meta["dicom_series_uid"]`` holds the series read
    (``""`` for other inputs), for
    :class:`SaveDicomSegd`.

    Args:
        keys: keys of the input paths.
        series_uid: SeriesInstanceUID to read from folders with several series; ``None`` or ``""``: the only one.
        dicom_reader: ``"ITKReader"`` (default) or ``"PydicomReader"``.
        spacing_tolerance: relative tolerance of the slice gaps of a series. Defaults to 1%, as highdicom's.
        allow_irregular_spacing: read a series with uneven slice gaps (missing slices) by resampling it onto a
            regular grid (linear along the normal; logged as a warning) instead of failing. Defaults to False.
        image_only: passed to ``LoadImage``; the metadata stays on the ``MetaTensor`` either way.
        ensure_channel_first: passed to ``LoadImage``.
        allow_missing_keys: do not fail on absent keys.

    Raises:
        ValueError: for an unsupported reader.
        BadInputError: (a ``ValueError``) naming the input, for a missing or unreadable file or a folder without
            exactly one matching series.
    """

    def __init__(
        self,
        keys: KeysCollection,
        series_uid: str | None = None,
        dicom_reader: str = "ITKReader",
        spacing_tolerance: float = DEFAULT_SPACING_TOLERANCE,
        allow_irregular_spacing: bool = False,
        image_only: bool = True,
        ensure_channel_first: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if dicom_reader not in SUPPORTED_DICOM_READERS:
            raise ValueError(
                f"Unsupported dicom_reader: {dicom_reader}, available options are {SUPPORTED_DICOM_READERS}."
            )
        self.series_uid = str(series_uid) if series_uid not in (None, "") else None
        self.spacing_tolerance = float(spacing_tolerance)
        self.allow_irregular_spacing = as_bool(allow_irregular_spacing, "allow_irregular_spacing")
        self.image_only, self.ensure_channel_first = image_only, ensure_channel_first
        self.load_file = LoadImage(image_only=image_only, ensure_channel_first=ensure_channel_first)
        self.load_dicom = LoadImage(
            reader=dicom_reader, image_only=image_only, ensure_channel_first=ensure_channel_first
        )

    def load(self, path: str | os.PathLike) -> Any:
        """Load one input path (file or DICOM series folder)."""
        path = Path(path)
        if not path.is_dir():
            out = self.load_file(str(path))
            img = out[0] if isinstance(out, tuple) else out
            img.meta[SERIES_UID_KEY] = ""
            return out
        uid, files = resolve_dicom_series(path, self.series_uid)
        series = check_dicom_series(files, path, self.spacing_tolerance, self.allow_irregular_spacing)
        if not series.regular:
            out = self._resampled(series, path)
        elif set(files) == {p for p in _candidate_files(path, False) if _read_header(p) is not None}:
            out = self.load_dicom(str(path))
        else:  # the folder holds other series or DICOM files: read the selected files only
            with tempfile.TemporaryDirectory(prefix="maskseg-series-") as tmp:
                for i, f in enumerate(files):
                    link = Path(tmp) / f"{i:06d}.dcm"
                    try:
                        link.symlink_to(f.resolve())
                    except OSError:
                        link.write_bytes(f.read_bytes())
                out = self.load_dicom(tmp)
        img = out[0] if isinstance(out, tuple) else out
        img.meta["filename_or_obj"] = str(path)
        img.meta[SERIES_UID_KEY] = uid
        return out

    def _resampled(self, series: Any, path: Path) -> Any:
        volume, affine = read_resampled_series(series)
        logger.warning(
            f"{path}: slice gaps are uneven (spacing {series.spacing:.3f} mm); resampled {len(series.files)} slices "
            f"onto a regular grid of {volume.shape[-1]} slices (--allow_irregular_spacing)."
        )
        meta = {
            "original_affine": torch.as_tensor(affine),
            "spatial_shape": list(volume.shape),
            "filename_or_obj": str(path),
            "original_channel_dim": "no_channel",
        }
        img = MetaTensor(torch.from_numpy(volume), affine=torch.as_tensor(affine), meta=meta)
        if self.ensure_channel_first:
            img = img[None]
        return img if self.image_only else (img, img.meta)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            path = str(d[key])
            try:
                out = self.load(path)
            except BadInputError:
                raise
            except Exception as e:  # name the input: readers' errors often do not (a truncated .nii.gz)
                message = str(e).strip()
                if not message.startswith(path):
                    detail = message.splitlines()[0] if message else ""
                    message = f"{path}: cannot read the image ({type(e).__name__}: {detail})."
                raise BadInputError(message) from e
            if isinstance(out, tuple):  # image_only=False: (image, meta dict)
                d[key], d[f"{key}_meta_dict"] = out
            else:
                d[key] = out
        return d


class SaveDicomSegd(MapTransform):
    """Write a DICOM SEG beside ``SaveImaged``'s output for predictions of DICOM series inputs.

    Place it after ``AsDiscreted(argmax=True)`` and ``SaveImaged``. Predictions of other inputs (no
    ``meta["dicom_series_uid"]``, set by :class:`LoadMedicalImaged`) pass through. The file is
    ``output_dir/<output_stem(input)>_<output_postfix>.dcm``; an all-background prediction writes nothing and logs
    a warning.

    Args:
        keys: keys of the label maps ``[1, X, Y, Z]`` (MetaTensor with the input's metadata).
        output_dir: output folder.
        output_postfix: appended to the input's name.
        enabled: write at all; strings such as ``"false"`` are read with :func:`maskseg_monai.utils.as_bool`.
        segment_names: ``{label: name}`` for the segments.
        allow_missing_keys: do not fail on absent keys.
    """

    def __init__(
        self,
        keys: KeysCollection,
        output_dir: str | os.PathLike,
        output_postfix: str = "seg",
        enabled: bool | str = True,
        segment_names: Mapping[int, str] | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_dir = Path(output_dir)
        self.output_postfix = output_postfix
        self.enabled = as_bool(enabled, "enabled")
        self.segment_names = {int(k): str(v) for k, v in (segment_names or {}).items()}

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if not self.enabled:
            return d
        for key in self.key_iterator(d):
            meta = getattr(d[key], "meta", {})
            uid, folder = meta.get(SERIES_UID_KEY, ""), meta.get("filename_or_obj", "")
            if not uid or not folder or not Path(folder).is_dir():
                continue
            stem = output_stem(folder)
            name = f"{stem}_{self.output_postfix}.dcm" if self.output_postfix else f"{stem}.dcm"
            if not bool(torch.as_tensor(d[key]).any()):
                logger.warning(f"{stem}: no foreground predicted, DICOM SEG not written.")
                continue
            _, files = resolve_dicom_series(folder, str(uid))
            path = write_dicom_seg(d[key], files, self.output_dir / name, self.segment_names, meta.get("affine"))
            logger.info(f"DICOM SEG written to {path}")
        return d
