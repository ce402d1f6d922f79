"""Patch masking for masked-image modelling, 2D and 3D, vectorised on the input's device.

Layout conventions (shared by the whole package):

- images ``[B, C, *spatial]`` with ``len(spatial) == spatial_dims``;
- patch tokens ``[B, L, prod(patch_size) * C]``, ``L = prod(spatial // patch_size)``, tokens in the
  row-major order of the patch grid (the order of MONAI's convolutional ``PatchEmbeddingBlock``);
- patch masks ``[B, L]`` with 1 = masked (removed from the encoder), 0 = visible;
- masked-autoencoder outputs ``[B, C + 1 + E, *spatial]``: the reconstruction, the pixel mask, then ``E``
  named extra maps, one channel each, every patch's value repeated over its pixels. The names and their
  order are the network's ``output_extras``: none for MAE, :data:`AMLP_EXTRAS` for AMLP (lesion logit and
  MPS category). Address the channels by name with :func:`split_mae_output` or :func:`extra_channel`,
  never by position.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch
from monai.utils import look_up_option

from maskseg_monai.masking.patches import patch_mask_to_image, unpatchify

__all__ = ["AMLP_EXTRAS", "MAEOutput", "extra_channel", "split_mae_output", "merge_mae_output"]

#: the extra output maps of :class:`~maskseg_monai.networks.AMLPMaskedAutoencoder`, in channel order:
#: the CCL head's lesion logit and the MPS category (1 = lesion cluster).
AMLP_EXTRAS = ("lesion_logits", "category")


class MAEOutput(NamedTuple):
    """A masked-autoencoder output, split into named parts.

    Attributes:
        reconstruction: ``[B, C, *spatial]`` the predicted image.
        mask: ``[B, 1, *spatial]`` the pixel mask, 1 = masked.
        extras: named extra maps ``[B, 1, *spatial]`` (for AMLP, :data:`AMLP_EXTRAS`); empty unless asked for.
    """

    reconstruction: torch.Tensor
    mask: torch.Tensor
    extras: dict[str, torch.Tensor]


def extra_channel(in_channels: int, name: str, extras: Sequence[str] = AMLP_EXTRAS) -> int:
    """Channel index of the extra map ``name`` in a masked-autoencoder output, for configs and savers.

    Args:
        in_channels: ``C``, the number of image channels.
        name: one of ``extras``.
        extras: the network's extra maps in channel order. Defaults to :data:`AMLP_EXTRAS`.

    Raises:
        ValueError: when ``name`` is not in ``extras`` (the message lists the valid names).

    Example:
        >>> extra_channel(1, "category")  # reconstruction 0, mask 1, lesion_logits 2, category 3
        3
    """
    extras = tuple(extras)
    return in_channels + 1 + extras.index(look_up_option(name, extras))


def split_mae_output(output: torch.Tensor, in_channels: int, extras: Sequence[str] = ()) -> MAEOutput:
    """Split a masked-autoencoder output ``[B, C + 1 + E, *spatial]`` into named parts.

    Args:
        output: the network output.
        in_channels: ``C``, the number of image channels.
        extras: names of the extra maps to return, in channel order (e.g. :data:`AMLP_EXTRAS`); channels after
            them are ignored. Defaults to none.

    Returns:
        :class:`MAEOutput` with the reconstruction ``[B, C, *spatial]``, the pixel mask ``[B, 1, *spatial]``
        (1 = masked) and ``extras`` maps ``[B, 1, *spatial]`` by name.

    Raises:
        ValueError: when ``output`` is not 4D/5D or has too few channels.

    Example:
        >>> out = split_mae_output(torch.zeros(2, 4, 8, 8), 1, AMLP_EXTRAS)
        >>> out.reconstruction.shape, out.mask.shape, out.extras["category"].shape
        (torch.Size([2, 1, 8, 8]), torch.Size([2, 1, 8, 8]), torch.Size([2, 1, 8, 8]))
    """
    extras = tuple(extras)
    if output.ndim not in (4, 5) or output.shape[1] < in_channels + 1 + len(extras):
        names = f"1 + {len(extras)} ({', '.join(extras)})" if extras else "1 (+ extra)"
        raise ValueError(
            f"expected a masked-autoencoder output [B, {in_channels} + {names}, *spatial], got {tuple(output.shape)}."
        )
    maps = {name: output[:, in_channels + 1 + i : in_channels + 2 + i] for i, name in enumerate(extras)}
    return MAEOutput(output[:, :in_channels], output[:, in_channels : in_channels + 1], maps)


def merge_mae_output(
    pred: torch.Tensor,
    mask: torch.Tensor,
    patch_size: Sequence[int] | int,
    img_size: Sequence[int],
    in_channels: int,
    extras: Mapping[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Masked-autoencoder output ``[B, C + 1 + E, *img_size]`` from predictions and per-patch maps.

    The inverse of :func:`split_mae_output` followed by :func:`patchify` / :func:`image_mask_to_patches`.

    Args:
        pred: ``[B, L, prod(patch_size) * C]`` per-patch predictions.
        mask: ``[B, L]`` patch mask, 1 = masked.
        patch_size: the network's patch size.
        img_size: the spatial size of the images.
        in_channels: ``C``.
        extras: named per-patch maps ``[B, L]``, appended in the mapping's order (AMLP: :data:`AMLP_EXTRAS`).

    Returns:
        the image-shaped output, in ``pred``'s dtype.
    """
    maps = [mask, *(extras or {}).values()]
    pixel_maps = [patch_mask_to_image(m.to(pred.dtype), patch_size, img_size) for m in maps]
    return torch.cat([unpatchify(pred, patch_size, img_size, in_channels), *pixel_maps], dim=1)
