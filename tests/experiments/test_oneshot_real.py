"""The real-class one-shot study: trained arm per seed, baselines, summary and target verdict."""

from __future__ import annotations

import pytest

from maskseg_monai.experiments.oneshot_real import main, summarize
from maskseg_monai.experiments.report import read_csv


def _rows(gains: list[float]) -> list[dict]:
    return [
        {"arm": "sgone", "seed": s, "set": "brain", "dice": 0.7 + g, "otsu_baseline": 0.7, "copy_support_baseline": 0.4,
         "body_baseline": 0.6, "all_pixels_baseline": 0.2, "best_baseline": "otsu", "gain_over_best_baseline": g}
        for s, g in enumerate(gains)
    ]  # fmt: skip


def test_target_is_met_only_when_every_seed_reaches_it():
    met = summarize(_rows([0.06, 0.08, 0.07]))[0]
    assert "| sgone | brain | 3 | 0.770 ± 0.010 |" in met and met.rstrip().endswith("| yes |")
    assert summarize(_rows([0.2, 0.2, 0.01]))[0].rstrip().endswith("| no |")


def test_study_end_to_end_tiny(tmp_path):
    small = ["--override", "channels=[8,16,16,16,16]", "--override", "seg_channels=16", "--override", "epochs=1",
             "--override", "episodes_per_epoch=8", "--override", "val_episodes=4"]  # fmt: skip
    main(["--output_dir", str(tmp_path), "--seeds", "0", "--eval_episodes", "12", *small])
    rows = read_csv(tmp_path / "results.csv")
    assert {(r["arm"], r["set"]) for r in rows} == {("sgone", "brain_tissue"), ("sgone", "nuclei")}
    assert all(r["gain_over_best_baseline"] == pytest.approx(abs=1e-5, expected=r["dice"] - max(
        r[f"{b}_baseline"] for b in ("otsu", "copy_support", "body", "all_pixels"))) for r in rows)  # fmt: skip
    text = (tmp_path / "results.md").read_text()
    assert "python -m maskseg_monai.experiments.oneshot_real --output_dir" in text and "target met" in text
    assert (tmp_path / "seed0" / "models" / "model_final.pt").is_file()
    with pytest.raises(SystemExit):
        main(["--output_dir", str(tmp_path), "--free_arm", "x=[1]"])
