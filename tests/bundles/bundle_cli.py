"""Run bundles through ``python -m monai.bundle`` as users do; shared by the bundle tests."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
REQUIRED_META = [
    "version", "changelog", "monai_version", "pytorch_version", "numpy_version", "required_packages_version",
    "task", "description", "authors", "copyright", "network_data_format",
]  # fmt: skip
TINY = [
    "--hidden_size", "48", "--mlp_dim", "96", "--num_layers", "2", "--num_heads", "4",
    "--decoder_hidden_size", "48", "--decoder_mlp_dim", "96", "--decoder_num_layers", "1", "--decoder_num_heads", "4",
    "--steps_per_epoch", "6",
]  # fmt: skip


def run_bundle(name: str, *args: str, configs: tuple[str, ...] = ("train.json",)) -> subprocess.CompletedProcess:
    """``python -m monai.bundle ARGS --config_file ...`` for ``bundles/<name>``, run from the repository root."""
    cfg = REPO / "bundles" / name / "configs"
    files = [str(cfg / c) for c in configs]
    config_arg = files[0] if len(files) == 1 else str(files)
    cmd = [sys.executable, "-m", "monai.bundle", *args, "--config_file", config_arg,
           "--meta_file", str(cfg / "metadata.json"), "--logging_file", str(cfg / "logging.conf")]  # fmt: skip
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)


def ok(proc: subprocess.CompletedProcess) -> str:
    """The combined output of a successful run; fails the test with the tail of the output otherwise."""
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc.stdout + proc.stderr


def epoch_metric(log: str, name: str) -> list[float]:
    """Per-epoch values of a metric printed by MONAI's ``StatsHandler``."""
    return [float(v) for v in re.findall(rf"Epoch\[\d+\] Metrics -- .*?{name}: ([-0-9.]+)", log)]


def missing_metadata(name: str) -> list[str]:
    """Fields the MONAI Bundle specification requires that ``bundles/<name>/configs/metadata.json`` lacks."""
    meta = json.loads((REPO / "bundles" / name / "configs" / "metadata.json").read_text())
    return [k for k in REQUIRED_META if k not in meta]
