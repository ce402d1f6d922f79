"""The patch size x mask ratio sweep: a tiny real sweep through the command line, and early failures."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from maskseg_monai.data import BLOOD_CLASSES
from maskseg_monai.experiments import BASELINE_METRICS, GAIN_METRICS, baseline_columns, evaluate, sweep

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
#: a tiny budget: 32 training scenes in batches of 4 (8 steps), 32 x 32 crops
BUDGET_ARGS = ["--override", "steps_per_epoch=2", "--override", "batch_size=4", "--override", "img_size=32"]
METRICS = ["psnr_masked", "ssim_masked", "psnr_all", "ssim_all", "psnr_masked_small", "psnr_masked_rest"]
CLASS_METRICS = [f"psnr_masked_{name}" for name in BLOOD_CLASSES.values()]


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory) -> tuple[Path, list[dict], list[list[str]]]:
    out = tmp_path_factory.mktemp("sweep")
    # the synthetic blood smears (not the default nuclei): four classes for the per-class columns
    argv = ["--patch_sizes", "8", "16", "--mask_ratios", "0.5", "--seeds", "0", "1", "--epochs", "1",
            "--demo_set", "bloodsmear2d", "--output_dir", str(out), *TINY_ARGS, *BUDGET_ARGS]  # fmt: skip
    fitted_on = []  # the images of every datalist the baselines are fitted on
    real = evaluate.sample_crops
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(
            evaluate, "sample_crops", lambda items, *a: fitted_on.append([i["image"] for i in items]) or real(items, *a)
        )
        rows = sweep.main(argv)
    return out, rows, fitted_on


@pytest.mark.slow
def test_tiny_sweep_writes_results(tiny_sweep, capsys):
    out, rows, fitted_on = tiny_sweep
    with open(out / "results.csv", newline="") as f:
        table = list(csv.DictReader(f))
    cells = [(r["patch_size"], r["mask_ratio"], r["seed"]) for r in table]
    assert cells == [("8", "0.5", "0"), ("16", "0.5", "0"), ("8", "0.5", "1"), ("16", "0.5", "1")]
    columns = list(table[0])
    assert columns[:7] == ["patch_size", "mask_ratio", "seed", "epochs", "steps", "train_loss", "train_seconds"]
    assert set(METRICS + CLASS_METRICS + list(BASELINE_METRICS + GAIN_METRICS) + ["gaussian_sigma"]) <= set(columns)
    for r in table:
        assert r["epochs"] == "1" and r["steps"] == "8"  # 32 training scenes, batch 4
        finite = ["train_loss", *METRICS, *BASELINE_METRICS, *GAIN_METRICS]
        assert all(math.isfinite(float(r[c])) for c in finite), r
        assert -1.0 <= float(r["ssim_masked"]) <= 1.0
        for metric in ("psnr_masked", "psnr_masked_small"):
            for fill, gain in zip(*baseline_columns(metric)):
                assert float(r[gain]) == pytest.approx(float(r[metric]) - float(r[fill]), abs=1e-3)
    # one fit per (patch, ratio), shared by its seeds, on the training scenes only
    for a, b in ((0, 2), (1, 3)):
        assert all(table[a][c] == table[b][c] for c in (*BASELINE_METRICS, "gaussian_sigma"))
    datalist = json.loads(next((out / "demo_data").glob("*/dataset.json")).read_text())
    training, validation = ({Path(i["image"]).name for i in datalist[k]} for k in ("training", "validation"))
    assert len(fitted_on) == 2 and all({Path(i).name for i in images} == training for images in fitted_on)
    assert not training & validation
    assert rows[0]["psnr_masked"] == pytest.approx(float(table[0]["psnr_masked"]), rel=1e-4)

    md = (out / "results.md").read_text()
    assert md.splitlines()[2].startswith("```")
    assert md.splitlines()[3].startswith(
        "python -m maskseg_monai.experiments.sweep --patch_sizes 8 16 --mask_ratios 0.5 --seeds 0 1"
    )
    assert "TRAINING crops" in md and "never on validation images" in md and "patch 16, ratio 0.5: sigma" in md
    assert "fewer than 64 pixels, dilated by 2 pixels" in md and "Partial results" not in md
    table_lines = [line for line in md.splitlines() if line.startswith("| ")]
    first = next(line for line in table_lines if "learned" in line)
    assert "gain_gaussian_psnr_masked" in first and "visible_mean_psnr_masked" in first
    assert any(line.startswith("| 8 | 0.5 | 2 |") and " ± " in line for line in table_lines)
    assert any("gain_gaussian_psnr_masked_small" in line for line in table_lines)
    png = out / "heatmap.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert not list(out.glob(".tmp-*"))
    for p in (8, 16):
        for seed in (0, 1):
            assert (out / "cells" / f"patch{p}_ratio0.5_seed{seed}" / "models" / "model_final.pt").is_file()


def test_heatmap_averages_the_seeds_of_a_cell(tmp_path, monkeypatch):
    grids = []
    real = sweep.np.ma.masked_invalid
    monkeypatch.setattr(sweep.np.ma, "masked_invalid", lambda g: grids.append(g.copy()) or real(g))
    rows = [
        {"patch_size": 8, "mask_ratio": 0.5, "gain_gaussian_psnr_masked": -1.0},
        {"patch_size": 8, "mask_ratio": 0.5, "gain_gaussian_psnr_masked": -3.0},
        {"patch_size": 16, "mask_ratio": 0.5, "gain_gaussian_psnr_masked": 0.5},
    ]
    path = sweep.plot_heatmap(rows, tmp_path / "h.png", metrics=["gain_gaussian_psnr_masked"])
    assert Path(path).read_bytes()[:4] == b"\x89PNG"
    assert grids[0].tolist() == [[-2.0, 0.5]]


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
    with pytest.raises(ValueError, match="cell patch 8, mask ratio 0.5, seed 0: the bundle cannot build its network"):
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


def test_cli_rejects_reserved_override(tmp_path, capsys):
    with pytest.raises(SystemExit):
        sweep.main(["--override", "mask_ratio=0.3", "--output_dir", str(tmp_path)])
    assert "--mask_ratios" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        sweep.main(["--override", "seed=3", "--output_dir", str(tmp_path)])
    assert "--seeds" in capsys.readouterr().err


def test_bad_seeds_and_small_region_fail_before_training(tmp_path):
    with pytest.raises(ValueError, match="--seeds"):
        sweep.run_sweep([8], [0.5], epochs=1, seeds=[1, 1], output_dir=tmp_path, overrides=TINY)
    with pytest.raises(ValueError, match="--small_dilation"):
        sweep.run_sweep([8], [0.5], epochs=1, output_dir=tmp_path, overrides=TINY, small_dilation=-1)
    with pytest.raises(ValueError, match="--small_area"):
        sweep.run_sweep([8], [0.5], epochs=1, output_dir=tmp_path, overrides=TINY, small_area=0)
    assert not (tmp_path / "cells").exists()


def test_missing_config_and_datalist(tmp_path):
    with pytest.raises(FileNotFoundError, match="config_file"):
        sweep.run_sweep([8], [0.5], epochs=1, output_dir=tmp_path, config_file=tmp_path / "nope.json")
    with pytest.raises(FileNotFoundError, match="datalist"):
        sweep.run_sweep([8], [0.5], epochs=1, output_dir=tmp_path, datalist=tmp_path / "nope.json")


def test_cell_overrides_share_data_and_schedule(tmp_path):
    a = sweep.cell_overrides(4, 0.25, 3, 7, tmp_path / "a", tmp_path / "data", demo_set="bloodsmear2d", extra=TINY)
    b = sweep.cell_overrides(16, 0.75, 3, 7, tmp_path / "b", tmp_path / "data", demo_set="bloodsmear2d", extra=TINY)
    shared = ("epochs", "seed", "dataset_dir", "demo_set", "val_interval", *TINY)
    assert all(a[k] == b[k] for k in shared)
    assert (a["patch_size"], a["mask_ratio"], b["patch_size"], b["mask_ratio"]) == (4, 0.25, 16, 0.75)
    assert a["val_interval"] == 3
    c = sweep.cell_overrides(8, 0.5, 3, 7, tmp_path / "c", tmp_path / "data", datalist="x.json")
    assert "demo_set" not in c and Path(c["datalist"]).is_absolute()
