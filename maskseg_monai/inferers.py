"""Inferers: seeded masks for masked autoencoders; one-shot segmentation of 2D images and 3D volumes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from monai.data import MetaTensor
from monai.inferers import Inferer

from maskseg_monai.masking.masks import generate_patch_mask

__all__ = ["OneShotInferer", "SeededMaskInferer", "support_slices"]


class SeededMaskInferer(Inferer):
    """Run a masked autoencoder with masks drawn from a fixed seed, so that evaluations are repeatable.

    Every call starts a fresh generator from ``seed``: the i-th sample of every batch gets the same
    mask, whatever checkpoint is evaluated, which makes validation metrics comparable across epochs.

    Args:
        seed: seed of the masks.
        mask_ratio: ratio of the masks; defaults to the network's current ``mask_ratio``.
    """

    def __init__(self, seed: int = 0, mask_ratio: float | None = None) -> None:
        super().__init__()
        self.seed = seed
        self.mask_ratio = mask_ratio

    def __call__(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Mask ``inputs`` ``[B, C, *spatial]`` at ``mask_ratio`` and run the network.

        Returns:
            the network's output ``[B, C + 1 (+ extra), *spatial]``.
        """
        net = getattr(network, "module", network)
        generator = torch.Generator().manual_seed(self.seed)
        ratio = net.mask_ratio if self.mask_ratio is None else self.mask_ratio
        mask = generate_patch_mask(inputs.shape[0], net.num_patches, ratio, generator=generator).mask
        return network(inputs, *args, mask=mask.to(inputs.device), **kwargs)


def support_slices(mask: torch.Tensor, chunks: int) -> torch.Tensor:
    """Support slice of each of ``chunks`` equal parts of the labelled range of a volume's mask.

    The range from the first to the last slice holding foreground (along the last axis) is split into ``chunks``
    parts (SSL-ALPNet's protocol); each part's support is its centre slice, or the foreground slice nearest to it.

    Args:
        mask: ``[1, *spatial]`` or ``[*spatial]`` binary support mask; slices along the last axis.
        chunks: number of parts, >= 1.

    Returns:
        ``[chunks]`` slice indices (int64).

    Raises:
        ValueError: when the mask is empty.
    """
    if chunks < 1:
        raise ValueError(f"chunks must be >= 1, got {chunks}.")
    fg = (mask.reshape(-1, mask.shape[-1]) > 0).any(0)  # [D]
    idx = torch.nonzero(fg).flatten()
    if idx.numel() == 0:
        raise ValueError(
            "the support mask is empty (no foreground slice): one-shot segmentation needs a labelled support."
        )
    first, last = idx[0].double(), idx[-1].double()
    centres = first + (torch.arange(chunks, dtype=torch.float64) + 0.5) * (last - first + 1) / chunks - 0.5
    return idx[(idx[None].double() - centres[:, None]).abs().argmin(1)]


class OneShotInferer(Inferer):
    """Run a one-shot network (:class:`~maskseg_monai.networks.SGOne`) on queries with a support set.

    The support comes with the call (``support_image=..., support_label=...`` keyword arguments, as
    ``monai.engines.PrepareBatchExtraInput`` passes an episode's support) or, when absent, from the constructor
    (one fixed support for a whole inference run).

    A query with as many spatial dims as the network is run directly. A 3D query given to a 2D network is
    segmented slice by slice along its last axis, as in few-shot medical segmentation (Ouyang et al., ECCV 2020):
    query and support are split into ``chunks`` parts along that axis (the support over its labelled range), and
    the query slices of part ``i`` are segmented with the support slice at the centre of the support's part ``i``.

    Args:
        support_image: default support ``[K, C, *spatial]`` or ``[C, *spatial]`` (no batch axis).
        support_label: default support mask, ``[K, 1, *spatial]`` or ``[1, *spatial]``; values > 0 are foreground.
        chunks: parts of a volume (SSL-ALPNet: 3). Defaults to 3.
        slice_batch_size: query slices per network call. Defaults to 32.
    """

    def __init__(
        self,
        support_image: torch.Tensor | None = None,
        support_label: torch.Tensor | None = None,
        chunks: int = 3,
        slice_batch_size: int = 32,
    ) -> None:
        super().__init__()
        if (support_image is None) != (support_label is None):
            raise ValueError("give both support_image and support_label, or neither.")
        if int(chunks) < 1 or int(slice_batch_size) < 1:
            raise ValueError(f"chunks and slice_batch_size must be >= 1, got {chunks} and {slice_batch_size}.")
        self.support_image = support_image
        self.support_label = support_label
        self.chunks = int(chunks)
        self.slice_batch_size = int(slice_batch_size)

    def __call__(
        self,
        inputs: torch.Tensor,
        network: Callable[..., Any],
        *args: Any,
        support_image: torch.Tensor | None = None,
        support_label: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Segment ``inputs`` ``[B, C, *spatial]``; returns logits ``[B, 2, *spatial]``.

        ``support_image``/``support_label`` are batched ``[B, K, C, *spatial_s]``/``[B, K, 1, *spatial_s]`` (or
        without the shot axis); without them the constructor's support is used for every query.
        """
        if support_image is None:
            if self.support_image is None:
                raise ValueError("no support given: pass support_image/support_label to the inferer or the call.")
            support_image, support_label = self.support_image[None], self.support_label[None]
        support_image = torch.as_tensor(support_image).to(inputs.device, inputs.dtype)
        support_label = (torch.as_tensor(support_label) > 0).to(inputs.device, inputs.dtype)
        if support_image.ndim == inputs.ndim:  # no shot axis
            support_image, support_label = support_image[:, None], support_label[:, None]
        net = getattr(network, "module", network)
        net_dims = getattr(net, "spatial_dims", inputs.ndim - 2)
        if inputs.ndim - 2 == net_dims:
            return network(inputs, support_image, support_label, *args, **kwargs)
        if inputs.ndim != 5 or net_dims != 2:
            raise ValueError(
                f"a {net_dims}D network cannot segment queries of shape {tuple(inputs.shape)}; expected "
                f"[B, C, *spatial] with {net_dims} spatial dims, or 3D volumes for a 2D network."
            )
        meta = inputs if isinstance(inputs, MetaTensor) else None
        inputs = inputs.as_tensor() if meta is not None else inputs  # slices of a MetaTensor would carry its affine
        outs = [
            self._volume(
                inputs[b],
                support_image[b if support_image.shape[0] > 1 else 0],
                support_label[b if support_label.shape[0] > 1 else 0],
                network,
                *args,
                **kwargs,
            )
            for b in range(inputs.shape[0])
        ]
        result = torch.stack(outs)
        if meta is not None:  # the volume's geometry, for SaveImaged and decollation
            result = MetaTensor(result)
            result.copy_meta_from(meta)
        return result

    def _volume(self, query: torch.Tensor, images: torch.Tensor, masks: torch.Tensor, network, *args, **kwargs):
        """``[C, H, W, D]`` query, ``[K, C, H', W', D']`` support volumes -> ``[2, H, W, D]`` logits."""
        if images.ndim != 5:
            raise ValueError(f"slice-wise one-shot needs 3D support volumes, got support {tuple(images.shape)}.")
        depth = query.shape[-1]
        picks = torch.stack([support_slices(m, self.chunks) for m in masks])  # [K, chunks]
        part = torch.div(torch.arange(depth) * self.chunks, depth, rounding_mode="floor")  # chunk of each query slice
        slices = query.movedim(-1, 0)  # [D, C, H, W]
        out = None
        for c in range(self.chunks):
            z = torch.nonzero(part == c).flatten()
            if z.numel() == 0:
                continue
            shot = torch.arange(images.shape[0])
            s_img = images[shot, ..., picks[:, c]][None]  # [1, K, C, H', W']
            s_msk = masks[shot, ..., picks[:, c]][None]
            for start in range(0, z.numel(), self.slice_batch_size):
                zz = z[start : start + self.slice_batch_size].to(query.device)
                logits = network(slices[zz], s_img, s_msk, *args, **kwargs)  # [n, 2, H, W]
                if out is None:
                    out = logits.new_zeros((depth, *logits.shape[1:]))
                out[zz] = logits
        return out.movedim(0, -1)
