"""The patch size x mask ratio sweep: a tiny real sweep through the command line, and early failures."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from maskseg_monai.data import BLOOD_CLASSES
from maskseg_monai.experiments import sweep

TINY = {
    "hidden_size": 48,
    "mlp_dim": 96,
    "num_layers": 2,
    "num_heads": 4,
    "decoder_hidden_size": 48,
    "decoder_mlp_dim": 96,
    "decoder_num_layers": 1,
    "decoder_num_heads": 4,
}
TINY_ARGS = [arg for k, v in TINY.items() for arg in ("--override", f"{k}={v}")]
METRICS = ["psnr_masked", "ssim_masked", "psnr_all", "ssim_all", "psnr_masked_small", "psnr_masked_rest"]
CLASS_METRICS = [f"psnr_masked_{name}" for name in BLOOD_CLASSES.values()]


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("sweep")
    argv = ["--patch_sizes", "8", "16", "--mask_ratios", "0.5", "--epochs", "1", "--output_dir", str(out), *TINY_ARGS]
    return out, sweep.main(argv)


@pytest.mark.slow
def test_tiny_sweep_writes_results(tiny_sweep, capsys):
    out, rows = tiny_sweep
    with open(out / "results.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [(r["patch_size"], r["mask_ratio"]) for r in table] == [("8", "0.5"), ("16", "0.5")]
    columns = list(table[0])
    assert columns[:6] == ["patch_size", "mask_ratio", "epochs", "steps", "train_loss", "train_seconds"]
    assert set(METRICS + CLASS_METRICS) <= set(columns)
    for r in table:
        assert r["epochs"] == "1" and r["steps"] == "4"  # 32 training scenes, batch 8
        # every validation scene holds platelets, so all region and class metrics are defined
        assert all(math.isfinite(float(r[c])) for c in ["train_loss", *METRICS, *CLASS_METRICS]), r
        assert -1.0 <= float(r["ssim_masked"]) <= 1.0
    assert rows[0]["psnr_masked"] == pytest.approx(float(table[0]["psnr_masked"]), rel=1e-4)

    md = (out / "results.md").read_text()
    assert md.splitlines()[2].startswith("```")
    assert md.splitlines()[3].startswith(
        "python -m maskseg_monai.experiments.sweep --patch_sizes 8 16 --mask_ratios 0.5"
    )
    table_lines = [line for line in md.splitlines() if line.startswith("| ")]
    assert len(table_lines) == 3 and "psnr_masked_small" in table_lines[0]
    png = out / "heatmap.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert not list(out.glob(".tmp-*"))
    for p in (8, 16):
        assert (out / "cells" / f"patch{p}_ratio0.5" / "models" / "model_final.pt").is_file()


def test_bad_patch_size_fails_before_training(tmp_path):
    with pytest.raises(ValueError, match=r"patch 12 does not divide img_size \[64, 64\]"):
        sweep.main(
            [
                "--patch_sizes",
                "8",
                "12",
                "--mask_ratios",
                "0.5",
                "--epochs",
                "1",
                "--output_dir",
                str(tmp_path),
                *TINY_ARGS,
            ]
        )
    assert not (tmp_path / "cells").exists()


def test_bad_network_override_names_the_cell(tmp_path):
    with pytest.raises(ValueError, match="cell patch 8, mask ratio 0.5: the bundle cannot build its network"):
        sweep.run_sweep([8], [0.5], epochs=1, output_dir=tmp_path, overrides={**TINY, "num_heads": 5})
    assert not (tmp_path / "cells").exists()


@pytest.mark.parametrize(
    "patch_sizes, mask_ratios, match",
    [
        ([8, 8], [0.5], "repeats"),
        ([], [0.5], "empty"),
        ([64], [0.5], "at least 2 patches"),
        ([0], [0.5], "positive"),
        ([8], [1.0], r"mask_ratio must be in \(0, 1\)"),
        ([8], [0.0], r"mask_ratio must be in \(0, 1\)"),
    ],
)
def test_check_grid_ill_args(patch_sizes, mask_ratios, match):
    with pytest.raises(ValueError, match=match):
        sweep.check_grid(patch_sizes, mask_ratios, 64, 2)


def test_check_grid_accepts_3d_and_tuples():
    sweep.check_grid([4, 8, 16], [0.25, 0.75], (32, 32, 32), 3)
    with pytest.raises(ValueError, match="does not divide"):
        sweep.check_grid([8], [0.5], (32, 36, 32), 3)


def test_parse_override():
    assert sweep.parse_override("hidden_size=48") == ("hidden_size", 48)
    assert sweep.parse_override("learning_rate=2e-3") == ("learning_rate", 2e-3)
    assert sweep.parse_override("amp=false") == ("amp", False)
    assert sweep.parse_override("amp=False") == ("amp", False)
    assert sweep.parse_override("loss_region=all") == ("loss_region", "all")
    assert sweep.parse_override("img_size=[64, 64]") == ("img_size", [64, 64])
    for bad, match in (("hidden_size", "key=value"), ("=3", "key=value"), ("patch_size=4", "--patch_sizes")):
        with pytest.raises(ValueError, match=match):
            sweep.parse_override(bad)


def test_cli_rejects_reserved_override(tmp_path, capsys):
    with pytest.raises(SystemExit):
        sweep.main(["--override", "mask_ratio=0.3", "--output_dir", str(tmp_path)])
    assert "--mask_ratios" in capsys.readouterr().err


def test_missing_config_and_datalist(tmp_path):
    with pytest.raises(FileNotFoundError, match="config_file"):
        sweep.run_sweep([8], [0.5], epochs=1, output_dir=tmp_path, config_file=tmp_path / "nope.json")
    with pytest.raises(FileNotFoundError, match="datalist"):
        sweep.run_sweep([8], [0.5], epochs=1, output_dir=tmp_path, datalist=tmp_path / "nope.json")


def test_default_config_file_is_the_repository_bundle():
    path = sweep.default_config_file()
    assert path.name == "train.json" and path.parent.parent.name == "mae"


def test_cell_overrides_share_data_and_schedule(tmp_path):
    a = sweep.cell_overrides(4, 0.25, 3, 7, tmp_path / "a", tmp_path / "data", demo_set="bloodsmear2d", extra=TINY)
    b = sweep.cell_overrides(16, 0.75, 3, 7, tmp_path / "b", tmp_path / "data", demo_set="bloodsmear2d", extra=TINY)
    shared = ("epochs", "seed", "dataset_dir", "demo_set", "val_interval", *TINY)
    assert all(a[k] == b[k] for k in shared)
    assert (a["patch_size"], a["mask_ratio"], b["patch_size"], b["mask_ratio"]) == (4, 0.25, 16, 0.75)
    assert a["val_interval"] == 3
    c = sweep.cell_overrides(8, 0.5, 3, 7, tmp_path / "c", tmp_path / "data", datalist="x.json")
    assert "demo_set" not in c and Path(c["datalist"]).is_absolute()
