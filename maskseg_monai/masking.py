"""Patch masking for masked-image modelling, 2D and 3D, vectorised on the input's device.

Layout conventions (shared by the whole package):

- images ``[B, C, *spatial]`` with ``len(spatial) == spatial_dims``;
- patch tokens ``[B, L, prod(patch_size) * C]``, ``L = prod(spatial // patch_size)``, tokens in the
  row-major order of the patch grid (the order of MONAI's convolutional ``PatchEmbeddingBlock``);
- patch masks ``[B, L]`` with 1 = masked (removed from the encoder), 0 = visible;
- masked-autoencoder outputs ``[B, C + 1 + E, *spatial]``: the reconstruction, the pixel mask, then
  ``E`` optional extra maps (AMLP: lesion logit and MPS category).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from monai.utils import ensure_tuple_rep

__all__ = [
    "PatchMask",
    "grid_size",
    "num_masked_patches",
    "patchify",
    "unpatchify",
    "patch_mask_to_image",
    "generate_patch_mask",
    "mask_from_scores",
    "split_mae_output",
    "merge_mae_output",
    "image_mask_to_patches",
]


class PatchMask(NamedTuple):
    """A per-sample patch mask and the permutation that produced it.

    Attributes:
        mask: ``[B, L]`` float, 1 = masked, 0 = visible.
        ids_keep: ``[B, L_keep]`` indices of visible patches, in grid order.
        ids_restore: ``[B, L]`` permutation that puts ``cat(visible, masked)`` tokens back in grid order.
    """

    mask: torch.Tensor
    ids_keep: torch.Tensor
    ids_restore: torch.Tensor


def _check_ratio(mask_ratio: float) -> None:
    if not 0.0 < float(mask_ratio) < 1.0:
        raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}.")


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


def num_masked_patches(num_patches: int, mask_ratio: float) -> int:
    """How many of ``num_patches`` are masked at ``mask_ratio``: ``L - int(L * (1 - ratio))``, as in MAE.

    At least one patch stays visible and at least one is masked.

    Raises:
        ValueError: when ``mask_ratio`` is outside (0, 1) or fewer than two patches exist.
    """
    _check_ratio(mask_ratio)
    if num_patches < 2:
        raise ValueError(f"masking needs at least 2 patches, got {num_patches}.")
    keep = min(max(int(num_patches * (1.0 - float(mask_ratio))), 1), num_patches - 1)
    return num_patches - keep


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


def split_mae_output(output: torch.Tensor, in_channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a masked-autoencoder output ``[B, C + 1 + E, *spatial]`` into the reconstruction
    ``[B, C, *spatial]`` and the pixel mask ``[B, 1, *spatial]`` (1 = masked); ``E`` extra channels
    (for example AMLP's lesion maps) follow the mask and are ignored here.

    Args:
        output: the network output.
        in_channels: ``C``, the number of image channels.
    """
    if output.ndim not in (4, 5) or output.shape[1] < in_channels + 1:
        raise ValueError(
            f"expected a masked-autoencoder output [B, {in_channels} + 1 (+ extra), *spatial], "
            f"got {tuple(output.shape)}."
        )
    return output[:, :in_channels], output[:, in_channels : in_channels + 1]


def merge_mae_output(
    pred: torch.Tensor, mask: torch.Tensor, patch_size: Sequence[int] | int, img_size: Sequence[int], in_channels: int
) -> torch.Tensor:
    """Masked-autoencoder output ``[B, C + 1, *img_size]`` from predictions ``[B, L, P]`` and a patch mask ``[B, L]``.

    The inverse of :func:`split_mae_output` followed by :func:`patchify` / :func:`image_mask_to_patches`.
    """
    pixel_mask = patch_mask_to_image(mask.to(pred.dtype), patch_size, img_size)
    return torch.cat([unpatchify(pred, patch_size, img_size, in_channels), pixel_mask], dim=1)


def image_mask_to_patches(pixel_mask: torch.Tensor, patch_size: Sequence[int] | int) -> torch.Tensor:
    """Patch mask ``[B, L]`` from a pixel mask ``[B, 1, *spatial]`` (a patch is masked if any of its pixels is)."""
    return patchify(pixel_mask, patch_size).amax(dim=-1)


def generate_patch_mask(
    batch_size: int,
    num_patches: int,
    mask_ratio: float,
    scores: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> PatchMask:
    """Choose, per sample, which patches to mask; the highest scores are masked first.

    Without ``scores`` this is MAE's uniform random masking. With ``scores`` (for example 1 for
    lesion-like patches, 0 for background, plus uniform noise to break ties) the caller decides the
    order: the ``num_masked_patches(L, mask_ratio)`` highest-scoring patches of each sample are masked.
    Every sample masks exactly the same number of patches, so visible tokens stack into one tensor.

    Args:
        batch_size: ``B``.
        num_patches: ``L``.
        mask_ratio: fraction of patches to mask, in (0, 1).
        scores: optional ``[B, L]`` masking priority; higher is masked first.
        generator: optional ``torch.Generator`` (on ``device``) for reproducible masks.
        device: device of the result; defaults to ``scores.device`` or CPU.

    Returns:
        :class:`PatchMask` with ``mask [B, L]``, ``ids_keep [B, L_keep]``, ``ids_restore [B, L]``.

    Raises:
        ValueError: on a ratio outside (0, 1) or scores of the wrong shape.

    Example:
        >>> m = generate_patch_mask(2, 16, 0.75, generator=torch.Generator().manual_seed(0))
        >>> m.mask.sum(1).tolist()
        [12.0, 12.0]
    """
    n_mask = num_masked_patches(num_patches, mask_ratio)
    if scores is None:
        device = torch.device("cpu") if device is None else device
        scores = torch.rand(batch_size, num_patches, device=device, generator=generator)
    else:
        if scores.shape != (batch_size, num_patches):
            raise ValueError(f"scores must have shape [{batch_size}, {num_patches}], got {tuple(scores.shape)}.")
        if device is not None:
            scores = scores.to(device)
    return mask_from_scores(scores, n_mask)


def mask_from_scores(scores: torch.Tensor, num_masked: int) -> PatchMask:
    """Mask the ``num_masked`` highest-scoring patches of each sample (ties: later patches first).

    Args:
        scores: ``[B, L]`` masking priority.
        num_masked: patches to mask per sample, in ``[1, L - 1]``.

    Returns:
        :class:`PatchMask`.
    """
    b, n = scores.shape
    if not 0 < num_masked < n:
        raise ValueError(f"num_masked must be in [1, {n - 1}], got {num_masked}.")
    n_keep = n - num_masked
    # ascending stable sort: the n_keep lowest scores stay visible.
    ids_shuffle = torch.argsort(scores.float(), dim=1, stable=True)
    ids_keep = ids_shuffle[:, :n_keep].sort(dim=1).values
    mask = torch.ones(b, n, device=scores.device)
    mask.scatter_(1, ids_keep, 0.0)
    # ids_restore maps cat(visible in grid order, masked) back to grid order.
    order = torch.cat([ids_keep, ids_shuffle[:, n_keep:]], dim=1)
    return PatchMask(mask=mask, ids_keep=ids_keep, ids_restore=torch.argsort(order, dim=1))
