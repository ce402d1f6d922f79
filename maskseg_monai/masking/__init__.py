"""Masking for masked-image modelling: patches, per-sample patch masks, the network output layout,
masking policies and the clustering they use."""

from maskseg_monai.masking.clustering import batched_kmeans, patch_pixel_features
from maskseg_monai.masking.masks import PatchMask, generate_patch_mask, mask_from_scores, num_masked_patches
from maskseg_monai.masking.outputs import AMLP_EXTRAS, MAEOutput, extra_channel, merge_mae_output, split_mae_output
from maskseg_monai.masking.patches import (
    grid_size,
    image_mask_to_patches,
    patch_mask_to_image,
    patch_targets,
    patchify,
    unpatchify,
)
from maskseg_monai.masking.policies import (
    SUPPORTED_LESION_RULES,
    SUPPORTED_MASKING,
    SUPPORTED_MPS_FEATURES,
    MaskingPolicy,
    MaskingScores,
    MPSMasking,
    RandomMasking,
    get_masking_policy,
)

__all__ = [
    "AMLP_EXTRAS",
    "MAEOutput",
    "MPSMasking",
    "MaskingPolicy",
    "MaskingScores",
    "PatchMask",
    "RandomMasking",
    "SUPPORTED_LESION_RULES",
    "SUPPORTED_MASKING",
    "SUPPORTED_MPS_FEATURES",
    "batched_kmeans",
    "extra_channel",
    "generate_patch_mask",
    "get_masking_policy",
    "grid_size",
    "image_mask_to_patches",
    "mask_from_scores",
    "merge_mae_output",
    "num_masked_patches",
    "patch_mask_to_image",
    "patch_pixel_features",
    "patch_targets",
    "patchify",
    "split_mae_output",
    "unpatchify",
]
