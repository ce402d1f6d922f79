"""The AMLP bundle killed mid-training resumes from its last checkpoint; fixed-seed runs repeat exactly."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from bundle_cli import REPO, TINY

CONFIGS = REPO / "bundles" / "amlp" / "configs"
EPOCHS = 3
# 24 iterations per epoch, so a kill after the first checkpoint lands inside a later epoch
SHORT = ["--epochs", str(EPOCHS), "--val_interval", "2", "--batch_size", "2", "--mps_warmup", "12", *TINY,
         "--steps_per_epoch", "24"]  # fmt: skip


def command(root: Path, dataset_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", str(CONFIGS / "train.json"),
            "--meta_file", str(CONFIGS / "metadata.json"), "--logging_file", str(CONFIGS / "logging.conf"),
            "--bundle_root", str(root), "--dataset_dir", str(dataset_dir), *SHORT, *extra]  # fmt: skip


def train(root: Path, dataset_dir: Path, *extra: str) -> str:
    proc = subprocess.run(command(root, dataset_dir, *extra), cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc.stdout + proc.stderr


def iteration_losses(root: Path) -> list[float]:
    """Per-iteration ``train_loss`` written by the bundle's ``TensorBoardStatsHandler``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    losses = []
    for events in sorted((root / "runs").glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events))
        acc.Reload()
        if "train_loss" in acc.Tags()["scalars"]:
            losses += [e.value for e in acc.Scalars("train_loss")]
    return losses


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("resume_data")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data_dir) -> Path:
    root = tmp_path_factory.mktemp("amlp_full")
    train(root, data_dir)
    return root


@pytest.mark.slow
def test_fixed_seed_runs_repeat_exactly(uninterrupted, data_dir, tmp_path):
    train(tmp_path, data_dir)
    first, second = iteration_losses(uninterrupted), iteration_losses(tmp_path)
    assert len(first) == EPOCHS * (24 + 1) and first == second  # each iteration's loss, and each epoch's mean
    a = torch.load(uninterrupted / "models" / "model_final.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "models" / "model_final.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_killed_training_resumes_from_last_checkpoint(uninterrupted, data_dir, tmp_path):
    models = tmp_path / "models"
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(command(tmp_path, data_dir), cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 600
        while not list(models.glob("checkpoint_epoch=*.pt")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)  # into the next epoch (24 iterations long)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "first.log").read_text()[-3000:]
    assert not (models / "model_final.pt").exists()  # killed before the end
    saved = [int(re.search(r"=(\d+)", p.name).group(1)) for p in models.glob("checkpoint_epoch=*.pt")]
    assert len(saved) == 1 and 1 <= saved[0] < EPOCHS

    log = train(tmp_path, data_dir)  # the same command: resumes by default
    assert f"resuming from {models / f'checkpoint_epoch={saved[0]}.pt'} at epoch {saved[0]}" in log
    assert sorted(p.name for p in models.iterdir()) == [  # rotated, no temporary files left
        f"checkpoint_epoch={EPOCHS}.pt", "encoder.pt", "model.pt", "model_final.pt"]  # fmt: skip
    final = torch.load(models / "model_final.pt", weights_only=True)
    trainer = final["trainer"]
    assert trainer["iteration"] // trainer["epoch_length"] == EPOCHS and trainer["max_epochs"] == EPOCHS
    assert final["amr"]["ratio"] == pytest.approx(0.75)
    # the model loads into the bundle's network, and equals the uninterrupted run's (RNG state restored)
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    parser.update({k.lstrip("-"): int(v) for k, v in zip(TINY[::2], TINY[1::2])})
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(final["model"])
    full = torch.load(uninterrupted / "models" / "model_final.pt", weights_only=True)["model"]
    assert all(torch.equal(full[k], final["model"][k]) for k in full)

    log = train(tmp_path, data_dir, "--resume", "false")  # a fresh start ignores (and rotates away) the checkpoint
    assert f"resuming from {models}" not in log
    assert len(list(models.glob("checkpoint_epoch=*.pt"))) == 1


def test_corrupt_checkpoint_fails_naming_the_file(data_dir, tmp_path):
    (tmp_path / "models").mkdir()
    bad = tmp_path / "models" / "checkpoint_epoch=2.pt"
    bad.write_bytes(b"\x00" * 100)  # a truncated write
    proc = subprocess.run(command(tmp_path, data_dir), cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode != 0
    assert f"cannot resume training from {bad}: the file is truncated, corrupt" in proc.stdout + proc.stderr
