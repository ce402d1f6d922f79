"""Frozen warm-up of a transferred encoder: train the decoder first, then unfreeze."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch.nn as nn

from maskseg_monai.networks.transfer import freeze_encoder

__all__ = ["FreezeEncoderHandler"]

if TYPE_CHECKING:
    from ignite.engine import Engine


logger = logging.getLogger("maskseg_monai.handlers")


class FreezeEncoderHandler:
    """Keep the ViT encoder of a network frozen for the first ``epochs`` training epochs, then train it.

    At ``STARTED`` the encoder is frozen (``requires_grad=False``, see
    :func:`~maskseg_monai.networks.freeze_encoder`) when ``epochs > 0``; at the ``EPOCH_STARTED`` of epoch
    ``epochs + 1`` (1-based) it is made trainable again. Frozen parameters get no gradient, so the optimiser,
    built over all parameters, skips them until then. ``epochs=0`` does nothing.

    Under ``DistributedDataParallel`` a parameter frozen after wrapping gets no gradient, which DDP accepts
    only with ``find_unused_parameters=True`` (the bundle's ``multi_gpu_train.json`` sets it when
    ``freeze_encoder_epochs > 0``); do not freeze before wrapping, or the encoder is never synchronised later.

    Args:
        network: a UNETR (or anything :func:`~maskseg_monai.networks.freeze_encoder` accepts).
        epochs: frozen epochs, >= 0 (a command-line string is accepted).
    """

    def __init__(self, network: nn.Module, epochs: int | str = 0) -> None:
        epochs = int(epochs)
        if epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {epochs}.")
        self.network = network
        self.epochs = epochs

    def attach(self, engine: Engine) -> None:
        """Register the freeze at ``STARTED`` and the unfreeze check at ``EPOCH_STARTED``."""
        from ignite.engine import Events

        if self.epochs == 0:
            return
        if not engine.has_event_handler(self.freeze, Events.STARTED):
            engine.add_event_handler(Events.STARTED, self.freeze)
        if not engine.has_event_handler(self.epoch_started, Events.EPOCH_STARTED):
            engine.add_event_handler(Events.EPOCH_STARTED, self.epoch_started)

    def freeze(self, engine: Engine) -> None:
        """Freeze the encoder unless the (resumed) run is already past the frozen epochs."""
        if engine.state.epoch < self.epochs:
            freeze_encoder(self.network, True)
            logger.info(f"encoder frozen for the first {self.epochs} epoch(s).")

    def epoch_started(self, engine: Engine) -> None:
        """Unfreeze at the start of epoch ``epochs + 1``."""
        if engine.state.epoch == self.epochs + 1:
            n = freeze_encoder(self.network, False)
            logger.info(f"epoch {engine.state.epoch}: encoder unfrozen ({n} trainable encoder parameter elements).")
