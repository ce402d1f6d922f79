"""Input checks that name the offending file, for the bundles' preprocessing."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

__all__ = ["CheckImaged"]


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
        ValueError: ``"<file>: ..."`` describing the problem.
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
                raise ValueError(
                    f"{name}: expected a {self.spatial_dims}D image ([C, {', '.join('HWD'[: self.spatial_dims])}]) "
                    f"after loading, got shape {shape} ({img.ndim - 1} spatial dims); "
                    f"set --spatial_dims to match the data."
                )
            if self.channels is not None and shape[0] != self.channels:
                raise ValueError(
                    f"{name}: expected {self.channels} channel(s), got {shape[0]} (shape {shape}); "
                    "convert the images or set --in_channels."
                )
            if not bool(torch.isfinite(torch.as_tensor(img)).all()):
                raise ValueError(f"{name}: the image contains NaN or Inf values.")
        return d
