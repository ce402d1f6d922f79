"""Batch preparation for the bundles' ignite engines."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["prepare_image_batch"]


def prepare_image_batch(
    batchdata: dict[str, torch.Tensor],
    device: str | torch.device | None = None,
    non_blocking: bool = False,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``prepare_batch`` for self-supervised reconstruction: the image is both input and target.

    Args:
        batchdata: a batch dictionary with an ``"image"`` entry ``[B, C, *spatial]``.
        device: where to move it.
        non_blocking: asynchronous copy.
        kwargs: further arguments of ``Tensor.to``.

    Raises:
        KeyError: when the batch has no ``"image"``.
    """
    if "image" not in batchdata:
        raise KeyError(f"the batch needs an 'image' entry, got keys {sorted(batchdata)}.")
    image = batchdata["image"].to(device=device, non_blocking=non_blocking, **kwargs)
    return image, image
