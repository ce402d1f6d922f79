"""Support-aware baselines of one-shot segmentation: what a trivial rule scores on the same episodes as the model.

A one-shot Dice means little alone: on real images an intensity threshold or the whole body already scores
well. Each baseline here answers an episode ``(query image, support images, support masks)`` with a binary mask
``[B, 1, *spatial]``:

- ``otsu``: Otsu's threshold of the query (``skimage.filters.threshold_otsu``), keeping the side (above or below)
  that, thresholded the same way, best matches the support's mask on the support (so the support decides
  "bright" or "dark" structure);
- ``copy_support``: the support's mask itself, resized (nearest) to the query's grid (the shots' majority);
- ``body``: every pixel of the query's body / tissue mask (a mask the evaluation data provides, e.g. the brain);
- ``all_pixels``: every pixel of the query.

MONAI has no one-shot baselines; Otsu comes from scikit-image, resizing from torch.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["SUPPORTED_ONESHOT_BASELINES", "copy_support_baseline", "otsu_baseline", "oneshot_baselines"]

SUPPORTED_ONESHOT_BASELINES = ("otsu", "copy_support", "body", "all_pixels")


def _otsu_masks(image: np.ndarray) -> tuple[np.ndarray, float]:
    from skimage.filters import threshold_otsu

    if float(image.max()) == float(image.min()):
        return np.zeros(image.shape, bool), float(image.min())
    t = float(threshold_otsu(image))
    return image > t, t


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


def otsu_baseline(query: torch.Tensor, support_image: torch.Tensor, support_mask: torch.Tensor) -> torch.Tensor:
    """Otsu threshold of each query, on the side the support's mask lies on.

    Args:
        query: ``[B, C, *spatial]`` (channels are averaged).
        support_image: ``[B, K, C, *spatial_s]``.
        support_mask: ``[B, K, 1, *spatial_s]`` (0/1).

    Returns:
        ``[B, 1, *spatial]`` float 0/1.
    """
    out = []
    for b in range(query.shape[0]):  # one threshold per image: scikit-image's function is per image
        above_votes = 0.0
        for k in range(support_image.shape[1]):
            s_img = support_image[b, k].float().mean(0).cpu().numpy()
            s_mask = support_mask[b, k, 0].cpu().numpy() > 0
            above, _ = _otsu_masks(s_img)
            above_votes += _dice(above, s_mask) - _dice(~above, s_mask)
        q_above, _ = _otsu_masks(query[b].float().mean(0).cpu().numpy())
        out.append(torch.from_numpy(q_above if above_votes >= 0 else ~q_above))
    return torch.stack(out)[:, None].to(torch.float32)


def copy_support_baseline(query: torch.Tensor, support_mask: torch.Tensor) -> torch.Tensor:
    """The support's mask as the answer, resized (nearest) to the query's grid; K shots vote by majority.

    Args:
        query: ``[B, C, *spatial]``.
        support_mask: ``[B, K, 1, *spatial_s]``.

    Returns:
        ``[B, 1, *spatial]`` float 0/1.
    """
    mask = (support_mask.float().mean(1) >= 0.5).float()  # [B, 1, *spatial_s]
    return F.interpolate(mask, size=tuple(query.shape[2:]), mode="nearest")


def oneshot_baselines(
    names: tuple[str, ...] | list[str],
    query: torch.Tensor,
    support_image: torch.Tensor,
    support_mask: torch.Tensor,
    body: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The masks of the named baselines for a batch of episodes.

    Args:
        names: baselines from ``SUPPORTED_ONESHOT_BASELINES``.
        query, support_image, support_mask: as for :func:`otsu_baseline`.
        body: ``[B, 1, *spatial]`` body/tissue masks, needed for ``"body"``.

    Returns:
        ``{name: [B, 1, *spatial] float 0/1}``.

    Raises:
        ValueError: for an unknown name, or ``"body"`` without ``body``.
    """
    out = {}
    for name in names:
        if name == "otsu":
            out[name] = otsu_baseline(query, support_image, support_mask)
        elif name == "copy_support":
            out[name] = copy_support_baseline(query, support_mask)
        elif name == "all_pixels":
            out[name] = torch.ones(query.shape[0], 1, *query.shape[2:])
        elif name == "body":
            if body is None:
                raise ValueError("baseline 'body' needs a body mask per query (the episodes' 'body' key).")
            out[name] = (torch.as_tensor(body).reshape(query.shape[0], 1, *query.shape[2:]) > 0).float()
        else:
            raise ValueError(f"unknown one-shot baseline {name!r}; choose from {SUPPORTED_ONESHOT_BASELINES}.")
    return out
