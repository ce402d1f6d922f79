"""Reconstruction losses for masked-image modelling."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn.modules.loss import _Loss

from maskseg_monai.masking.outputs import split_mae_output
from maskseg_monai.masking.patches import image_mask_to_patches, patch_targets, patchify
from maskseg_monai.utils import as_bool

__all__ = ["per_patch_mse", "MaskedReconstructionLoss", "SUPPORTED_LOSS_REGIONS"]

SUPPORTED_LOSS_REGIONS = ("masked", "all")


def per_patch_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error of each patch: ``[B, L, P]`` x ``[B, L, P]`` -> ``[B, L]`` (float32)."""
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape.")
    return (pred.float() - target.float()).pow(2).mean(dim=-1)


class MaskedReconstructionLoss(_Loss):
    """Per-patch MSE averaged over the masked patches (MAE) or over all patches.

    The input is the output of :class:`~maskseg_monai.networks.MaskedAutoencoderViT`,
    ``[B, C + 1 (+ extra), *spatial]`` (reconstruction, then pixel mask); the target is the image ``[B, C, *spatial]``.

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
        self.norm_pix_loss = as_bool(norm_pix_loss, "norm_pix_loss")

    def per_patch(self, input: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-patch loss ``[B, L]`` (float32) and patch mask ``[B, L]`` of a network output and its target image."""
        recon, pixel_mask, _ = split_mae_output(input, target.shape[1])
        if recon.shape != target.shape:
            raise ValueError(f"reconstruction {tuple(recon.shape)} and target {tuple(target.shape)} differ in shape.")
        loss = per_patch_mse(
            patchify(recon, self.patch_size), patch_targets(target, self.patch_size, self.norm_pix_loss)[0]
        )
        return loss, image_mask_to_patches(pixel_mask.float(), self.patch_size)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """
        Args:
            input: network output ``[B, C + 1 (+ extra), *spatial]``.
            target: images ``[B, C, *spatial]``.

        Returns:
            scalar loss (float32).
        """
        loss, mask = self.per_patch(input, target)
        if self.region == "all":
            return loss.mean()
        return (loss * mask).sum() / mask.sum().clamp_min(1.0)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values [B, L]`` over ``mask [B, L]`` per row, ``[B, 1]``."""
    return (values * mask).sum(1, keepdim=True) / mask.sum(1, keepdim=True).clamp_min(1.0)
