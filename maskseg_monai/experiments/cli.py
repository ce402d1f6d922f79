"""Command-line pieces shared by the experiment commands (sweep, ablation, study)."""

from __future__ import annotations

import argparse
import ast
import json
import shlex
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from maskseg_monai.experiments.evaluate import DEFAULT_SMALL_AREA, DEFAULT_SMALL_DILATION
from maskseg_monai.experiments.runner import DEFAULT_DEMO_SET, DEFAULT_EPOCHS
from maskseg_monai.metrics.segmentation import SIZE_THRESHOLDS

__all__ = [
    "parse_override",
    "check_run_inputs",
    "add_common_arguments",
    "add_seed_arguments",
    "add_small_object_arguments",
    "add_segmentation_arguments",
    "add_multi_bundle_arguments",
    "parse_overrides",
    "check_seeds",
    "parse_command",
    "command_line",
    "COMMON_RESERVED_KEYS",
    "DEFAULT_SEEDS",
]

#: training seeds of every cell: a claim needs an effect larger than the spread between at least three seeds
DEFAULT_SEEDS: tuple[int, ...] = (0, 1, 2)

#: bundle keys every command sets itself, and the option that sets them
COMMON_RESERVED_KEYS: dict[str, str] = {
    "epochs": "--epochs",
    "demo_set": "--demo_set",
    "datalist": "--datalist",
    "bundle_root": "--output_dir",
}


def parse_override(text: str, reserved: Mapping[str, str] | None = None, tool: str = "the command") -> tuple[str, Any]:
    """Parse one ``key=value`` bundle override; the value is read as JSON, then as a Python literal, else a string.

    Args:
        text: e.g. ``"hidden_size=48"``, ``"amp=false"``, ``"train#dataloader#shuffle=False"``, ``"loss_region=all"``.
        reserved: keys the command sets itself -> the option that sets them.
        tool: how the error names the command, e.g. ``"the sweep"``.

    Returns:
        ``(key, value)``.

    Raises:
        ValueError: without ``=``, with an empty key, or for a ``reserved`` key.

    Example:
        >>> parse_override("hidden_size=48"), parse_override("amp=false"), parse_override("loss_region=all")
        (('hidden_size', 48), ('amp', False), ('loss_region', 'all'))
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ValueError(f"--override expects key=value, got {text!r}.")
    if reserved and key in reserved:
        raise ValueError(f"--override {key}=... is set by {tool}; use {reserved[key]} instead.")
    raw = raw.strip()
    for parse in (json.loads, ast.literal_eval):
        try:
            return key, parse(raw)
        except (ValueError, SyntaxError):
            continue
    return key, raw


def check_run_inputs(
    config_file: str | Path,
    datalist: str | Path | None,
    epochs: int,
    overrides: Mapping[str, Any],
    reserved: Mapping[str, str],
    tool: str = "the command",
) -> None:
    """Fail before any training on a missing file, ``epochs < 1`` or an override the command sets itself.

    Raises:
        FileNotFoundError: when ``config_file`` or ``datalist`` does not exist.
        ValueError: on ``epochs < 1`` or a ``reserved`` key in ``overrides``.
    """
    if not Path(config_file).is_file():
        raise FileNotFoundError(f"--config_file {config_file} does not exist.")
    if datalist is not None and not Path(datalist).is_file():
        raise FileNotFoundError(f"--datalist {datalist} does not exist.")
    if epochs < 1:
        raise ValueError(f"--epochs must be at least 1, got {epochs}.")
    clash = sorted(set(overrides) & set(reserved))
    if clash:
        raise ValueError(f"overrides {clash} are set by {tool}; use {[reserved[k] for k in clash]}.")


def check_seeds(seeds: Sequence[int]) -> list[int]:
    """The training seeds as ints.

    Raises:
        ValueError: on no seed or a repeated one.
    """
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds must list one or more distinct seeds, got {seeds}.")
    return seeds


def add_seed_arguments(ap: argparse.ArgumentParser) -> None:
    """``--seeds`` (training seeds, default :data:`DEFAULT_SEEDS`) and ``--eval_seed`` (evaluation masks and
    baseline fits, the same for every training seed)."""
    seeds = " ".join(map(str, DEFAULT_SEEDS))
    ap.add_argument(
        "--seeds", type=int, nargs="+", default=list(DEFAULT_SEEDS), help=f"training seeds (default {seeds})"
    )
    ap.add_argument(
        "--eval_seed", type=int, default=0,
        help="seed of the evaluation masks and of the training crops the baselines are fitted on (default 0)",
    )  # fmt: skip


def add_small_object_arguments(ap: argparse.ArgumentParser) -> None:
    """``--small_area`` and ``--small_dilation``: the small-object region, fixed in pixels whatever the patch size
    (:func:`~maskseg_monai.experiments.evaluate.check_small_region`)."""
    ap.add_argument(
        "--small_area", type=int, default=None,
        help="per-class connected components of fewer pixels (voxels) are small objects, the same for every patch "
        f"size (default {DEFAULT_SMALL_AREA[2]} in 2D, {DEFAULT_SMALL_AREA[3]} in 3D)",
    )  # fmt: skip
    ap.add_argument(
        "--small_dilation", type=int, default=None,
        help=f"grow the small objects by this many pixels to include their rims (default {DEFAULT_SMALL_DILATION})",
    )  # fmt: skip


def add_common_arguments(ap: argparse.ArgumentParser, default_output_dir: str, bundle: str) -> None:
    """The options every experiment command has: data, schedule, output, config, progress bar and overrides."""
    ap.add_argument(
        "--epochs", type=int, default=DEFAULT_EPOCHS,
        help=f"training epochs of every cell, of the bundle's steps_per_epoch batches (default {DEFAULT_EPOCHS})",
    )  # fmt: skip
    ap.add_argument("--demo_set", default=DEFAULT_DEMO_SET, help=f"built-in demo set (default {DEFAULT_DEMO_SET})")
    ap.add_argument("--datalist", default=None, help="a MONAI datalist JSON to use instead of a demo set")
    ap.add_argument("--output_dir", default=default_output_dir, help=f"default {default_output_dir}")
    ap.add_argument(
        "--config_file", default=None, help=f"the {bundle.upper()} bundle's train.json (default: the repository's)"
    )
    ap.add_argument("--progress_bar", action="store_true", help="keep the bundle's per-iteration progress bars")
    ap.add_argument(
        "--override", action="append", default=[], metavar="KEY=VALUE",
        help="bundle override for every cell, repeatable (e.g. --override hidden_size=96)",
    )  # fmt: skip


def add_segmentation_arguments(ap: argparse.ArgumentParser) -> None:
    """The options of a segmentation evaluation: ``--size_thresholds`` and ``--iou_threshold``."""
    ap.add_argument(
        "--size_thresholds", type=int, nargs="+", default=list(SIZE_THRESHOLDS),
        help="object-size bucket edges in pixels/voxels; the first bucket is 'small' (default 16 64)",
    )  # fmt: skip
    ap.add_argument("--iou_threshold", type=float, default=0.5, help="IoU of a detection match (default 0.5)")


def add_multi_bundle_arguments(ap: argparse.ArgumentParser, default_output_dir: str, example: str) -> None:
    """The options of a command that runs several bundles: ``--output_dir``, ``--progress_bar`` and ``--override``
    (each given to every bundle that declares its key).

    Args:
        ap: the command's parser.
        default_output_dir: the default ``--output_dir``.
        example: the examples that end the ``--override`` help, e.g. ``"--override hidden_size=96 for all"``.
    """
    ap.add_argument("--output_dir", default=default_output_dir, help=f"default {default_output_dir}")
    ap.add_argument("--progress_bar", action="store_true", help="keep the bundles' per-iteration progress bars")
    ap.add_argument(
        "--override", action="append", default=[], metavar="KEY=VALUE",
        help=f"bundle override, repeatable, given to every bundle that declares KEY (e.g. {example})",
    )  # fmt: skip


def parse_overrides(
    ap: argparse.ArgumentParser, texts: Sequence[str], reserved: Mapping[str, str], tool: str
) -> dict[str, Any]:
    """The ``--override`` values as ``key -> value`` (:func:`parse_override`); a malformed or reserved one ends
    the program with ``ap.error``."""
    try:
        return dict(parse_override(v, reserved, tool) for v in texts)
    except ValueError as err:
        ap.error(str(err))


def parse_command(
    ap: argparse.ArgumentParser, argv: Sequence[str] | None, module: str, reserved: Mapping[str, str], tool: str
) -> tuple[argparse.Namespace, dict[str, Any]]:
    """Parse a command line of an experiment command built with :func:`add_common_arguments`.

    A malformed or reserved ``--override`` ends the program with ``ap.error``.

    Args:
        ap: the command's parser.
        argv: the arguments (without the program name). Defaults to ``sys.argv[1:]``.
        module: the command's module, e.g. ``"maskseg_monai.experiments.sweep"``, for the command line in
            ``results.md``.
        reserved: bundle keys the command sets itself -> the option that sets them.
        tool: how errors name the command, e.g. ``"the sweep"``.

    Returns:
        the parsed arguments and the keyword arguments the common options give the command's ``run_*``
        function: ``epochs``, ``demo_set``, ``datalist``, ``output_dir``, ``config_file``, ``overrides``,
        ``command`` and ``progress_bar``.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = ap.parse_args(argv)
    overrides = parse_overrides(ap, args.override, reserved, tool)
    common = {k: getattr(args, k) for k in ("epochs", "demo_set", "datalist", "output_dir", "config_file")}
    common.update(overrides=overrides, command=command_line(module, argv), progress_bar=args.progress_bar)
    return args, common


def command_line(module: str, argv: Sequence[str]) -> str:
    """The shell command that ran ``python -m module argv``, as recorded in ``results.md``."""
    return shlex.join(["python", "-m", module, *argv])
