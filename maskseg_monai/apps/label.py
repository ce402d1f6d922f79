"""Preparing a MONAI Label app that serves our bundles: ``python -m maskseg_monai.apps.label``.

:func:`prepare_label_app` writes an app folder for MONAI Label's server: a ``main.py`` naming
:class:`maskseg_monai.apps.label_app.MaskSegApp` (MONAI Label's ``monaibundle`` sample app plus a one-shot task whose
support is a labelled image of the datastore, trainers that publish only a finished round's model, a clean stop)
and, for each bundle, ``model/<name>/``: a copy of the bundle with its ``models/model.pt``.
:func:`start_server_command` gives the offline ``monailabel start_server`` command line.

Every bundle's ``inference.json`` runs alone (the Model Zoo's form), which is what MONAI Label reads, so the bundles
are copied as they are. Preparing needs only this package; serving needs the MONAI Label environment
(``requirements-label.txt``, README "Serving with MONAI Label").
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from maskseg_monai.bundles import BUNDLES_DIR
from maskseg_monai.utils import atomic_write

__all__ = ["BUNDLES_DIR", "MAIN_PY", "prepare_label_app", "start_server_command"]

_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "logs", "model", "models", "runs", "outputs", "eval", "cache",
                                 "demo_data", "train_runs")  # fmt: skip

MAIN_PY = (
    '"""MONAI Label app serving maskseg-monai bundles (written by python -m maskseg_monai.apps.label)."""\n\n'
    "from monailabel.interfaces.app import MONAILabelApp  # noqa: F401 (MONAI Label looks for its subclasses here)\n\n"
    "from maskseg_monai.apps.label_app import MaskSegApp  # noqa: F401\n"
)


def prepare_label_app(
    app_dir: str | os.PathLike,
    bundles: Sequence[str] = ("unetr_seg",),
    model_files: Mapping[str, str | os.PathLike] | None = None,
    bundles_dir: str | os.PathLike = BUNDLES_DIR,
) -> Path:
    """Write a MONAI Label app serving our bundles from local copies (no network needed).

    ``app_dir`` receives ``main.py`` (:data:`MAIN_PY`) and, for each bundle, ``model/<name>/``: a copy of
    ``bundles/<name>`` (without outputs) with ``models/model.pt``. Existing files of the same names are replaced;
    other files are kept. ``main.py`` and each model are written through :func:`~maskseg_monai.utils.atomic_write`,
    so a served app never sees half a model.

    Args:
        app_dir: the app folder (created if needed).
        bundles: names of the bundles under ``bundles_dir`` to serve.
        model_files: ``{name: path}`` of each bundle's trained weights (a MONAI ``CheckpointSaver`` file or a bare
            state dict), copied to ``model/<name>/models/model.pt``. MONAI Label ignores a bundle without one.
        bundles_dir: the folder holding the bundles (default: this repository's ``bundles/``).

    Returns:
        The app folder, absolute.

    Raises:
        ValueError: when ``model_files`` names a bundle not in ``bundles``, or a bundle has no model file.
        FileNotFoundError: when a bundle or model file does not exist.

    Example::

        app = prepare_label_app("apps/maskseg", model_files={"unetr_seg": "models/model.pt"})
        print(start_server_command(app, "studies", ["unetr_seg"]))
    """
    bundles = list(bundles)
    model_files = dict(model_files or {})
    unknown = sorted(set(model_files) - set(bundles))
    if unknown:
        raise ValueError(f"model_files names {unknown}, which are not among the bundles to serve {bundles}.")
    missing = [b for b in bundles if b not in model_files]
    if missing:
        raise ValueError(f"no model file for {missing}: MONAI Label serves a bundle only with models/model.pt.")
    for name in bundles:
        if not (Path(bundles_dir) / name / "configs" / "inference.json").is_file():
            raise FileNotFoundError(f"{Path(bundles_dir) / name}: no bundle with configs/inference.json.")
        if not Path(model_files[name]).is_file():
            raise FileNotFoundError(f"{model_files[name]}: no such model file for bundle '{name}'.")

    app = Path(app_dir).resolve()
    app.mkdir(parents=True, exist_ok=True)
    atomic_write(app / "main.py", lambda tmp: Path(tmp).write_text(MAIN_PY))
    for name in bundles:
        target = app / "model" / name
        shutil.copytree(Path(bundles_dir) / name, target, ignore=_IGNORE, dirs_exist_ok=True)
        (target / "models").mkdir(exist_ok=True)
        atomic_write(target / "models" / "model.pt", lambda tmp, src=model_files[name]: shutil.copyfile(src, tmp))
    return app


def start_server_command(
    app_dir: str | os.PathLike,
    studies: str | os.PathLike,
    models: Sequence[str] = ("unetr_seg",),
    host: str = "127.0.0.1",
    port: int = 8000,
    epistemic_model: str | None = None,
) -> list[str]:
    """``monailabel start_server`` arguments serving ``models`` from the app's local copies (no download).

    ``epistemic_model`` adds epistemic scoring (MC dropout) with that segmentation bundle and the ``epistemic``
    active-learning strategy. Run it with the MONAI Label environment activated (its launcher calls ``python``).
    """
    cmd = ["monailabel", "start_server", "--app", str(app_dir), "--studies", str(studies),
           "--conf", "models", ",".join(models), "--host", host, "--port", str(port)]  # fmt: skip
    if epistemic_model:
        cmd[9:9] = ["--conf", "epistemic_model", epistemic_model]
    return cmd


def _model_arg(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH (e.g. unetr_seg=models/model.pt), got '{text}'.")
    return name, path


def main(argv: Sequence[str] | None = None) -> int:
    """Prepare the app and print the ``monailabel start_server`` command; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m maskseg_monai.apps.label",
        description="Prepare a MONAI Label app serving our bundles and print the start_server command.",
    )
    parser.add_argument("--app_dir", required=True, help="app folder to write")
    parser.add_argument("--model", action="append", type=_model_arg, required=True, metavar="NAME=PATH",
                        help="a bundle to serve and its trained models/model.pt (repeatable)")  # fmt: skip
    parser.add_argument("--studies", default="studies", help="datastore folder for the printed command")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--epistemic_model", default=None, metavar="NAME",
                        help="a served segmentation bundle to score unlabelled images with (MC dropout)")  # fmt: skip
    args = parser.parse_args(argv)
    models = dict(args.model)
    try:
        if args.epistemic_model and args.epistemic_model not in models:
            raise ValueError(f"--epistemic_model {args.epistemic_model} is not one of the --model names {list(models)}")
        app = prepare_label_app(args.app_dir, bundles=list(models), model_files=models)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(shlex.join(start_server_command(app, args.studies, list(models), args.host, args.port, args.epistemic_model)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
