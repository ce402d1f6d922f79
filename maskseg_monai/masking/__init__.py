"""Masking for masked-image modelling: patches, per-sample patch masks, the network output layout,
masking policies and the clustering they use."""

from maskseg_monai.masking.clustering import batched_kmeans, patch_pixel_features
from maskseg_monai.masking.masks import PatchMask, generate_patch_mask, mask_from_scores, num_masked_patches
from maskseg_monai.masking.outputs import merge_mae_output, split_mae_output
from maskseg_monai.masking.patches import (
    grid_size,
    image_mask_to_patches,
    patch_mask_to_image,
    patch_targets,
    patchify,
    unpatchify,
)

__all__ = [
    "PatchMask",
    "batched_kmeans",
    "generate_patch_mask",
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
