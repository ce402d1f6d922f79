"""AMLP's Adaptive Masking Ratio: a scheduler of the network's mask ratio over training."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from maskseg_monai.utils import as_bool

__all__ = ["MaskRatioScheduler"]

if TYPE_CHECKING:
    from ignite.engine import Engine


SUPPORTED_RATIO_SCHEDULES = ("linear", "cosine", "step")


class MaskRatioScheduler:
    """Adaptive Masking Ratio (AMLP): grow the network's ``mask_ratio`` from ``start`` to ``end`` during training.

    ``r(u) = start + (end - start) * s(u)`` with training progress ``u`` in [0, 1] (per iteration, or per
    epoch with ``epoch_level``) and ``s`` linear, cosine (``(1 - cos(pi u)) / 2``) or a staircase of
    ``num_stages`` equal steps. The ratio is written to ``engine.state.metrics["mask_ratio"]`` at the end of
    every epoch (so ``StatsHandler`` and ``TensorBoardStatsHandler`` log it; attach this handler before them)
    and is part of :meth:`state_dict` for checkpoints. ``start == end`` keeps a fixed ratio.

    Args:
        start: ratio at the beginning, in (0, 1).
        end: ratio at the end, in (0, 1).
        schedule: ``"linear"``, ``"cosine"`` or ``"step"``.
        epoch_level: update once per epoch instead of every iteration.
        num_stages: number of stages of the ``"step"`` schedule (>= 2).
        network: the network to update; defaults to ``engine.network`` (DDP-wrapped networks are unwrapped).

    Raises:
        ValueError: on ratios outside (0, 1), an unknown schedule or too few stages.
    """

    def __init__(
        self,
        start: float = 0.25,
        end: float = 0.75,
        schedule: str = "linear",
        epoch_level: bool = False,
        num_stages: int = 4,
        network: torch.nn.Module | None = None,
    ) -> None:
        for name, value in (("start", start), ("end", end)):
            if not 0.0 < float(value) < 1.0:
                raise ValueError(f"mask ratio {name} must be in (0, 1), got {value}.")
        if schedule not in SUPPORTED_RATIO_SCHEDULES:
            raise ValueError(
                f"Unsupported schedule: {schedule}, available options are {list(SUPPORTED_RATIO_SCHEDULES)}."
            )
        if num_stages < 2:
            raise ValueError(f"num_stages must be >= 2, got {num_stages}.")
        self.start, self.end, self.schedule = float(start), float(end), schedule
        self.epoch_level, self.num_stages, self.network = as_bool(epoch_level, "epoch_level"), num_stages, network
        self.ratio = self.start

    def ratio_at(self, progress: float) -> float:
        """Scheduled ratio at training progress ``progress`` in [0, 1]."""
        u = min(max(float(progress), 0.0), 1.0)
        if self.schedule == "cosine":
            s = (1 - math.cos(math.pi * u)) / 2
        elif self.schedule == "step":
            s = min(math.floor(u * self.num_stages), self.num_stages - 1) / (self.num_stages - 1)
        else:
            s = u
        return self.start + (self.end - self.start) * s

    def attach(self, engine: Engine) -> None:
        """Update the ratio at every iteration (or epoch) start, and record it at every epoch end."""
        from ignite.engine import Events

        event = Events.EPOCH_STARTED if self.epoch_level else Events.ITERATION_STARTED
        if not engine.has_event_handler(self, event):
            engine.add_event_handler(event, self)
        if not engine.has_event_handler(self.record, Events.EPOCH_COMPLETED):
            engine.add_event_handler(Events.EPOCH_COMPLETED, self.record)

    def progress(self, engine: Engine) -> float:
        """Training progress of ``engine`` in [0, 1] (0 at the first update, 1 at the last)."""
        state = engine.state
        if self.epoch_level:
            return (state.epoch - 1) / max(state.max_epochs - 1, 1)
        total = state.max_epochs * state.epoch_length
        return (state.iteration - 1) / max(total - 1, 1)

    def __call__(self, engine: Engine) -> None:
        """Set the network's ``mask_ratio`` for the coming iteration or epoch."""
        self.ratio = self.ratio_at(self.progress(engine))
        net = self.network if self.network is not None else engine.network
        getattr(net, "module", net).mask_ratio = self.ratio

    def record(self, engine: Engine) -> None:
        """Put the current ratio into ``engine.state.metrics["mask_ratio"]``."""
        engine.state.metrics["mask_ratio"] = self.ratio

    def state_dict(self) -> dict[str, float]:
        """Checkpointable state."""
        return {"ratio": self.ratio}

    def load_state_dict(self, state: dict[str, float]) -> None:
        """Restore :meth:`state_dict`."""
        self.ratio = float(state["ratio"])
