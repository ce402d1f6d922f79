"""Ignite handlers of the segmentation bundle: encoder freezing for the first epochs, per-image evaluation CSV."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
from monai.handlers import from_engine

from maskseg_monai.evaluation import (
    SIZE_THRESHOLDS,
    evaluate_segmentation,
    summarize_metrics,
    write_metrics_csv,
)
from maskseg_monai.networks.transfer import freeze_encoder
from maskseg_monai.utils import atomic_write

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["FreezeEncoderHandler", "SegmentationMetricsSaver"]

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


def _filenames(batch: Sequence, key: str) -> list[str]:
    names = []
    for i, item in enumerate(batch):
        img = item.get(key) if isinstance(item, dict) else None
        meta = getattr(img, "meta", {}) or {}
        name = meta.get("filename_or_obj", f"item{i}")
        names.append(os.path.basename(str(name)))
    return names


class SegmentationMetricsSaver:
    """Write per-image small-object segmentation metrics (:mod:`maskseg_monai.evaluation`) of an evaluator.

    Collects the post-processed one-hot ``pred`` and ``label`` of every iteration and, when the run completes,
    writes ``<save_dir>/metrics_per_image.csv`` (one row per image, ``filename`` first) and
    ``<save_dir>/metrics_summary.csv`` (``metric,value`` lines, NaN-ignoring means over images), both atomically.
    Use it in a single process (rank 0 only under DDP sees its own shard).

    Args:
        save_dir: output folder.
        output_transform: engine output -> ``(y_pred, y)`` lists of one-hot ``[C, *spatial]`` tensors.
            Defaults to ``from_engine(["pred", "label"])``.
        image_key: batch key whose ``meta["filename_or_obj"]`` names the rows. Defaults to ``"image"``.
        include_background, class_names, size_thresholds, iou_threshold, connectivity, ignore_empty: as for
            :func:`~maskseg_monai.evaluation.evaluate_segmentation`.
    """

    def __init__(
        self,
        save_dir: str | os.PathLike,
        output_transform: Callable = from_engine(["pred", "label"]),
        image_key: str = "image",
        include_background: bool = False,
        class_names: Sequence[str] | None = None,
        size_thresholds: Sequence[int] = SIZE_THRESHOLDS,
        iou_threshold: float = 0.5,
        connectivity: int = 1,
        ignore_empty: bool = True,
    ) -> None:
        self.save_dir = str(save_dir)
        self.output_transform = output_transform
        self.image_key = image_key
        self.kwargs = dict(
            include_background=include_background,
            class_names=class_names,
            size_thresholds=size_thresholds,
            iou_threshold=float(iou_threshold),
            connectivity=int(connectivity),
            ignore_empty=ignore_empty,
        )
        self.rows: list[dict[str, float]] = []
        self.ids: list[str] = []

    def attach(self, engine: Engine) -> None:
        """Reset at ``EPOCH_STARTED``, collect at ``ITERATION_COMPLETED``, write at ``COMPLETED``."""
        from ignite.engine import Events

        for event, handler in (
            (Events.EPOCH_STARTED, self.reset),
            (Events.ITERATION_COMPLETED, self.collect),
            (Events.COMPLETED, self.write),
        ):
            if not engine.has_event_handler(handler, event):
                engine.add_event_handler(event, handler)

    def reset(self, engine: Engine | None = None) -> None:
        """Forget the collected rows."""
        self.rows, self.ids = [], []

    def collect(self, engine: Engine) -> None:
        """Evaluate the images of the current batch."""
        y_pred, y = self.output_transform(engine.state.output)
        y_pred = torch.stack([torch.as_tensor(p) for p in y_pred])
        y = torch.stack([torch.as_tensor(t) for t in y])
        self.rows += evaluate_segmentation(y_pred, y, **self.kwargs)
        batch = engine.state.batch
        self.ids += _filenames(batch if isinstance(batch, list) else [{}] * len(y), self.image_key)

    def write(self, engine: Engine | None = None) -> None:
        """Write the two CSV files."""
        write_metrics_csv(self.rows, os.path.join(self.save_dir, "metrics_per_image.csv"), self.ids)
        summary = summarize_metrics(self.rows)

        def write_summary(tmp: str) -> None:
            with open(tmp, "w") as f:
                f.writelines(f"{k},{v}\n" for k, v in summary.items())

        atomic_write(os.path.join(self.save_dir, "metrics_summary.csv"), write_summary)
        logger.info(f"per-image metrics of {len(self.rows)} images written to {self.save_dir}")
