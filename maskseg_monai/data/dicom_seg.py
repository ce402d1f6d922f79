"""DICOM SEG output (highdicom): a label map in MONAI's layout mapped back onto its source series' slices.

DICOM series are read with MONAI's ``ITKReader`` (or ``PydicomReader``), which give a series as ``[X, Y, Z]``: ``X``
runs along a row (DICOM column index), ``Y`` down the columns (DICOM row index), ``Z`` along the slice normal, with a
RAS affine. :func:`write_dicom_seg` maps a label map in that layout back onto the source slices through the affine, so
either reader's slice order is handled.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pydicom
import torch

from maskseg_monai.data.dicom_series import _LPS_RAS, _grid_affine, order_slices
from maskseg_monai.utils import atomic_write

__all__ = ["write_dicom_seg"]

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


def _as_numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    return np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x)


def _sorted_slices(source_files: Sequence[str | os.PathLike]) -> list[pydicom.Dataset]:
    """Headers of one series' single-frame slices, sorted along the slice normal; checks they form one stack
    (:func:`~maskseg_monai.data.dicom_series.order_slices`) with a PixelSpacing."""
    if not source_files:
        raise ValueError("source_files is empty: a DICOM SEG needs the source series' files.")
    files = [Path(f) for f in source_files]
    slices = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    missing = [f for f, ds in zip(files, slices) if "PixelSpacing" not in ds]
    if missing:
        raise ValueError(f"{missing[0]}: not a slice with PixelSpacing; a DICOM SEG needs the source pixel grid.")
    # the spacing was checked when the series was read; the SEG's frames follow whatever stack it is
    series = order_slices(files, slices, files[0].parent, allow_irregular_spacing=True)
    by_file = dict(zip(files, slices))
    return [by_file[f] for f in series.files]


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
