"""Per-sample patch masks, vectorised on the device: ``[B, L]`` with 1 = masked (removed from the encoder)."""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["PatchMask", "num_masked_patches", "generate_patch_mask", "mask_from_scores"]


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
