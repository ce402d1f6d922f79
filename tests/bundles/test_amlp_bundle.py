"""The AMLP bundle (the project's main job) run through ``python -m monai.bundle``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from bundle_cli import REPO, TINY, epoch_metric, missing_metadata, ok, run_bundle
from PIL import Image

CONFIGS = REPO / "bundles" / "amlp" / "configs"


def bundle(*args: str, configs: tuple[str, ...] = ("train.json",)):
    return run_bundle("amlp", *args, configs=configs)


def test_metadata_and_verify_net_in_out():
    assert not missing_metadata("amlp")
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    assert meta["network_data_format"]["outputs"]["pred"]["num_channels"] == 4
    assert "training" in json.loads((CONFIGS / "train.json").read_text())
    assert "verified with no error" in ok(bundle("verify_net_in_out", "network_def"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("amlp_bundle")
    log = ok(bundle("run", "training", "--bundle_root", str(root), "--epochs", "6", "--val_interval", "3",
                    "--warmup_epochs", "1", "--mps_warmup", "12", *TINY))  # fmt: skip
    return root, log


def test_training_runs_every_component(trained):
    root, log = trained
    losses, ratios = epoch_metric(log, "train_loss"), epoch_metric(log, "mask_ratio")
    assert len(losses) == 6 and losses[-1] < 0.5 * losses[0], losses
    assert ratios == sorted(ratios) and ratios[0] < 0.4 and ratios[-1] == pytest.approx(0.75)
    assert len(epoch_metric(log, "train_ccl")) == 6 and len(epoch_metric(log, "train_arl")) == 6
    final = torch.load(root / "models" / "model_final.pt", weights_only=True)
    assert final["amr"]["ratio"] == pytest.approx(0.75)
    assert final["model"]["mps_step"].item() == 6 * 6  # 6 epochs of steps_per_epoch 6
    enc = torch.load(root / "models" / "encoder.pt", weights_only=True)
    assert "blocks.1.mlp.linear1.weight" in enc["state_dict"]


def test_inference_writes_mps_panels(trained, tmp_path):
    root, _ = trained
    Image.fromarray((np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8)).save(tmp_path / "a.png")
    ok(bundle("run", "inference", "--bundle_root", str(root), "--input_dir", str(tmp_path), *TINY,
              configs=("train.json", "inference.json")))  # fmt: skip
    panel = np.asarray(Image.open(root / "outputs" / "a_mae.png"))
    assert panel.shape == (18 + 192 + 18, 5 * 192 + 4 * 4, 3)  # 64 px enlarged 3x, titled, captioned


def test_everything_off_is_mae(tmp_path):
    log = ok(bundle("run", "training", "--bundle_root", str(tmp_path), "--epochs", "2", "--val_interval", "2",
                    "--use_mps", "false", "--arl_weight", "0", "--ccl_weight", "0", "--use_amr", "false",
                    "--mask_ratio", "0.5", *TINY))  # fmt: skip
    assert epoch_metric(log, "mask_ratio") == [0.5, 0.5]
    losses = epoch_metric(log, "train_loss")
    assert len(losses) == 2 and losses[1] < losses[0]
    model = torch.load(tmp_path / "models" / "model_final.pt", weights_only=True)["model"]
    assert model["mps_step"].item() == 2 * 6


def test_fewer_epochs_than_val_interval_still_give_a_model_to_evaluate_and_infer(tmp_path):
    """``--epochs 1`` with the default ``val_interval`` (2): validation is capped at the last epoch."""
    log = ok(bundle("run", "training", "--bundle_root", str(tmp_path), "--epochs", "1", *TINY))
    assert re.search(r"val_psnr_masked: [0-9.]+", log) and (tmp_path / "models" / "model.pt").is_file()
    ok(bundle("run", "--bundle_root", str(tmp_path), *TINY, configs=("train.json", "evaluate.json")))
    assert "val_psnr_masked" in (tmp_path / "eval" / "metrics.csv").read_text()
    (tmp_path / "in").mkdir()
    Image.fromarray((np.random.default_rng(1).random((64, 64)) * 255).astype(np.uint8)).save(tmp_path / "in" / "b.png")
    ok(bundle("run", "inference", "--bundle_root", str(tmp_path), "--input_dir", str(tmp_path / "in"), "--amp", "false",
              *TINY, configs=("train.json", "inference.json")))  # fmt: skip
    assert (tmp_path / "outputs" / "b_mae.png").is_file()
