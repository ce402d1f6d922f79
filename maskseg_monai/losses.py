"""Reconstruction losses for masked-image modelling."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn.modules.loss import _Loss

from maskseg_monai.masking import image_mask_to_patches, patchify, split_mae_output

__all__ = ["patch_targets", "per_patch_mse", "MaskedReconstructionLoss", "SUPPORTED_LOSS_REGIONS"]

SUPPORTED_LOSS_REGIONS = ("masked", "all")


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


def per_patch_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error of each patch: ``[B, L, P]`` x ``[B, L, P]`` -> ``[B, L]`` (float32)."""
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape.")
    return (pred.float() - target.float()).pow(2).mean(dim=-1)


class MaskedReconstructionLoss(_Loss):
    """Per-patch MSE averaged over the masked patches (MAE) or over all patches.

    The input is the output of :class:`~maskseg_monai.networks.MaskedAutoencoderViT`,
    ``[B, C + 1, *spatial]`` (reconstruction, then pixel mask); the target is the image ``[B, C, *spatial]``.

    Args:
        patch_size: the network's patch size.
        region: ``"masked"`` (the original MAE) or ``"all"`` (also learn to reproduce visible patches).
        norm_pix_loss: targets normalised per patch.

    Raises:
        ValueError: on an unknown ``region``.

    Example:
        >>> loss = MaskedReconstructionLoss(patch_size=4)
        >>> img = torch.rand(2, 1, 8, 8)
        >>> mask = torch.zeros(2, 1, 8, 8)
        >>> mask[..., :4, :] = 1
        >>> float(loss(torch.cat([img, mask], 1), img))
        0.0
    """

    def __init__(self, patch_size: Sequence[int] | int, region: str = "masked", norm_pix_loss: bool = False) -> None:
        super().__init__()
        if region not in SUPPORTED_LOSS_REGIONS:
            raise ValueError(f"Unsupported region: {region}, available options are {list(SUPPORTED_LOSS_REGIONS)}.")
        self.patch_size = patch_size
        self.region = region
        self.norm_pix_loss = norm_pix_loss

    def per_patch(self, input: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-patch loss ``[B, L]`` (float32) and patch mask ``[B, L]`` of a network output and its target image."""
        recon, pixel_mask = split_mae_output(input)
        if recon.shape != target.shape:
            raise ValueError(f"reconstruction {tuple(recon.shape)} and target {tuple(target.shape)} differ in shape.")
        loss = per_patch_mse(
            patchify(recon, self.patch_size), patch_targets(target, self.patch_size, self.norm_pix_loss)[0]
        )
        return loss, image_mask_to_patches(pixel_mask.float(), self.patch_size)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """
        Args:
            input: network output ``[B, C + 1, *spatial]``.
            target: images ``[B, C, *spatial]``.

        Returns:
            scalar loss (float32).
        """
        loss, mask = self.per_patch(input, target)
        if self.region == "all":
            return loss.mean()
        return (loss * mask).sum() / mask.sum().clamp_min(1.0)
