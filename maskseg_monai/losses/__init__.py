"""Losses of the pretraining bundles: masked reconstruction (MAE) and the AMLP objective (ARL + CCL); a wrapper
adding a network's auxiliary loss (SG-One's prototype alignment)."""

from maskseg_monai.losses.amlp import AMLPLoss, arl_weights
from maskseg_monai.losses.auxiliary import AuxiliaryLossWrapper
from maskseg_monai.losses.reconstruction import SUPPORTED_LOSS_REGIONS, MaskedReconstructionLoss, per_patch_mse

__all__ = [
    "AMLPLoss",
    "AuxiliaryLossWrapper",
    "MaskedReconstructionLoss",
    "SUPPORTED_LOSS_REGIONS",
    "arl_weights",
    "per_patch_mse",
]
