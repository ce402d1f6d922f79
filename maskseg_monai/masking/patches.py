"""Patches of 2D/3D images: the patch grid, ``patchify``/``unpatchify``, pixel <-> patch masks, reconstruction targets.

Tokens ``[B, L, prod(patch_size) * C]`` are in the row-major order of the patch grid (the order of MONAI's
convolutional ``PatchEmbeddingBlock``); values within a patch are ordered ``(*patch, C)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from monai.utils import ensure_tuple_rep

__all__ = ["patch_targets", "grid_size", "patchify", "unpatchify", "patch_mask_to_image", "image_mask_to_patches"]


def grid_size(img_size: Sequence[int], patch_size: Sequence[int] | int) -> tuple[int, ...]:
    """Number of patches along each spatial axis.

    Args:
        img_size: spatial size of the image, one entry per axis.
        patch_size: patch size, an int or one entry per axis.

    Raises:
        ValueError: when a patch is larger than the image or does not divide it.
    """
    img_size = tuple(int(s) for s in img_size)
    patch = ensure_tuple_rep(patch_size, len(img_size))
    for axis, (s, p) in enumerate(zip(img_size, patch)):
        if p < 1 or s < p or s % p:
            raise ValueError(
                f"image size {img_size} is not divisible into patches of {patch} (axis {axis}: {s} vs {p}); "
                "crop or pad the image to a multiple of the patch size."
            )
    return tuple(s // p for s, p in zip(img_size, patch))


def patchify(images: torch.Tensor, patch_size: Sequence[int] | int) -> torch.Tensor:
    """Split images into flattened patches.

    Args:
        images: ``[B, C, *spatial]``, 2 or 3 spatial dims, each divisible by the patch size.
        patch_size: an int or one entry per spatial axis.

    Returns:
        ``[B, L, prod(patch_size) * C]``; values within a patch are ordered ``(*patch, C)``.

    Example:
        >>> x = torch.rand(2, 1, 16, 16)
        >>> patchify(x, 4).shape
        torch.Size([2, 16, 16])
    """
    spatial_dims = images.ndim - 2
    if spatial_dims not in (2, 3):
        raise ValueError(f"images must be [B, C, H, W] or [B, C, H, W, D], got shape {tuple(images.shape)}.")
    patch = ensure_tuple_rep(patch_size, spatial_dims)
    grid = grid_size(images.shape[2:], patch)
    b, c = images.shape[:2]
    # [B, C, g1, p1, g2, p2, ...] -> [B, g1, g2, ..., p1, p2, ..., C]
    x = images.reshape(b, c, *[v for gp in zip(grid, patch) for v in gp])
    perm = [0, *range(2, 2 + 2 * spatial_dims, 2), *range(3, 3 + 2 * spatial_dims, 2), 1]
    x = x.permute(perm)
    return x.reshape(b, math.prod(grid), -1)


def unpatchify(
    patches: torch.Tensor, patch_size: Sequence[int] | int, img_size: Sequence[int], in_channels: int
) -> torch.Tensor:
    """Inverse of :func:`patchify`.

    Args:
        patches: ``[B, L, prod(patch_size) * C]``.
        patch_size: an int or one entry per spatial axis.
        img_size: spatial size of the image to rebuild.
        in_channels: number of image channels ``C``.

    Returns:
        ``[B, C, *img_size]``.
    """
    spatial_dims = len(img_size)
    patch = ensure_tuple_rep(patch_size, spatial_dims)
    grid = grid_size(img_size, patch)
    b, n, d = patches.shape
    expected = (math.prod(grid), math.prod(patch) * in_channels)
    if (n, d) != expected:
        raise ValueError(f"patches of shape {tuple(patches.shape)} do not match [B, {expected[0]}, {expected[1]}].")
    x = patches.reshape(b, *grid, *patch, in_channels)
    # [B, g1, g2, ..., p1, p2, ..., C] -> [B, C, g1, p1, g2, p2, ...]
    perm = [0, 2 * spatial_dims + 1]
    for i in range(spatial_dims):
        perm += [1 + i, 1 + spatial_dims + i]
    return x.permute(perm).reshape(b, in_channels, *img_size)


def patch_mask_to_image(mask: torch.Tensor, patch_size: Sequence[int] | int, img_size: Sequence[int]) -> torch.Tensor:
    """Expand a patch mask ``[B, L]`` to a pixel mask ``[B, 1, *img_size]`` (1 = masked pixel)."""
    patch = ensure_tuple_rep(patch_size, len(img_size))
    tokens = mask[..., None].expand(*mask.shape, math.prod(patch))
    return unpatchify(tokens, patch, img_size, 1)


def image_mask_to_patches(pixel_mask: torch.Tensor, patch_size: Sequence[int] | int) -> torch.Tensor:
    """Patch mask ``[B, L]`` from a pixel mask ``[B, 1, *spatial]`` (a patch is masked if any of its pixels is)."""
    return patchify(pixel_mask, patch_size).amax(dim=-1)


def patch_targets(
    images: torch.Tensor, patch_size: Sequence[int] | int, norm_pix_loss: bool = False, eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reconstruction targets: the image's patches, optionally normalised per patch (MAE's ``norm_pix_loss``).

    Args:
        images: ``[B, C, *spatial]``.
        patch_size: an int or one entry per spatial axis.
        norm_pix_loss: normalise each target patch by its own mean and variance.
        eps: added to the variance.

    Returns:
        targets ``[B, L, P]`` and the per-patch mean and std ``[B, L, 1]`` used (0 and 1 when not normalised),
        so that ``pred * std + mean`` maps a prediction back to intensities.
    """
    target = patchify(images.float(), patch_size)
    if not norm_pix_loss:
        return target, torch.zeros_like(target[..., :1]), torch.ones_like(target[..., :1])
    mean = target.mean(dim=-1, keepdim=True)
    std = (target.var(dim=-1, keepdim=True) + eps).sqrt()
    return (target - mean) / std, mean, std
