"""Layers of one-shot segmentation: masked average pooling and cosine-similarity guidance (SG-One).

Zhang, Wei, Yang, Huang, "SG-One: Similarity Guidance Network for One-Shot Semantic Segmentation",
IEEE Trans. Cybernetics 2020 (arXiv 1810.09091).

Layout: features ``[N, C, *spatial]`` and masks ``[N, 1, *spatial]`` with 2 or 3 spatial dims; support sets
carry a shot axis, ``[B, K, C, *spatial]`` and ``[B, K, 1, *spatial]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.utils import look_up_option
from torch import nn

__all__ = [
    "SUPPORTED_MAP_RESIZE",
    "CosineSimilarityGuidance",
    "MaskedAveragePooling",
    "cosine_guidance",
    "masked_average_pooling",
    "resize_to",
]

SUPPORTED_MAP_RESIZE = ("features_to_mask", "mask_to_features")
_INTERP = {2: "bilinear", 3: "trilinear"}


def resize_to(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Images, feature maps or logits ``[B, C, *spatial]`` interpolated to ``size``: bilinear in 2D, trilinear in 3D,
    ``align_corners=False``; ``x`` itself when it has that size already."""
    if tuple(x.shape[2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode=_INTERP[x.ndim - 2], align_corners=False)


def _check_layout(features: torch.Tensor, mask: torch.Tensor) -> None:
    spatial = features.ndim - 2
    if spatial not in (2, 3):
        raise ValueError(f"features must be [N, C, H, W] or [N, C, H, W, D], got shape {tuple(features.shape)}.")
    if mask.ndim != features.ndim or mask.shape[1] != 1 or mask.shape[0] != features.shape[0]:
        raise ValueError(
            f"mask must be [N, 1, *spatial] with the features' N and number of spatial dims, got mask "
            f"{tuple(mask.shape)} for features {tuple(features.shape)}."
        )


def masked_average_pooling(
    features: torch.Tensor,
    mask: torch.Tensor,
    resize: str = "features_to_mask",
    eps: float = 1e-6,
    allow_empty: bool = False,
) -> torch.Tensor:
    """Mean feature vector under a (soft) mask: ``v = sum F * M / sum M`` per item.

    Args:
        features: ``[N, C, *spatial_f]``.
        mask: ``[N, 1, *spatial_m]``, values in [0, 1] (binary or soft).
        resize: how the two grids are matched when they differ. ``"features_to_mask"`` (SG-One's choice, the
            default) up-samples the features (bilinear/trilinear) to the mask, so an object of a few pixels still
            contributes exactly its pixels; ``"mask_to_features"`` area-averages the mask down to the features
            (cheaper on large images; a tiny object becomes a fractional weight rather than vanishing).
        eps: floor of the mask sum in the division.
        allow_empty: give a zero prototype for an empty mask instead of raising (for background prototypes).

    Returns:
        ``[N, C]`` prototypes, in the features' dtype.

    Raises:
        ValueError: on mismatched layouts, or when a mask is empty (a prototype of nothing), naming the items.

    Example:
        >>> f = torch.arange(4.0).reshape(1, 1, 2, 2)
        >>> masked_average_pooling(f, torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]]))
        tensor([[1.5000]])
    """
    _check_layout(features, mask)
    resize = look_up_option(resize, SUPPORTED_MAP_RESIZE)
    mask = mask.to(features.dtype)
    spatial_f, spatial_m = features.shape[2:], mask.shape[2:]
    if spatial_f != spatial_m:
        if resize == "features_to_mask":
            features = resize_to(features, spatial_m)
        else:
            mask = F.adaptive_avg_pool2d(mask, spatial_f) if mask.ndim == 4 else F.adaptive_avg_pool3d(mask, spatial_f)
    dims = tuple(range(2, features.ndim))
    area = mask.sum(dims)  # [N, 1]
    if allow_empty:
        return (features * mask).sum(dims) / area.clamp_min(eps)
    empty = area[:, 0] <= eps
    # one host sync per support set, for a clear error instead of a zero prototype; a graph being exported
    # (torch.export) cannot branch on data, so there the caller checks its support masks (the bundle's load_support)
    if not torch.compiler.is_exporting() and bool(empty.any()):
        items = torch.nonzero(empty).flatten().tolist()
        raise ValueError(
            f"support mask {items} of {mask.shape[0]} is empty (no foreground pixel): masked average pooling needs "
            "at least one labelled pixel in every support mask; check the support label and the class asked for."
        )
    return (features * mask).sum(dims) / area.clamp_min(eps)


class MaskedAveragePooling(nn.Module):
    """Masked average pooling of a support set, averaged over its shots (SG-One, Sec. III-B).

    Args:
        resize: ``"features_to_mask"`` (default) or ``"mask_to_features"``; see :func:`masked_average_pooling`.
        eps: floor of the mask sum in the division.
        allow_empty: zero prototypes for empty masks instead of an error.

    Example:
        >>> pool = MaskedAveragePooling()
        >>> pool(torch.rand(2, 3, 8, 16, 16), torch.ones(2, 3, 1, 32, 32)).shape  # B=2, K=3 shots, C=8
        torch.Size([2, 8])
    """

    def __init__(self, resize: str = "features_to_mask", eps: float = 1e-6, allow_empty: bool = False) -> None:
        super().__init__()
        self.resize = look_up_option(resize, SUPPORTED_MAP_RESIZE)
        self.eps = eps
        self.allow_empty = allow_empty

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Prototype of each support set.

        Args:
            features: ``[B, K, C, *spatial_f]`` (K shots; K = 1 for one shot).
            mask: ``[B, K, 1, *spatial_m]``.

        Returns:
            ``[B, C]``: the mean over shots of each shot's masked average.
        """
        if features.ndim not in (5, 6) or features.ndim != mask.ndim or features.shape[:2] != mask.shape[:2]:
            raise ValueError(
                f"expected features [B, K, C, *spatial] and mask [B, K, 1, *spatial] with the same B and K shots, got "
                f"{tuple(features.shape)} and {tuple(mask.shape)}."
            )
        b, k = features.shape[:2]
        protos = masked_average_pooling(
            features.flatten(0, 1), mask.flatten(0, 1), self.resize, self.eps, self.allow_empty
        )
        return protos.view(b, k, -1).mean(1)


def cosine_guidance(features: torch.Tensor, prototype: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Cosine similarity between every position's feature vector and a prototype.

    Args:
        features: ``[B, C, *spatial]``.
        prototype: ``[B, C]``, or ``[1, C]`` to share one prototype across the batch.
        eps: floor of the norms.

    Returns:
        ``[B, 1, *spatial]`` in [-1, 1]; 1 where the feature is a positive multiple of the prototype.
    """
    if (
        prototype.ndim != 2
        or prototype.shape[1] != features.shape[1]
        or prototype.shape[0] not in (1, features.shape[0])
    ):
        raise ValueError(
            f"prototype must be [B, C] or [1, C] for features {tuple(features.shape)}, got {tuple(prototype.shape)}."
        )
    proto = prototype.to(features.dtype).view(*prototype.shape, *([1] * (features.ndim - 2)))
    return F.cosine_similarity(features, proto, dim=1, eps=eps).unsqueeze(1)


class CosineSimilarityGuidance(nn.Module):
    """Similarity guidance map ``S = cos(F_q(x), v)`` (SG-One, Sec. III-C); see :func:`cosine_guidance`."""

    def __init__(self, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, features: torch.Tensor, prototype: torch.Tensor) -> torch.Tensor:
        """``[B, C, *spatial]`` features and ``[B, C]`` prototype -> ``[B, 1, *spatial]`` guidance."""
        return cosine_guidance(features, prototype, self.eps)
