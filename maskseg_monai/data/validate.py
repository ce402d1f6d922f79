"""Checking a datalist while caching it: one clear error for a bad file, or skip bad files with a warning."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.data import CacheDataset, Dataset, MetaTensor, PersistentDataset, load_decathlon_datalist
from monai.data.utils import json_hashing
from monai.transforms import Compose
from monai.utils import look_up_option

from maskseg_monai.data.sampling import cache_split
from maskseg_monai.utils import BadInputError, _exception_chain, as_bool, error_summary

__all__ = [
    "FAILED_KEY",
    "SUPPORTED_CACHE_MODES",
    "CheckedCacheDataset",
    "CheckedDataset",
    "CheckedPersistentDataset",
    "SkippingDataset",
    "checked_dataset",
    "datalist_labels",
    "load_datalist",
]

logger = logging.getLogger("maskseg_monai.data")


def _read_datalist_json(path: str | os.PathLike) -> dict:
    """The JSON object of a datalist file, or a :class:`~maskseg_monai.utils.BadInputError` naming the file."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise BadInputError(f"{path}: datalist file not found.") from None
    except json.JSONDecodeError as e:
        raise BadInputError(f"{path}: not valid JSON ({e}).") from None
    except (OSError, UnicodeDecodeError) as e:
        raise BadInputError(f"{path}: cannot read the datalist ({e}).") from None
    if not isinstance(data, dict):
        raise BadInputError(f"{path}: a datalist must be a JSON object, got {type(data).__name__}.")
    return data


def load_datalist(
    path: str | os.PathLike, data_list_key: str = "training", base_dir: str | os.PathLike | None = None
) -> list[dict]:
    """:func:`monai.data.load_decathlon_datalist` (paths resolved against ``base_dir``) with errors that name the
    file: MONAI raises a bare ``JSONDecodeError`` or ``ValueError`` that does not say which datalist is wrong.

    Args:
        path: the datalist JSON file.
        data_list_key: the list to read (``"training"``, ``"validation"``, ``"test"``).
        base_dir: folder the relative paths are resolved against; defaults to the datalist's folder.

    Raises:
        BadInputError: naming ``path``: missing or unreadable file, invalid JSON, no list ``data_list_key``.
    """
    _read_datalist_json(path)
    try:
        return load_decathlon_datalist(str(path), True, data_list_key, base_dir)
    except ValueError as e:
        raise BadInputError(f"{path}: not a usable datalist ({e}).") from None


def datalist_labels(path: str | os.PathLike) -> dict:
    """The ``labels`` table (``{"1": "nucleus", ...}``) of a datalist, ``{}`` when it has none; errors name the file."""
    labels = _read_datalist_json(path).get("labels", {})
    if not isinstance(labels, dict):
        raise BadInputError(f"{path}: 'labels' must be an object mapping label values to names.")
    return labels


def datalist_class_sets(path: str | os.PathLike) -> dict[str, list[int]]:
    """The ``class_sets`` table of a datalist (``{"brain_tissue": [1, 2], ...}``: classes scored together as one
    task by the one-shot evaluation), ``{}`` when it has none; errors name the file."""
    sets = _read_datalist_json(path).get("class_sets", {})
    ok = isinstance(sets, dict) and all(
        isinstance(v, list) and v and all(isinstance(c, int) and not isinstance(c, bool) for c in v)
        for v in sets.values()
    )
    if not ok:
        raise BadInputError(f"{path}: 'class_sets' must map set names to non-empty lists of integer label values.")
    return {str(k): list(v) for k, v in sets.items()}


#: key of an item :class:`SkippingDataset` could not prepare; holds ``"<file>: <problem>"``
FAILED_KEY = "failed"


def _item_message(item: Any, e: Exception) -> str:
    """``"<file>: <problem>"`` of an item whose transforms raised ``e``."""
    message = error_summary(e).removeprefix("error: ")
    if not any(isinstance(x, BadInputError) for x in _exception_chain(e)):
        message = f"{_item_files(item)}: {message}"
    return message


class SkippingDataset(Dataset):
    """Inference ``Dataset`` that, with ``skip_bad_files``, turns an input it cannot prepare into a marked stand-in
    instead of stopping the run, so that a folder of 1,000 studies is processed to the end.

    A failed item comes out as ``{FAILED_KEY: "<file>: <problem>", image_key: zeros(placeholder_shape), ...}``: it
    runs through the network like any item (a tiny tensor; the inferer pads it), and
    :class:`~maskseg_monai.transforms.SaveSegmentationd` writes nothing for it and counts it, then reports
    ``processed N, failed K`` and fails the run when ``K > 0``. Skipping inside the dataset keeps DataLoader workers
    usable: the failure travels with the batch to the main process. MONAI's ``Dataset`` has no such mode.

    Args:
        data: the inference datalist (``[{image_key: path, "name": stem}, ...]``).
        transform: the preprocessing (it loads the files).
        skip_bad_files: mark bad inputs instead of raising; ``"true"``/``"false"`` strings are accepted.
        placeholder_shape: ``[C, *spatial]`` of the stand-in image. Defaults to ``[1, 8, 8]``.
        image_key: the image key. Defaults to ``"image"``.
    """

    def __init__(
        self,
        data: Sequence,
        transform: Callable | None = None,
        skip_bad_files: bool | str = False,
        placeholder_shape: Sequence[int] = (1, 8, 8),
        image_key: str = "image",
    ) -> None:
        super().__init__(data, transform)
        self.skip_bad_files = as_bool(skip_bad_files, "skip_bad_files")
        self.placeholder_shape, self.image_key = tuple(int(v) for v in placeholder_shape), image_key

    def _transform(self, index: int) -> Any:
        try:
            return super()._transform(index)
        except Exception as e:
            if not self.skip_bad_files:
                raise
            item = self.data[index]
            message = _item_message(item, e)
            logger.warning(f"skipping input: {message}")
            placeholder = MetaTensor(torch.zeros(self.placeholder_shape), meta={"filename_or_obj": _item_files(item)})
            return {**item, self.image_key: placeholder, FAILED_KEY: message}


class _BadItem:
    """Placeholder in the cache for an item whose deterministic transforms failed."""

    def __init__(self, message: str) -> None:
        self.message = message


def _item_files(item: Any) -> str:
    """The file names of a datalist item, for messages: ``"a.png, a_label.png"``."""
    if isinstance(item, dict):
        return ", ".join(str(v) for v in item.values() if isinstance(v, (str, os.PathLike)))
    return str(item)


class CheckedCacheDataset(CacheDataset):
    """``CacheDataset`` that names the bad file when an item fails its deterministic transforms, or skips it.

    Every item goes through the deterministic transforms once, while the cache is filled, so the check costs no
    extra loading. Items that fail (missing, truncated or non-image file, wrong shape or channel count, NaN pixels,
    labels outside the class range: whatever the transforms check) either stop the run with one
    :class:`~maskseg_monai.utils.BadInputError` naming the first bad file, or, with ``skip_bad_files``, are dropped
    with a warning naming each file and a summary ``"skipped K of N <name> items"``.

    Only cached items are checked: keep ``cache_rate=1.0`` and ``runtime_cache=False`` (the defaults).

    Args:
        data: the datalist.
        transform: a ``Compose`` of deterministic then random transforms, as for ``CacheDataset``.
        skip_bad_files: skip bad items instead of failing; ``"true"``/``"false"`` strings are accepted (bundle CLI).
        name: what the items are, for messages (``"training"``, ``"validation"``).
        kwargs: other ``CacheDataset`` arguments.

    Raises:
        BadInputError: on the first bad item without ``skip_bad_files``, or when every item is bad.
    """

    def __init__(
        self,
        data: Sequence,
        transform: Sequence[Callable] | Callable | None = None,
        skip_bad_files: bool | str = False,
        name: str = "training",
        **kwargs: Any,
    ) -> None:
        self.skip_bad_files = as_bool(skip_bad_files, "skip_bad_files")
        self.name = name
        self.skipped: list[str] = []
        super().__init__(data, transform, **kwargs)

    def _load_cache_item(self, idx: int) -> Any:
        try:
            return super()._load_cache_item(idx)
        except Exception as e:
            return _BadItem(_item_message(self.data[idx], e))

    def set_data(self, data: Sequence) -> None:
        super().set_data(data)
        keep, self.skipped = _good_items(self._cache, self.skip_bad_files, self.name)
        if self.skipped:
            self.data = [self.data[i] for i in keep] + list(self.data[len(self._cache) :])
            self._cache = [self._cache[i] for i in keep]
            self.cache_num = len(self._cache)


def _good_items(results: Sequence[Any], skip_bad_files: bool, name: str) -> tuple[list[int], list[str]]:
    """``(indices of the good items, messages of the bad ones)`` of checked items (:class:`_BadItem` = bad).

    Raises:
        BadInputError: naming the first bad item, without ``skip_bad_files``; or when every item is bad.
    """
    bad = [i for i, r in enumerate(results) if isinstance(r, _BadItem)]
    if not bad:
        return list(range(len(results))), []
    if not skip_bad_files:
        raise BadInputError(
            f"{results[bad[0]].message} (bad {name} item {bad[0]} of {len(results)}; "
            "--skip_bad_files true skips bad files)"
        )
    skipped = [results[i].message for i in bad]
    for message in skipped:
        logger.warning(f"skipping {name} item: {message}")
    keep = [i for i in range(len(results)) if i not in set(bad)]
    if not keep:
        raise BadInputError(f"all {len(results)} {name} items are bad; the first: {skipped[0]}")
    logger.warning(f"skipped {len(bad)} of {len(results)} {name} items (--skip_bad_files true)")
    return keep, skipped


def _checked_pass(dataset: Dataset, run: Callable[[Any], Any], skip_bad_files: bool, name: str) -> list[str]:
    """Run ``run`` (the deterministic transforms) on every item of ``dataset`` once; drop or report the bad ones."""
    results = []
    for item in dataset.data:
        try:
            run(item)
            results.append(None)
        except Exception as e:
            results.append(_BadItem(_item_message(item, e)))
    keep, skipped = _good_items(results, skip_bad_files, name)
    if skipped:
        dataset.data = [dataset.data[i] for i in keep]
    return skipped


class CheckedPersistentDataset(PersistentDataset):
    """MONAI's ``PersistentDataset`` (deterministic transforms cached on disk under ``cache_dir``), checked as
    :class:`CheckedCacheDataset` checks: every item is prepared once at construction (which fills the disk cache), and
    a bad file stops the run naming it, or is skipped with ``skip_bad_files``. For datalists larger than memory."""

    def __init__(
        self,
        data: Sequence,
        transform: Sequence[Callable] | Callable | None = None,
        cache_dir: str | os.PathLike = "cache",
        skip_bad_files: bool | str = False,
        name: str = "training",
        **kwargs: Any,
    ) -> None:
        super().__init__(data, transform, cache_dir=cache_dir, **kwargs)
        self.skip_bad_files, self.name = as_bool(skip_bad_files, "skip_bad_files"), name
        self.skipped = _checked_pass(self, self._cachecheck, self.skip_bad_files, name)


class CheckedDataset(Dataset):
    """MONAI's ``Dataset`` (every transform on every access, nothing cached), checked as :class:`CheckedCacheDataset`
    checks: the deterministic transforms run once per item at construction (one read of every file, nothing kept),
    and a bad file stops the run naming it, or is skipped with ``skip_bad_files``. For datalists larger than memory
    when disk space for a cache is short too."""

    def __init__(
        self,
        data: Sequence,
        transform: Sequence[Callable] | Callable | None = None,
        skip_bad_files: bool | str = False,
        name: str = "training",
    ) -> None:
        super().__init__(data, transform)
        self.skip_bad_files, self.name = as_bool(skip_bad_files, "skip_bad_files"), name
        deterministic = _deterministic_part(transform)
        self.skipped = _checked_pass(self, deterministic, self.skip_bad_files, name)


def _deterministic_part(transform: Any) -> Callable[[Any], Any]:
    """The part of ``transform`` that ``CacheDataset`` caches (:func:`~maskseg_monai.data.sampling.cache_split`)."""
    if not isinstance(transform, Compose):
        transform = Compose([] if transform is None else transform)
    end = cache_split(transform)
    return lambda item: transform(item, end=end)


#: ``cache_mode`` choices of :func:`checked_dataset`
SUPPORTED_CACHE_MODES = ("memory", "disk", "none")


def checked_dataset(
    data: Sequence,
    transform: Sequence[Callable] | Callable | None = None,
    cache_mode: str = "memory",
    cache_dir: str | os.PathLike = "cache",
    skip_bad_files: bool | str = False,
    name: str = "training",
    **cache_kwargs: Any,
) -> Dataset:
    """The bundles' dataset for ``cache_mode`` (``--cache_mode``), each checking every item as it starts.

    - ``memory``: :class:`CheckedCacheDataset` (MONAI's ``CacheDataset``): the deterministic transforms' results of
      every item in RAM; fastest; needs memory for the whole preprocessed datalist.
    - ``disk``: :class:`CheckedPersistentDataset` (MONAI's ``PersistentDataset``): the same results as files under
      ``cache_dir/<name>``, keyed by the item and the transforms (``hash_transform``), so later runs on the same items
      and transforms reuse them and changed transforms do not; needs disk, not RAM.
    - ``none``: :class:`CheckedDataset` (MONAI's ``Dataset``): every file read and preprocessed at every access;
      needs neither, costs one extra read of every file at start (the check).

    Args:
        data: the datalist.
        transform: deterministic then random transforms.
        cache_mode: ``"memory"``, ``"disk"`` or ``"none"``.
        cache_dir: folder of the ``disk`` cache.
        skip_bad_files: skip bad items with a warning instead of failing.
        name: what the items are, for messages.
        cache_kwargs: ``CacheDataset`` arguments (``cache_rate``, ``copy_cache``, ``num_workers``, ``progress``),
            used by the ``memory`` mode only.

    Raises:
        ValueError: on an unknown ``cache_mode``, naming the choices.
        BadInputError: as :class:`CheckedCacheDataset`.
    """
    try:
        mode = look_up_option(str(cache_mode).lower(), SUPPORTED_CACHE_MODES)
    except ValueError as err:
        raise ValueError(f"cache_mode: {err}") from None
    if mode == "memory":
        return CheckedCacheDataset(data, transform, skip_bad_files=skip_bad_files, name=name, **cache_kwargs)
    if mode == "disk":
        return CheckedPersistentDataset(
            data,
            transform,
            Path(cache_dir) / name,
            skip_bad_files=skip_bad_files,
            name=name,
            hash_transform=json_hashing,
        )
    return CheckedDataset(data, transform, skip_bad_files=skip_bad_files, name=name)
