"""Command-line pieces shared by the experiment commands."""

from __future__ import annotations

import pytest

from maskseg_monai.experiments import sweep
from maskseg_monai.experiments.cli import parse_override as _parse_override


def parse_override(text):
    return _parse_override(text, sweep.RESERVED_KEYS, "the sweep")


def test_parse_override():
    assert parse_override("hidden_size=48") == ("hidden_size", 48)
    assert parse_override("learning_rate=2e-3") == ("learning_rate", 2e-3)
    assert parse_override("amp=false") == ("amp", False)
    assert parse_override("amp=False") == ("amp", False)
    assert parse_override("loss_region=all") == ("loss_region", "all")
    assert parse_override("img_size=[64, 64]") == ("img_size", [64, 64])
    for bad, match in (("hidden_size", "key=value"), ("=3", "key=value"), ("patch_size=4", "--patch_sizes")):
        with pytest.raises(ValueError, match=match):
            parse_override(bad)
