"""The label-efficiency study: a tiny real run through the command line, its tables, and the checks made before
any training."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import pytest

from maskseg_monai.experiments import study

TINY = {
    "hidden_size": 48, "mlp_dim": 96, "num_layers": 4, "num_heads": 4,
    "decoder_hidden_size": 48, "decoder_mlp_dim": 96, "decoder_num_layers": 1, "decoder_num_heads": 4,
    "feature_size": 8, "batch_size": 4, "steps_per_epoch": 2,
}  # fmt: skip
TINY_ARGS = [arg for k, v in TINY.items() for arg in ("--override", f"{k}={v}")]


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("study")
    argv = ["--seeds", "0", "--labels", "4", "2", "--pretrain_epochs", "1", "--finetune_steps", "4",
            "--finetune_validations", "2", "--output_dir", str(out), *TINY_ARGS]  # fmt: skip
    return out, study.main(argv)


@pytest.mark.slow
def test_tiny_study_writes_results(tiny_study):
    out, rows = tiny_study
    with open(out / "results.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [(r["arm"], r["k"], r["seed"]) for r in table] == [
        (arm, k, "0") for k in ("2", "4") for arm in ("scratch", "mae", "amlp")
    ]
    columns = list(table[0])
    assert columns[:22] == [
        "arm", "k", "seed", "pretrain_epochs", "steps", "train_loss", "train_seconds", "pretrain_seconds",
        "dice", "dice_small", "f1", "precision", "recall", "encoder_loaded", "encoder_tensors", "encoder_missing",
        "encoder_unexpected", "val_dice_mid", "val_dice_last", "train_loss_mid", "train_loss_last", "val_dice_curve",
    ]  # fmt: skip
    assert {"dice_lt16", "dice_16to64", "dice_ge64", "f1_nucleus"} <= set(columns)
    for r in table:
        assert r["steps"] == "4"  # the same steps with 2 and 4 labelled tiles
        assert all(math.isfinite(float(r[c])) for c in ("train_loss", "dice", "f1", "val_dice_mid", "val_dice_last"))
        assert 0 <= float(r["dice"]) <= 1 and float(r["dice_small"]) == float(r["dice_lt16"])
        assert [s.split(":")[0] for s in r["val_dice_curve"].split()] == ["2", "4"]  # validated at mid and end
        # the bundle's validation Dice at the end is of the same final network the study scores
        assert float(r["val_dice_last"]) == pytest.approx(float(r["dice"]), abs=0.02)
        loaded, tensors = int(r["encoder_loaded"]), int(r["encoder_tensors"])
        assert r["encoder_missing"] == r["encoder_unexpected"] == "0"
        assert (loaded, tensors) == (0, 0) if r["arm"] == "scratch" else loaded == tensors > 0
    assert [r["pretrain_epochs"] for r in table[:3]] == ["0", "1", "1"]
    assert rows[0]["dice"] == pytest.approx(float(table[0]["dice"]), rel=1e-4)

    # nested labelled subsets of the same seed, shared by the three arms
    subsets = {k: json.loads((out / "datalists" / f"k{k}_seed0.json").read_text()) for k in (2, 4)}
    assert len(subsets[2]["training"]) == 2 and len(subsets[4]["training"]) == 4
    assert set(subsets[2]["training_indices"]) <= set(subsets[4]["training_indices"])
    assert len(subsets[2]["validation"]) == 16
    for b in ("mae", "amlp"):
        assert (out / "runs" / f"{b}_seed0" / "models" / "encoder.pt").is_file()
    for arm in study.ARMS:
        assert (out / "runs" / f"unetr_{arm}_k2_seed0" / "models" / "model_final.pt").is_file()

    md = (out / "results.md").read_text()
    assert md.splitlines()[3].startswith("python -m maskseg_monai.experiments.study --seeds 0 --labels 4 2")
    assert "Partial results" not in md and "| 2 | scratch | 1 |" in md and "| 4 | amlp | 1 |" in md
    gains = md.split("## Gain over scratch")[1].split("##")[0]
    assert "| 2 | mae | 1 |" in gains and "scratch" not in gains.split("|---")[1]
    saturation = md.split("## Is scratch saturated?")[1].split("##")[0]
    assert saturation.count("| 2 | 1 |") == 1 and saturation.count("| 4 | 1 |") == 1
    assert "4 fine-tuning(s) of the pretrained arms loaded" in md and "0 missing, 0 unexpected keys" in md
    assert "`hidden_size=48`" in md and "4 optimizer steps of batch 4 for every k" in md
    png = out / "study.png"
    assert png.is_file() and png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"
    assert not list(out.glob(".tmp-*"))


@pytest.mark.slow
def test_resume_keeps_the_finished_runs_and_trains_the_rest(tiny_study, tmp_path):
    out = tmp_path / "study"
    shutil.copytree(tiny_study[0], out)
    argv = ["--seeds", "0", "--labels", "4", "2", "--pretrain_epochs", "1", "--finetune_steps", "4",
            "--finetune_validations", "2", "--output_dir", str(out), *TINY_ARGS, "--resume"]  # fmt: skip
    before = (out / "results.csv").read_text()
    lines = before.splitlines()
    (out / "results.csv").write_text("\n".join(lines[:-1]) + "\n")  # stopped before its last run
    logs = []
    rows = study.run_study([0], [4, 2], 1, 4, 2, output_dir=out, overrides=TINY, resume=True, log=logs.append)
    assert "--resume: 5 of 6 runs kept" in logs[0]
    assert [line for line in logs if "fine-tuning 4 steps" in line] == [
        "[6/6] UNETR amlp, k 4, seed 0: fine-tuning 4 steps ..."
    ]
    after = (out / "results.csv").read_text().splitlines()
    assert after[:-1] == lines[:-1] and len(rows) == 6 and after[-1].startswith("amlp,4,0,1,4,")
    logs.clear()
    study.main(argv)  # all kept: nothing trains
    assert (out / "results.csv").read_text().splitlines() == after


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--seeds", "0", "0"], "distinct seeds"),
        (["--labels", "2", "2"], "distinct labelled-set sizes"),
        (["--labels", "0", "2"], "distinct labelled-set sizes"),
        (["--labels", "2", "49"], "more than the 48 training items"),
        (["--pretrain_epochs", "0"], "at least 1"),
        (["--finetune_steps", "6"], "multiple of --finetune_validations"),
        (["--finetune_validations", "3"], "even number"),
        (["--finetune_warmup", "1.5"], "fraction"),
        (["--override", "hiden_size=48"], "declared by none"),
    ],
)
def test_ill_arguments_fail_before_training(tmp_path, argv, match):
    with pytest.raises(ValueError, match=match):
        study.main([*argv, "--output_dir", str(tmp_path)])
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["--override", "pretrained_encoder=x.pt"], ["--override", "seed=3"], ["--override", "epochs=2"],
        ["--override", "warmup_epochs=1"], ["--override", "datalist=x.json"],
        ["--pretrain_demo_set", "unlabelled2d", "--pretrain_datalist", "x.json"],
        ["--finetune_demo_set", "bloodsmear2d", "--finetune_datalist", "x.json"],
    ],
)  # fmt: skip
def test_usage_errors(tmp_path, argv):
    with pytest.raises(SystemExit):
        study.main([*argv, "--output_dir", str(tmp_path)])


def test_missing_datalist(tmp_path):
    with pytest.raises(FileNotFoundError, match="--finetune_datalist .*missing.json does not exist"):
        study.main(["--finetune_datalist", str(tmp_path / "missing.json"), "--output_dir", str(tmp_path)])
