"""Converters of the two abdominal one-shot benchmarks to NIfTI pairs with one shared class scheme.

Both write ``OUT/imagesTr/<prefix>_<id>.nii.gz`` (float32) and ``OUT/labelsTr/<prefix>_<id>.nii.gz`` (uint8,
:data:`ABDOMINAL_LABELS`: 1 liver, 2 spleen, 3 left kidney, 4 right kidney, every other structure 0), every file
atomically, then ``OUT/conversion.json`` (what was converted, how) last: a folder with ``conversion.json`` holds a
complete conversion. The manifests ``data_manifests/synapse_btcv_abdomen_ct.json`` and
``data_manifests/chaos_mri_t2spir.json`` describe ``OUT``. Preprocessing follows the public code of SSL-ALPNet
(Ouyang et al., ECCV 2020, ``data/SABS/*.ipynb`` and ``data/CHAOST2/*.ipynb``):

- **BTCV CT** (:func:`convert_btcv`, 30 training volumes of the MICCAI 2015 Multi-Atlas Abdomen Labeling
  Challenge): HU clipped to the abdominal window [-125, 275], min-max scaled to [0, 255]; an in-plane border of
  1/16 of the size cut on each side (32 of 512 pixels); the rest resampled in-plane to ``size`` x ``size`` (256)
  by linear interpolation, the slice spacing kept.
- **CHAOS MRI T2-SPIR** (:func:`convert_chaos`, 20 training cases): the DICOM series read (and checked) with
  :func:`~maskseg_monai.data.dicom_series.check_dicom_series`, the per-slice PNG masks paired to their DICOM
  slices by file name; intensities above the 99.5th percentile clipped; resampled to 1.25 x 1.25 x 7.70 mm by
  linear interpolation; centre-cropped or padded (with the image minimum) in-plane to ``size`` x ``size``.

Resampling is SimpleITK's as ALPNet calls it: output voxel ``i`` samples input index ``offset + i * scale`` by
(bi/tri)linear interpolation; a label voxel takes the label whose linearly interpolated one-hot fraction exceeds
0.5, else background. Two deliberate differences: sample points are kept inside the input (ALPNet's
``int(size + 1)`` output grid can add a zero-filled last row or slice), and the NIfTI affine is the true one of
the new grid (ALPNet keeps the uncropped origin). Intensity standardisation (ALPNet: z-score with the training
fold's global CT statistics, per-volume z-score for MRI) is left to the bundle's transforms.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
from PIL import Image

from maskseg_monai.data._io import atomic_write_bytes, atomic_write_json, nifti_bytes
from maskseg_monai.data.dicom_series import check_dicom_series, read_resampled_series
from maskseg_monai.utils import BadInputError

__all__ = [
    "ABDOMINAL_LABELS",
    "BTCV_LABEL_MAP",
    "BTCV_TRAINING_IDS",
    "CHAOS_GREY_LEVELS",
    "CHAOS_T2SPIR_IDS",
    "CONVERSION_FILE",
    "convert_btcv",
    "conversion_record",
    "convert_chaos",
    "resample_linear",
]

logger = logging.getLogger("maskseg_monai.data")

#: the shared class scheme of the converted data (label value -> name)
ABDOMINAL_LABELS = {0: "background", 1: "liver", 2: "spleen", 3: "left_kidney", 4: "right_kidney"}
#: BTCV label value -> scheme value (BTCV: 1 spleen, 2 right kidney, 3 left kidney, 6 liver; 4, 5, 7-13 other organs)
BTCV_LABEL_MAP = {1: 2, 2: 4, 3: 3, 6: 1}
BTCV_MAX_LABEL = 13
#: the 30 labelled training volumes of the challenge, ``RawData/Training/img/img<id:04d>.nii.gz``
BTCV_TRAINING_IDS = tuple(range(1, 11)) + tuple(range(21, 41))
#: CHAOS MR ground-truth grey levels (inclusive ranges, as the challenge's evaluation code reads them) -> scheme
#: value: 63 liver, 126 right kidney, 189 left kidney, 252 spleen
CHAOS_GREY_LEVELS = {(55, 70): 1, (110, 135): 4, (175, 200): 3, (240, 255): 2}
#: the 20 CHAOS MR training cases, ``Train_Sets/MR/<id>/T2SPIR``
CHAOS_T2SPIR_IDS = (1, 2, 3, 5, 8, 10, 13, 15, 19, 20, 21, 22, 31, 32, 33, 34, 36, 37, 38, 39)
CONVERSION_FILE = "conversion.json"

CT_WINDOW = (-125.0, 275.0)
BTCV_BORDER_FRACTION = 32 / 512
CHAOS_SPACING = (1.25, 1.25, 7.70)
CHAOS_TOP_PERCENT = 0.5


def _axis(n_in: int, n_out: int, scale: float, offset: float = 0.0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Neighbour indices and linear weights along one axis: ``[(lo, 1 - w), (hi, w)]`` (one pair when exact)."""
    x = np.clip(offset + np.arange(n_out, dtype=np.float64) * scale, 0.0, n_in - 1.0)
    lo = np.floor(x).astype(np.int64)
    w = x - lo
    if not (w > 1e-9).any():
        return [(lo, np.ones_like(w))]
    return [(lo, 1.0 - w), (np.minimum(lo + 1, n_in - 1), w)]


def resample_linear(
    volume: np.ndarray,
    shape: Sequence[int],
    scale: Sequence[float],
    offset: Sequence[float] = (0.0, 0.0, 0.0),
    labels: bool = False,
) -> np.ndarray:
    """Resample a ``[X, Y, Z]`` volume on the grid ``offset + i * scale`` (input voxel units), as SimpleITK's
    linear ``ResampleImageFilter`` does with ALPNet's settings.

    Args:
        volume: ``[X, Y, Z]`` image or integer label map.
        shape: output shape ``[X', Y', Z']``.
        scale: input voxels per output voxel along each axis (new spacing / old spacing).
        offset: input index of output voxel 0 along each axis.
        labels: resample a label map: every output voxel takes the label whose linearly interpolated one-hot
            fraction exceeds 0.5 (ALPNet's per-label linear interpolation and rounding), else 0.

    Returns:
        the resampled volume, float32 (image) or the input's dtype (labels).
    """
    corners = list(itertools.product(*(_axis(n, m, s, o) for n, m, s, o in zip(volume.shape, shape, scale, offset))))
    weights = [functools.reduce(np.multiply, np.ix_(*(w for _, w in c))) for c in corners]
    values = [volume[np.ix_(*(i for i, _ in c))] for c in corners]
    if not labels:
        return sum(w * v.astype(np.float64) for w, v in zip(weights, values)).astype(np.float32)
    out = np.zeros(tuple(shape), dtype=volume.dtype)
    for v in values:  # a label with more than half of the interpolation weight wins (at most one can)
        frac = sum(w * (u == v) for w, u in zip(weights, values))
        out = np.where(frac > 0.5, v, out)
    return out


def _lut(mapping: dict[int, int], size: int) -> np.ndarray:
    lut = np.zeros(size, dtype=np.uint8)
    for src, dst in mapping.items():
        lut[src] = dst
    return lut


def _write_pair(out: Path, name: str, image: np.ndarray, label: np.ndarray, affine: np.ndarray) -> tuple[str, str]:
    img_rel, lab_rel = f"imagesTr/{name}.nii.gz", f"labelsTr/{name}.nii.gz"
    atomic_write_bytes(out / img_rel, nifti_bytes(image.astype(np.float32), affine))
    atomic_write_bytes(out / lab_rel, nifti_bytes(label.astype(np.uint8), affine))
    return img_rel, lab_rel


def _start(out: Path) -> None:
    """Remove a previous ``conversion.json`` so that an interrupted run never looks complete."""
    out.mkdir(parents=True, exist_ok=True)
    (out / CONVERSION_FILE).unlink(missing_ok=True)


def _finish(out: Path, record: dict[str, Any], expected: Sequence[int], found: Sequence[int], what: str) -> Path:
    missing = sorted(set(expected) - set(found))
    if missing:
        logger.warning(
            f"{what}: {len(found)} case(s) converted; the benchmark has {len(expected)}, missing {missing} "
            "(the manifest's counts will fail verification unless this is a deliberate subset)."
        )
    atomic_write_json(out / CONVERSION_FILE, record)
    return out / CONVERSION_FILE


def _case_number(path: Path, where: str) -> int:
    digits = re.findall(r"\d+", path.name)
    if not digits:
        raise BadInputError(f"{path}: no case number in the name ({where}).")
    return int(digits[-1])


def convert_btcv(root: str | os.PathLike, out: str | os.PathLike, size: int = 256) -> Path:
    """Convert the BTCV (Synapse multi-atlas abdomen) training volumes to the shared scheme (module docstring).

    Args:
        root: the unpacked challenge data holding ``RawData/Training/img/img*.nii.gz`` and
            ``RawData/Training/label/label*.nii.gz`` (``root`` may also be the ``RawData`` or ``Training`` folder).
        out: output folder (``imagesTr``, ``labelsTr``, ``conversion.json``).
        size: in-plane output size (ALPNet: 256).

    Returns:
        the path of ``conversion.json``.

    Raises:
        BadInputError: no volume found, a label file missing or of another shape than its image, a label value
            outside BTCV's 0..13, or a constant image; the message names the file.
    """
    root, out = Path(root), Path(out)
    training = next((p for p in (root / "RawData" / "Training", root / "Training", root) if (p / "img").is_dir()), None)
    if training is None:
        raise BadInputError(f"{root}: expected RawData/Training/img/img*.nii.gz (the BTCV 'Abdomen' training data).")
    images = sorted(training.glob("img/img*.nii.gz"), key=lambda p: _case_number(p, "BTCV image"))
    if not images:
        raise BadInputError(f"{training / 'img'}: no img*.nii.gz volumes.")
    _start(out)
    lut = _lut(BTCV_LABEL_MAP, BTCV_MAX_LABEL + 1)
    cases = []
    for img_path in images:
        case = _case_number(img_path, "BTCV image")
        lab_path = training / "label" / img_path.name.replace("img", "label", 1)
        if not lab_path.is_file():
            raise BadInputError(f"{img_path}: its label {lab_path} is missing.")
        img = nib.load(str(img_path))
        hu = np.asarray(img.dataobj, dtype=np.float32)
        lab = np.asarray(nib.load(str(lab_path)).dataobj)
        if hu.ndim != 3 or lab.shape != hu.shape:
            raise BadInputError(f"{lab_path}: label shape {lab.shape} differs from image {img_path.name} {hu.shape}.")
        lab = np.rint(lab).astype(np.int64)
        bad = np.unique(lab[(lab < 0) | (lab > BTCV_MAX_LABEL)])
        if bad.size:
            raise BadInputError(f"{lab_path}: label values {bad[:10].tolist()} outside BTCV's 0..{BTCV_MAX_LABEL}.")
        windowed = np.clip(hu, *CT_WINDOW)
        lo, hi = float(windowed.min()), float(windowed.max())
        if hi <= lo:
            raise BadInputError(f"{img_path}: constant image after the CT window {CT_WINDOW}; not a CT volume?")
        windowed = (windowed - lo) / (hi - lo) * 255.0
        border = [int(round(n * BTCV_BORDER_FRACTION)) for n in hu.shape[:2]]
        scale = [(n - 2 * b) / size for n, b in zip(hu.shape[:2], border)] + [1.0]
        offset = [float(border[0]), float(border[1]), 0.0]
        shape = (size, size, hu.shape[2])
        image = resample_linear(windowed, shape, scale, offset)
        label = lut[resample_linear(lab, shape, scale, offset, labels=True)]
        grid = np.diag([*scale, 1.0])
        grid[:3, 3] = offset
        _write_pair(out, f"btcv_{case:04d}", image, label, img.affine @ grid)
        cases.append(case)
        logger.info(f"converted {img_path.name}: {hu.shape} -> {shape}")
    record = {
        "dataset": "synapse_btcv_abdomen_ct",
        "converter": "python -m maskseg_monai.data.abdominal btcv-to-nifti",
        "labels": {str(k): v for k, v in ABDOMINAL_LABELS.items()},
        "source_labels": {"1": "spleen", "2": "right_kidney", "3": "left_kidney", "6": "liver", "other": 0},
        "preprocessing": {
            "ct_window_hu": list(CT_WINDOW),
            "intensity": "min-max of the windowed volume to [0, 255]",
            "border_fraction_cut": BTCV_BORDER_FRACTION,
            "in_plane_size": size,
            "interpolation": "linear (image), per-label linear > 0.5 (label); slice spacing kept",
        },
        "cases": cases,
    }
    return _finish(out, record, BTCV_TRAINING_IDS, cases, "BTCV")


def _grey_lut() -> np.ndarray:
    lut = np.full(256, 255, dtype=np.uint8)  # 255: not a CHAOS grey level
    lut[0] = 0
    for (lo, hi), value in CHAOS_GREY_LEVELS.items():
        lut[lo : hi + 1] = value
    return lut


def _chaos_masks(files: Sequence[Path], ground: Path, rows_cols: tuple[int, int]) -> np.ndarray:
    """The ``[X = column, Y = row, Z]`` scheme labels of the PNG masks paired by name with the sorted DICOM slices."""
    pngs = [ground / f"{f.stem}.png" for f in files]
    missing = [p.name for p in pngs if not p.is_file()]
    if missing:
        raise BadInputError(
            f"{ground}: no mask for {len(missing)} of {len(files)} DICOM slices (expected the slice's name with "
            f".png, e.g. {missing[0]})."
        )
    stack = []
    for p in pngs:
        mask = np.asarray(Image.open(p))
        if mask.ndim == 3:  # an RGB(A) export of a grey mask
            mask = mask[..., 0]
        if mask.shape != rows_cols or mask.dtype != np.uint8:
            raise BadInputError(
                f"{p}: mask {mask.dtype} {mask.shape}, expected uint8 {rows_cols} like its DICOM slice."
            )
        stack.append(mask)
    grey = np.stack(stack, axis=-1)  # [row, column, slice]
    labels = _grey_lut()[grey]
    bad = np.flatnonzero((labels == 255).any(axis=(0, 1)))
    if bad.size:
        values = np.unique(grey[..., bad[0]][labels[..., bad[0]] == 255])
        raise BadInputError(
            f"{pngs[bad[0]]}: grey levels {values[:10].tolist()} are not CHAOS MR classes (0, 63 liver, 126 right "
            f"kidney, 189 left kidney, 252 spleen); {bad.size} mask(s) affected."
        )
    return labels.transpose(1, 0, 2)


def _centre_crop(volume: np.ndarray, size: int, pad: float) -> tuple[np.ndarray, list[int]]:
    """ALPNet's ``image_crop``: in-plane ``size`` x ``size`` around ``shape // 2``; returns the crop and its offset."""
    offsets = [n // 2 - (size + 1) // 2 for n in volume.shape[:2]]
    out = np.full((size, size, volume.shape[2]), pad, dtype=volume.dtype)
    src = [np.arange(size) + o for o in offsets]
    ok = [(s >= 0) & (s < n) for s, n in zip(src, volume.shape[:2])]
    out[np.ix_(ok[0], ok[1])] = volume[np.ix_(src[0][ok[0]], src[1][ok[1]])]
    return out, offsets


def convert_chaos(root: str | os.PathLike, out: str | os.PathLike, size: int = 256) -> Path:
    """Convert the CHAOS MR T2-SPIR training cases to the shared scheme (module docstring).

    Args:
        root: the unpacked ``CHAOS_Train_Sets`` holding ``Train_Sets/MR/<id>/T2SPIR/DICOM_anon/*.dcm`` and
            ``.../T2SPIR/Ground/*.png`` (``root`` may also be the ``Train_Sets`` or ``MR`` folder).
        out: output folder (``imagesTr``, ``labelsTr``, ``conversion.json``).
        size: in-plane output size (ALPNet: 256).

    Returns:
        the path of ``conversion.json``.

    Raises:
        BadInputError: no case found; a series that fails the DICOM checks (missing, duplicated or unevenly
            spaced slices); a DICOM slice without its PNG mask; a mask of another size; a grey level that is not a
            CHAOS class. The message names the folder or file.
    """
    root, out = Path(root), Path(out)
    mr = next((p for p in (root / "Train_Sets" / "MR", root / "MR", root) if any(p.glob("*/T2SPIR"))), None)
    if mr is None:
        raise BadInputError(f"{root}: expected Train_Sets/MR/<case>/T2SPIR/DICOM_anon (the CHAOS training data).")
    folders = sorted((p for p in mr.glob("*/T2SPIR") if p.parent.name.isdigit()), key=lambda p: int(p.parent.name))
    _start(out)
    cases = []
    for folder in folders:
        case = int(folder.parent.name)
        dicom_dir = folder / "DICOM_anon"
        series = check_dicom_series(sorted(dicom_dir.glob("*.dcm")), dicom_dir)
        volume, affine = read_resampled_series(series)  # [X = column, Y = row, Z], RAS
        header = pydicom.dcmread(series.files[0], stop_before_pixels=True)
        label = _chaos_masks(series.files, folder / "Ground", (int(header.Rows), int(header.Columns)))
        volume = np.minimum(volume, np.float32(np.percentile(volume, 100.0 - CHAOS_TOP_PERCENT)))
        spacing = np.linalg.norm(affine[:3, :3], axis=0)
        scale = [new / old for new, old in zip(CHAOS_SPACING, spacing)]
        shape = [int(np.floor((n - 1) / s + 1e-6)) + 1 for n, s in zip(volume.shape, scale)]
        image = resample_linear(volume, shape, scale)
        label = resample_linear(label, shape, scale, labels=True)
        image, offsets = _centre_crop(image, size, float(image.min()))
        label, _ = _centre_crop(label, size, 0)
        grid = np.diag([*scale, 1.0])
        grid[:3, 3] = [offsets[0] * scale[0], offsets[1] * scale[1], 0.0]
        _write_pair(out, f"chaos_{case:04d}", image, label, affine @ grid)
        cases.append(case)
        logger.info(f"converted CHAOS MR case {case}: {volume.shape} -> {image.shape}")
    if not cases:
        raise BadInputError(f"{mr}: no <case>/T2SPIR folders with a numeric case name.")
    record = {
        "dataset": "chaos_mri_t2spir",
        "converter": "python -m maskseg_monai.data.abdominal chaos-to-nifti",
        "labels": {str(k): v for k, v in ABDOMINAL_LABELS.items()},
        "source_labels": {"63": "liver", "126": "right_kidney", "189": "left_kidney", "252": "spleen"},
        "preprocessing": {
            "intensity": f"clipped at the {100 - CHAOS_TOP_PERCENT}th percentile",
            "spacing_mm": list(CHAOS_SPACING),
            "in_plane_size": size,
            "interpolation": "linear (image), per-label linear > 0.5 (label); centre crop/pad with the image minimum",
            "mask_pairing": "Ground/<DICOM file stem>.png, slices ordered along the normal",
        },
        "cases": cases,
    }
    return _finish(out, record, CHAOS_T2SPIR_IDS, cases, "CHAOS")


def conversion_record(folder: str | os.PathLike) -> dict[str, Any]:
    """The ``conversion.json`` of a converted folder (``{}`` when there is none)."""
    path = Path(folder) / CONVERSION_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
