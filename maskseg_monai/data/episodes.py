"""Episodes of one-shot segmentation: (support, query) pairs of one class, from labels or from superpixels.

An episode is a dictionary::

    {"image": query [C, *spatial], "label": query mask [1, *spatial] (0/1),
     "support_image": [K, C, *spatial_s], "support_label": [K, 1, *spatial_s] (0/1), "class": int,
     "label_objects": [1, *spatial] (0/1, every labelled object of the query, of any class)}

``label_objects`` (only without a ``transform``, i.e. for evaluation episodes) is the class-agnostic answer a
network that ignores the support could at best give; the evaluation reports its Dice as a baseline. Evaluation
episodes also carry ``query_name`` and ``support_name`` (file name, ``:slice`` for a slice; shots joined by
``;``) and the query's ``extra_keys`` (e.g. a body mask for the ``body`` baseline), sliced like the label.

``class`` is the label value the episode segments. With ``pairing="class"`` (labelled data, as in SG-One and
PANet) support and query are different images (or slices) that both contain the class, and the class is drawn
from ``classes``; split the classes into folds so that evaluation uses classes never trained on. With
``pairing="image"`` (annotation-free, as SSL-ALPNet) the label map holds pseudo-classes, e.g. superpixels from
:class:`~maskseg_monai.transforms.SuperpixelLabeld`: one pseudo-class of one image is the target and support
and query are two independently augmented views of that image.

3D volumes can be used whole (``slice_axis=None``, volume episodes for slice-wise inference) or as 2D slices
(``slice_axis=-1``): then every slice holding at least ``min_pixels`` of a class can be a support or query.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import LoadImage, Randomizable
from monai.utils import look_up_option
from torch.utils.data import Dataset

__all__ = ["EpisodeDataset", "SUPPORTED_PAIRINGS", "first_item_with_class", "items_with_class", "load_support"]

SUPPORTED_PAIRINGS = ("class", "image")


_TRIES = 20


def _plain(x: Any) -> torch.Tensor:
    """A plain tensor (MetaTensor metadata is not carried into episodes)."""
    return x.as_tensor() if isinstance(x, MetaTensor) else torch.as_tensor(x)


def _label_name(item: dict, key: str, index: int) -> str:
    meta = getattr(item.get(key), "meta", {}) or {}
    return str(meta.get("filename_or_obj", f"item {index}"))


class EpisodeDataset(Randomizable, Dataset):
    """Draw one-shot episodes from a dataset of ``{"image", "label"}`` items (see the module docstring).

    The items are read once at construction to index which classes each image (or slice) holds; wrap a
    ``CacheDataset`` of the deterministic loading transforms so that this and every episode reuse the cache.

    Args:
        data: indexable dataset whose items have ``image`` ``[C, *spatial]`` and ``label`` ``[1, *spatial]``
            (integer class values) tensors.
        classes: label values to draw episodes from; ``None`` means every non-zero value present. With
            ``pairing="image"`` they are ignored (every pseudo-class counts).
        num_episodes: length of the dataset (episodes per epoch).
        shots: support images per episode, K >= 1.
        pairing: ``"class"`` (support and query are different images of one class) or ``"image"`` (two views of
            one image and one pseudo-class).
        slice_axis: for 3D items, the axis (of the spatial axes, e.g. -1) along which 2D slices are taken; ``None``
            keeps whole images/volumes.
        min_pixels: least pixels (voxels) of a class for an image or slice to hold it.
        transform: applied separately to the query and to each support, on ``{"image", "label"}`` dicts (random
            crops, flips, intensity jitter); with K > 1 or batches > 1 it must give a fixed size. A transform that
            returns a list (``RandCropByPosNegLabeld(num_samples=1)``) contributes its first sample.
        seed: seed of the episode draws (and of ``transform``).
        fixed: when True episode ``i`` is the same every time it is read (evaluation over a fixed set of random
            support choices); when False every read draws a new episode (training).
        image_key: key of the images. Defaults to ``"image"``.
        label_key: key of the labels. Defaults to ``"label"``.
        extra_keys: further ``[1, *spatial]`` keys of the query items put into evaluation episodes (no
            ``transform``), sliced like the label, e.g. ``("body",)``.

    Raises:
        ValueError: when no image holds a requested class (naming it), a class has a single image in ``"class"``
            pairing, or a label is not ``[1, *spatial]``.
    """

    def __init__(
        self,
        data: Sequence[dict],
        classes: Sequence[int] | None = None,
        num_episodes: int = 100,
        shots: int = 1,
        pairing: str = "class",
        slice_axis: int | None = None,
        min_pixels: int = 1,
        transform: Callable | None = None,
        seed: int = 0,
        fixed: bool = False,
        image_key: str = "image",
        label_key: str = "label",
        extra_keys: Sequence[str] = (),
    ) -> None:
        self.pairing = look_up_option(pairing, SUPPORTED_PAIRINGS)
        if int(shots) < 1:
            raise ValueError(f"shots must be >= 1, got {shots}.")
        if int(num_episodes) < 1:
            raise ValueError(f"num_episodes must be >= 1, got {num_episodes}.")
        self.data = data
        self.num_episodes = int(num_episodes)
        self.shots = int(shots)
        self.slice_axis = slice_axis
        self.min_pixels = int(min_pixels)
        self.transform = transform
        self.seed = int(seed)
        self.fixed = bool(fixed)
        self.image_key, self.label_key = image_key, label_key
        self.extra_keys = tuple(extra_keys)
        self.set_random_state(seed=self.seed)
        self.entries, self.by_class = self._index()
        wanted = sorted(self.by_class) if classes is None or self.pairing == "image" else [int(c) for c in classes]
        for c in wanted:
            if c not in self.by_class:
                raise ValueError(
                    f"no image holds class {c} with at least {min_pixels} pixel(s); classes present: "
                    f"{sorted(self.by_class)}."
                )
            if self.pairing == "class" and len(self.by_class[c]) < 2:
                raise ValueError(f"class {c} is in a single image or slice; a one-shot episode needs two.")
        if not wanted:
            raise ValueError("the labels hold no foreground class to draw episodes from.")
        self.classes = wanted

    def _index(self) -> tuple[list[tuple[int, int | None]], dict[int, list[int]]]:
        """Entries (item, slice) and, per class, the entries holding it."""
        entries: list[tuple[int, int | None]] = []
        by_class: dict[int, list[int]] = {}
        for i in range(len(self.data)):
            item = self.data[i]
            label = torch.as_tensor(item[self.label_key])
            if label.ndim < 3 or label.shape[0] != 1:
                raise ValueError(
                    f"{_label_name(item, self.label_key, i)}: label must be [1, *spatial], got {tuple(label.shape)}."
                )
            lab = label[0].long()
            if self.slice_axis is None:
                values, counts = torch.unique(lab, return_counts=True)
                present = {int(v): [None] for v, n in zip(values, counts) if v > 0 and n >= self.min_pixels}
            else:
                lab = torch.movedim(lab, self.slice_axis, 0)  # [S, ...]
                n_slices = lab.shape[0]
                n_cls = int(lab.max()) + 1
                key = lab.flatten(1) + n_cls * torch.arange(n_slices)[:, None]
                counts = torch.bincount(key.flatten(), minlength=n_cls * n_slices).view(n_slices, n_cls)
                present = {}
                for s, c in torch.nonzero(counts[:, 1:] >= self.min_pixels).tolist():
                    present.setdefault(c + 1, []).append(s)
            slots: dict[int | None, int] = {}
            for c, slices in present.items():
                for s in slices:
                    if s not in slots:
                        slots[s] = len(entries)
                        entries.append((i, s))
                    by_class.setdefault(c, []).append(slots[s])
        return entries, by_class

    def __len__(self) -> int:
        return self.num_episodes

    def randomize(self, data: Any = None) -> None:
        """Not used: draws happen in :meth:`__getitem__` with the episode's generator."""

    def _view(self, entry: int, cls: int, rng: np.random.RandomState, support: bool) -> dict:
        i, s = self.entries[entry]
        item = self.data[i]
        image, label = _plain(item[self.image_key]), _plain(item[self.label_key])
        if s is not None:
            axis = self.slice_axis % (label.ndim - 1) + 1  # the spatial axis in [C, *spatial]
            image, label = image.select(axis, s), label.select(axis, s)
        view = {self.image_key: image, self.label_key: (label == cls).to(torch.float32)}
        if self.transform is None:
            view[f"{self.label_key}_objects"] = (label > 0).to(torch.float32)
            name = os.path.basename(_label_name(item, self.image_key, i))
            view["name"] = name if s is None else f"{name}:{s}"
            for key in self.extra_keys:
                if key not in item:
                    raise KeyError(f"{_label_name(item, self.image_key, i)}: the item has no '{key}' (extra_keys).")
                extra = _plain(item[key])
                view[key] = (extra if s is None else extra.select(axis, s)).to(torch.float32)
            return view
        for _ in range(_TRIES):  # a random crop may miss a small object; a support must keep some of it
            if hasattr(self.transform, "set_random_state"):
                self.transform.set_random_state(seed=int(rng.randint(2**31)))
            out = self.transform(dict(view))
            if isinstance(out, list):  # cropping transforms with num_samples return a list: use the first
                out = out[0]
            if not support or bool(torch.as_tensor(out[self.label_key]).any()):
                return out
        raise ValueError(
            f"{_label_name(item, self.label_key, i)}: class {cls} vanished from the support in {_TRIES} draws of the "
            "transform; use a crop that keeps foreground (e.g. RandCropByPosNegLabeld) or a larger roi."
        )

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.num_episodes:
            raise IndexError(f"episode {index} out of range [0, {self.num_episodes}).")
        rng = np.random.RandomState([self.seed, index]) if self.fixed else self.R
        cls = int(self.classes[rng.randint(len(self.classes))])
        pool = self.by_class[cls]
        if self.pairing == "image":  # two views of one image
            query = int(pool[rng.randint(len(pool))])
            support = [query] * self.shots
        else:  # different images where possible, else different slices
            query = int(pool[rng.randint(len(pool))])
            others = [e for e in pool if self.entries[e][0] != self.entries[query][0]] or [
                e for e in pool if e != query
            ]
            support = [int(others[j]) for j in rng.choice(len(others), self.shots, replace=len(others) < self.shots)]
        q = self._view(query, cls, rng, support=False)
        supports = [self._view(e, cls, rng, support=True) for e in support]
        return {
            self.image_key: q[self.image_key],
            self.label_key: q[self.label_key],
            f"support_{self.image_key}": torch.stack([torch.as_tensor(v[self.image_key]) for v in supports]),
            f"support_{self.label_key}": torch.stack([torch.as_tensor(v[self.label_key]) for v in supports]),
            "class": cls,
            **(self._evaluation_keys(q, supports) if self.transform is None else {}),
        }

    def _evaluation_keys(self, query: dict, supports: list[dict]) -> dict:
        return {
            f"{self.label_key}_objects": query[f"{self.label_key}_objects"],
            "query_name": query["name"],
            "support_name": ";".join(v["name"] for v in supports),
            **{key: query[key] for key in self.extra_keys},
        }


def load_support(
    image: str | os.PathLike,
    label: str | os.PathLike,
    transform: Callable[[dict], dict],
    support_class: int | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load the annotated example of one-shot inference: its image, preprocessed like the queries, and its mask.

    Args:
        image: support image file (or DICOM series folder, if ``transform`` loads those).
        label: its label file (PNG, NIfTI, ...), on the image's grid.
        transform: the queries' preprocessing, applied to ``{"image": image}`` (it loads the file).
        support_class: label value to segment; ``None``, ``0`` or ``""`` take every non-zero value as foreground.

    Returns:
        ``(image [C, *spatial], mask [1, *spatial])`` float32 plain tensors; the mask is 0/1.

    Raises:
        FileNotFoundError: a file is missing.
        ValueError: the label is not one channel, its grid differs from the image's, it holds no pixel of
            the class (naming the file and the values it does hold), or no background pixel.
    """
    for what, path in (("support_image", image), ("support_label", label)):
        if not path or not os.path.exists(path):
            raise FileNotFoundError(f"{what} {str(path)!r} does not exist.")
    img = _plain(transform({"image": str(image)})["image"]).to(torch.float32)
    lab = _plain(LoadImage(image_only=True, ensure_channel_first=True)(str(label)))
    if lab.shape[0] != 1:
        raise ValueError(f"{label}: a support label must have one channel, got shape {tuple(lab.shape)}.")
    if lab.shape[1:] != img.shape[1:]:
        raise ValueError(
            f"{label}: label grid {tuple(lab.shape[1:])} differs from the support image {image} grid "
            f"{tuple(img.shape[1:])}; the label must be drawn on the image's pixels."
        )
    cls = None if support_class in (None, "", 0, "0") else int(support_class)
    mask = (lab > 0) if cls is None else (lab == cls)
    if not bool(mask.any()):
        values = torch.unique(lab).tolist()
        what = "no foreground pixel" if cls is None else f"no pixel of class {cls}"
        raise ValueError(
            f"{label}: the support label holds {what} (values present: {values[:20]}); one-shot segmentation "
            "needs at least one annotated pixel."
        )
    if bool(mask.all()):
        raise ValueError(
            f"{label}: the support mask covers the whole image ({mask.numel()} pixels, no background); one-shot "
            "segmentation needs background pixels to tell the object from. Check the label file and --support_class."
        )
    return img, mask.to(torch.float32)


def items_with_class(items: Sequence[dict], cls: int, label_key: str = "label") -> list[dict]:
    """The datalist items whose label file holds ``cls``, in order (the demo's support and queries).

    Raises:
        ValueError: when no item holds the class.
    """
    loader = LoadImage(image_only=True)
    found = [item for item in items if bool((torch.as_tensor(loader(item[label_key])) == int(cls)).any())]
    if not found:
        raise ValueError(f"no item of the datalist ({len(items)} items) holds class {cls} in '{label_key}'.")
    return found


def first_item_with_class(items: Sequence[dict], cls: int, label_key: str = "label") -> dict:
    """The first datalist item whose label file holds ``cls`` (to pick a demo support).

    Raises:
        ValueError: when no item holds the class.
    """
    return items_with_class(items, cls, label_key)[0]
