"""Warn when a segmentation is empty or covers the whole input: the signature of a model that ignored its prompt."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

import torch

__all__ = ["DegeneratePredictionWarning", "degenerate_mask"]

if TYPE_CHECKING:
    from ignite.engine import Engine

logger = logging.getLogger("maskseg_monai.handlers")


def degenerate_mask(foreground: torch.Tensor) -> str | None:
    """``"empty"`` when no element of the boolean ``foreground`` is set, ``"all foreground"`` when every one is,
    else ``None``."""
    foreground = torch.as_tensor(foreground).bool()
    if not bool(foreground.any()):
        return "empty"
    return "all foreground" if bool(foreground.all()) else None


class DegeneratePredictionWarning:
    """Log a warning naming the input for each prediction that is empty or all foreground.

    One-shot inference that finds nothing (or everything) still writes a mask; without a warning a user learns it
    only by opening every file. Attach to an inference evaluator whose post-processing leaves ``pred`` as class
    indices ``[1, *spatial]`` (after ``AsDiscreted(argmax=True)``) or one-hot ``[2, *spatial]``; the input's name is
    its ``image`` metadata ``filename_or_obj``. Warnings are logged on ``ITERATION_COMPLETED``; the count is kept in
    :attr:`flagged`.

    Args:
        pred_key: key of the prediction in each decollated output. Defaults to ``"pred"``.
        image_key: key whose metadata names the input. Defaults to ``"image"``.
    """

    def __init__(self, pred_key: str = "pred", image_key: str = "image") -> None:
        self.pred_key, self.image_key = pred_key, image_key
        self.flagged: list[str] = []

    def attach(self, engine: Engine) -> None:
        from ignite.engine import Events

        if not engine.has_event_handler(self, Events.ITERATION_COMPLETED):
            engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        outputs = engine.state.output
        for item in outputs if isinstance(outputs, list) else [outputs]:
            if not isinstance(item, dict) or self.pred_key not in item:
                continue
            pred = torch.as_tensor(item[self.pred_key])
            what = degenerate_mask(pred[1] > 0 if pred.shape[0] == 2 else pred > 0)
            if what:
                meta = getattr(item.get(self.image_key), "meta", {}) or {}
                name = os.path.basename(str(meta.get("filename_or_obj", f"iteration {engine.state.iteration}")))
                self.flagged.append(name)
                logger.warning(f"{name}: the prediction is {what}; check the support (class, mask) for this query.")
