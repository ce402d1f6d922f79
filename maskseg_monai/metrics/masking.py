"""How well a masking policy hits lesion patches (AMLP's Masked Patch Selection)."""

from __future__ import annotations

import torch

__all__ = ["mps_hit_rates"]


def mps_hit_rates(
    patch_mask: torch.Tensor, lesion_patches: torch.Tensor, category: torch.Tensor | None = None
) -> dict[str, float]:
    """How well a masking policy hits lesion patches (AMLP's Masked Patch Selection), pooled over a set of images.

    - ``mps_hit_rate``: the fraction of masked patches that hold lesion, ``sum(mask * lesion) / sum(mask)``;
    - ``chance_hit_rate``: the fraction of all patches that hold lesion, the expected hit rate of uniformly random
      masking at any ratio;
    - ``category_precision`` / ``category_recall``: of the patches in MPS's lesion category, the fraction that
      hold lesion, and of the lesion patches, the fraction in the category.

    A ratio whose denominator is 0 (no masked patch, no lesion patch, an empty category) is NaN; so are both
    category values without a ``category``.

    Args:
        patch_mask: ``[B, L]`` 1 = masked patch.
        lesion_patches: ``[B, L]`` 1 = the patch holds lesion pixels, e.g.
            :func:`~maskseg_monai.masking.image_mask_to_patches` of a lesion pixel map.
        category: ``[B, L]`` 1 = the patch is in MPS's lesion category, or ``None`` (no MPS).

    Returns:
        ``{"mps_hit_rate", "chance_hit_rate", "category_precision", "category_recall"}`` as floats.

    Raises:
        ValueError: when the shapes differ or are not ``[B, L]``.

    Example:
        >>> mask = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
        >>> lesion = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
        >>> mps_hit_rates(mask, lesion, category=torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
        {'mps_hit_rate': 0.5, 'chance_hit_rate': 0.25, 'category_precision': 1.0, 'category_recall': 1.0}
    """
    tensors = {"patch_mask": patch_mask, "lesion_patches": lesion_patches}
    if category is not None:
        tensors["category"] = category
    for name, t in tensors.items():
        if t.ndim != 2 or t.shape != patch_mask.shape:
            raise ValueError(f"{name} must be [B, L] like patch_mask {tuple(patch_mask.shape)}, got {tuple(t.shape)}.")
    mask, lesion = (patch_mask > 0).double(), (lesion_patches > 0).double()

    def ratio(num: torch.Tensor, den: torch.Tensor) -> float:
        return float(num / den) if float(den) > 0 else float("nan")

    rates = {"mps_hit_rate": ratio((mask * lesion).sum(), mask.sum()), "chance_hit_rate": float(lesion.mean())}
    if category is None:
        return rates | {"category_precision": float("nan"), "category_recall": float("nan")}
    cat = (category > 0).double()
    hits = (cat * lesion).sum()
    return rates | {"category_precision": ratio(hits, cat.sum()), "category_recall": ratio(hits, lesion.sum())}
