"""Preparing a MONAI Label app that serves our bundles: ``python -m maskseg_monai.apps.label``.

MONAI Label's ``monaibundle`` sample app (Project-MONAI/MONAILabel, shipped with the ``monailabel`` package) wraps
each bundle found under ``<app_dir>/model/<name>`` in a bundle infer task and a bundle train task.
:func:`prepare_label_app` copies that sample app, then each of our bundles with its ``models/model.pt``, and
:func:`start_server_command` gives the offline ``monailabel start_server`` command line.

MONAI Label reads ``configs/inference.json`` alone; every bundle's ``inference.json`` runs alone (the Model Zoo's
form), so the bundles are copied as they are.

Needs the optional MONAI Label environment (``requirements-label.txt``, README "Serving with MONAI Label").
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import shlex
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from maskseg_monai.bundles import BUNDLES_DIR

__all__ = ["BUNDLES_DIR", "find_sample_app", "prepare_label_app", "start_server_command"]

SAMPLE_APP = "monaibundle"
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "logs", "model", "models", "runs", "outputs", "eval")


def find_sample_app(name: str = SAMPLE_APP) -> Path:
    """The folder of a MONAI Label sample app as installed with the ``monailabel`` package.

    The wheel installs ``sample-apps/`` as data files under ``<prefix>/monailabel/`` (not inside the package);
    the package's file list gives the exact place, with MONAI Label's own search paths as a fallback.

    Raises:
        ModuleNotFoundError: when ``monailabel`` is not installed.
        FileNotFoundError: when the sample app is not found.
    """
    try:
        dist = importlib.metadata.distribution("monailabel")
    except importlib.metadata.PackageNotFoundError as e:
        raise ModuleNotFoundError("monailabel is not installed: pip install -r requirements-label.txt") from e
    marker = f"sample-apps/{name}/main.py"
    candidates = [
        Path(dist.locate_file(f)).parent for f in dist.files or [] if str(f).replace(os.sep, "/").endswith(marker)
    ]
    candidates += [
        Path(p) / "monailabel" / "sample-apps" / name for p in (sys.prefix, os.path.join(sys.prefix, "local"))
    ]
    for folder in candidates:
        if (folder / "main.py").is_file():
            return folder.resolve()
    raise FileNotFoundError(f"MONAI Label sample app '{name}' not found; looked in: {[str(c) for c in candidates]}.")


def prepare_label_app(
    app_dir: str | os.PathLike,
    bundles: Sequence[str] = ("unetr_seg",),
    model_files: Mapping[str, str | os.PathLike] | None = None,
    bundles_dir: str | os.PathLike = BUNDLES_DIR,
) -> Path:
    """Write a MONAI Label ``monaibundle`` app serving our bundles from local copies (no network needed).

    ``app_dir`` receives the sample app's files and, for each bundle, ``model/<name>/``: a copy of
    ``bundles/<name>`` (without outputs) with ``models/model.pt``. Existing files of the same names are replaced;
    other files are kept.

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
        ModuleNotFoundError: when ``monailabel`` is not installed.

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
    shutil.copytree(find_sample_app(), app, ignore=_IGNORE, dirs_exist_ok=True)
    for name in bundles:
        target = app / "model" / name
        shutil.copytree(Path(bundles_dir) / name, target, ignore=_IGNORE, dirs_exist_ok=True)
        (target / "models").mkdir(exist_ok=True)
        shutil.copyfile(model_files[name], target / "models" / "model.pt")
    return app


def start_server_command(
    app_dir: str | os.PathLike,
    studies: str | os.PathLike,
    models: Sequence[str] = ("unetr_seg",),
    host: str = "127.0.0.1",
    port: int = 8000,
) -> list[str]:
    """``monailabel start_server`` arguments serving ``models`` offline: local bundle copies, no SAM2 download.

    Run it with the MONAI Label environment activated (its launcher calls ``python``).
    """
    return ["monailabel", "start_server", "--app", str(app_dir), "--studies", str(studies),
            "--conf", "models", ",".join(models), "--conf", "zoo_source", "github", "--conf", "sam2", "false",
            "--host", host, "--port", str(port)]  # fmt: skip


def _model_arg(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH (e.g. unetr_seg=models/model.pt), got '{text}'.")
    return name, path


def main(argv: Sequence[str] | None = None) -> int:
    """Prepare the app and print the ``monailabel start_server`` command; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m maskseg_monai.apps.label",
        description="Prepare a MONAI Label monaibundle app serving our bundles and print the start_server command.",
    )
    parser.add_argument("--app_dir", required=True, help="app folder to write")
    parser.add_argument("--model", action="append", type=_model_arg, required=True, metavar="NAME=PATH",
                        help="a bundle to serve and its trained models/model.pt (repeatable)")  # fmt: skip
    parser.add_argument("--studies", default="studies", help="datastore folder for the printed command")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    models = dict(args.model)
    try:
        app = prepare_label_app(args.app_dir, bundles=list(models), model_files=models)
    except (ValueError, FileNotFoundError, ModuleNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(shlex.join(start_server_command(app, args.studies, list(models), args.host, args.port)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
