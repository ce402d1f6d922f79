"""Random crops of training images: epochs of a fixed number of crops, and crops drawn apart to fit baselines on."""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from monai.data import get_track_meta, set_track_meta
from monai.transforms import Compose, Randomizable, RandomizableTrait, Transform
from torch.utils.data import Dataset, Subset

__all__ = ["cache_split", "repeat_dataset", "sample_crops"]


class _Repeated(Subset):
    """A ``Subset`` of repeated indices whose items are built with MONAI's metadata tracking switched off."""

    def __init__(self, dataset: Dataset, indices: Sequence[int], track_meta: bool) -> None:
        super().__init__(dataset, indices)
        self.track_meta = track_meta

    def __getitem__(self, idx):
        with _meta_tracking(self.track_meta):
            return super().__getitem__(idx)

    def __getitems__(self, indices: list[int]) -> list:
        with _meta_tracking(self.track_meta):
            return super().__getitems__(indices)


@contextlib.contextmanager
def _meta_tracking(on: bool):
    """MONAI's global ``set_track_meta`` for the duration of the block (one process; each worker has its own)."""
    before = get_track_meta()
    set_track_meta(on)
    try:
        yield
    finally:
        set_track_meta(before)


def cache_split(transform: Compose) -> int | None:
    """Index of the first transform of ``transform`` that ``CacheDataset`` does not cache (the first random one or
    non-``Transform``), None when it caches all: ``transform(item, end=cache_split(transform))`` is the cached part."""
    return transform.get_index_of_first(lambda t: isinstance(t, RandomizableTrait) or not isinstance(t, Transform))


def repeat_dataset(dataset: Dataset, min_length: int, track_meta: bool = False) -> Subset:
    """``dataset`` repeated whole until it has at least ``min_length`` items (each item equally often).

    Pretraining draws random crops from a few large images: with three 256x256 images, an epoch of the bare
    dataset is three crops. Repeating the (cached) items makes an epoch ``min_length`` crops long, and each
    repeat draws a fresh random crop because the random transforms run on every ``__getitem__``. A datalist
    that already has ``min_length`` items is used once per epoch, so no image is left out. MONAI's
    ``PatchDataset`` would re-run the crop sampler for every patch it returns; a ``torch`` ``Subset`` of
    repeated indices keeps the cache and works with ``shuffle=True`` and ``DistributedSampler`` alike.

    By default the items are built with MONAI's metadata tracking off (``monai.data.set_track_meta(False)``
    while an item is fetched): the random crop and flips then work on plain tensors. Training needs no
    metadata, and tracking it cost more than the network's step at the main job's sizes on CPU (MetaTensor
    bookkeeping in every transform and in collation: about 250 of 290 ms per batch of 32 on 2 cores).

    Args:
        dataset: a sized dataset (e.g. a ``CacheDataset`` of the deterministic transforms).
        min_length: the least number of items per epoch (e.g. ``steps_per_epoch * batch_size``).
        track_meta: keep MONAI metadata (``MetaTensor``) in the items.

    Raises:
        ValueError: when ``dataset`` is empty or ``min_length`` is not a positive integer.
    """
    n = len(dataset)  # type: ignore[arg-type]
    if n == 0:
        raise ValueError("repeat_dataset: the dataset is empty (no training items).")
    if isinstance(min_length, bool) or not isinstance(min_length, int) or min_length < 1:
        raise ValueError(f"repeat_dataset: min_length must be a positive integer, got {min_length!r}.")
    return _Repeated(dataset, list(range(n)) * math.ceil(min_length / n), track_meta)


def sample_crops(
    datalist: Sequence[Mapping[str, Any]],
    transform: Callable,
    num_crops: int,
    seed: int = 0,
    key: str = "image",
    max_items: int = 16,
) -> torch.Tensor:
    """Crops of training images drawn apart from training, to fit baselines on (``[num_crops, C, *roi]``).

    A deep copy of ``transform`` (the bundle's training preprocessing, random crop included) with its own random
    state from ``seed`` is applied to up to ``max_items`` datalist items spread evenly over the list, cycling over
    them until ``num_crops`` crops are drawn. The training transforms' random state is left untouched, so fitting
    a baseline does not change what the model trains on.

    Args:
        datalist: training items (``{"image": path, ...}``); in the bundles ``@train#dataset.data``, the items
            the checked dataset kept (without the bad files ``--skip_bad_files`` dropped). Each chosen item goes
            through the deterministic transforms once; the random ones run for every crop.
        transform: the training preprocessing; its output's ``key`` must be one fixed-size crop.
        num_crops: how many crops to draw.
        seed: seed of the copy's random state.
        key: the image key.
        max_items: most items loaded.

    Raises:
        ValueError: when ``datalist`` is empty or ``num_crops`` < 1.
    """
    if not datalist:
        raise ValueError("sample_crops: the training datalist is empty.")
    if num_crops < 1:
        raise ValueError(f"sample_crops: num_crops must be >= 1, got {num_crops}.")
    transform = copy.deepcopy(transform)
    if isinstance(transform, Randomizable):
        transform.set_random_state(seed=int(seed))
    step = max(len(datalist) / max_items, 1.0)
    items = [datalist[int(i * step)] for i in range(min(len(datalist), max_items))]
    # the deterministic head (loading, intensity scaling) once per item, the random rest per crop: CacheDataset's
    # split of a Compose (``start``/``end``), so every crop is what transform(item) would give
    if isinstance(transform, Compose):
        first = cache_split(transform)
        loaded = [transform(dict(item), end=first) for item in items]

        def rest(data):
            return data if first is None else transform(data, start=first)
    else:
        loaded, rest = [dict(item) for item in items], transform
    crops = [torch.as_tensor(rest(copy.copy(loaded[i % len(loaded)]))[key]) for i in range(num_crops)]
    return torch.stack([c.float() for c in crops])
