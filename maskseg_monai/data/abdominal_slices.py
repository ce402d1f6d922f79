"""The SSL-ALPNet abdominal benchmark's slices: setting 2's training slices without the test classes
(:class:`ExcludedSlicesDataset`) and the slice-wise evaluation episodes (:class:`ProtocolSlices`, with ALPNet's
support slices and query chunks). The protocol itself (folds, settings, datalists) and the command line are in
:mod:`maskseg_monai.data.abdominal`, which re-exports these names (bundle configs use
``maskseg_monai.data.abdominal.ProtocolSlices``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import LoadImage
from torch.utils.data import Dataset

from maskseg_monai.data.abdominal_convert import ABDOMINAL_LABELS

__all__ = ["ExcludedSlicesDataset", "ProtocolSlices", "alpnet_query_chunks", "alpnet_support_slices"]

logger = logging.getLogger("maskseg_monai.data")


def _name(item: Any, key: str, fallback: str) -> str:
    meta = getattr(item.get(key), "meta", None) or {}
    return os.path.basename(str(meta.get("filename_or_obj", fallback)))


_SCHEME = ", ".join(f"{k} {v}" for k, v in ABDOMINAL_LABELS.items() if k)


def _number(v: float) -> int | float:
    return int(v) if float(v).is_integer() else v


def _plain(x: Any) -> torch.Tensor:
    return x.as_tensor() if isinstance(x, MetaTensor) else torch.as_tensor(x)


def _slices_with(label: torch.Tensor, classes: Sequence[int], slice_axis: int = -1) -> torch.Tensor:
    """``[len(classes), D]`` bool: which slices (along ``slice_axis`` of ``[*spatial]``) hold each class."""
    lab = torch.movedim(_plain(label), slice_axis, -1).reshape(-1, label.shape[slice_axis])
    cls = torch.as_tensor(list(classes), dtype=lab.dtype, device=lab.device)
    return (lab[None] == cls[:, None, None]).any(1)


class ExcludedSlicesDataset(Dataset):
    """Setting 2 of SSL-ALPNet: training slices that hold any pixel of the test classes are never drawn.

    Wraps the training dataset of :class:`~maskseg_monai.data.episodes.EpisodeDataset` (``train#cache``): item
    ``i``'s ``label_key`` map (the superpixel pseudo-labels, or the labels themselves) is set to 0 on every slice
    where the ground-truth label file ``items[i]["label"]`` holds a class of ``classes``; a slice without any
    (pseudo-)class never becomes a query or support. The ground truth is read once, at construction.

    Args:
        data: indexable dataset of ``{"image", label_key}`` items, ``label_key`` ``[1, *spatial]``.
        items: the datalist items of ``data``, in the same order, each with a ``"label"`` file.
        classes: the excluded (test) classes.
        slice_axis: the spatial axis of the slices. Defaults to -1 (axial).
        label_key: the key the episodes read. Defaults to ``"label"``.

    Attributes:
        excluded: per item, the ``[n]`` indices of its excluded slices.

    Raises:
        ValueError: ``data`` and ``items`` differ in length (e.g. ``skip_bad_files`` dropped an item), an item has no
            ``"label"``, or a ground-truth label's shape differs from the item's (naming the file).
    """

    def __init__(
        self,
        data: Sequence[dict],
        items: Sequence[dict],
        classes: Sequence[int],
        slice_axis: int = -1,
        label_key: str = "label",
    ) -> None:
        if len(data) != len(items):
            raise ValueError(
                f"the training dataset has {len(data)} items but the datalist {len(items)}; setting 2's slice "
                "exclusion pairs them by position (turn skip_bad_files off)."
            )
        self.data, self.classes = data, tuple(int(c) for c in classes)
        self.slice_axis, self.label_key = slice_axis, label_key
        loader = LoadImage(image_only=True)
        self.excluded: list[torch.Tensor] = []
        self._truth: list[tuple[str, tuple[int, ...]]] = []  # (label file, shape) per item
        for i, item in enumerate(items):
            if "label" not in item:
                raise ValueError(
                    f"{item.get('image', f'item {i}')}: setting 2 needs the label file of every training volume."
                )
            truth = _plain(loader(item["label"]))
            self.excluded.append(torch.nonzero(_slices_with(truth, self.classes, slice_axis).any(0)).flatten())
            self._truth.append((str(item["label"]), tuple(truth.shape)))
        logger.info(
            f"setting 2: {int(sum(e.numel() for e in self.excluded))} training slice(s) holding classes "
            f"{list(self.classes)} excluded from {len(items)} volume(s)"
        )

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> dict:
        item = self.data[index]
        label = item[self.label_key]
        name, shape = self._truth[index]
        if tuple(label.shape[1:]) != shape:
            raise ValueError(f"{name}: ground truth {shape} differs from the training label {tuple(label.shape[1:])}.")
        if self.excluded[index].numel():
            axis = self.slice_axis % (label.ndim - 1) + 1  # the spatial axis in [1, *spatial]
            label.index_fill_(axis, self.excluded[index].to(label.device), 0)
        return item


def alpnet_support_slices(labelled: torch.Tensor, chunks: int = 3) -> torch.Tensor:
    """The support slice of each chunk, as ALPNet's ``get_support``: of the sorted slices holding the class, the
    one at fraction ``1 / (2 chunks) + i (1 - 1 / chunks) / (chunks - 1)`` (``1/6, 1/2, 5/6`` for 3 chunks).

    Args:
        labelled: ``[D]`` bool, which slices of the support hold the class.
        chunks: number of chunks, odd (ALPNet asserts it). Defaults to 3.

    Returns:
        ``[chunks]`` slice indices (int64).

    Raises:
        ValueError: an even ``chunks`` or no labelled slice.
    """
    if int(chunks) < 1 or int(chunks) % 2 == 0:
        raise ValueError(f"chunks must be odd and >= 1 (ALPNet's npart), got {chunks}.")
    z = torch.nonzero(torch.as_tensor(labelled)).flatten()
    if z.numel() == 0:
        raise ValueError("no slice holds the class: the support cannot give a support slice.")
    if chunks == 1:
        pcts = np.array([0.5])
    else:
        half, step = 1 / (chunks * 2), (1.0 - 1.0 / chunks) / (chunks - 1)
        pcts = np.array([half + step * i for i in range(chunks)])
    return z[torch.as_tensor((pcts * z.numel()).astype(np.int64))]


def alpnet_query_chunks(labelled: torch.Tensor, chunks: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunk of every query slice and which slices are scored, as ALPNet's ``ValidationDataset``.

    Args:
        labelled: ``[D]`` bool, which slices of the query hold the class.
        chunks: number of chunks. Defaults to 3.

    Returns:
        ``(chunk [D] int64, scored [D] bool)``: ``chunk = floor((z - zmin) / ((zmax - zmin) / chunks))`` clamped
        to ``0..chunks - 1`` (0 when ``zmin == zmax``), Python's float floor division; ``scored`` is
        ``zmin <= z <= zmax``.

    Raises:
        ValueError: no labelled slice.
    """
    labelled = torch.as_tensor(labelled)
    z = torch.nonzero(labelled).flatten()
    if z.numel() == 0:
        raise ValueError("no slice holds the class: nothing of the query can be scored.")
    zmin, zmax = int(z[0]), int(z[-1])
    depth = np.arange(labelled.numel(), dtype=np.float64)
    if zmax == zmin:
        part = np.zeros(labelled.numel(), dtype=np.int64)
    else:
        part = np.floor_divide(depth - zmin, (zmax - zmin) / chunks).astype(np.int64)
    part = np.clip(part, 0, chunks - 1)
    scored = (depth >= zmin) & (depth <= zmax)
    return torch.as_tensor(part), torch.as_tensor(scored)


class ProtocolSlices(Dataset):
    """The slice episodes of one fold of the SSL-ALPNet protocol (module docstring), for a 2D one-shot network.

    One episode per (query volume, test class, scored slice): the query slice, its binary mask, and the support
    slice of the query slice's chunk with the support's mask. Batches of them go through the bundle's
    ``prepare_batch`` and ``inferer`` like any episode; the per-volume Dice is summed by
    :class:`~maskseg_monai.handlers.abdominal_saver.AbdominalProtocolSaver`.

    Each episode::

        {"image": [C, H, W], "label": [1, H, W] (0/1), "support_image": [1, C, H, W], "support_label": [1, 1, H, W],
         "class": int, "query_name": str, "support_name": str, "z": int, "chunk": int, "support_z": int}

    Args:
        data: indexable preprocessed volumes ``{"image": [C, H, W, D], "label": [1, H, W, D]}``; item
            ``support_index`` is the support, every other item a query. Each item is read once.
        classes: the test classes.
        chunks: chunks per volume (ALPNet: 3).
        support_index: the support's index in ``data``. Defaults to 0.
        num_classes: label values must lie in ``0..num_classes - 1``. Defaults to 5 (the converted scheme).

    Attributes:
        support_picks: ``{class: [chunks] support slice indices}``.
        index: ``[N, 5]`` int64 rows ``(query, class, z, chunk, support_z)``.

    Raises:
        ValueError: a label value outside the scheme, or a test class absent from the support or a query volume
            (each naming the file and the class).
    """

    def __init__(
        self,
        data: Sequence[dict],
        classes: Sequence[int],
        chunks: int = 3,
        support_index: int = 0,
        num_classes: int = len(ABDOMINAL_LABELS),
    ) -> None:
        self.classes = [int(c) for c in classes]
        self.chunks = int(chunks)
        items = [data[i] for i in range(len(data))]
        if not 0 <= support_index < len(items) or len(items) < 2:
            raise ValueError(
                f"need a support and at least one query, got {len(items)} item(s), support {support_index}."
            )
        self.names = [_name(it, "image", f"item {i}") for i, it in enumerate(items)]
        self.images = [_plain(it["image"]).to(torch.float32) for it in items]
        self.labels = []
        for name, item in zip(self.names, items):
            lab = _plain(item["label"])[0]
            found = torch.unique(lab)
            self.labels.append(lab.to(torch.uint8))
            if bool((found < 0).any()) or bool((found >= num_classes).any()) or bool((found != found.round()).any()):
                raise ValueError(
                    f"{_name(item, 'label', name)}: label values {[_number(v) for v in found.tolist()[:10]]} "
                    f"outside the abdominal scheme 0..{num_classes - 1} ({_SCHEME}); convert BTCV or CHAOS labels "
                    "with python -m maskseg_monai.data.abdominal btcv-to-nifti|chaos-to-nifti."
                )
        self.support_index = int(support_index)
        present = [_slices_with(lab, self.classes) for lab in self.labels]  # per volume [n_classes, D]
        support_name = _name(items[support_index], "label", self.names[support_index])
        self.support_picks = {}
        for k, c in enumerate(self.classes):
            if not bool(present[support_index][k].any()):
                raise ValueError(
                    f"{support_name}: the support volume holds no voxel of test class {c} "
                    f"({ABDOMINAL_LABELS.get(c, c)}); one-shot segmentation needs it labelled in the support."
                )
            self.support_picks[c] = alpnet_support_slices(present[support_index][k], self.chunks)
        rows = []
        for k, c in enumerate(self.classes):
            for q in range(len(items)):
                if q == support_index:
                    continue
                if not bool(present[q][k].any()):
                    raise ValueError(
                        f"{_name(items[q], 'label', self.names[q])}: the query volume holds no voxel of test class "
                        f"{c} ({ABDOMINAL_LABELS.get(c, c)}); the protocol scores every class in every query volume."
                    )
                chunk, scored = alpnet_query_chunks(present[q][k], self.chunks)
                z = torch.nonzero(scored).flatten()
                part = chunk[z]
                rows.append(
                    torch.stack(
                        [torch.full_like(z, q), torch.full_like(z, c), z, part, self.support_picks[c][part]], dim=1
                    )
                )
        self.index = torch.cat(rows)

    def __len__(self) -> int:
        return int(self.index.shape[0])

    def __getitem__(self, i: int) -> dict:
        q, c, z, chunk, sz = (int(v) for v in self.index[i])
        s = self.support_index
        return {
            "image": self.images[q][..., z],
            "label": (self.labels[q][..., z] == c)[None].to(torch.float32),
            "support_image": self.images[s][..., sz][None],
            "support_label": (self.labels[s][..., sz] == c)[None, None].to(torch.float32),
            "class": c,
            "query_name": self.names[q],
            "support_name": self.names[s],
            "z": z,
            "chunk": chunk,
            "support_z": sz,
        }
