"""Pieces shared by the study and the probe: overrides split between bundles, the encoder-size check, and
--resume's choice of the rows to keep."""

from __future__ import annotations

import pytest

from maskseg_monai.experiments import (
    bundle_config_file,
    check_encoder_sizes,
    kept_rows,
    read_bundle,
    split_overrides,
    write_csv,
)

BUNDLES = ("mae", "amlp", "unetr_seg")


def test_split_overrides_and_encoder_check():
    parsers = {b: read_bundle(bundle_config_file(b)) for b in BUNDLES}
    split = split_overrides({"hidden_size": 48, "out_channels": 5, "decoder_num_layers": 1}, parsers)
    assert split["unetr_seg"] == {"hidden_size": 48, "out_channels": 5}
    assert split["mae"] == split["amlp"] == {"hidden_size": 48, "decoder_num_layers": 1}
    with pytest.raises(ValueError, match="hiden_size"):
        split_overrides({"hiden_size": 48}, parsers)
    shared = check_encoder_sizes({b: read_bundle(bundle_config_file(b), split[b]) for b in BUNDLES})
    assert shared["hidden_size"] == 48
    mismatched = {b: read_bundle(bundle_config_file(b), {"num_layers": 4 if b == "mae" else 6}) for b in BUNDLES}
    with pytest.raises(ValueError, match="'num_layers' differs"):
        check_encoder_sizes(mismatched)


def test_kept_rows_match_the_planned_runs(tmp_path):
    rows = [
        {"arm": "mae", "k": 2, "seed": 0, "steps": 4, "probe_images": "a;b", "dice": 0.5},
        {"arm": "mae", "k": 2, "seed": 1, "steps": 8, "probe_images": "a;b", "dice": 0.6},  # other steps
        {"arm": "amlp", "k": 2, "seed": 0, "steps": 4, "probe_images": "a;c", "dice": 0.7},  # other images
        {"arm": "amlp", "k": 4, "seed": 0, "steps": 4, "probe_images": "a;b", "dice": 0.8},  # not planned
    ]
    csv = write_csv(rows, tmp_path / "results.csv")
    want = {"steps": 4, "probe_images": "a;b"}
    planned = {("mae", 2, 0): want, ("mae", 2, 1): want, ("amlp", 2, 0): want}
    logs = []
    kept = kept_rows(csv, planned, ("arm", "k", "seed"), logs.append)
    assert kept == {("mae", 2, 0): rows[0]}
    assert logs == [f"--resume: 1 of 3 runs kept from {csv}"]
    assert kept_rows(tmp_path / "missing.csv", planned, ("arm", "k", "seed"), logs.append) == {}
