"""``multi_gpu_train.json`` under torchrun with 2 CPU processes on the gloo backend."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from bundle_cli import REPO, TINY


@pytest.mark.parametrize("name, port", [("amlp", "29517"), ("mae", "29518")])
def test_two_process_ddp_training(tmp_path, name, port):
    cfg = REPO / "bundles" / name / "configs"
    configs = str([str(cfg / "train.json"), str(cfg / "multi_gpu_train.json")])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port,
           "-m", "monai.bundle", "run", "training", "--config_file", configs,
           "--meta_file", str(cfg / "metadata.json"), "--logging_file", str(cfg / "logging.conf"),
           "--bundle_root", str(tmp_path), "--epochs", "2", "--val_interval", "2", *TINY]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    models = sorted(p.name for p in (tmp_path / "models").iterdir())
    assert models == ["checkpoint_epoch=2.pt", "encoder.pt", "model.pt", "model_final.pt"]
    final = torch.load(tmp_path / "models" / "model_final.pt", weights_only=True)
    # each rank saw half of the 48 training tiles: 3 steps of batch 8 per epoch (6 on a single process)
    assert final["trainer"]["iteration"] == 2 * 3
    if name == "amlp":
        assert final["model"]["mps_step"].item() == 2 * 3
    assert len(list((tmp_path / "runs").glob("events.out.tfevents.*"))) >= 1
