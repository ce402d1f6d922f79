"""The savers' shared lifecycle: reset per epoch, collect per iteration, write once, attached once."""

from __future__ import annotations

import pytest
from ignite.engine import Engine, Events

from maskseg_monai.handlers import SegmentationMetricsSaver
from maskseg_monai.handlers.abdominal_saver import AbdominalProtocolSaver
from maskseg_monai.handlers.collecting import CollectingSaver


class Recorder(CollectingSaver):
    def __init__(self) -> None:
        self.calls: list[str] = []

    def reset(self, engine=None) -> None:
        self.calls.append("reset")

    def collect(self, engine) -> None:
        self.calls.append(f"collect {engine.state.batch}")

    def write(self, engine=None) -> None:
        self.calls.append("write")


def test_reset_collect_write_once_however_often_attached():
    saver, engine = Recorder(), Engine(lambda e, batch: batch)
    saver.attach(engine)
    saver.attach(engine)
    engine.run([1, 2], max_epochs=2)
    assert saver.calls == ["reset", "collect 1", "collect 2", "reset", "collect 1", "collect 2", "write"]


SAVERS = [SegmentationMetricsSaver("out"), AbdominalProtocolSaver("out", "CT", 1, fold=0)]


@pytest.mark.parametrize("saver", SAVERS, ids=lambda s: type(s).__name__)
def test_the_savers_share_it(saver):
    engine = Engine(lambda e, batch: batch)
    saver.attach(engine)
    saver.attach(engine)
    for event, handler in ((Events.EPOCH_STARTED, saver.reset), (Events.ITERATION_COMPLETED, saver.collect),
                           (Events.COMPLETED, saver.write)):  # fmt: skip
        assert engine.has_event_handler(handler, event)
        assert len(engine._event_handlers[event]) == 1


def test_the_base_has_no_tables():
    with pytest.raises(NotImplementedError):
        CollectingSaver().write()
