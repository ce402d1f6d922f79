"""Medical-image I/O transforms: ``LoadMedicalImaged`` (files, NIfTI, DICOM series folders) and
``SaveSegmentationd`` (label maps and DICOM SEG, all outputs of an input or none)."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import LoadImage, MapTransform, SaveImage

from maskseg_monai.data import FAILED_KEY
from maskseg_monai.data.dicom import SERIES_UID_KEY, holds_only, resolve_dicom_series
from maskseg_monai.data.dicom_seg import write_dicom_seg
from maskseg_monai.data.dicom_series import DEFAULT_SPACING_TOLERANCE, check_dicom_series, read_resampled_series
from maskseg_monai.utils import BadInputError, as_bool, output_stem, safe_stem

__all__ = ["SUPPORTED_DICOM_READERS", "LoadMedicalImaged", "SaveSegmentationd"]

logger = logging.getLogger("maskseg_monai.transforms")


SUPPORTED_DICOM_READERS = ("ITKReader", "PydicomReader")


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
        elif holds_only(path, files):
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


class SaveSegmentationd(MapTransform):
    """Write every output of one input, or none: the label map and, for a DICOM series input, its DICOM SEG.

    The label map is written with MONAI's :class:`~monai.transforms.SaveImage` (PNG for 2D, NIfTI with the input's
    affine for 3D) and the SEG with :func:`~maskseg_monai.data.write_dicom_seg`, both into a temporary folder inside
    ``output_dir``; only when both are written are they renamed into ``output_dir``. A failure leaves neither and
    raises an error naming the input. MONAI's ``SaveImaged`` followed by a SEG writer would leave the NIfTI of an
    input whose SEG failed.

    Names are ``<stem>_<output_postfix><ext>`` and ``<stem>_<output_postfix>.dcm``, the stem being the item's
    ``name_key`` entry (the collision-free names of :func:`~maskseg_monai.data.inference_inputs`) or else
    :func:`~maskseg_monai.utils.output_stem` of the input. A stem written twice in one run is an error, never an
    overwrite. An item marked failed by :class:`~maskseg_monai.data.SkippingDataset` writes nothing and is counted
    in ``failed`` (see :class:`~maskseg_monai.handlers.InferenceReport`). An all-background prediction of a DICOM
    input writes no SEG (a SEG needs a segment) and logs a warning.

    Args:
        keys: keys of the label maps ``[1, *spatial]`` (MetaTensor with the input's metadata).
        output_dir: output folder (created).
        output_postfix: appended to the stem. Defaults to ``"seg"``.
        output_ext: extension of the label map (``".png"``, ``".nii.gz"``).
        output_dtype: data type of the label map. Defaults to uint8.
        dicom_seg: also write a DICOM SEG for DICOM series inputs; strings such as ``"false"`` are read with
            :func:`~maskseg_monai.utils.as_bool`.
        segment_names: ``{label: name}`` for the SEG's segments.
        name_key: the item key holding the output stem. Defaults to ``"name"``.
        allow_missing_keys: do not fail on absent keys.
    """

    def __init__(
        self,
        keys: KeysCollection,
        output_dir: str | os.PathLike,
        output_postfix: str = "seg",
        output_ext: str = ".nii.gz",
        output_dtype: Any = np.uint8,
        dicom_seg: bool | str = False,
        segment_names: Mapping[int, str] | None = None,
        name_key: str = "name",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_dir = Path(output_dir)
        self.output_postfix, self.output_ext, self.output_dtype = output_postfix, output_ext, output_dtype
        self.dicom_seg = as_bool(dicom_seg, "dicom_seg")
        self.segment_names = {int(k): str(v) for k, v in (segment_names or {}).items()}
        self.name_key = name_key
        self.written: dict[str, str] = {}  # stem -> the input that took it, in this run
        self.failed: list[str] = []  # "<file>: <problem>" of the inputs SkippingDataset could not prepare

    def _stem(self, d: Mapping[Hashable, Any], source: str) -> str:
        name = d.get(self.name_key)
        if isinstance(name, (list, tuple)):  # left collated by a batch of one
            name = name[0] if len(name) == 1 else None
        stem = safe_stem(name) if name else output_stem(source or f"image_{len(self.written)}")
        return f"{stem}_{self.output_postfix}" if self.output_postfix else stem

    def _write(self, label: Any, base: str, folder: Path) -> None:
        """All outputs of one label map into ``folder``."""
        meta = getattr(label, "meta", {})
        SaveImage(
            output_dir=folder, output_postfix="", output_ext=self.output_ext, output_dtype=self.output_dtype,
            resample=False, scale=None, separate_folder=False, print_log=False,
            output_name_formatter=lambda metadict, saver: {"subject": f"{base}.in", "idx": None},
        )(label)  # fmt: skip
        uid, series = meta.get(SERIES_UID_KEY, ""), meta.get("filename_or_obj", "")
        if not self.dicom_seg or not uid or not series or not Path(series).is_dir():
            return
        if not bool(torch.as_tensor(label).any()):
            logger.warning(f"{base}: no foreground predicted, DICOM SEG not written.")
            return
        _, files = resolve_dicom_series(series, str(uid))
        write_dicom_seg(label, files, folder / f"{base}.dcm", self.segment_names, meta.get("affine"))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if d.get(FAILED_KEY):  # a stand-in of SkippingDataset: nothing to write
            failed = d[FAILED_KEY]
            self.failed.append(failed[0] if isinstance(failed, (list, tuple)) else str(failed))
            return d
        for key in self.key_iterator(d):
            source = str(getattr(d[key], "meta", {}).get("filename_or_obj", ""))
            base = self._stem(d, source)
            if base in self.written:
                raise BadInputError(
                    f"{source}: its output name {base} was already written in this run for {self.written[base]}; "
                    "give the inputs distinct names (inference_inputs does) instead of overwriting."
                )
            self.output_dir.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.output_dir))
            try:
                self._write(d[key], base, tmp)
                for f in sorted(tmp.iterdir()):
                    os.replace(f, self.output_dir / f.name)
            except BadInputError:
                raise
            except Exception as e:
                raise BadInputError(
                    f"{source}: writing its outputs failed, none was kept ({type(e).__name__}: {e})."
                ) from e
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            self.written[base] = source
            logger.info(f"{base}: outputs written to {self.output_dir}")
        return d
