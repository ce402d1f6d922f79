"""The end of an inference run over many inputs: ``processed N, failed K``, and a failed run when ``K > 0``."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from maskseg_monai.utils import BadInputError

__all__ = ["InferenceReport"]

if TYPE_CHECKING:
    from ignite.engine import Engine

logger = logging.getLogger("maskseg_monai.handlers")


class InferenceReport:
    """Log ``processed N, failed K`` when an inference run completes, listing each failed input, and then raise a
    :class:`~maskseg_monai.utils.BadInputError` when any input failed, so the run exits non-zero after every good
    input was written (``--skip_bad_files true`` at inference).

    Args:
        saver: the run's :class:`~maskseg_monai.transforms.SaveSegmentationd` (its ``written`` and ``failed``).
    """

    def __init__(self, saver: Any) -> None:
        self.saver = saver

    def attach(self, engine: Engine) -> None:
        from ignite.engine import Events

        if not engine.has_event_handler(self.completed, Events.COMPLETED):
            engine.add_event_handler(Events.COMPLETED, self.completed)

    def completed(self, engine: Engine) -> None:
        failed, written = list(self.saver.failed), len(self.saver.written)
        for message in failed:
            logger.warning(f"failed input: {message}")
        logger.info(f"processed {written}, failed {len(failed)}")
        if failed:
            raise BadInputError(
                f"{len(failed)} of {written + len(failed)} inputs failed (processed {written}); the first: {failed[0]}"
            )
