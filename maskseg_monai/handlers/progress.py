"""A tqdm progress bar over the iterations of an engine."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

__all__ = ["ProgressBarHandler"]

if TYPE_CHECKING:
    from ignite.engine import Engine


class ProgressBarHandler:
    """A tqdm progress bar over each epoch that shows the running loss (ignite's ``ProgressBar``).

    Bundle handler lists call ``attach(engine)`` with the engine only; this wrapper supplies the
    output transform so the bar shows ``loss``.

    Args:
        output_transform: engine output -> value shown as ``loss``. Defaults to ``output["loss"]``.
    """

    def __init__(self, output_transform: Callable | None = None) -> None:
        self.output_transform = output_transform or (lambda out: {"loss": float(out["loss"])})

    def attach(self, engine: Engine) -> None:
        """Attach a fresh ``ignite.handlers.ProgressBar`` to ``engine``."""
        from ignite.handlers import ProgressBar

        ProgressBar(persist=True).attach(engine, output_transform=self.output_transform)
