"""Inferers for masked autoencoders."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from monai.inferers import Inferer

from maskseg_monai.masking import generate_patch_mask

__all__ = ["SeededMaskInferer"]


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
