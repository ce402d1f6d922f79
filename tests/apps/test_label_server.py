"""Our bundles served by a real MONAI Label server (``MaskSegApp``): UNETR segmentation (infer, train, epistemic
scoring, active learning), one-shot segmentation with a support from the datastore (single and batch), clean stop.

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
N_LABELLED = 16  # 0.2 validation split leaves 13 for training: one batch of 8 (the bundle drops the last)
NUCLEUS = 3  # the nuclei tiles' label value in the oneshot_real2d demo set
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
JSON = {"Content-Type": "application/json"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(url: str, data: bytes | None = None, headers: dict | None = None, timeout: float = 300,
             method: str | None = None) -> bytes:  # fmt: skip
    method = method or ("POST" if data is not None else "GET")
    req = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.read()


def _form(**fields) -> bytes:
    return urllib.parse.urlencode({k: json.dumps(v) if isinstance(v, dict) else v for k, v in fields.items()}).encode()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tree(folder: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``folder``."""
    return {str(p.relative_to(folder)): _sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def _train_bundle(name: str, root: Path, *args: str) -> Path:
    """The bundle's own training (``python -m monai.bundle run training``) on its built-in demo set."""
    configs = REPO / "bundles" / name / "configs"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", str(configs / "train.json"),
           "--meta_file", str(configs / "metadata.json"), "--logging_file", str(configs / "logging.conf"),
           "--bundle_root", str(root), *args]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root / "models" / "model.pt"


def _read_mask(body: bytes, folder: Path) -> np.ndarray:
    """A returned mask as ``[rows, columns]``: MONAI Label writes the input's format (PNG for PNG input)."""
    from PIL import Image

    assert body.startswith(b"\x89PNG"), body[:200]
    (folder / "mask.png").write_bytes(body)
    return np.asarray(Image.open(folder / "mask.png"))


def _png(path: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path))


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


class Server:
    """A ``monailabel start_server`` process on a free port, with the test's environment (CPU, one thread)."""

    def __init__(self, app: Path, studies: Path, models: list[str], log: Path, epistemic_model: str | None = None):
        from maskseg_monai.apps.label import start_server_command

        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = log
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
               "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}  # fmt: skip
        cmd = start_server_command(app, studies, models, port=self.port, epistemic_model=epistemic_model)
        cmd[0] = str(Path(sys.executable).parent / "monailabel")
        with open(log, "w") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def text(self) -> str:
        return self.log.read_text()[-6000:]

    def get(self, path: str, timeout: float = 60) -> dict:
        return json.loads(_request(f"{self.base}{path}", timeout=timeout))

    def post(self, path: str, data: bytes = b"", headers: dict | None = None, timeout: float = 300) -> bytes:
        return _request(f"{self.base}{path}", data=data, headers=headers or FORM, timeout=timeout)

    def error(self, path: str, data: bytes = b"") -> tuple[int, str]:
        """The HTTP status and detail of a request that must fail."""
        with pytest.raises(urllib.error.HTTPError) as e:
            self.post(path, data)
        return e.value.code, e.value.read().decode()

    def wait_info(self, timeout: float = 300) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"monailabel exited with {self.proc.returncode}:\n{self.text()}")
            try:
                return self.get("/info/", timeout=10)
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(2)
        pytest.fail(f"no answer from {self.base}/info/ within {timeout} s:\n{self.text()}")

    def wait_task(self, kind: str, timeout: float = 600) -> dict:
        """Poll ``/train/``, ``/scoring/`` or ``/batch/infer`` until the last task is neither submitted nor running."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.get(f"/{kind}" if kind == "batch/infer" else f"/{kind}/", timeout=10)
            if status.get("status") not in ("SUBMITTED", "RUNNING"):
                return status
            time.sleep(2)
        pytest.fail(f"{kind} still running after {timeout} s:\n{self.text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def unetr_model(tmp_path_factory) -> tuple[Path, Path]:
    """One epoch of unetr_seg's own training (served sizes) on its nuclei2d demo set: ``(model.pt, demo folder)``."""
    root = tmp_path_factory.mktemp("unetr_seg")
    model = _train_bundle("unetr_seg", root, "--epochs", "1", "--val_interval", "1")
    return model, root / "demo_data" / "nuclei2d"


@pytest.fixture(scope="module")
def oneshot_model(tmp_path_factory) -> tuple[Path, Path]:
    """The one-shot bundle's default training (real images, no labels), shortened: ``(model.pt, demo folder)``."""
    root = tmp_path_factory.mktemp("oneshot")
    model = _train_bundle("oneshot", root, "--epochs", "4", "--val_interval", "4")
    return model, root / "demo_data" / "oneshot_real2d"


def _write_unetr_studies(demo: Path, studies: Path) -> list[str]:
    """Labelled nuclei tiles (labels under ``labels/final``) and unlabelled ones, one of them non-square."""
    datalist = json.loads((demo / "dataset.json").read_text())
    (studies / "labels" / "final").mkdir(parents=True)
    for item in datalist["training"][:N_LABELLED]:
        image, label = demo / item["image"], demo / item["label"]
        shutil.copyfile(image, studies / image.name)
        shutil.copyfile(label, studies / "labels" / "final" / image.name)
    from PIL import Image

    tile = _png(demo / datalist["validation"][0]["image"])
    Image.fromarray(np.ascontiguousarray(tile[:40, :56])).save(studies / "query.png")
    for item in datalist["validation"][1:3]:
        shutil.copyfile(demo / item["image"], studies / Path(item["image"]).name)
    return ["query"] + [Path(item["image"]).stem for item in datalist["validation"][1:3]]


def test_unetr_seg_infer_score_and_train(unetr_model, tmp_path):
    from maskseg_monai.apps.label import prepare_label_app

    model_pt, demo = unetr_model
    app = prepare_label_app(tmp_path / "app", bundles=("unetr_seg",), model_files={"unetr_seg": model_pt})
    bundle = app / "model" / "unetr_seg"
    served = bundle / "models" / "model.pt"
    studies = tmp_path / "studies"
    unlabelled = _write_unetr_studies(demo, studies)
    before = _tree(bundle)

    server = Server(app, studies, ["unetr_seg"], tmp_path / "server.log", epistemic_model="unetr_seg")
    try:
        info = server.wait_info()
        assert "unetr_seg" in info["models"] and "unetr_seg" in info["trainers"], sorted(info["models"])
        assert info["models"]["unetr_seg"]["labels"] == {"nucleus": 1}
        assert "unetr_seg" in info["scoring"], info["scoring"]
        assert {"random", "first", "epistemic"} <= set(info["strategies"]), info["strategies"]

        # inference: a mask on the query image's grid, holding class indices
        body = server.post("/infer/unetr_seg?image=query&output=image", _form(params={"device": "cpu"}))
        mask = _read_mask(body, tmp_path)
        assert mask.shape == _png(studies / "query.png").shape == (40, 56), mask.shape
        assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}, np.unique(mask)

        # epistemic scoring (MC dropout) of the unlabelled images, then the epistemic strategy picks one of them;
        # MONAI Label scores once by itself at start-up: wait for that run, then ask for one
        assert server.wait_task("scoring")["status"] == "DONE", server.text()
        server.post("/scoring/unetr_seg", json.dumps({"device": "cpu", "max_workers": 1}).encode(), JSON)
        status = server.wait_task("scoring")
        assert status["status"] == "DONE", json.dumps(status, indent=1)[-3000:]
        objects = server.get("/datastore/?output=all")["objects"]
        scores = {i: objects[i]["image"]["info"].get("epistemic_entropy") for i in unlabelled}
        assert all(isinstance(s, float) and np.isfinite(s) and s >= 0 for s in scores.values()), scores
        picked = json.loads(server.post("/activelearning/epistemic", b"{}", JSON))
        assert picked["id"] == max(scores, key=scores.get), (picked, scores)

        # two short training rounds on the datastore's labelled images, each starting from the served model and
        # publishing a new one; nothing else of the served bundle changes
        request = {"max_epochs": 1, "val_split": 0.2, "device": "cpu", "multi_gpu": False}
        for _ in range(2):
            old = (_sha256(served), served.stat().st_mtime_ns)
            server.post("/train/unetr_seg", json.dumps(request).encode(), JSON)
            status = server.wait_task("train")
            assert status["status"] == "DONE", json.dumps(status, indent=1)[-5000:]
            assert served.stat().st_mtime_ns > old[1] and _sha256(served) != old[0], status.get("details")
        after = _tree(bundle)
        assert {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)} == {"models/model.pt"}
        text = server.log.read_text()
        assert text.count(f"Restored all variables from {served}") == 2, text[-5000:]
        assert len(list((app / "train_runs" / "unetr_seg").glob("*/models/model.pt"))) == 2
    finally:
        server.stop()


def test_stopping_the_server_ends_its_training(unetr_model, tmp_path):
    import psutil

    from maskseg_monai.apps.label import prepare_label_app

    model_pt, demo = unetr_model
    app = prepare_label_app(tmp_path / "app", bundles=("unetr_seg",), model_files={"unetr_seg": model_pt})
    bundle = app / "model" / "unetr_seg"
    studies = tmp_path / "studies"
    _write_unetr_studies(demo, studies)
    before = _tree(bundle)
    server = Server(app, studies, ["unetr_seg"], tmp_path / "server.log")
    try:
        server.wait_info()
        request = {"max_epochs": 50, "val_split": 0.2, "device": "cpu", "multi_gpu": False}
        server.post("/train/unetr_seg", json.dumps(request).encode(), JSON)
        deadline = time.monotonic() + 120
        while "Epoch[1] Complete" not in server.log.read_text():  # training is under way (a checkpoint is written)
            assert time.monotonic() < deadline, server.text()
            time.sleep(1)
        children = psutil.Process(server.proc.pid).children(recursive=True)
        assert children, "no training subprocess found"
        start = time.monotonic()
        os.kill(server.proc.pid, signal.SIGTERM)  # the server alone, as a user's kill or Ctrl-C does
        gone, alive = psutil.wait_procs(children, timeout=10)
        assert not alive, [p.cmdline() for p in alive]
        child_s = time.monotonic() - start
        server.proc.wait(timeout=20)
        print(f"after SIGTERM: training subprocess gone in {child_s:.1f} s, server in {time.monotonic() - start:.1f} s")
        assert "server stopping: killed the train subprocess" in server.log.read_text(), server.text()
        assert _tree(bundle) == before
    finally:
        server.stop()


def _write_oneshot_studies(demo: Path, studies: Path) -> dict[str, Path]:
    """The nuclei tiles of the demo's evaluation split, without labels: ``{image id: its label file}``."""
    datalist = json.loads((demo / "dataset.json").read_text())
    studies.mkdir()
    labels = {}
    for item in datalist["validation"]:
        if "nuclei" in item["image"]:
            image = demo / item["image"]
            shutil.copyfile(image, studies / image.name)
            labels[image.stem] = demo / item["label"]
    return labels


def test_oneshot_support_from_the_datastore(oneshot_model, tmp_path):
    from maskseg_monai.apps.label import prepare_label_app

    model_pt, demo = oneshot_model
    app = prepare_label_app(tmp_path / "app", bundles=("oneshot",), model_files={"oneshot": model_pt})
    bundle = app / "model" / "oneshot"
    studies = tmp_path / "studies"
    labels = _write_oneshot_studies(demo, studies)
    support, query, *rest = sorted(labels)
    before = _tree(bundle)
    server = Server(app, studies, ["oneshot"], tmp_path / "server.log")
    try:
        info = server.wait_info()
        assert "oneshot" in info["models"] and "oneshot" in info["trainers"], info["trainers"]
        assert {"support": "latest", "support_class": 0}.items() <= info["models"]["oneshot"]["config"].items()

        # no labelled image yet: a clear 409, no demo support
        code, detail = server.error(f"/infer/oneshot?image={query}&output=image", _form(params={"device": "cpu"}))
        assert code == 409 and "no image in the datastore has a saved final label" in detail, (code, detail)

        # an annotator saves the support's label and asks for the query's mask, through MONAI Label's own client
        # (the one its 3D Slicer plugin uses): label_info names the segments, the response is multipart
        from monailabel.client import MONAILabelClient

        client = MONAILabelClient(server.base, tmpdir=str(tmp_path / "client"))
        label_info = {"label_info": [{"name": "nucleus", "idx": NUCLEUS}]}
        client.save_label(support, str(labels[support]), tag="final", params=label_info)
        params = {"device": "cpu", "support": support, "support_class": "nucleus"}
        mask_file, result = client.infer("oneshot", query, params)
        mask, truth = _png(Path(mask_file)), _png(labels[query]) == NUCLEUS
        assert mask.dtype == np.uint8 and mask.shape == truth.shape and set(np.unique(mask)) <= {0, 1}
        dice, everything = _dice(mask, truth), _dice(np.ones_like(truth), truth)
        print(f"one-shot served Dice {dice:.3f} (all-pixels baseline {everything:.3f})")
        assert dice > max(0.5, everything + 0.1), (dice, everything)
        assert result["label_names"] == {"nucleus": 1} and result["support"] == [support], result
        assert result["support_class"] == NUCLEUS

        # 'latest' (the default) is the image whose final label was saved last: the same mask
        body = server.post(f"/infer/oneshot?image={query}&output=image", _form(params={"device": "cpu"}))
        assert np.array_equal(_read_mask(body, tmp_path), mask)

        # bad supports: 4xx naming the problem
        for bad, code, text in [
            ({"support": "no_such_image"}, 404, "no image 'no_such_image'"),
            ({"support": query}, 409, f"image '{query}' has no saved final label"),
            ({"support": support, "support_class": 2}, 422, "no pixel of class 2"),
            ({"support": support, "support_class": "tumour"}, 422, "neither a label value nor a label name"),
            ({"support": 7}, 400, "must be an image id"),
        ]:
            got = server.error(f"/infer/oneshot?image={query}&output=image", _form(params={"device": "cpu", **bad}))
            assert got[0] == code and text in got[1], (bad, got)

        # propagate to the rest: MONAI Label's batch inference saves an original label for every unlabelled image
        batch = {"device": "cpu", "support": support, "support_class": NUCLEUS, "save_label": True,
                 "label_tag": "original", "max_workers": 1, "multi_gpu": False}  # fmt: skip
        server.post("/batch/infer/oneshot?images=unlabeled", json.dumps(batch).encode(), JSON)
        status = server.wait_task("batch/infer")
        assert status["status"] == "DONE", json.dumps(status, indent=1)[-3000:]
        saved = studies / "labels" / "original"
        dices = {i: _dice(_png(saved / f"{i}.png"), _png(labels[i]) == NUCLEUS) for i in [query, *rest]}
        print(f"batch-propagated Dice: mean {np.mean(list(dices.values())):.3f} over {len(dices)} images")
        assert np.mean(list(dices.values())) > 0.5, dices
        assert not (saved / f"{support}.png").exists()

        # K-shot: a corrected propagated label joins the support set
        client.save_label(rest[0], str(labels[rest[0]]), tag="final", params=label_info)
        params = {"device": "cpu", "support": json.dumps([support, rest[0]]), "support_class": NUCLEUS}
        result = json.loads(server.post(f"/infer/oneshot?image={query}&output=json", _form(params=params)))
        assert result["support"] == [support, rest[0]], result
        assert _tree(bundle) == before

        # fine-tuning from the two saved labels through labelled episodes: a new served model, nothing else written
        served = bundle / "models" / "model.pt"
        old = _sha256(served)
        request = {"max_epochs": 1, "val_split": 0.0, "device": "cpu", "multi_gpu": False}
        server.post("/train/oneshot", json.dumps(request).encode(), JSON)
        status = server.wait_task("train")
        assert status["status"] == "DONE", json.dumps(status, indent=1)[-5000:]
        assert "one-shot fine-tuning on 2 labelled images, classes [3]" in server.log.read_text(), server.text()
        after = _tree(bundle)
        assert _sha256(served) != old
        assert {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)} == {"models/model.pt"}
        body = server.post(f"/infer/oneshot?image={query}&output=image", _form(params=params))
        assert _read_mask(body, tmp_path).shape == truth.shape
    finally:
        server.stop()
