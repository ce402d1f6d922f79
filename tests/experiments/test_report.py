"""Report pieces: runs grouped by one key or by several, mean ± std, the *learned* rule and the baseline tables."""

from __future__ import annotations

import math

import pytest

from maskseg_monai.experiments import report
from maskseg_monai.experiments.evaluate import baseline_columns


def _run(patch: int, seed: int, model: float, visible: float) -> dict:
    fills, gains = baseline_columns("psnr_masked")
    row = {"patch_size": patch, "mask_ratio": 0.5, "seed": seed, "psnr_masked": model}
    row |= dict(zip(fills, (12.0, visible, 20.0)))
    return row | {g: model - row[f] for f, g in zip(fills, gains)}


def test_group_runs_and_summary_by_several_keys():
    rows = [_run(8, 0, 15.0, 13.0), _run(16, 0, 14.0, 13.5), _run(8, 1, 14.2, 13.0)]
    groups = report.group_runs(rows, ("patch_size", "mask_ratio"))
    assert list(groups) == [(8, 0.5), (16, 0.5)] and [len(v) for v in groups.values()] == [2, 1]
    assert list(report.group_runs(rows, "patch_size", order=[16, 8])) == [16, 8]
    table = report.summarize_runs(rows, ["psnr_masked"], ("patch_size", "mask_ratio"))
    assert table[0] == {"patch_size": 8, "mask_ratio": 0.5, "runs": 2, "psnr_masked": "14.60 ± 0.57"}
    assert table[1]["psnr_masked"] == "14.00"


def test_learned_needs_one_db_over_the_visible_mean_for_every_seed():
    assert report.is_learned([_run(8, 0, 15.0, 13.0), _run(8, 1, 14.0, 13.0)])
    assert not report.is_learned([_run(8, 0, 15.0, 13.0), _run(8, 1, 13.9, 13.0)])  # one seed at +0.9 dB
    assert not report.is_learned([_run(8, 0, math.nan, 13.0)]) and not report.is_learned([])
    assert report.is_learned([_run(8, 0, 13.5, 13.0)], margin=0.5)


def test_baseline_sections_show_model_fills_gains_and_learned():
    rows = [_run(8, 0, 15.0, 13.0), _run(8, 1, 14.5, 13.0), _run(16, 0, 13.2, 13.0), _run(16, 1, 15.0, 13.0)]
    (section,) = report.baseline_sections(rows, ("patch_size", "mask_ratio"), {"psnr_masked": "all masked pixels"})
    lines = [line for line in section.splitlines() if line.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == ["patch_size", "mask_ratio", "runs", "psnr_masked", *sum(baseline_columns("psnr_masked"), [])] + [
        "learned"
    ]
    p8, p16 = ([c.strip() for c in line.strip("|").split("|")] for line in lines[1:])
    assert p8[-1] == "yes" and p16[-1] == "no"  # patch 16 gains only 0.2 dB for seed 0
    assert p8[header.index("gain_gaussian_psnr_masked")] == "-5.25 ± 0.35"  # model minus the 20 dB fill
    assert p8[header.index("visible_mean_psnr_masked")] == "13.00 ± 0.00"  # same masks for every seed
    assert ">= 1 dB" in section


@pytest.mark.parametrize("value, column, text", [(0.123456, "ssim_masked", "0.1235"), (1.5, "gain_x", "1.50")])
def test_format_value(value, column, text):
    assert report.format_value(value, column) == text


def test_paired_gains_pair_runs_by_their_keys():
    rows = [
        {"arm": "random", "p": 8, "seed": 0, "dice": 0.5}, {"arm": "random", "p": 16, "seed": 0, "dice": 0.4},
        {"arm": "mae", "p": 8, "seed": 0, "dice": 0.6}, {"arm": "mae", "p": 16, "seed": 0, "dice": 0.3},
        {"arm": "mae", "p": 16, "seed": 1, "dice": 0.9},  # no random run of seed 1: no partner, left out
    ]  # fmt: skip
    gains = report.paired_gains(rows, ["dice"], "random", ("p", "seed"))
    assert [(g["arm"], g["p"], g["seed"]) for g in gains] == [("mae", 8, 0), ("mae", 16, 0)]
    assert [round(g["dice"], 6) for g in gains] == [0.1, -0.1]
    assert report.paired_gains(rows, ["dice"], "scratch", ("p", "seed")) == []


@pytest.mark.parametrize(
    "values,verdict",
    [
        ([0.8, 1.1, 0.9], "shown (+)"),
        ([-0.3, -0.2, -0.25], "shown (-)"),
        ([-0.5, 0.7, 0.1], "not shown"),  # signs differ
        ([0.1, 0.1, 2.0], "not shown"),  # same sign, but the mean (0.73) is within the spread (1.10)
        ([0.5], "not shown"),  # one seed has no spread
        ([0.5, float("nan")], "not shown"),
    ],
)
def test_effect_verdict(values, verdict):
    assert report.effect_verdict(values) == verdict
