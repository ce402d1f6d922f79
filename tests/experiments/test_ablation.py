"""The AMLP ablation: a tiny real run through the command line, the hit-rate metric, and early failures."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

from maskseg_monai.data import BLOOD_CLASSES
from maskseg_monai.experiments import (
    BASELINE_METRICS,
    GAIN_METRICS,
    LESION_METRICS,
    MPS_METRICS,
    ablation,
    baseline_columns,
    evaluate,
    report,
)
from maskseg_monai.metrics import mps_hit_rates

TINY = {
    "hidden_size": 48, "mlp_dim": 96, "num_layers": 2, "num_heads": 4,
    "decoder_hidden_size": 48, "decoder_mlp_dim": 96, "decoder_num_layers": 1, "decoder_num_heads": 4,
}  # fmt: skip
TINY_ARGS = [arg for k, v in TINY.items() for arg in ("--override", f"{k}={v}")]
#: a tiny budget: 32 training scenes in batches of 4 (8 steps), 32 x 32 crops
BUDGET_ARGS = ["--override", "steps_per_epoch=2", "--override", "batch_size=4", "--override", "img_size=32"]
RECON = ["psnr_masked", "ssim_masked", "psnr_all", "ssim_all", "psnr_masked_lesion", "psnr_masked_small"]
CLASS_METRICS = [f"psnr_masked_{name}" for name in BLOOD_CLASSES.values()]
ON = {"use_mps": True, "arl_weight": 1.0, "ccl_weight": 0.1, "use_amr": True}


@pytest.fixture(scope="module")
def tiny_ablation(tmp_path_factory) -> tuple[Path, list[dict], list]:
    out = tmp_path_factory.mktemp("ablation")
    # the synthetic blood smears (not the default nuclei): four classes for the per-class and lesion columns
    argv = ["--variants", "+ccl", "mae", "--seeds", "0", "1", "--epochs", "1", "--lesion_classes", "1", "3", "4",
            "--small_area", "48", "--demo_set", "bloodsmear2d", "--output_dir", str(out), *TINY_ARGS,
            *BUDGET_ARGS]  # fmt: skip
    fits = []  # (patch size, ratio, seed) of every baseline fit
    real = evaluate.fit_baselines
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(evaluate, "fit_baselines", lambda crops, *a: fits.append(a) or real(crops, *a))
        rows = ablation.main(argv)
    return out, rows, fits


@pytest.mark.slow
def test_tiny_ablation_writes_results(tiny_ablation):
    out, rows, fits = tiny_ablation
    with open(out / "results.csv", newline="") as f:
        table = list(csv.DictReader(f))
    # seed-major, variants in their cumulative order whatever the order asked
    assert [(r["variant"], r["seed"]) for r in table] == [("mae", "0"), ("+ccl", "0"), ("mae", "1"), ("+ccl", "1")]
    columns = list(table[0])
    assert columns[:6] == ["variant", "seed", "epochs", "steps", "train_loss", "train_seconds"]
    assert set(RECON + list(MPS_METRICS) + CLASS_METRICS) <= set(columns)
    for r in table:
        assert r["epochs"] == "1" and r["steps"] == "8"  # 32 training scenes, batch 4
        finite = ["train_loss", *RECON, *BASELINE_METRICS, *GAIN_METRICS, *LESION_METRICS, "mps_hit_rate"]
        assert all(math.isfinite(float(r[c])) for c in finite), r
        assert 0 <= float(r["mps_hit_rate"]) <= 1 and 0 < float(r["chance_hit_rate"]) < 1
        has_mps = r["variant"] != "mae"
        assert all(math.isfinite(float(r[c])) == has_mps for c in ("category_precision", "category_recall")), r
        for metric in ("psnr_masked", "psnr_masked_small", "psnr_masked_lesion"):
            for fill, gain in zip(*baseline_columns(metric)):
                assert float(r[gain]) == pytest.approx(float(r[metric]) - float(r[fill]), abs=1e-3)
    # every variant and seed is scored on the same masks, lesion patches and baselines, fitted once
    for c in (*BASELINE_METRICS, *LESION_METRICS[1:4], "gaussian_sigma", "chance_hit_rate"):
        assert len({r[c] for r in table}) == 1, c
    assert fits == [(8, 0.75, 0)]  # the bundle's patch, the evaluation ratio (amr_end), the evaluation seed
    assert rows[1]["mps_hit_rate"] == pytest.approx(float(table[1]["mps_hit_rate"]), rel=1e-4)

    md = (out / "results.md").read_text()
    assert md.splitlines()[3].startswith("python -m maskseg_monai.experiments.ablation --variants +ccl mae --seeds 0 1")
    assert "lesion classes (label values): 1 (red_cell), 3 (platelet), 4 (platelet_aggregate)" in md
    assert "TRAINING crops" in md and "patch 8, ratio 0.75: sigma" in md and "fewer than 48 pixels" in md
    learned = next(line for line in md.splitlines() if line.startswith("| variant") and "learned" in line)
    assert "gain_gaussian_psnr_masked" in learned and "masked pixels of the lesion classes" in md
    assert "Partial results" not in md and "±" in md
    assert "Not measured here: `python -m maskseg_monai.experiments.study`" in md
    assert "| mae | 2 |" in md and "| +ccl | 2 |" in md
    assert "## What each component changes (paired by seed)" in md and "| +ccl - mae | 2 |" in md
    effect = ablation.component_effects(rows)
    assert [e["change"] for e in effect] == ["+ccl - mae"]  # only the two variants run: one pair, no "all" row
    by_seed = {(r["variant"], r["seed"]): r["psnr_masked"] for r in rows}
    diffs = [by_seed[("+ccl", s)] - by_seed[("mae", s)] for s in (0, 1)]
    assert effect[0]["psnr_masked"].startswith(f"{sum(diffs) / 2:.2f} ±")
    assert effect[0]["verdict_psnr_masked"] == report.effect_verdict(diffs)
    assert not list(out.glob(".tmp-*"))
    for name in ("mae_seed0", "ccl_seed0", "mae_seed1", "ccl_seed1"):
        assert (out / "cells" / name / "models" / "model_final.pt").is_file()


def test_mps_hit_rates_hand_built():
    # 2 images x 4 patches; lesion patches: image 0 -> {0, 1}, image 1 -> {3}: 3 of 8 (chance 0.375)
    lesion = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    mask = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0]])  # hits: patch 0 of image 0, patch 3 of image 1
    category = torch.tensor([[1.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]])  # 3 patches, 2 of them lesion
    rates = mps_hit_rates(mask, lesion, category)
    assert rates == pytest.approx(
        {"mps_hit_rate": 2 / 4, "chance_hit_rate": 3 / 8, "category_precision": 2 / 3, "category_recall": 2 / 3}
    )
    perfect = mps_hit_rates(lesion, lesion, lesion)  # masking exactly the lesion patches
    assert perfect["mps_hit_rate"] == perfect["category_precision"] == perfect["category_recall"] == 1.0
    no_lesion = mps_hit_rates(mask, torch.zeros_like(lesion))
    assert no_lesion["mps_hit_rate"] == 0.0 and no_lesion["chance_hit_rate"] == 0.0
    assert math.isnan(no_lesion["category_precision"]) and math.isnan(no_lesion["category_recall"])
    empty = mps_hit_rates(mask, lesion, torch.zeros_like(lesion))
    assert math.isnan(empty["category_precision"]) and empty["category_recall"] == 0.0
    with pytest.raises(ValueError, match="category must be"):
        mps_hit_rates(mask, lesion, category[:, :3])


def test_bad_variant_name_fails_before_training(tmp_path):
    with pytest.raises(ValueError, match=r"mpss.*\+mps"):
        ablation.main(["--variants", "mae", "mpss", "--epochs", "1", "--output_dir", str(tmp_path), *TINY_ARGS])
    assert not (tmp_path / "cells").exists()


@pytest.mark.parametrize("variants, match", [([], "empty"), (["mae", "mae"], "repeats"), (["MAE"], "MAE")])
def test_check_variants_ill_args(variants, match):
    with pytest.raises(ValueError, match=match):
        ablation.check_variants(variants)


def test_variants_are_cumulative():
    assert ablation.check_variants(["+amr", "mae", "+mps"]) == ["mae", "+mps", "+amr"]
    over = [ablation.variant_overrides(v, ON) for v in ablation.VARIANTS]
    assert over[0] == {"use_mps": False, "arl_weight": 0.0, "ccl_weight": 0.0, "use_amr": False}
    assert over[-1] == ON
    for i in range(1, len(over)):  # each variant switches on exactly one more component
        assert sum(over[i][k] != over[i - 1][k] for k in ON) == 1
    with pytest.raises(ValueError, match="switches on CCL.*ccl_weight"):
        ablation.variant_overrides("+amr", {**ON, "ccl_weight": 0.0})


def test_early_failures(tmp_path):
    with pytest.raises(ValueError, match="switches on ARL"):
        ablation.run_ablation(["mae", "+arl"], epochs=1, output_dir=tmp_path, overrides={**TINY, "arl_weight": 0})
    with pytest.raises(ValueError, match="eval_mask_ratio"):
        ablation.run_ablation(["mae"], epochs=1, output_dir=tmp_path, overrides=TINY, eval_mask_ratio=1.0)
    with pytest.raises(ValueError, match="seeds"):
        ablation.run_ablation(["mae"], epochs=1, seeds=[0, 0], output_dir=tmp_path, overrides=TINY)
    with pytest.raises(ValueError, match="cell variant mae, seed 0: the bundle cannot build its network"):
        ablation.run_ablation(["mae"], epochs=1, output_dir=tmp_path, overrides={**TINY, "num_heads": 5})
    assert not (tmp_path / "cells").exists()


def test_cli_rejects_reserved_override(tmp_path, capsys):
    with pytest.raises(SystemExit):
        ablation.main(["--override", "seed=3", "--output_dir", str(tmp_path)])
    assert "--seeds" in capsys.readouterr().err
