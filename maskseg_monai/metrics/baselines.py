"""Reconstruction baselines that need no learning, scored on the same masks as the model.

A masked-reconstruction PSNR means nothing without them (``shared/methods/baselines.md``): Gaussian interpolation
of the visible pixels beats small MAEs at CPU budgets and alone reproduces "smaller patch / smaller ratio
reconstructs better". Three fills of the masked pixels of ``images [B, C, *spatial]`` given the pixel mask
``[B, 1, *spatial]`` (1 = masked):

- ``global_mean``: one constant per channel (the training data's mean);
- ``visible_mean``: each image's mean over its visible pixels, per channel;
- ``gaussian``: normalised convolution ``G_s * (x v) / G_s * v`` with ``v = 1 - mask`` and a Gaussian of sigma
  ``s`` pixels (MONAI's :class:`~monai.networks.layers.GaussianFilter`); choose ``s`` on training images with
  :func:`choose_sigma`, never on the test set. Where no visible pixel lies within reach the visible mean is used.

Every fill keeps the visible pixels as they are, so only the masked pixels differ from the input.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from monai.networks.layers import GaussianFilter
from monai.utils import look_up_option

from maskseg_monai.masking.masks import generate_patch_mask
from maskseg_monai.masking.outputs import split_mae_output
from maskseg_monai.masking.patches import grid_size, patch_mask_to_image
from maskseg_monai.metrics.reconstruction import ReconstructionMetric, reconstruction_metrics, region_psnr

__all__ = [
    "SUPPORTED_FILLS",
    "DEFAULT_SIGMAS",
    "BaselineReconstructionMetric",
    "baseline_fill",
    "choose_sigma",
    "fit_baselines",
    "gaussian_fill",
    "visible_mean_fill",
]

SUPPORTED_FILLS = ("global_mean", "visible_mean", "gaussian")
#: sigma grid (pixels) searched by :func:`choose_sigma`
DEFAULT_SIGMAS: tuple[float, ...] = (1.0, 2.0, 3.0, 4.0, 6.0, 8.0)


def _check(images: torch.Tensor, pixel_mask: torch.Tensor) -> None:
    if images.ndim not in (4, 5) or pixel_mask.shape != (images.shape[0], 1, *images.shape[2:]):
        raise ValueError(
            f"expected images [B, C, *spatial] (2 or 3 spatial dims) and a pixel mask [B, 1, *spatial], got "
            f"{tuple(images.shape)} and {tuple(pixel_mask.shape)}."
        )


def visible_mean_fill(images: torch.Tensor, pixel_mask: torch.Tensor) -> torch.Tensor:
    """Masked pixels filled with their image's mean over visible pixels, per channel; ``[B, C, *spatial]``."""
    _check(images, pixel_mask)
    x, m = images.float(), pixel_mask.float()
    dims = tuple(range(2, x.ndim))
    visible = 1 - m
    mean = (x * visible).sum(dims, keepdim=True) / visible.sum(dims, keepdim=True).clamp_min(1.0)
    return x * visible + mean * m


def gaussian_fill(images: torch.Tensor, pixel_mask: torch.Tensor, sigma: float, eps: float = 1e-6) -> torch.Tensor:
    """Masked pixels filled by Gaussian normalised convolution of the visible pixels; ``[B, C, *spatial]``.

    Args:
        images: ``[B, C, *spatial]``.
        pixel_mask: ``[B, 1, *spatial]``, 1 = masked.
        sigma: Gaussian sigma in pixels (> 0).
        eps: where the smoothed visibility is below ``eps`` (no visible pixel in reach), the visible mean is used.
    """
    _check(images, pixel_mask)
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}.")
    x, m = images.float(), pixel_mask.float()
    visible = 1 - m
    blur = GaussianFilter(x.ndim - 2, float(sigma)).to(x.device)
    b, c = x.shape[:2]
    num = blur((x * visible).reshape(b * c, 1, *x.shape[2:])).reshape(x.shape)
    den = blur(visible)
    filled = torch.where(den > eps, num / den.clamp_min(eps), visible_mean_fill(x, m))
    return x * visible + filled * m


def baseline_fill(
    name: str,
    images: torch.Tensor,
    pixel_mask: torch.Tensor,
    sigma: float | None = None,
    global_mean: float | Sequence[float] | torch.Tensor | None = None,
) -> torch.Tensor:
    """One of :data:`SUPPORTED_FILLS` by name; ``sigma`` for ``"gaussian"``, ``global_mean`` for ``"global_mean"``.

    Raises:
        ValueError: on an unknown name, or a missing ``sigma`` / ``global_mean``.
    """
    name = look_up_option(name, SUPPORTED_FILLS)
    if name == "visible_mean":
        return visible_mean_fill(images, pixel_mask)
    if name == "gaussian":
        if sigma is None:
            raise ValueError("the gaussian fill needs sigma (choose it on training images with choose_sigma).")
        return gaussian_fill(images, pixel_mask, sigma)
    if global_mean is None:
        raise ValueError("the global_mean fill needs the training data's per-channel mean.")
    _check(images, pixel_mask)
    x, m = images.float(), pixel_mask.float()
    mean = torch.as_tensor(global_mean, dtype=x.dtype, device=x.device).reshape(1, -1, *([1] * (x.ndim - 2)))
    return x * (1 - m) + mean.expand_as(x) * m


def choose_sigma(
    images: torch.Tensor, pixel_mask: torch.Tensor, sigmas: Sequence[float] = DEFAULT_SIGMAS, data_range: float = 1.0
) -> float:
    """The sigma of :func:`gaussian_fill` with the best mean masked PSNR on (training) images and masks.

    Args:
        images: ``[B, C, *spatial]`` training images, masked as the model is trained.
        pixel_mask: ``[B, 1, *spatial]``, 1 = masked.
        sigmas: the grid searched. Defaults to :data:`DEFAULT_SIGMAS`.
        data_range: intensity range for PSNR.
    """
    if not sigmas:
        raise ValueError("sigmas is empty.")
    scores = [
        float(region_psnr(gaussian_fill(images, pixel_mask, s), images.float(), pixel_mask, data_range).nanmean())
        for s in sigmas
    ]
    return float(sigmas[max(range(len(sigmas)), key=scores.__getitem__)])


def fit_baselines(
    images: torch.Tensor,
    patch_size: Sequence[int] | int,
    mask_ratio: float,
    seed: int = 0,
    sigmas: Sequence[float] = DEFAULT_SIGMAS,
    data_range: float = 1.0,
) -> dict[str, float | list[float]]:
    """Fit the two baselines that have a parameter on training images: the Gaussian fill's sigma and the global mean.

    ``images`` are masked with uniformly random patch masks of ``patch_size`` at ``mask_ratio`` (drawn from
    ``seed``), as the model's validation masks are; :func:`choose_sigma` picks the sigma on them. The result is
    logged (logger ``maskseg_monai.baselines``), so every run states the baselines it is compared with.

    Args:
        images: ``[N, C, *spatial]`` training crops of the model's input size (e.g.
            :func:`maskseg_monai.data.sample_crops`).
        patch_size: the model's patch size.
        mask_ratio: the validation mask ratio.
        seed: seed of the masks.
        sigmas: the sigma grid. Defaults to :data:`DEFAULT_SIGMAS`.
        data_range: intensity range for PSNR.

    Returns:
        ``{"sigma": float, "global_mean": [one value per channel], "num_images": N}``.
    """
    if images.ndim not in (4, 5) or images.shape[0] == 0:
        raise ValueError(f"fit_baselines needs training images [N, C, *spatial] with N > 0, got {tuple(images.shape)}.")
    spatial = tuple(images.shape[2:])
    generator = torch.Generator().manual_seed(int(seed))
    num_patches = int(torch.tensor(grid_size(spatial, patch_size)).prod())
    mask = generate_patch_mask(images.shape[0], num_patches, mask_ratio, generator=generator).mask
    pixel_mask = patch_mask_to_image(mask, patch_size, spatial).to(images.device)
    sigma = choose_sigma(images, pixel_mask, sigmas, data_range)
    global_mean = images.float().mean(dim=(0, *range(2, images.ndim))).tolist()
    logging.getLogger("maskseg_monai.baselines").info(
        "baselines fitted on %d training crops (patch %s, mask ratio %s): gaussian sigma %s px, global mean %s",
        images.shape[0],
        patch_size,
        mask_ratio,
        sigma,
        [round(v, 4) for v in global_mean],
    )
    return {"sigma": sigma, "global_mean": global_mean, "num_images": int(images.shape[0])}


class BaselineReconstructionMetric(ReconstructionMetric):
    """:class:`~maskseg_monai.metrics.ReconstructionMetric` of a fill that needs no learning, on the network output's
    own masks: the score the model has to beat, computed the same way (PSNR/SSIM over masked pixels or all).

    Args:
        name: one of ``"psnr_masked"``, ``"psnr_all"``, ``"ssim_masked"``, ``"ssim_all"``.
        fill: one of :data:`SUPPORTED_FILLS`.
        sigma: Gaussian sigma (pixels) of the ``"gaussian"`` fill, chosen on training images (:func:`choose_sigma`).
        global_mean: per-channel training mean of the ``"global_mean"`` fill.
        data_range: image intensity range. Defaults to 1.
        reduction: MONAI metric reduction. Defaults to ``"mean"``.
        get_not_nans: also return the count of non-NaN values.

    Raises:
        ValueError: on an unknown ``name`` or ``fill``, or a fill without its parameter.
    """

    def __init__(
        self,
        name: str,
        fill: str,
        sigma: float | None = None,
        global_mean: float | Sequence[float] | None = None,
        data_range: float = 1.0,
        reduction: str = "mean",
        get_not_nans: bool = False,
    ) -> None:
        super().__init__(name, patch_size=1, data_range=data_range, reduction=reduction, get_not_nans=get_not_nans)
        self.fill = look_up_option(fill, SUPPORTED_FILLS)
        if self.fill == "gaussian" and sigma is None or self.fill == "global_mean" and global_mean is None:
            raise ValueError(f"the {self.fill} fill needs {'sigma' if self.fill == 'gaussian' else 'global_mean'}.")
        self.sigma, self.global_mean = sigma, global_mean

    def _compute_metric(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        mask = split_mae_output(y_pred.float(), y.shape[1]).mask
        filled = baseline_fill(self.fill, y, mask, self.sigma, self.global_mean)
        return reconstruction_metrics(filled, y, mask, self.data_range)[self.name][:, None]
