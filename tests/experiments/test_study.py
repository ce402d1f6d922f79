"""The pretraining study: a tiny real run through the command line, and the checks made before any training."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from maskseg_monai.experiments import bundle_config_file, read_bundle, study, summarize_runs

TINY = {
    "hidden_size": 48, "mlp_dim": 96, "num_layers": 4, "num_heads": 4,
    "decoder_hidden_size": 48, "decoder_mlp_dim": 96, "decoder_num_layers": 1, "decoder_num_heads": 4,
    "feature_size": 8, "out_channels": 5,
}  # fmt: skip
TINY_ARGS = [arg for k, v in TINY.items() for arg in ("--override", f"{k}={v}")]
BUNDLES = ("mae", "amlp", "unetr_seg")


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("study")
    argv = ["--seeds", "0", "--pretrain_epochs", "1", "--finetune_epochs", "1", "--demo_set", "bloodsmear2d",
            "--output_dir", str(out), *TINY_ARGS]  # fmt: skip
    return out, study.main(argv)


@pytest.mark.slow
def test_tiny_study_writes_results(tiny_study):
    out, rows = tiny_study
    with open(out / "results.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [(r["arm"], r["seed"]) for r in table] == [("scratch", "0"), ("mae", "0"), ("amlp", "0")]
    columns = list(table[0])
    assert columns[:13] == [
        "arm", "seed", "pretrain_epochs", "finetune_epochs", "steps", "train_loss", "train_seconds",
        "pretrain_seconds", "dice", "dice_small", "f1", "precision", "recall",
    ]  # fmt: skip
    assert {"dice_lt16", "dice_16to64", "dice_ge64", "dice_platelet", "f1_red_cell"} <= set(columns)
    for r in table:
        assert r["steps"] == "4" and r["finetune_epochs"] == "1"  # 32 training scenes, batch 8
        assert all(math.isfinite(float(r[c])) for c in ("train_loss", "dice", "dice_small", "f1")), r
        assert 0 <= float(r["dice"]) <= 1 and float(r["dice_small"]) == float(r["dice_lt16"])
    assert [r["pretrain_epochs"] for r in table] == ["0", "1", "1"]
    assert rows[0]["dice"] == pytest.approx(float(table[0]["dice"]), rel=1e-4)
    # each pretrained arm fine-tuned from its own bundle's encoder
    for b in ("mae", "amlp"):
        assert (out / "runs" / f"{b}_seed0" / "models" / "encoder.pt").is_file()
    for arm in study.ARMS:
        assert (out / "runs" / f"unetr_{arm}_seed0" / "models" / "model_final.pt").is_file()

    md = (out / "results.md").read_text()
    assert md.splitlines()[3].startswith("python -m maskseg_monai.experiments.study --seeds 0 --pretrain_epochs 1")
    assert "Partial results" not in md and "| scratch | 1 |" in md and "| amlp | 1 |" in md
    assert "`hidden_size=48`" in md and "`out_channels=5`" in md
    png = out / "study.png"
    assert png.is_file() and png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"
    assert not list(out.glob(".tmp-*"))


def test_summarize_runs_mean_and_spread():
    rows = [
        {"arm": "mae", "seed": 0, "dice": 0.5}, {"arm": "scratch", "seed": 0, "dice": 0.2},
        {"arm": "mae", "seed": 1, "dice": 0.7}, {"arm": "scratch", "seed": 1, "dice": float("nan")},
    ]  # fmt: skip
    table = summarize_runs(rows, ["dice"], "arm", study.ARMS)
    assert [r["arm"] for r in table] == ["scratch", "mae"]  # ARMS order
    assert table[0] == {"arm": "scratch", "runs": 2, "dice": "0.200"}  # NaN left out, one value: no spread
    assert table[1]["dice"] == "0.600 ± 0.141"


def test_split_overrides_and_encoder_check():
    parsers = {b: read_bundle(bundle_config_file(b)) for b in BUNDLES}
    split = study.split_overrides({"hidden_size": 48, "out_channels": 5, "decoder_num_layers": 1}, parsers)
    assert split["unetr_seg"] == {"hidden_size": 48, "out_channels": 5}
    assert split["mae"] == split["amlp"] == {"hidden_size": 48, "decoder_num_layers": 1}
    with pytest.raises(ValueError, match="hiden_size"):
        study.split_overrides({"hiden_size": 48}, parsers)
    shared = study.check_encoder_sizes({b: read_bundle(bundle_config_file(b), split[b]) for b in BUNDLES})
    assert shared["hidden_size"] == 48
    mismatched = {b: read_bundle(bundle_config_file(b), {"num_layers": 4 if b == "mae" else 6}) for b in BUNDLES}
    with pytest.raises(ValueError, match="'num_layers' differs"):
        study.check_encoder_sizes(mismatched)


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--seeds", "0", "0"], "distinct seeds"),
        (["--finetune_epochs", "0"], "at least 1"),
        (["--override", "hiden_size=48"], "declared by none"),
    ],
)
def test_ill_arguments_fail_before_training(tmp_path, argv, match):
    with pytest.raises(ValueError, match=match):
        study.main([*argv, "--output_dir", str(tmp_path)])
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("override", ["pretrained_encoder=x.pt", "seed=3", "epochs=2"])
def test_reserved_override_is_a_usage_error(tmp_path, override):
    with pytest.raises(SystemExit):
        study.main(["--override", override, "--output_dir", str(tmp_path)])
