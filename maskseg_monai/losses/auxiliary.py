"""A loss plus the auxiliary term a network computed in its last forward (e.g. SG-One's PANet alignment loss)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = ["AuxiliaryLossWrapper"]


class AuxiliaryLossWrapper(nn.Module):
    """``loss(pred, target) + network.auxiliary_loss``, when the network left one from its last forward.

    MONAI's ``SupervisedTrainer`` calls ``loss_function(network(inputs), label)``: the loss sees only the prediction
    and the label, so a term that needs the network's internals (PANet's prototype-alignment loss, which segments
    the support with the query's prediction) cannot be computed there. The network computes it during its forward
    instead and stores it as the tensor ``auxiliary_loss`` (None when there is none, e.g. in eval mode); this
    wrapper adds it. :class:`~maskseg_monai.networks.SGOne` does so with ``align_weight > 0``, already weighted.
    ``DistributedDataParallel`` (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers are looked through.

    The network is referenced, not registered as a submodule, so its parameters do not become the loss's.

    Args:
        loss: the main loss, called as ``loss(pred, target)`` (e.g. MONAI's ``DiceCELoss``).
        network: the module whose ``auxiliary_loss`` attribute is added.

    Raises:
        ValueError: when ``loss`` is not callable.

    Example (bundle config)::

        "loss": {
            "_target_": "maskseg_monai.losses.AuxiliaryLossWrapper",
            "loss": {"_target_": "DiceCELoss", "to_onehot_y": true, "softmax": true},
            "network": "@network"
        }
    """

    def __init__(self, loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], network: nn.Module) -> None:
        super().__init__()
        if not callable(loss):
            raise ValueError(f"loss must be callable as loss(pred, target), got {type(loss).__name__}.")
        self.loss = loss
        self.__dict__["network"] = network  # a plain reference: not a submodule

    @property
    def auxiliary_loss(self) -> torch.Tensor | None:
        """The network's ``auxiliary_loss`` now (None when it has none)."""
        net = self.network
        for attr in ("module", "_orig_mod"):  # DistributedDataParallel / DataParallel, torch.compile
            net = getattr(net, attr, net)
        return getattr(net, "auxiliary_loss", None)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """
        Args:
            pred: the network's output, e.g. logits ``[B, 2, *spatial]``.
            target: the label, e.g. ``[B, 1, *spatial]``.

        Returns:
            ``loss(pred, target)``, plus the network's ``auxiliary_loss`` when it is not None.
        """
        value = self.loss(pred, target)
        aux = self.auxiliary_loss
        return value if aux is None else value + aux
