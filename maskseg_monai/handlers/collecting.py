"""The lifecycle shared by the handlers that collect an evaluator's batches and write tables when it completes."""

from __future__ import annotations

from typing import TYPE_CHECKING

__all__ = ["CollectingSaver"]

if TYPE_CHECKING:
    from ignite.engine import Engine


class CollectingSaver:
    """Base of :class:`~maskseg_monai.handlers.SegmentationMetricsSaver` and
    :class:`~maskseg_monai.handlers.abdominal_saver.AbdominalProtocolSaver`: ``reset`` at ``EPOCH_STARTED``,
    ``collect`` at ``ITERATION_COMPLETED``, ``write`` at ``COMPLETED``.

    MONAI's metric handlers have this lifecycle but reduce to one number; these savers keep a row per image, volume
    or episode and write files. Attaching twice (a config's handler list and a workflow may both) adds nothing.
    """

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
        """Forget what was collected."""
        raise NotImplementedError

    def collect(self, engine: Engine) -> None:
        """Collect the current batch."""
        raise NotImplementedError

    def write(self, engine: Engine | None = None) -> None:
        """Write the tables."""
        raise NotImplementedError
