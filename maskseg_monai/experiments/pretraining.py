"""Pretrained-encoder arms, shared by the label-efficiency study and the dense linear probe.

Both experiments pretrain an encoder with each of the ``mae`` and ``amlp`` bundles and hand it on (to the UNETR
bundle, or to a linear probe). Both need the same pieces: the ``--override`` keys split between the bundles that
declare them, the encoder sizes checked equal in every bundle, one pretraining run trained, logged and released,
and ``--resume``'s choice of the rows of a stopped run that can be kept.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from monai.bundle import ConfigParser

from maskseg_monai.experiments.report import read_csv
from maskseg_monai.experiments.runner import DEFAULT_DEMO_SET, Cell, train_cell

__all__ = [
    "PRETRAIN_BUNDLES",
    "ENCODER_KEYS",
    "DEFAULT_PRETRAIN_DEMO_SET",
    "DEFAULT_LABELLED_DEMO_SET",
    "split_overrides",
    "check_encoder_sizes",
    "pretrain",
    "kept_rows",
]

#: the bundles that pretrain an encoder (each names an arm of the study and of the probe)
PRETRAIN_BUNDLES = ("mae", "amlp")
#: bundle keys that must resolve to the same value in the pretraining bundles and the bundle the encoder goes to
ENCODER_KEYS = (
    "spatial_dims", "in_channels", "img_size", "patch_size", "hidden_size", "mlp_dim", "num_layers", "num_heads",
)  # fmt: skip
#: the unlabelled pretraining data: the MAE/AMLP bundles' own (random crops of three quadrants of a real nuclei image)
DEFAULT_PRETRAIN_DEMO_SET = DEFAULT_DEMO_SET
#: the labelled images the study fine-tunes on and the probe is fitted on (the fourth quadrant is their validation)
DEFAULT_LABELLED_DEMO_SET = "nuclei2d"


def split_overrides(overrides: Mapping[str, Any], parsers: Mapping[str, ConfigParser]) -> dict[str, dict[str, Any]]:
    """Give each bundle the overrides whose key it declares (e.g. ``out_channels`` only to the UNETR).

    Args:
        overrides: ``key -> value`` overrides for every bundle (``--override``).
        parsers: bundle name -> its parsed config (:func:`~maskseg_monai.experiments.read_bundle`).

    Returns:
        bundle name -> the overrides it declares.

    Raises:
        ValueError: for a key that no bundle declares (most likely a typo).
    """
    unknown = [k for k in overrides if not any(k in p for p in parsers.values())]
    if unknown:
        raise ValueError(f"--override keys {unknown} are declared by none of the bundles {list(parsers)}.")
    return {name: {k: v for k, v in overrides.items() if k in p} for name, p in parsers.items()}


def check_encoder_sizes(parsers: Mapping[str, ConfigParser], keys: Sequence[str] = ENCODER_KEYS) -> dict[str, Any]:
    """Check that the encoder keys resolve to the same values in every bundle, so that an encoder transfers.

    Returns:
        ``key -> value`` of the shared encoder settings.

    Raises:
        ValueError: naming the first key whose values differ, with each bundle's value.
    """
    shared: dict[str, Any] = {}
    for key in keys:
        values = {name: p.get_parsed_content(key) for name, p in parsers.items()}
        if len({json.dumps(v, default=str) for v in values.values()}) > 1:
            raise ValueError(
                f"'{key}' differs between the bundles {values}; the encoder must have the same sizes in pretraining "
                f"and fine-tuning: pass --override {key}=<value> for all of them."
            )
        shared[key] = next(iter(values.values()))
    return shared


def pretrain(
    cell: Cell, config_file: str | Path, progress_bar: bool = False, log: Callable[[str], None] = print
) -> dict[str, float]:
    """Train one pretraining run (:func:`~maskseg_monai.experiments.train_cell`), log it and release its workflow;
    the bundle writes the encoder to ``models/encoder.pt`` under the run's ``bundle_root``.

    Returns:
        ``{"steps", "train_loss", "train_seconds"}`` of the run.
    """
    log(f"{cell.label}: training {cell.overrides.get('epochs', '?')} epoch(s) ...")
    workflow, info = train_cell(config_file, cell.overrides, progress_bar=progress_bar)
    del workflow
    gc.collect()
    log(f"{cell.label}: {info['steps']} steps in {info['train_seconds']:.0f} s, loss {info['train_loss']:.4f}")
    return info


def kept_rows(
    path: str | Path,
    planned: Mapping[tuple[Any, ...], Mapping[str, Any]],
    key: Sequence[str],
    log: Callable[[str], None] = print,
) -> dict[tuple[Any, ...], dict[str, Any]]:
    """``--resume``: the rows of an earlier run's ``results.csv`` that a planned run would make again.

    A row is kept when its ``key`` columns name a planned run and it has every value that run's entry asks for
    (compared as text, as the CSV holds them), e.g. the same pretraining epochs and steps.

    Args:
        path: the earlier run's ``results.csv`` (:func:`~maskseg_monai.experiments.write_csv`); none there keeps
            nothing.
        planned: the key of each planned run (its ``key`` columns' values) -> the values its row must have.
        key: the columns that name a run, e.g. ``("arm", "k", "seed")``.
        log: where the count of kept rows goes.

    Returns:
        run key -> the kept row (numbers parsed back, :func:`~maskseg_monai.experiments.read_csv`).

    Example:
        >>> import tempfile
        >>> from maskseg_monai.experiments import write_csv
        >>> csv = write_csv([{"arm": "mae", "seed": 0, "steps": 4}], Path(tempfile.mkdtemp()) / "results.csv")
        >>> planned = {("mae", 0): {"steps": 4}, ("mae", 1): {"steps": 4}, ("amlp", 0): {"steps": 8}}
        >>> list(kept_rows(csv, planned, ("arm", "seed"), log=lambda line: None))
        [('mae', 0)]
    """
    path = Path(path)
    if not path.is_file():
        return {}
    kept: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in read_csv(path):
        run = tuple(row.get(c) for c in key)
        want = planned.get(run)
        if want is not None and all(str(row.get(c)) == str(v) for c, v in want.items()):
            kept[run] = row
    log(f"--resume: {len(kept)} of {len(planned)} runs kept from {path}")
    return kept
