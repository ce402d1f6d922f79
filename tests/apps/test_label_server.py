"""The UNETR segmentation bundle served by a real MONAI Label server (``monaibundle`` app): info, infer, train.

Needs the optional MONAI Label environment (``requirements-label.txt``); skipped where ``monailabel`` is absent:

    /tmp/labelenv/bin/python -m pytest -q -m monailabel tests/apps/test_label_server.py
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytestmark = [
    pytest.mark.monailabel,
    pytest.mark.skipif(
        importlib.util.find_spec("monailabel") is None, reason="needs monailabel (requirements-label.txt)"
    ),
]

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "bundles" / "unetr_seg" / "configs"
MODEL = "unetr_seg"
N_LABELLED = 16  # 0.2 validation split leaves 13 for training: one batch of 8 (the bundle drops the last)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(url: str, data: bytes | None = None, headers: dict | None = None, timeout: float = 300) -> bytes:
    req = urllib.request.Request(url, data=data, headers=headers or {}, method="POST" if data is not None else "GET")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.read()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _train_bundle(root: Path) -> Path:
    """One epoch of the bundle's own training (served sizes), on the built-in nuclei2d demo set."""
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", str(CONFIGS / "train.json"),
           "--meta_file", str(CONFIGS / "metadata.json"), "--logging_file", str(CONFIGS / "logging.conf"),
           "--bundle_root", str(root), "--epochs", "1", "--val_interval", "1"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root / "models" / "model.pt"


def _write_studies(demo: Path, studies: Path) -> str:
    """Labelled nuclei tiles (labels under ``labels/final``) and one unlabelled, non-square query image."""
    from PIL import Image

    datalist = json.loads((demo / "dataset.json").read_text())
    (studies / "labels" / "final").mkdir(parents=True)
    for item in datalist["training"][:N_LABELLED]:
        image, label = demo / item["image"], demo / item["label"]
        shutil.copyfile(image, studies / image.name)
        shutil.copyfile(label, studies / "labels" / "final" / image.name)
    tile = np.asarray(Image.open(demo / datalist["validation"][0]["image"]))
    Image.fromarray(np.ascontiguousarray(tile[:40, :56])).save(studies / "query.png")
    return "query"


def _read_mask(body: bytes, folder: Path) -> np.ndarray:
    """A returned mask as ``[rows, columns]``: MONAI Label writes the input's format (PNG for PNG input)."""
    from PIL import Image

    if body.startswith(b"\x89PNG"):
        (folder / "mask.png").write_bytes(body)
        return np.asarray(Image.open(folder / "mask.png"))
    import nibabel as nib

    (folder / "mask.nii.gz").write_bytes(body)
    return np.asarray(nib.load(folder / "mask.nii.gz").dataobj).T  # MONAI's 2D layout is [columns, rows]


def _wait_info(base: str, server: subprocess.Popen, log: Path, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"monailabel exited with {server.returncode}:\n{log.read_text()[-5000:]}")
        try:
            return json.loads(_request(f"{base}/info/", timeout=10))
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(2)
    pytest.fail(f"no answer from {base}/info/ within {timeout} s:\n{log.read_text()[-5000:]}")


def _wait_train(base: str, log: Path, timeout: float = 600) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = json.loads(_request(f"{base}/train/", timeout=10))
        if status.get("status") not in ("SUBMITTED", "RUNNING"):
            return status
        time.sleep(3)
    pytest.fail(f"training still running after {timeout} s:\n{log.read_text()[-5000:]}")


def test_serve_infer_and_train(tmp_path):
    from PIL import Image

    from maskseg_monai.apps.label import prepare_label_app, start_server_command

    model_pt = _train_bundle(tmp_path / "bundle")
    app = prepare_label_app(tmp_path / "app", bundles=(MODEL,), model_files={MODEL: model_pt})
    served = app / "model" / MODEL / "models" / "model.pt"
    assert served.is_file() and (app / "main.py").is_file()
    studies = tmp_path / "studies"
    query = _write_studies(tmp_path / "bundle" / "demo_data" / "nuclei2d", studies)

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}  # fmt: skip
    cmd = start_server_command(app, studies, [MODEL], port=port)
    cmd[0] = str(Path(sys.executable).parent / "monailabel")
    log = tmp_path / "server.log"
    with open(log, "w") as out:
        server = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        info = _wait_info(base, server, log)
        assert MODEL in info["models"] and MODEL in info["trainers"], sorted(info["models"])
        assert info["models"][MODEL]["labels"] == {"nucleus": 1}

        # inference: a mask on the query image's grid, holding class indices
        form = urllib.parse.urlencode({"params": json.dumps({"device": "cpu"})}).encode()
        body = _request(f"{base}/infer/{MODEL}?image={query}&output=image", data=form,
                        headers={"Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip
        mask = _read_mask(body, tmp_path)
        assert mask.shape == np.asarray(Image.open(studies / f"{query}.png")).shape == (40, 56), mask.shape
        assert mask.dtype.kind in "iu" and set(np.unique(mask)) <= {0, 1}, np.unique(mask)

        # two short training rounds on the datastore's labelled images, each starting from the served model and
        # writing a new one (resume checkpoints of the first round must not turn the second into a no-op)
        request = {"max_epochs": 1, "val_split": 0.2, "device": "cpu", "multi_gpu": False}
        for _ in range(2):
            before = (_sha256(served), served.stat().st_mtime_ns)
            _request(f"{base}/train/{MODEL}", data=json.dumps(request).encode(),
                     headers={"Content-Type": "application/json"})  # fmt: skip
            status = _wait_train(base, log)
            assert status["status"] == "DONE", json.dumps(status, indent=1)[-5000:]
            details = "\n".join(status.get("details", []))
            assert served.stat().st_mtime_ns > before[1] and _sha256(served) != before[0], details
        text = log.read_text()
        assert text.count(f"Restored all variables from {served}") == 2, text[-5000:]
        assert "resuming from" not in text.replace("Engine run resuming from", ""), text[-5000:]
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(timeout=30)
