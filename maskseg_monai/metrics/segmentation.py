"""Segmentation evaluation for small objects: Dice per class and per object size, object detection P/R/F1.

Definitions (one image, one class; ``G`` the ground-truth mask, ``P`` the predicted mask):

- **Objects** are connected components of ``G`` and of ``P`` (``scipy.ndimage.label``; ``connectivity=1``
  joins pixels that share an edge/face: 4-connected in 2D, 6-connected in 3D; ``connectivity=ndim`` joins
  diagonal neighbours too: 8/26-connected).
- **Size buckets** come from the area (pixels in 2D, voxels in 3D) of each *ground-truth* object, with
  half-open intervals ``[lo, hi)`` between the sorted ``size_thresholds``: the default ``(16, 64)`` gives
  ``lt16`` (area < 16), ``16to64`` (16 <= area < 64) and ``ge64`` (area >= 64).
- **Bucket Dice**: let ``G_b`` be the pixels of the ground-truth objects in bucket ``b`` and ``P_b`` the pixels
  of every predicted component that overlaps ``G_b`` (all of the component, also where it runs outside
  ``G_b``). Then ``dice_b = 2 |P ∩ G_b| / (|P_b| + |G_b|)``; every predicted pixel inside ``G_b`` belongs to a
  component in ``P_b``, so this is the Dice of ``P_b`` against ``G_b``. A predicted blob that merges a small
  object with a large one counts fully in both buckets; predicted components that touch no ground-truth
  object (pure false positives) are in no bucket, and show up in the detection precision instead. A bucket
  with no ground-truth object gives NaN.
- **Detection**: a ground-truth object ``i`` and a predicted component ``j`` *match* when they overlap and
  ``IoU(i, j) >= iou_threshold``; ``iou_threshold=0`` means "any overlap". With the default 0.5 the matching
  is one-to-one without any assignment step (two disjoint sets cannot both have IoU > 0.5 with a third; only
  exact ties at 0.5 can give two); at lower thresholds one object may match several components and one
  component several objects. ``recall`` is the fraction of ground-truth objects with a match, ``precision``
  the fraction of predicted components with a match, and ``f1 = 2 P R / (P + R)``. With no ground-truth
  object, recall is NaN; with no predicted component, precision is NaN; F1 is NaN when both are, 0 when only
  one is (all objects missed, or all predictions false), and 0 when ``P + R = 0``. ``recall_<bucket>`` is the
  recall over the objects of one bucket.
- **Dice** per class is MONAI's :func:`monai.metrics.compute_dice` on one-hot masks; ``dice`` is its mean over
  the evaluated classes (NaN-ignoring), like :class:`monai.metrics.DiceMetric` with ``reduction="mean"``.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from monai.metrics import compute_dice
from monai.transforms.utils_morphological_ops import dilate
from scipy import ndimage as ndi

from maskseg_monai.utils import atomic_write

__all__ = [
    "small_object_mask",
    "SIZE_THRESHOLDS",
    "size_bucket_names",
    "object_metrics",
    "evaluate_segmentation",
    "summarize_metrics",
    "write_metrics_csv",
]

SIZE_THRESHOLDS = (16, 64)
"""Default object-size bucket edges, in pixels (2D) or voxels (3D)."""


def _check_thresholds(size_thresholds: Sequence[int]) -> tuple[int, ...]:
    t = tuple(int(v) for v in size_thresholds)
    if any(v <= 0 for v in t) or any(a >= b for a, b in zip(t, t[1:])):
        raise ValueError(f"size_thresholds must be positive and strictly increasing, got {tuple(size_thresholds)}.")
    return t


def size_bucket_names(size_thresholds: Sequence[int] = SIZE_THRESHOLDS) -> list[str]:
    """Names of the object-size buckets ``[lo, hi)`` defined by ``size_thresholds``.

    Example:
        >>> size_bucket_names((16, 64))
        ['lt16', '16to64', 'ge64']
        >>> size_bucket_names(())
        ['all']
    """
    t = _check_thresholds(size_thresholds)
    if not t:
        return ["all"]
    return [f"lt{t[0]}"] + [f"{a}to{b}" for a, b in zip(t, t[1:])] + [f"ge{t[-1]}"]


def _f1(precision: float, recall: float) -> float:
    if math.isnan(precision) and math.isnan(recall):
        return math.nan
    if math.isnan(precision) or math.isnan(recall):
        return 0.0  # objects but no prediction, or predictions but no object
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def object_metrics(
    pred: np.ndarray | torch.Tensor,
    gt: np.ndarray | torch.Tensor,
    size_thresholds: Sequence[int] = SIZE_THRESHOLDS,
    iou_threshold: float = 0.5,
    connectivity: int = 1,
) -> dict[str, float]:
    """Object-level metrics of one binary mask (see the module docstring for the definitions).

    The components of both masks are labelled once; a contingency table of the label pairs (one ``bincount``)
    gives every object's area, every overlap and IoU, from which all metrics follow without loops over pixels.

    Args:
        pred: predicted mask ``[*spatial]`` (2D or 3D); nonzero is foreground.
        gt: ground-truth mask, same shape.
        size_thresholds: increasing bucket edges in pixels/voxels. Defaults to ``(16, 64)``.
        iou_threshold: IoU needed for a match, in [0, 1]; 0 means any overlap. Defaults to 0.5.
        connectivity: 1 (edge/face neighbours) to ``ndim`` (all neighbours). Defaults to 1.

    Returns:
        ``{"precision", "recall", "f1", "n_gt", "n_pred", "dice_<bucket>", "recall_<bucket>", "n_gt_<bucket>"}``
        with the buckets of :func:`size_bucket_names`.

    Raises:
        ValueError: on different shapes, a mask that is not 2D/3D, or a bad threshold or connectivity.

    Example:
        >>> gt = np.zeros((8, 8), bool); gt[1:3, 1:3] = True; gt[5:8, 5:8] = True  # objects of 4 and 9 px
        >>> pred = np.zeros((8, 8), bool); pred[1:3, 1:3] = True                     # finds the first
        >>> m = object_metrics(pred, gt, size_thresholds=(5,))
        >>> m["recall"], m["precision"], m["dice_lt5"], m["dice_ge5"]
        (0.5, 1.0, 1.0, 0.0)
    """
    pred = np.asarray(pred.detach().cpu() if torch.is_tensor(pred) else pred) != 0
    gt = np.asarray(gt.detach().cpu() if torch.is_tensor(gt) else gt) != 0
    if pred.shape != gt.shape:
        raise ValueError(f"pred and gt must have the same shape, got {pred.shape} and {gt.shape}.")
    if gt.ndim not in (2, 3):
        raise ValueError(f"masks must be 2D or 3D ([*spatial]), got shape {gt.shape}.")
    if not 1 <= connectivity <= gt.ndim:
        raise ValueError(f"connectivity must be in [1, {gt.ndim}] for {gt.ndim}D masks, got {connectivity}.")
    if not 0 <= iou_threshold <= 1:
        raise ValueError(f"iou_threshold must be in [0, 1], got {iou_threshold}.")
    thresholds = _check_thresholds(size_thresholds)
    names = size_bucket_names(thresholds)

    structure = ndi.generate_binary_structure(gt.ndim, connectivity)
    g_lab, n_g = ndi.label(gt, structure)
    p_lab, n_p = ndi.label(pred, structure)
    table = np.bincount((g_lab.astype(np.int64) * (n_p + 1) + p_lab).ravel(), minlength=(n_g + 1) * (n_p + 1))
    table = table.reshape(n_g + 1, n_p + 1)  # [gt label, pred label] pixel counts, label 0 = background
    inter = table[1:, 1:]  # [n_g, n_p]
    g_area, p_area = table[1:].sum(1), table[:, 1:].sum(0)
    union = g_area[:, None] + p_area[None, :] - inter
    iou = inter / np.maximum(union, 1)
    matched = (inter > 0) & (iou >= iou_threshold)  # [n_g, n_p]
    gt_hit, pred_hit = matched.any(1), matched.any(0)

    recall = float(gt_hit.mean()) if n_g else math.nan
    precision = float(pred_hit.mean()) if n_p else math.nan
    out = {"precision": precision, "recall": recall, "f1": _f1(precision, recall), "n_gt": n_g, "n_pred": n_p}

    bucket = np.searchsorted(np.asarray(thresholds), g_area, side="right")  # [lo, hi): area == lo goes up
    for b, name in enumerate(names):
        sel = bucket == b
        g_b = int(g_area[sel].sum())
        touching = (inter[sel] > 0).any(0)  # predicted components overlapping this bucket's objects
        p_b = int(p_area[touching].sum())
        out[f"dice_{name}"] = 2.0 * int(inter[sel].sum()) / (g_b + p_b) if g_b else math.nan
        out[f"recall_{name}"] = float(gt_hit[sel].mean()) if sel.any() else math.nan
        out[f"n_gt_{name}"] = int(sel.sum())
    return out


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(sum(finite) / len(finite)) if finite else math.nan


def evaluate_segmentation(
    y_pred: torch.Tensor,
    y: torch.Tensor,
    include_background: bool = False,
    class_names: Sequence[str] | None = None,
    size_thresholds: Sequence[int] = SIZE_THRESHOLDS,
    iou_threshold: float = 0.5,
    connectivity: int = 1,
    ignore_empty: bool = True,
) -> list[dict[str, float]]:
    """Per-image Dice (per class and per object size) and object detection metrics of one-hot segmentations.

    Args:
        y_pred: predicted one-hot (or binarised) masks ``[B, C, *spatial]``, 2D or 3D.
        y: ground-truth one-hot masks ``[B, C, *spatial]``.
        include_background: evaluate channel 0 too. Defaults to False.
        class_names: one name per channel for the column names; defaults to the channel indices.
        size_thresholds: object-size bucket edges, see :func:`object_metrics`. Defaults to ``(16, 64)``.
        iou_threshold: IoU for an object match, 0 = any overlap. Defaults to 0.5.
        connectivity: component connectivity, see :func:`object_metrics`. Defaults to 1.
        ignore_empty: as in :func:`monai.metrics.compute_dice`: NaN Dice for a class absent from the ground
            truth (else 1 when also absent from the prediction, 0 otherwise). Defaults to True.

    Returns:
        one dict per image: for each evaluated class ``c`` the keys ``dice_c``, ``dice_c_<bucket>``,
        ``precision_c``, ``recall_c``, ``f1_c``, ``recall_c_<bucket>``, ``n_gt_c``, ``n_pred_c``,
        ``n_gt_c_<bucket>``; then the NaN-ignoring means over the classes ``dice``, ``dice_<bucket>``,
        ``precision``, ``recall``, ``f1``.

    Raises:
        ValueError: on different shapes, fewer than 4 or more than 5 dimensions, or a wrong number of names.

    Example:
        >>> y = torch.zeros(1, 2, 8, 8); y[:, 1, 1:3, 1:3] = 1; y[:, 0] = 1 - y[:, 1]
        >>> row = evaluate_segmentation(y, y)[0]
        >>> row["dice"], row["dice_1_lt16"], row["f1_1"]
        (1.0, 1.0, 1.0)
    """
    if y_pred.shape != y.shape:
        raise ValueError(f"y_pred and y must have the same shape, got {tuple(y_pred.shape)} and {tuple(y.shape)}.")
    if y.ndim not in (4, 5):
        raise ValueError(f"expected one-hot masks [B, C, *spatial] with 2 or 3 spatial dims, got {tuple(y.shape)}.")
    n_classes = y.shape[1]
    names = [str(c) for c in range(n_classes)] if class_names is None else [str(n) for n in class_names]
    if len(names) != n_classes:
        raise ValueError(f"class_names has {len(names)} entries for {n_classes} channels.")
    classes = list(range(0 if include_background else 1, n_classes))
    if not classes:
        raise ValueError("no class to evaluate: a single channel needs include_background=True.")
    y_pred, y = y_pred.detach().float().cpu(), y.detach().float().cpu()
    dice = compute_dice(y_pred, y, include_background=True, ignore_empty=ignore_empty)  # [B, C]
    buckets = size_bucket_names(size_thresholds)
    pred_np, gt_np = y_pred.numpy() > 0.5, y.numpy() > 0.5

    rows = []
    for i in range(y.shape[0]):
        row: dict[str, float] = {}
        per_class = []
        for c in classes:
            name = names[c]
            obj = object_metrics(pred_np[i, c], gt_np[i, c], size_thresholds, iou_threshold, connectivity)
            row[f"dice_{name}"] = float(dice[i, c])
            row.update({f"dice_{name}_{b}": obj[f"dice_{b}"] for b in buckets})
            for key in ("precision", "recall", "f1"):
                row[f"{key}_{name}"] = obj[key]
            row.update({f"recall_{name}_{b}": obj[f"recall_{b}"] for b in buckets})
            row[f"n_gt_{name}"], row[f"n_pred_{name}"] = obj["n_gt"], obj["n_pred"]
            row.update({f"n_gt_{name}_{b}": obj[f"n_gt_{b}"] for b in buckets})
            per_class.append(name)
        row["dice"] = _nanmean([row[f"dice_{n}"] for n in per_class])
        for b in buckets:
            row[f"dice_{b}"] = _nanmean([row[f"dice_{n}_{b}"] for n in per_class])
        for key in ("precision", "recall", "f1"):
            row[key] = _nanmean([row[f"{key}_{n}"] for n in per_class])
        rows.append(row)
    return rows


def summarize_metrics(rows: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Mean of each metric over images, ignoring NaN (counts ``n_*`` are summed instead).

    Example:
        >>> summarize_metrics([{"dice": 1.0, "n_gt": 2}, {"dice": float("nan"), "n_gt": 1}, {"dice": 0.5, "n_gt": 0}])
        {'dice': 0.75, 'n_gt': 3}
    """
    keys: dict[str, None] = {}
    for row in rows:
        keys.update(dict.fromkeys(row))
    out: dict[str, float] = {}
    for k in keys:
        values = [float(r[k]) for r in rows if k in r]
        out[k] = int(sum(values)) if k.startswith("n_") else _nanmean(values)
    return out


def write_metrics_csv(
    rows: Sequence[Mapping[str, float]],
    path: str | os.PathLike,
    ids: Sequence[str] | None = None,
    id_column: str = "filename",
) -> str:
    """Write one row per image to a CSV file, atomically (:func:`~maskseg_monai.utils.atomic_write`).

    The header is ``id_column`` followed by the union of the rows' keys in first-seen order; a missing value and
    NaN are written as ``nan``, counts as integers, other numbers with ``repr`` precision, text as it is.

    Args:
        rows: per-image metrics, e.g. from :func:`evaluate_segmentation`.
        path: the CSV file; its folder is created.
        ids: one identifier per row (file names); defaults to the row indices.
        id_column: header of the identifier column. Defaults to ``"filename"``.

    Returns:
        ``str(path)``.

    Raises:
        ValueError: when ``ids`` and ``rows`` differ in length.
    """
    ids = [str(i) for i in range(len(rows))] if ids is None else [str(i) for i in ids]
    if len(ids) != len(rows):
        raise ValueError(f"{path}: {len(ids)} ids for {len(rows)} rows.")
    keys: dict[str, None] = {}
    for row in rows:
        keys.update(dict.fromkeys(row))

    def fmt(v: float | None) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "nan"
        if isinstance(v, str):
            return v
        return str(int(v)) if isinstance(v, (int, np.integer)) else repr(float(v))

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow([id_column, *keys])
            for name, row in zip(ids, rows):
                w.writerow([name, *(fmt(row.get(k)) for k in keys)])

    return atomic_write(path, write)


def small_object_mask(
    label: torch.Tensor, max_area: int, connectivity: int = 1, spatial_dims: int | None = None, dilation: int = 0
) -> torch.Tensor:
    """Pixels of the small objects of a label map: connected components smaller than ``max_area``, optionally
    grown by ``dilation`` pixels.

    Components are found separately for every foreground class (label > 0), so touching objects of
    different classes stay separate; the area of a component is its number of pixels (voxels in 3D).
    Use a threshold fixed in pixels (not tied to a patch size) to compare models of different patch sizes.
    The dilation (MONAI's :func:`~monai.transforms.utils_morphological_ops.dilate`, a square/cube of side
    ``2 * dilation + 1``, within each image) adds the objects' rims, where a reconstruction shows whether it
    drew the object's edge; it is applied after the area test, so it does not change which objects are small.

    Args:
        label: semantic label map ``[B, 1, *spatial]`` or ``[1, *spatial]``, 2 or 3 spatial dims, integer
            class values (float values are rounded), 0 = background.
        max_area: components with fewer than ``max_area`` pixels are small.
        connectivity: neighbourhood of a component, as in :func:`skimage.measure.label`: 1 = pixels sharing a
            face, ``spatial_dims`` = also diagonal neighbours. Defaults to 1.
        spatial_dims: 2 or 3; needed only to tell a batched 2D ``[B, 1, H, W]`` from an unbatched 3D
            ``[1, H, W, D]`` map when ``label.shape[1] == 1`` would be ambiguous. Defaults to ``[B, 1, H, W]``
            for 4D input whose second axis is 1, else ``[1, H, W, D]``.
        dilation: grow the small objects by this many pixels (Chebyshev distance). Defaults to 0 (none).

    Returns:
        float32 tensor shaped like ``label`` on its device, 1 = pixel of a small object.

    Raises:
        ValueError: on a bad shape, a negative label, ``max_area < 1``, a negative ``dilation`` or a connectivity
            outside ``[1, spatial_dims]``.

    Example:
        >>> label = torch.zeros(1, 1, 8, 8)
        >>> label[0, 0, :2, :2] = 1  # 4 px
        >>> label[0, 0, 4:, 4:] = 2  # 16 px
        >>> small_object_mask(label, max_area=5).sum().item()
        4.0
        >>> small_object_mask(label, max_area=5, dilation=1).sum().item()  # the 2x2 square grown to 3x3
        9.0
    """
    if max_area < 1:
        raise ValueError(f"max_area must be at least 1, got {max_area}.")
    if isinstance(dilation, bool) or int(dilation) != dilation or dilation < 0:
        raise ValueError(f"dilation must be a non-negative integer (pixels), got {dilation!r}.")
    if spatial_dims is None:
        spatial_dims = {3: 2, 4: 2 if label.ndim == 4 and label.shape[1] == 1 else 3, 5: 3}.get(label.ndim)
    if spatial_dims not in (2, 3):
        raise ValueError(
            f"label must be [B, 1, *spatial] or [1, *spatial] with 2 or 3 spatial dims, got {tuple(label.shape)}."
        )
    batched = label.ndim == spatial_dims + 2
    if label.ndim not in (spatial_dims + 1, spatial_dims + 2) or label.shape[int(batched)] != 1:
        raise ValueError(
            f"label must be [B, 1, *spatial] or [1, *spatial] with {spatial_dims} spatial dims, "
            f"got {tuple(label.shape)}."
        )
    if not 1 <= connectivity <= spatial_dims:
        raise ValueError(f"connectivity must be in [1, {spatial_dims}], got {connectivity}.")
    classes = np.rint(label.detach().cpu().numpy()).astype(np.int64)
    if classes.size and classes.min() < 0:
        raise ValueError(f"label values must be non-negative class indices, got minimum {classes.min()}.")
    flat = classes.reshape(-1, *classes.shape[-spatial_dims:])  # [N, *spatial], N = images
    # components never cross images: the structure has no neighbours along the image axis
    structure = np.zeros((3,) * (spatial_dims + 1), dtype=bool)
    structure[1] = ndi.generate_binary_structure(spatial_dims, connectivity)
    small = np.zeros(flat.shape, dtype=bool)
    for cls in np.unique(flat[flat > 0]):
        components, _ = ndi.label(flat == cls, structure=structure)
        area = np.bincount(components.ravel())
        is_small = area < max_area
        is_small[0] = False  # pixels outside the class
        small |= is_small[components]
    result = torch.as_tensor(small, dtype=torch.float32)
    if dilation > 0:
        result = dilate(result[:, None], 2 * int(dilation) + 1)[:, 0]
    return result.reshape(label.shape).to(label.device)
