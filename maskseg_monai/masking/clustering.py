"""Batched k-means on the device: one call clusters the patches of every image in a batch."""

from __future__ import annotations

import torch

__all__ = ["batched_kmeans", "patch_pixel_features"]


def _nearest(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index ``[B, N]`` of each point's nearest centroid: argmin of ``|c|^2 - 2 x.c`` (the squared distance less
    ``|x|^2``, the same for every centroid of a point), one fused ``baddbmm``; about a third of the time of
    ``torch.cdist(x, c).argmin(-1)`` at MPS's sizes (``[32, 64, 192]`` points, 2 centroids, 2 CPU threads)."""
    return torch.baddbmm(centroids.pow(2).sum(-1)[:, None, :], x, centroids.transpose(1, 2), alpha=-2).argmin(-1)


def batched_kmeans(
    features: torch.Tensor, num_clusters: int = 2, num_iters: int = 10
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means run independently on each item of a batch, with no Python loop over items or points.

    Initialisation is deterministic (farthest-point): the first centroid is the point farthest from the
    item's mean, each next one the point farthest from the centroids chosen so far. An empty cluster keeps
    its previous centroid. There is no host-device synchronisation.

    Args:
        features: ``[B, N, D]`` points (for example one feature vector per patch).
        num_clusters: ``K``, at least 1 and at most ``N``.
        num_iters: Lloyd iterations.

    Returns:
        assignments ``[B, N]`` (int64 in ``[0, K)``) and centroids ``[B, K, D]`` (float32).

    Raises:
        ValueError: on a wrong shape or an impossible ``num_clusters``.

    Example:
        >>> x = torch.cat([torch.zeros(1, 5, 2), torch.ones(1, 3, 2) * 10], dim=1)
        >>> assign, _ = batched_kmeans(x, 2)
        >>> assign[0, :5].unique().numel(), assign[0, 5:].unique().numel(), bool(assign[0, 0] != assign[0, 5])
        (1, 1, True)
    """
    if features.ndim != 3:
        raise ValueError(f"features must be [B, N, D], got {tuple(features.shape)}.")
    b, n, d = features.shape
    if not 1 <= num_clusters <= n:
        raise ValueError(f"num_clusters must be in [1, {n}] (the number of points), got {num_clusters}.")
    if num_iters < 0:
        raise ValueError(f"num_iters must be >= 0, got {num_iters}.")
    x = features.float()
    batch = torch.arange(b, device=x.device)
    dist_to_set = (x - x.mean(1, keepdim=True)).pow(2).sum(-1)  # [B, N]
    chosen = []
    for _ in range(num_clusters):  # K is small; this loop is over clusters, not points
        idx = dist_to_set.argmax(1)
        chosen.append(x[batch, idx])
        new_d = (x - chosen[-1][:, None]).pow(2).sum(-1)
        dist_to_set = new_d if len(chosen) == 1 else torch.minimum(dist_to_set, new_d)
    centroids = torch.stack(chosen, 1)  # [B, K, D]
    assign = _nearest(x, centroids)
    for _ in range(num_iters):
        members = x.new_zeros(b, num_clusters, n).scatter_(1, assign[:, None, :], 1.0)  # [B, K, N] one-hot
        counts = members.sum(2, keepdim=True)  # [B, K, 1]
        centroids = torch.where(counts > 0, torch.bmm(members, x) / counts.clamp_min(1), centroids)
        assign = _nearest(x, centroids)
    return assign, centroids


def patch_pixel_features(patches: torch.Tensor, patch_shape: tuple[int, ...], in_channels: int) -> torch.Tensor:
    """Hand-crafted patch features: mean, standard deviation and RMS gradient, centred and scaled per image.

    All three are in intensity units, so one scale per image (the pooled standard deviation) is used rather
    than one per feature: per-feature standardisation would inflate noise-only features to the weight of a
    feature that separates lesions.

    Args:
        patches: ``[B, L, prod(patch_shape) * C]`` (from :func:`~maskseg_monai.masking.patchify`).
        patch_shape: the patch size per spatial axis.
        in_channels: ``C``.

    Returns:
        ``[B, L, 3]`` features with zero mean over each image's patches and unit pooled variance.
    """
    b, n, _ = patches.shape
    p = patches.float().reshape(b, n, *patch_shape, in_channels)
    spatial_axes = tuple(range(2, 2 + len(patch_shape)))
    mean = p.mean(dim=(*spatial_axes, -1))
    std = p.std(dim=(*spatial_axes, -1))
    grad = sum(torch.diff(p, dim=a).pow(2).mean(dim=(*spatial_axes, -1)) for a in spatial_axes if p.shape[a] > 1)
    grad = torch.as_tensor(grad, device=p.device).expand_as(mean).sqrt()
    feats = torch.stack([mean, std, grad], -1)
    feats = feats - feats.mean(1, keepdim=True)
    return feats / feats.pow(2).mean(dim=(1, 2), keepdim=True).sqrt().clamp_min(1e-6)
