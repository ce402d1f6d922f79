"""Prototype layers of few-shot segmentation: adaptive local prototype pooling (SSL-ALPNet) and prototype scores.

Ouyang, Biffi, Chen, Kart, Qiu, Rueckert, "Self-Supervision with Superpixels: Training Few-shot Medical Image
Segmentation without Annotation", ECCV 2020 (SSL-ALPNet); Wang, Liew, Zou, Zhou, Feng, "PANet: Few-Shot Image
Semantic Segmentation with Prototype Alignment", ICCV 2019.

A support set gives each class (background, foreground) a padded set of prototypes ``[B, P, C]`` with a validity
mask ``[B, P]`` (:class:`Prototypes`), so that supports with different numbers of prototypes share one tensor. A
query position's score for a class is ``sum_j softmax_j(s_j) * s_j`` over the class's valid prototypes, with
``s_j = scale * cos(F_q, p_j)`` (:func:`prototype_scores`); invalid prototypes get ``-inf`` before the softmax.

Layout: features ``[B, C, *spatial]``, support features ``[B, K, C, *spatial]`` and masks ``[B, K, 1, *spatial]``
(K shots) with 2 or 3 spatial dims.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from monai.utils import ensure_tuple_rep, look_up_option
from torch import nn

from maskseg_monai.networks.blocks.similarity import SUPPORTED_MAP_RESIZE, masked_average_pooling

__all__ = [
    "SUPPORTED_PROTOTYPES",
    "AdaptiveLocalPrototypePooling",
    "Prototypes",
    "global_prototypes",
    "pool_cells",
    "prototype_scores",
]

SUPPORTED_PROTOTYPES = ("global", "local")


class Prototypes(NamedTuple):
    """Padded prototypes of a support set, per class.

    Attributes:
        foreground: ``[B, P_fg, C]``.
        foreground_valid: ``[B, P_fg]`` bool; False marks padding.
        background: ``[B, P_bg, C]``.
        background_valid: ``[B, P_bg]`` bool; all False when the support has no background (the mask covers it).
    """

    foreground: torch.Tensor
    foreground_valid: torch.Tensor
    background: torch.Tensor
    background_valid: torch.Tensor

    def repeat_interleave(self, repeats: int) -> Prototypes:
        """Every item repeated ``repeats`` times along the batch axis (``[B, ...]`` -> ``[B * repeats, ...]``)."""
        return Prototypes(*(t.repeat_interleave(repeats, dim=0) for t in self))


def _check_support(features: torch.Tensor, mask: torch.Tensor) -> None:
    if features.ndim not in (5, 6) or features.ndim != mask.ndim or features.shape[:2] != mask.shape[:2]:
        raise ValueError(
            f"expected features [B, K, C, *spatial] and mask [B, K, 1, *spatial] with the same B and K shots, got "
            f"{tuple(features.shape)} and {tuple(mask.shape)}."
        )
    if mask.shape[2] != 1:
        raise ValueError(f"mask must have one channel, [B, K, 1, *spatial], got {tuple(mask.shape)}.")


def _mask_to_grid(mask: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """A mask ``[N, 1, *spatial_m]`` area-averaged to the feature grid ``size`` (the fraction of each cell covered)."""
    if tuple(mask.shape[2:]) == tuple(size):
        return mask
    pool = F.adaptive_avg_pool2d if mask.ndim == 4 else F.adaptive_avg_pool3d
    return pool(mask, tuple(size))


def pool_cells(
    features: torch.Tensor, mask: torch.Tensor, window: Sequence[int] | int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean feature and mask fraction of each window (cell) of a feature grid: average pooling with stride = window.

    A grid that the window does not divide is padded at the end; a border cell then averages only its positions
    inside the grid.

    Args:
        features: ``[N, C, *spatial]``, 2 or 3 spatial dims.
        mask: ``[N, 1, *spatial]`` in [0, 1], on the features' grid.
        window: cell size in grid positions, an int or one per spatial axis.

    Returns:
        cell features ``[N, n_cells, C]`` and cell mask fractions ``[N, n_cells]`` (cells in row-major order).

    Raises:
        ValueError: on mismatched layouts or a window entry below 1.

    Example:
        >>> f, m = torch.arange(16.0).reshape(1, 1, 4, 4), torch.ones(1, 1, 4, 4)
        >>> cells, frac = pool_cells(f, m, 2)
        >>> cells[0, :, 0], frac
        (tensor([ 2.5000,  4.5000, 10.5000, 12.5000]), tensor([[1., 1., 1., 1.]]))
    """
    d = features.ndim - 2
    if d not in (2, 3) or mask.shape != (features.shape[0], 1, *features.shape[2:]):
        raise ValueError(
            f"expected features [N, C, *spatial] (2 or 3 spatial dims) and mask [N, 1, *spatial] on the same grid, "
            f"got {tuple(features.shape)} and {tuple(mask.shape)}."
        )
    window = tuple(int(w) for w in ensure_tuple_rep(window, d))
    if min(window) < 1:
        raise ValueError(f"window must be >= 1 along every axis, got {window}.")
    window = tuple(min(w, s) for w, s in zip(window, features.shape[2:]))
    pads = [(-s) % w for s, w in zip(features.shape[2:], window)]
    pad = [p for extra in reversed(pads) for p in (0, extra)]  # F.pad takes the last axis first
    inside = features.new_ones((1, 1, *features.shape[2:]))
    pool = F.avg_pool2d if d == 2 else F.avg_pool3d
    if any(pads):
        features, mask, inside = F.pad(features, pad), F.pad(mask, pad), F.pad(inside, pad)
    share = pool(inside, window, window)  # [1, 1, *cells], share of each cell inside the grid
    cells = pool(features, window, window) / share
    frac = pool(mask.to(features.dtype), window, window) / share
    return cells.flatten(2).transpose(1, 2), frac.flatten(1)


def global_prototypes(
    features: torch.Tensor,
    mask: torch.Tensor,
    resize: str = "features_to_mask",
    eps: float = 1e-6,
    allow_empty: bool = False,
) -> Prototypes:
    """SG-One/PANet's global prototypes as :class:`Prototypes`: one foreground and one background prototype per item,
    the masked averages under ``mask`` and ``1 - mask``, averaged over the shots.

    Args:
        features: ``[B, K, C, *spatial_f]``.
        mask: ``[B, K, 1, *spatial_m]``, values in [0, 1].
        resize: grid matching of masked average pooling, see
            :func:`~maskseg_monai.networks.blocks.masked_average_pooling`.
        eps: floor of the mask sums.
        allow_empty: a zero foreground prototype for an empty mask instead of an error.

    Returns:
        :class:`Prototypes` with ``P_fg = P_bg = 1``; the background prototype is invalid when no shot has a
        background pixel.

    Raises:
        ValueError: on mismatched layouts, or when a shot's mask is empty (unless ``allow_empty``).
    """
    _check_support(features, mask)
    b, k = features.shape[:2]
    f, m = features.flatten(0, 1), mask.flatten(0, 1).to(features.dtype)
    fg = masked_average_pooling(f, m, resize, eps, allow_empty).view(b, k, -1).mean(1)
    bg = masked_average_pooling(f, 1.0 - m, resize, eps, allow_empty=True).view(b, k, -1).mean(1)
    has_bg = ((1.0 - m).flatten(1).sum(1) > eps).view(b, k).any(1, keepdim=True)
    fg_valid = (
        torch.ones_like(has_bg) if not allow_empty else (m.flatten(1).sum(1) > eps).view(b, k).any(1, keepdim=True)
    )
    return Prototypes(fg[:, None], fg_valid, bg[:, None], has_bg)


def prototype_scores(
    features: torch.Tensor, prototypes: Prototypes, scale: float = 20.0, eps: float = 1e-8
) -> torch.Tensor:
    """Background and foreground scores of every query position (SSL-ALPNet).

    ``s_j = scale * cos(F_q, p_j)`` for each valid prototype of a class; the class score is
    ``sum_j softmax_j(s_j) * s_j`` (a soft maximum, between the lowest and the highest ``s_j``; with one prototype,
    ``s_1`` itself). Invalid (padding) prototypes get ``-inf`` before the softmax, so a batch with different numbers
    of prototypes per item is one tensor operation. A class with no valid prototype (the background of a support
    whose mask covers everything) scores 0, i.e. cosine 0: the query is then foreground where it is positively
    similar to a foreground prototype.

    Args:
        features: query features ``[B, C, *spatial]``.
        prototypes: :class:`Prototypes` of batch B, or of batch 1 to share one support across the queries.
        scale: the similarity scale (SSL-ALPNet, PANet: 20).
        eps: floor of the norms.

    Returns:
        ``[B, 2, *spatial]``: channel 0 the background score, channel 1 the foreground score, in
        ``[-scale, scale]``.

    Raises:
        ValueError: when the prototypes' width or batch does not fit the features.
    """
    b, c = features.shape[:2]
    q = F.normalize(features, dim=1, eps=eps).flatten(2)  # [B, C, L]
    out = []
    for protos, valid in ((prototypes.background, prototypes.background_valid),
                          (prototypes.foreground, prototypes.foreground_valid)):  # fmt: skip
        if protos.ndim != 3 or protos.shape[2] != c or protos.shape[0] not in (1, b) or valid.shape != protos.shape[:2]:
            raise ValueError(
                f"prototypes must be [B or 1, P, {c}] with a [B or 1, P] validity mask for features "
                f"{tuple(features.shape)}, got {tuple(protos.shape)} and {tuple(valid.shape)}."
            )
        p = F.normalize(protos.to(features.dtype), dim=-1, eps=eps)
        sim = scale * torch.matmul(p, q)  # [B, P, L]
        valid = valid[..., None]
        # -inf on padding; a class without any valid prototype keeps finite (zeroed) scores, so no NaN reaches the
        # softmax or its gradient, and its score is the mean of zeros: 0
        fill = torch.where(valid.any(1, keepdim=True), float("-inf"), 0.0).to(sim.dtype)
        weights = torch.softmax(torch.where(valid, sim, fill), dim=1)
        out.append((weights * torch.where(valid, sim, 0.0)).sum(1))
    return torch.stack(out, 1).view(out[0].shape[0], 2, *features.shape[2:])


class AdaptiveLocalPrototypePooling(nn.Module):
    """Adaptive local prototype pooling (ALP) of SSL-ALPNet (Ouyang et al., ECCV 2020), with its class scores.

    The support's features and mask are average-pooled over windows of ``window`` feature cells (stride =
    window; the mask is first area-averaged to the feature grid). A cell whose mask fraction is at least
    ``threshold`` is a local foreground prototype, one whose background fraction (1 - mask) is at least
    ``threshold`` a local background prototype. The foreground also gets each shot's global masked-average
    prototype (so it always has one); the background falls back to the global masked average of ``1 - mask``
    when no cell of any shot passes, and has no prototype at all when the masks cover every support position (its
    score is then 0, see :func:`prototype_scores`). The prototypes of all K shots are pooled together. No
    parameters: the module only holds its settings.

    Args:
        window: cell size in feature-grid positions, an int or one per spatial axis (SSL-ALPNet: 4 in training,
            2 at test, on a 32 x 32 map). Defaults to 4.
        threshold: least mask fraction of a cell that makes it a prototype, in (0, 1] (SSL-ALPNet: 0.95).
            Defaults to 0.95.
        scale: the similarity scale of :func:`prototype_scores` (SSL-ALPNet: 20). Defaults to 20.
        resize: grid matching of the global prototypes, see
            :func:`~maskseg_monai.networks.blocks.masked_average_pooling`. Defaults to ``"features_to_mask"``.
        eps: floor of the mask sums and norms.
        allow_empty: give an empty support mask a zero, invalid global foreground prototype instead of raising (for
            predicted masks, as in PANet's alignment). Defaults to False.

    Raises:
        ValueError: on a bad ``threshold``, ``scale`` or ``window``.

    Example:
        >>> alp = AdaptiveLocalPrototypePooling(window=2)
        >>> f, m = torch.rand(2, 3, 8, 16, 16), torch.ones(2, 3, 1, 32, 32)  # B=2, K=3 shots, C=8
        >>> m[..., :16, :] = 0
        >>> alp(torch.rand(2, 8, 16, 16), f, m).shape  # background and foreground scores
        torch.Size([2, 2, 16, 16])
    """

    def __init__(
        self,
        window: Sequence[int] | int = 4,
        threshold: float = 0.95,
        scale: float = 20.0,
        resize: str = "features_to_mask",
        eps: float = 1e-6,
        allow_empty: bool = False,
    ) -> None:
        super().__init__()
        if not 0.0 < float(threshold) <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}.")
        if not float(scale) > 0:
            raise ValueError(f"scale must be > 0, got {scale}.")
        sizes = (int(window),) if isinstance(window, int) else tuple(int(w) for w in window)
        if not sizes or len(sizes) > 3 or min(sizes) < 1:
            raise ValueError(f"window must be an int >= 1 or one such int per spatial axis, got {window}.")
        self.window: int | tuple[int, ...] = sizes[0] if len(sizes) == 1 else sizes
        self.threshold = float(threshold)
        self.scale = float(scale)
        self.resize = look_up_option(resize, SUPPORTED_MAP_RESIZE)
        self.eps = eps
        self.allow_empty = allow_empty

    def prototypes(self, features: torch.Tensor, mask: torch.Tensor, allow_empty: bool | None = None) -> Prototypes:
        """Local and global prototypes of a support set.

        Args:
            features: ``[B, K, C, *spatial_f]`` (K shots).
            mask: ``[B, K, 1, *spatial_m]``, values in [0, 1] (binary or soft).
            allow_empty: overrides the constructor's ``allow_empty`` when not None.

        Returns:
            :class:`Prototypes` with ``P_fg = K * (n_cells + 1)`` (each shot's cells, then each shot's global
            prototype) and ``P_bg = K * (n_cells + 1)`` (cells, then the global fallbacks).

        Raises:
            ValueError: on mismatched layouts, a window of the wrong length, or an empty mask (unless allowed),
                naming the (batch x shot) items.
        """
        _check_support(features, mask)
        allow_empty = self.allow_empty if allow_empty is None else allow_empty
        b, k = features.shape[:2]
        f, m = features.flatten(0, 1), mask.flatten(0, 1).to(features.dtype)
        d = f.ndim - 2
        if not isinstance(self.window, int) and len(self.window) != d:
            raise ValueError(f"window {self.window} must have one entry per spatial axis of {d}D features.")
        dims = tuple(range(1, m.ndim))
        fg_area, bg_area = m.sum(dims), (1.0 - m).sum(dims)  # [B * K]
        fg_global = masked_average_pooling(f, m, self.resize, self.eps, allow_empty)  # [B * K, C]
        bg_global = masked_average_pooling(f, 1.0 - m, self.resize, self.eps, allow_empty=True)
        cells, frac = pool_cells(f, _mask_to_grid(m, f.shape[2:]), self.window)  # [B * K, n, C], [B * K, n]
        cells = cells.reshape(b, -1, cells.shape[-1])  # [B, K * n, C]
        fg_local, bg_local = (frac >= self.threshold).view(b, -1), (1.0 - frac >= self.threshold).view(b, -1)
        fg_global_valid = (fg_area > self.eps).view(b, k)
        bg_fallback = (bg_area > self.eps).view(b, k) & ~bg_local.any(1, keepdim=True)
        c = f.shape[1]
        return Prototypes(
            torch.cat([cells, fg_global.view(b, k, c)], 1),
            torch.cat([fg_local, fg_global_valid], 1),
            torch.cat([cells, bg_global.view(b, k, c)], 1),
            torch.cat([bg_local, bg_fallback], 1),
        )

    def scores(self, features: torch.Tensor, prototypes: Prototypes) -> torch.Tensor:
        """``[B, C, *spatial]`` query features -> ``[B, 2, *spatial]`` background/foreground scores
        (:func:`prototype_scores` with this module's ``scale``)."""
        return prototype_scores(features, prototypes, self.scale)

    def forward(self, features: torch.Tensor, support_features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Class scores of query features against a support set's local prototypes.

        Args:
            features: query features ``[B, C, *spatial]``.
            support_features: ``[B or 1, K, C, *spatial_f]``.
            mask: ``[B or 1, K, 1, *spatial_m]``.

        Returns:
            ``[B, 2, *spatial]`` (channel 0 background, channel 1 foreground).
        """
        return self.scores(features, self.prototypes(support_features, mask))
