"""Reconstruction quality of a masked autoencoder: PSNR and SSIM over masked pixels and over the whole image."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.metrics import PSNRMetric
from monai.metrics.regression import RegressionMetric, compute_ssim_and_cs
from monai.utils import MetricReduction, ensure_tuple_rep

from maskseg_monai.masking.outputs import split_mae_output
from maskseg_monai.masking.patches import patch_targets, patchify, unpatchify
from maskseg_monai.utils import as_bool

__all__ = [
    "reconstruct_image",
    "reconstruction_metrics",
    "region_psnr",
    "ReconstructionMetric",
    "RECONSTRUCTION_METRICS",
]

RECONSTRUCTION_METRICS = ("psnr_masked", "psnr_all", "ssim_masked", "ssim_all")


def reconstruct_image(
    output: torch.Tensor,
    images: torch.Tensor,
    patch_size: Sequence[int] | int,
    norm_pix_loss: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images from a masked-autoencoder output.

    Args:
        output: ``[B, C + 1 (+ extra), *spatial]`` network output (prediction, then pixel mask).
        images: ``[B, C, *spatial]`` the inputs (needed to undo ``norm_pix_loss`` and to paste visible patches).
        patch_size: the network's patch size.
        norm_pix_loss: whether the prediction is in per-patch normalised units.

    Returns:
        ``recon [B, C, *spatial]`` (the raw prediction everywhere, in intensities), ``pasted`` (the input
        where visible, the prediction where masked) and the pixel mask ``[B, 1, *spatial]``, all float32.
    """
    pred, pixel_mask, _ = split_mae_output(output.float(), images.shape[1])
    if pred.shape != images.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and images {tuple(images.shape)} differ in shape.")
    recon = pred
    if norm_pix_loss:
        _, mean, std = patch_targets(images, patch_size, True)
        recon = unpatchify(patchify(pred, patch_size) * std + mean, patch_size, images.shape[2:], images.shape[1])
    pasted = images.float() * (1 - pixel_mask) + recon * pixel_mask
    return recon, pasted, pixel_mask


def _masked_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    dims = tuple(range(1, values.ndim))
    weights = weights.expand_as(values)
    return (values * weights).sum(dims) / weights.sum(dims).clamp_min(1e-8)


def reconstruction_metrics(
    recon: torch.Tensor,
    images: torch.Tensor,
    pixel_mask: torch.Tensor,
    data_range: float = 1.0,
    ssim_kernel_size: int = 7,
) -> dict[str, torch.Tensor]:
    """PSNR and SSIM of a reconstruction, over the masked pixels and over the whole image, per sample.

    Whole-image values are MONAI's :class:`~monai.metrics.PSNRMetric` and the Gaussian SSIM of
    :func:`monai.metrics.regression.compute_ssim_and_cs`; the masked values use the same definitions
    restricted to masked pixels (the MSE over masked pixels; the SSIM map averaged over masked
    pixels of its valid region).

    Args:
        recon: ``[B, C, *spatial]`` reconstruction (the raw prediction, not pasted).
        images: ``[B, C, *spatial]`` originals.
        pixel_mask: ``[B, 1, *spatial]`` 1 = masked pixel.
        data_range: intensity range of the images. Defaults to 1.
        ssim_kernel_size: Gaussian window of SSIM (shrunk to fit small images). Defaults to 7.

    Returns:
        ``{"psnr_masked", "psnr_all", "ssim_masked", "ssim_all"}``, each ``[B]``.
    """
    recon, images, pixel_mask = recon.float(), images.float(), pixel_mask.float()
    spatial_dims = images.ndim - 2
    psnr_all = PSNRMetric(max_val=data_range, reduction="none")(recon, images).reshape(-1)
    mse_masked = _masked_mean((recon - images).pow(2), pixel_mask)
    psnr_masked = 10 * torch.log10(data_range**2 / mse_masked.clamp_min(1e-12))

    k = min(ssim_kernel_size, *images.shape[2:])
    k -= 1 - k % 2  # odd window
    ssim_map, _ = compute_ssim_and_cs(
        recon,
        images,
        spatial_dims,
        kernel_size=ensure_tuple_rep(k, spatial_dims),
        kernel_sigma=ensure_tuple_rep(1.5, spatial_dims),
        data_range=data_range,
        kernel_type="gaussian",
    )
    # the valid SSIM map holds the windows centred on the image's inner pixels
    r = k // 2
    centre_mask = pixel_mask[(slice(None), slice(None), *[slice(r, s - r) for s in images.shape[2:]])]
    ssim_all = ssim_map.flatten(1).mean(1)
    ssim_masked = _masked_mean(ssim_map.mean(1, keepdim=True), centre_mask)
    return {"psnr_masked": psnr_masked, "psnr_all": psnr_all, "ssim_masked": ssim_masked, "ssim_all": ssim_all}


def region_psnr(
    recon: torch.Tensor, images: torch.Tensor, region: torch.Tensor, data_range: float = 1.0
) -> torch.Tensor:
    """PSNR of a reconstruction over the pixels of a region, per sample.

    The mean squared error is taken over the region's pixels (and all channels), as
    :func:`reconstruction_metrics` does for the masked pixels; restrict to masked pixels inside an object by
    passing ``pixel_mask * object_mask``.

    Args:
        recon: ``[B, C, *spatial]`` reconstruction.
        images: ``[B, C, *spatial]`` originals.
        region: ``[B, 1, *spatial]`` 1 = pixel counted, 0 = ignored (a bool or 0/1 float tensor).
        data_range: intensity range of the images. Defaults to 1.

    Returns:
        ``[B]`` float32 PSNR in dB; NaN for a sample whose region is empty.

    Raises:
        ValueError: when the shapes do not match or ``data_range`` is not positive.

    Example:
        >>> img = torch.zeros(2, 1, 4, 4)
        >>> region = torch.zeros(2, 1, 4, 4)
        >>> region[0, :, :2] = 1
        >>> region_psnr(img + 0.1, img, region).tolist()  # second sample: empty region
        [20.0, nan]
    """
    if recon.shape != images.shape or recon.ndim not in (4, 5):
        raise ValueError(
            f"recon and images must both be [B, C, *spatial] with 2 or 3 spatial dims, got "
            f"{tuple(recon.shape)} and {tuple(images.shape)}."
        )
    if region.ndim != images.ndim or region.shape[0] != images.shape[0] or region.shape[1] != 1:
        raise ValueError(
            f"region must be [B, 1, *spatial] for images {tuple(images.shape)}, got {tuple(region.shape)}."
        )
    if region.shape[2:] != images.shape[2:]:
        raise ValueError(
            f"region must have the spatial size of images {tuple(images.shape)}, got {tuple(region.shape)}."
        )
    if data_range <= 0:
        raise ValueError(f"data_range must be positive, got {data_range}.")
    recon, images, region = recon.float(), images.float(), region.float()
    dims = tuple(range(1, images.ndim))
    count = region.sum(dims) * images.shape[1]
    sq_err = ((recon - images).pow(2) * region).sum(dims)
    mse = sq_err / count.clamp_min(1.0)
    psnr = 10 * torch.log10(data_range**2 / mse.clamp_min(1e-12))
    return torch.where(count > 0, psnr, torch.full_like(psnr, float("nan")))


class ReconstructionMetric(RegressionMetric):
    """PSNR or SSIM of masked-autoencoder reconstructions, over masked pixels or the whole image.

    A MONAI cumulative metric: call it with ``y_pred`` the network output ``[B, C + 1 (+ extra), *spatial]`` and
    ``y`` the image ``[B, C, *spatial]`` (or lists of per-sample tensors), then :meth:`aggregate`.

    Args:
        name: one of ``"psnr_masked"``, ``"psnr_all"``, ``"ssim_masked"``, ``"ssim_all"``.
        patch_size: the network's patch size.
        norm_pix_loss: whether the network predicts per-patch normalised pixels.
        data_range: image intensity range. Defaults to 1.
        reduction: MONAI metric reduction. Defaults to ``"mean"``.
        get_not_nans: also return the count of non-NaN values.

    Raises:
        ValueError: on an unknown ``name``.
    """

    def __init__(
        self,
        name: str,
        patch_size: Sequence[int] | int,
        norm_pix_loss: bool = False,
        data_range: float = 1.0,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        get_not_nans: bool = False,
    ) -> None:
        super().__init__(reduction=reduction, get_not_nans=get_not_nans)
        if name not in RECONSTRUCTION_METRICS:
            raise ValueError(f"Unsupported metric: {name}, available options are {list(RECONSTRUCTION_METRICS)}.")
        self.name = name
        self.patch_size = patch_size
        self.norm_pix_loss = as_bool(norm_pix_loss, "norm_pix_loss")
        self.data_range = data_range

    def _check_shape(self, y_pred: torch.Tensor, y: torch.Tensor) -> None:
        if y_pred.shape[0] != y.shape[0] or y_pred.shape[1] < y.shape[1] + 1 or y_pred.shape[2:] != y.shape[2:]:
            raise ValueError(
                f"y_pred must be [B, C + 1 (+ extra), *spatial] for y [B, C, *spatial], "
                f"got {tuple(y_pred.shape)} and {tuple(y.shape)}."
            )

    def _compute_metric(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        recon, _, pixel_mask = reconstruct_image(y_pred, y, self.patch_size, self.norm_pix_loss)
        return reconstruction_metrics(recon, y, pixel_mask, self.data_range)[self.name][:, None]
