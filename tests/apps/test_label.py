"""Preparing the MONAI Label app (``python -m maskseg_monai.apps.label``): runs without MONAI Label installed."""

from __future__ import annotations

import ast

import pytest

from maskseg_monai.apps.label import MAIN_PY, main, prepare_label_app, start_server_command
from maskseg_monai.bundles import BUNDLES_DIR


def test_prepare_writes_main_py_and_bundle_copies_with_their_models(tmp_path):
    model = tmp_path / "weights.pt"
    model.write_bytes(b"not really a checkpoint")
    (tmp_path / "app" / "keep.txt").parent.mkdir()
    (tmp_path / "app" / "keep.txt").write_text("mine")
    app = prepare_label_app(tmp_path / "app", bundles=("unetr_seg", "oneshot"),
                            model_files={"unetr_seg": model, "oneshot": model})  # fmt: skip
    assert (app / "main.py").read_text() == MAIN_PY
    tree = ast.parse(MAIN_PY)
    imported = {(n.module, a.name) for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert ("maskseg_monai.apps.label_app", "MaskSegApp") in imported
    for name in ("unetr_seg", "oneshot"):
        bundle = app / "model" / name
        assert (bundle / "models" / "model.pt").read_bytes() == model.read_bytes()
        assert (bundle / "configs" / "inference.json").read_bytes() == (
            BUNDLES_DIR / name / "configs" / "inference.json"
        ).read_bytes()
    assert (app / "keep.txt").read_text() == "mine"
    assert not [p for p in app.rglob("*") if p.name.startswith(".tmp") or p.name.endswith(".tmp")]


@pytest.mark.parametrize(
    "kwargs, error, text",
    [
        ({"bundles": ("unetr_seg",), "model_files": {}}, ValueError, "no model file for ['unetr_seg']"),
        ({"bundles": ("unetr_seg",), "model_files": {"mae": "x"}}, ValueError, "not among the bundles"),
        ({"bundles": ("nope",), "model_files": {"nope": "x"}}, FileNotFoundError, "no bundle with configs"),
        ({"bundles": ("unetr_seg",), "model_files": {"unetr_seg": "missing.pt"}}, FileNotFoundError, "missing.pt"),
    ],
)
def test_prepare_refuses_bad_arguments_and_writes_nothing(tmp_path, kwargs, error, text):
    with pytest.raises(error) as e:
        prepare_label_app(tmp_path / "app", **kwargs)
    assert text in str(e.value)
    assert not (tmp_path / "app").exists()


def test_start_server_command_serves_local_models_with_optional_scoring(tmp_path):
    cmd = start_server_command(tmp_path / "app", tmp_path / "studies", ["unetr_seg", "oneshot"], port=8123)
    assert cmd[:2] == ["monailabel", "start_server"]
    assert cmd[cmd.index("models") + 1] == "unetr_seg,oneshot" and cmd[cmd.index("--port") + 1] == "8123"
    assert "epistemic_model" not in cmd
    scored = start_server_command(tmp_path / "app", tmp_path / "studies", ["unetr_seg"], epistemic_model="unetr_seg")
    assert scored[scored.index("epistemic_model") + 1] == "unetr_seg"


def test_cli_prints_the_command_or_a_clear_error(tmp_path, capsys):
    model = tmp_path / "m.pt"
    model.write_bytes(b"x")
    assert main(["--app_dir", str(tmp_path / "app"), "--model", f"unetr_seg={model}", "--epistemic_model",
                 "unetr_seg"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert out.startswith("monailabel start_server") and "epistemic_model unetr_seg" in out
    assert main(["--app_dir", str(tmp_path / "app2"), "--model", f"unetr_seg={model}", "--epistemic_model",
                 "oneshot"]) == 2  # fmt: skip
    assert "--epistemic_model oneshot is not one of the --model names" in capsys.readouterr().err
    assert not (tmp_path / "app2").exists()
