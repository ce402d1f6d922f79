"""Patch masking for masked-image modelling, 2D and 3D, vectorised on the input's device.

Layout conventions (shared by the whole package):

- images ``[B, C, *spatial]`` with ``len(spatial) == spatial_dims``;
- patch tokens ``[B, L, prod(patch_size) * C]``, ``L = prod(spatial // patch_size)``, tokens in the
  row-major order of the patch grid (the order of MONAI's convolutional ``PatchEmbeddingBlock``);
- patch masks ``[B, L]`` with 1 = masked (removed from the encoder), 0 = visible;
- masked-autoencoder outputs ``[B, C + 1 + E, *spatial]``: the reconstruction, the pixel mask, then
  ``E`` optional extra maps (AMLP: lesion logit and MPS category).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from maskseg_monai.masking.patches import patch_mask_to_image, unpatchify

__all__ = ["split_mae_output", "merge_mae_output"]


def split_mae_output(output: torch.Tensor, in_channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a masked-autoencoder output ``[B, C + 1 + E, *spatial]`` into the reconstruction
    ``[B, C, *spatial]`` and the pixel mask ``[B, 1, *spatial]`` (1 = masked); ``E`` extra channels
    (for example AMLP's lesion maps) follow the mask and are ignored here.

    Args:
        output: the network output.
        in_channels: ``C``, the number of image channels.
    """
    if output.ndim not in (4, 5) or output.shape[1] < in_channels + 1:
        raise ValueError(
            f"expected a masked-autoencoder output [B, {in_channels} + 1 (+ extra), *spatial], "
            f"got {tuple(output.shape)}."
        )
    return output[:, :in_channels], output[:, in_channels : in_channels + 1]


def merge_mae_output(
    pred: torch.Tensor, mask: torch.Tensor, patch_size: Sequence[int] | int, img_size: Sequence[int], in_channels: int
) -> torch.Tensor:
    """Masked-autoencoder output ``[B, C + 1, *img_size]`` from predictions ``[B, L, P]`` and a patch mask ``[B, L]``.

    The inverse of :func:`split_mae_output` followed by :func:`patchify` / :func:`image_mask_to_patches`.
    """
    pixel_mask = patch_mask_to_image(mask.to(pred.dtype), patch_size, img_size)
    return torch.cat([unpatchify(pred, patch_size, img_size, in_channels), pixel_mask], dim=1)
