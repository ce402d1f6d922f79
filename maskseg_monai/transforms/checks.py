"""Checked loading: fail early, naming the file, on inputs a bundle cannot use."""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping
from typing import Any

import torch
from monai.config import KeysCollection
from monai.transforms import LoadImaged, MapTransform

from maskseg_monai.utils import BadInputError

__all__ = ["CheckImaged", "CheckLabeld", "CheckedLoadImaged"]


class CheckImaged(MapTransform):
    """Fail early, naming the file, when a loaded image does not fit the network.

    Place it right after ``LoadImaged(..., ensure_channel_first=True)``. It checks the number of spatial
    dimensions (a 2D image given to a 3D bundle), the channel count, and that every value is finite.

    Args:
        keys: keys of the images to check.
        spatial_dims: expected number of spatial dimensions (2 or 3).
        channels: expected channel count; ``None`` skips the check.
        allow_missing_keys: do not fail on absent keys.

    Raises:
        BadInputError: (a ``ValueError``) ``"<file>: ..."`` describing the problem.
    """

    def __init__(
        self, keys: KeysCollection, spatial_dims: int, channels: int | None = None, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        self.spatial_dims = spatial_dims
        self.channels = channels

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            meta = getattr(img, "meta", {})
            name = meta.get("filename_or_obj", f"item '{key}'")
            shape = tuple(img.shape)
            if img.ndim != self.spatial_dims + 1:
                raise BadInputError(
                    f"{name}: expected a {self.spatial_dims}D image ([C, {', '.join('HWD'[: self.spatial_dims])}]) "
                    f"after loading, got shape {shape} ({img.ndim - 1} spatial dims); "
                    f"set --spatial_dims to match the data."
                )
            if self.channels is not None and shape[0] != self.channels:
                raise BadInputError(
                    f"{name}: expected {self.channels} channel(s), got {shape[0]} (shape {shape}); "
                    "convert the images or set --in_channels."
                )
            if not bool(torch.isfinite(torch.as_tensor(img)).all()):
                raise BadInputError(f"{name}: the image contains NaN or Inf values.")
        return d


def _file_name(img: Any, key: Hashable) -> str:
    return getattr(img, "meta", {}).get("filename_or_obj", f"item '{key}'")


class CheckedLoadImaged(LoadImaged):
    """``LoadImaged`` whose failures name the file: a missing file, a truncated or non-image file.

    MONAI's readers raise errors that may not name the file (a truncated ``.nii.gz`` gives
    ``EOFError: Compressed file ended before the end-of-stream marker was reached``); this loader re-raises them as
    ``"<file>: cannot read the image (<reader error>)."``. Takes ``LoadImaged``'s arguments.

    Raises:
        BadInputError: (a ``ValueError``) for a missing or unreadable file.
    """

    def __call__(self, data: Mapping[Hashable, Any], reader: Any = None) -> dict[Hashable, Any]:
        d = dict(data)
        paths = [str(d[key]) for key in self.key_iterator(d)]
        for key, path in zip(self.key_iterator(d), paths):
            if isinstance(d[key], (str, os.PathLike)) and not os.path.exists(path):
                raise BadInputError(f"{path}: no such file (datalist key '{key}').")
        try:
            return super().__call__(d, reader)
        except Exception as e:
            detail = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise BadInputError(f"{', '.join(paths)}: cannot read the image ({type(e).__name__}: {detail}).") from e


class CheckLabeld(MapTransform):
    """Fail early, naming the files, when a label map does not fit its image or the number of classes.

    Place it after the image and the label are loaded (before any padding or cropping). It checks that the label's
    spatial shape equals the image's and that every value is a class index ``0 .. num_classes - 1`` (a mask saved
    as 0/255 fails here rather than deep inside the loss).

    Args:
        keys: keys of the label maps to check.
        num_classes: number of classes (the network's ``out_channels``).
        image_key: key of the image the labels belong to; ``None`` skips the shape check.
        allow_missing_keys: do not fail on absent keys.

    Raises:
        BadInputError: (a ``ValueError``) ``"<file>: ..."`` describing the problem.
    """

    def __init__(
        self,
        keys: KeysCollection,
        num_classes: int,
        image_key: str | None = "image",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}.")
        self.num_classes = int(num_classes)
        self.image_key = image_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            label = d[key]
            name = _file_name(label, key)
            if self.image_key is not None and self.image_key in d:
                image = d[self.image_key]
                if tuple(image.shape[1:]) != tuple(label.shape[1:]):
                    raise BadInputError(
                        f"{_file_name(image, self.image_key)}, {name}: image and label shapes differ "
                        f"(spatial {tuple(image.shape[1:])} vs {tuple(label.shape[1:])})."
                    )
            values = torch.unique(torch.as_tensor(label).as_subclass(torch.Tensor)).double()
            bad = values[(values < 0) | (values >= self.num_classes) | (values != torch.round(values))]
            if bad.numel():
                found = [int(v) if v == round(v) else v for v in values[:10].tolist()]
                raise BadInputError(
                    f"{name}: label values {found}{' ...' if values.numel() > 10 else ''} outside the class range "
                    f"0..{self.num_classes - 1} (out_channels={self.num_classes}); map the labels to class indices."
                )
        return d
