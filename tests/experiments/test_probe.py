"""The probe command: a tiny real run through the command line, --resume, and the checks made before any training."""

from __future__ import annotations

import csv
import math
import shutil
from pathlib import Path

import pytest

from maskseg_monai.experiments import PRETRAIN_BUNDLES, probe

TINY = {
    "hidden_size": 48, "mlp_dim": 96, "num_layers": 2, "num_heads": 4,
    "decoder_hidden_size": 48, "decoder_mlp_dim": 96, "decoder_num_layers": 1, "decoder_num_heads": 4,
    "steps_per_epoch": 2, "batch_size": 4,
}  # fmt: skip
TINY_ARGS = [arg for k, v in TINY.items() for arg in ("--override", f"{k}={v}")]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"overrides": {"patch_size": 8}}, "set by the probe"),
        ({"seeds": [0, 0]}, "distinct seeds"),
        ({"patch_sizes": [5]}, "does not divide"),
        ({"overrides": {"hiden_size": 48}}, "hiden_size"),
        ({"probe_images": 49}, "--probe_images"),
        ({"pretrain_epochs": 0}, "--pretrain_epochs"),
    ],
)
def test_run_probe_fails_before_training(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        probe.run_probe(**{"patch_sizes": [16], "seeds": [0], "output_dir": tmp_path, **kwargs})
    assert not (tmp_path / "runs").exists() and not (tmp_path / "results.csv").exists()


def _argv(out: Path, *extra: str) -> list[str]:
    return ["--patch_sizes", "8", "16", "--seeds", "0", "--pretrain_epochs", "1", "--output_dir", str(out),
            *TINY_ARGS, *extra]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_probe(tmp_path_factory) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("probe")
    return out, probe.main(_argv(out))


@pytest.mark.slow
def test_tiny_probe_writes_results(tiny_probe):
    tmp_path, rows = tiny_probe
    with open(tmp_path / "results.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [(r["arm"], r["patch_size"], r["seed"]) for r in table] == [
        (arm, p, "0") for p in ("8", "16") for arm in probe.ARMS
    ]
    columns = list(table[0])
    assert columns[:14] == [
        "arm", "patch_size", "seed", "pretrain_epochs", "steps", "train_loss", "pretrain_seconds", "probe_loss",
        "probe_seconds", "dice", "dice_small", "f1", "precision", "recall",
    ]  # fmt: skip
    assert {"dice_lt16", "dice_ge64", "dice_nucleus", "f1_nucleus"} <= set(columns) and columns[-1] == "probe_images"
    for r in table:
        assert 0 <= float(r["dice"]) <= 1 and float(r["dice_small"]) == float(r["dice_lt16"])
        assert math.isfinite(float(r["probe_loss"])) and len(r["probe_images"].split(";")) == 4
        assert r["steps"] == ("0" if r["arm"] == "random" else "2")  # 1 epoch of steps_per_epoch=2 batches
    assert len({r["probe_images"] for r in table}) == 1  # one seed: the same k images for every arm and patch
    assert rows[0]["dice"] == pytest.approx(float(table[0]["dice"]), rel=1e-4)
    for b in PRETRAIN_BUNDLES:
        for p in (8, 16):
            assert (tmp_path / "runs" / f"{b}_p{p}_seed0" / "models" / "encoder.pt").is_file()

    md = (tmp_path / "results.md").read_text()
    assert md.splitlines()[3].startswith("python -m maskseg_monai.experiments.probe --patch_sizes 8 16 --seeds 0")
    assert "Partial results" not in md and "| 8 | random | 1 |" in md and "| 16 | amlp | 1 |" in md
    gains = md.split("## Gain over the random-init encoder")[1].split("##")[0]
    assert "| 8 | mae | 1 |" in gains and "| 16 | amlp | 1 |" in gains and "random |" not in gains
    assert "`hidden_size=48`" in md and "demo set `nuclei2d_regions`" in md and "k = 4 of its 48" in md
    assert not list(Path(tmp_path).glob(".tmp-*"))


@pytest.mark.slow
def test_resume_keeps_the_finished_runs_and_runs_the_rest(tiny_probe, tmp_path):
    out = tmp_path / "probe"
    shutil.copytree(tiny_probe[0], out)
    lines = (out / "results.csv").read_text().splitlines()
    (out / "results.csv").write_text("\n".join(lines[:-1]) + "\n")  # stopped before its last run (amlp, patch 16)
    logs = []
    rows = probe.run_probe([8, 16], [0], 1, output_dir=out, overrides=TINY, log=logs.append, resume=True)
    assert "--resume: 5 of 6 runs kept" in logs[0]
    assert [line for line in logs if "training" in line] == ["pretrain amlp, patch 16, seed 0: training 1 epoch(s) ..."]
    after = (out / "results.csv").read_text().splitlines()
    assert after[:-1] == lines[:-1] and len(rows) == 6 and after[-1].startswith("amlp,16,0,1,2,")
    logs.clear()
    probe.run_probe([8, 16], [0], 1, output_dir=out, overrides=TINY, log=logs.append, resume=True)
    assert not [line for line in logs if "training" in line]  # all kept: nothing trains
    assert (out / "results.csv").read_text().splitlines() == after
