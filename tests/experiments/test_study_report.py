"""The label-efficiency study's tables: gains paired by k and seed, and the saturation check."""

from __future__ import annotations

from maskseg_monai.experiments import summarize_runs
from maskseg_monai.experiments.study_report import gains_over_scratch, saturation_check


def _row(arm, k, seed, dice, mid=0.0, last=0.0, loss_mid=1.0, loss_last=0.5):
    curve = {"val_dice_mid": mid, "val_dice_last": last, "train_loss_mid": loss_mid, "train_loss_last": loss_last}
    return {"arm": arm, "k": k, "seed": seed, "dice": dice, "dice_small": dice / 2, "f1": dice / 4, **curve}


def test_gains_are_paired_by_k_and_seed():
    # amlp at k=4 has no scratch partner
    rows = [_row("scratch", 2, 0, 0.5), _row("mae", 2, 0, 0.6), _row("scratch", 2, 1, 0.3), _row("mae", 2, 1, 0.5),
            _row("amlp", 4, 0, 0.9)]  # fmt: skip
    gains = gains_over_scratch(rows)
    assert [(g["arm"], g["k"], g["seed"]) for g in gains] == [("mae", 2, 0), ("mae", 2, 1)]
    assert [round(g["dice"], 6) for g in gains] == [0.1, 0.2] and round(gains[1]["f1"], 6) == 0.05
    assert summarize_runs(gains, ["dice"], "arm")[0]["dice"] == "0.150 ± 0.071"


def test_saturation_check_per_k():
    rows = [
        _row("scratch", 2, 0, 0.5, mid=0.40, last=0.50), _row("scratch", 2, 1, 0.5, mid=0.42, last=0.48),
        _row("scratch", 8, 0, 0.8, mid=0.795, last=0.80, loss_mid=0.4, loss_last=0.41),
        _row("mae", 8, 0, 0.9, mid=0.1, last=0.9),  # other arms are not read
    ]  # fmt: skip
    table = saturation_check(rows, tolerance=0.01)
    assert [(r["k"], r["runs"], r["verdict"], r["loss_falling"]) for r in table] == [
        (2, 2, "rising", "yes"), (8, 1, "saturated", "no"),
    ]  # fmt: skip
    assert table[0]["val_dice_rise"] == "0.080 ± 0.028" and table[1]["val_dice_mid"] == "0.795"
