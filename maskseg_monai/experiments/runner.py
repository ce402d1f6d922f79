"""Experiment commands over a bundle: train a list of named runs in-process, evaluate each, write the results.

The shared machinery of :mod:`maskseg_monai.experiments.sweep` (a patch size x mask ratio grid of the MAE
bundle) and :mod:`maskseg_monai.experiments.ablation` (the AMLP components, one by one). A *cell* is one training
of the bundle through :class:`monai.bundle.ConfigWorkflow` with its own overrides and bundle root. After training,
the cell's ``models/model_final.pt`` is evaluated on the validation split, preprocessed once and shared by all
cells, with masks drawn from a fixed seed (:func:`evaluate_cell`). The commands write ``results.csv`` and ``results.md``
atomically (:func:`write_csv`, :func:`write_markdown`).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser, ConfigWorkflow

from maskseg_monai.bundles import BUNDLES_DIR
from maskseg_monai.experiments.report import format_value
from maskseg_monai.experiments.validation import ValidationSet, validation_set

__all__ = [
    "DEFAULT_DEMO_SET",
    "DEFAULT_EPOCHS",
    "Cell",
    "bundle_config_file",
    "bundle_config_files",
    "read_bundle",
    "run_overrides",
    "probe_cells",
    "prepare_data",
    "train_cell",
    "run_cells",
]

#: the MAE/AMLP bundles' defaults: random 64x64 crops of three quadrants of a real nuclei image, validation tiles of
#: the fourth (labelled, for the small-object regions), and 10 epochs of the bundles' ``steps_per_epoch`` batches
DEFAULT_DEMO_SET = "nuclei2d_regions"
DEFAULT_EPOCHS = 10


@dataclass(frozen=True)
class Cell:
    """One training run of an experiment.

    Attributes:
        label: how logs and errors name it, e.g. ``"patch 8, mask ratio 0.5"``.
        info: the leading columns of its results row, e.g. ``{"patch_size": 8, "mask_ratio": 0.5, "epochs": 20}``.
        overrides: every bundle override of the run (:func:`run_overrides`).
    """

    label: str
    info: dict[str, Any]
    overrides: dict[str, Any]


def bundle_config_file(bundle: str) -> Path:
    """``<bundle>/configs/train.json`` of :data:`maskseg_monai.bundles.BUNDLES_DIR` (the installed bundles, or a
    source checkout's ``bundles/``).

    Raises:
        FileNotFoundError: when that bundle is not there (pass ``config_file`` / ``--config_file`` then).
    """
    path = BUNDLES_DIR / bundle / "configs" / "train.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"the {bundle.upper()} bundle config {path} does not exist; "
            f"pass --config_file path/to/bundles/{bundle}/configs/train.json."
        )
    return path


def bundle_config_files(
    bundles: Sequence[str], config_files: Mapping[str, str | Path] | None = None
) -> dict[str, Path]:
    """Bundle name -> its ``train.json``: the one given in ``config_files``, else :func:`bundle_config_file`.

    Raises:
        FileNotFoundError: as :func:`bundle_config_file`, for a bundle not in ``config_files``.
    """
    given = dict(config_files or {})
    files = {b: Path(given[b]) if b in given else bundle_config_file(b) for b in bundles}
    files.update({b: Path(f) for b, f in given.items()})
    return files


def read_bundle(config_file: str | Path, overrides: Mapping[str, Any] | None = None) -> ConfigParser:
    """The bundle's config with ``overrides`` applied (nothing instantiated)."""
    parser = ConfigParser()
    parser.read_config(str(config_file))
    parser.update(dict(overrides or {}))
    return parser


def run_overrides(
    epochs: int,
    seed: int,
    bundle_root: str | Path,
    dataset_dir: str | Path,
    demo_set: str | None = None,
    datalist: str | Path | None = None,
    extra: Mapping[str, Any] | None = None,
    cell: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Bundle overrides of one cell: the cell's own keys, the shared schedule, seed and data.

    Validation during training runs once, after the last epoch (``val_interval = epochs``), unless ``extra``
    sets ``val_interval``. Cells train from scratch (``resume = False``): a checkpoint left in the cell's folder by
    an earlier run is not resumed, so steps and times are measured over the whole training.

    Args:
        epochs: training epochs.
        seed: seed of ``set_determinism`` (weights, data order, training masks).
        bundle_root: the cell's bundle root (checkpoints, logs).
        dataset_dir: where demo sets are materialised, shared by the cells.
        demo_set: demo set name; ignored when ``datalist`` is given.
        datalist: a MONAI datalist JSON with ``"training"`` and ``"validation"`` lists.
        extra: further ``key -> value`` overrides shared by the cells (``--override``).
        cell: the keys that make this cell differ from the others; they take precedence over ``extra``.

    Returns:
        the overrides for :class:`monai.bundle.ConfigWorkflow`.
    """
    over: dict[str, Any] = {"val_interval": epochs, "resume": False, **dict(extra or {}), **dict(cell or {})}
    over.update(epochs=int(epochs), seed=int(seed), bundle_root=str(bundle_root), dataset_dir=str(dataset_dir))
    if datalist is not None:
        over["datalist"] = str(Path(datalist).resolve())
    elif demo_set is not None:
        over["demo_set"] = demo_set
    return over


def probe_cells(config_file: str | Path, cells: Sequence[Cell]) -> None:
    """Build every cell's ``network_def`` before any training, so that a bad combination fails at once.

    Raises:
        ValueError: naming the first cell whose network the bundle cannot build, with the bundle's message.
    """
    for cell in cells:
        try:
            read_bundle(config_file, cell.overrides).get_parsed_content("network_def", instantiate=True)
        except Exception as err:  # report the cell, keep the bundle's message
            raise ValueError(f"cell {cell.label}: the bundle cannot build its network: {err}") from err


def prepare_data(dataset_dir: str | Path, demo_set: str, datalist: str | Path | None) -> None:
    """Materialise the demo set once, before (and outside the timing of) the first cell; nothing for a datalist."""
    if datalist is None:
        from maskseg_monai.data import ensure_demo_datalist

        ensure_demo_datalist(dataset_dir, demo_set)


def train_cell(
    config_file: str | Path,
    overrides: Mapping[str, Any],
    progress_bar: bool = False,
    on_initialized: Callable[[ConfigWorkflow], None] | None = None,
) -> tuple[ConfigWorkflow, dict[str, float]]:
    """Train the bundle once, in-process: ``ConfigWorkflow(...).initialize(); run(); finalize()``.

    Args:
        config_file: the bundle's ``train.json``.
        overrides: bundle overrides, e.g. from :func:`run_overrides`.
        progress_bar: keep the per-iteration progress bar (``*ProgressBarHandler`` entries of
            ``train#rank0_handlers``). Defaults to False: the per-epoch log lines remain.
        on_initialized: called with the workflow after ``initialize()`` and before ``run()``, e.g. to check what
            ``initialize`` loaded or to attach handlers to ``train#trainer``; what it raises stops the cell
            before any training step.

    Returns:
        the finished workflow (its parser holds the trained ``network``) and
        ``{"steps", "train_loss", "train_seconds"}``.
    """
    workflow = ConfigWorkflow(config_file=str(config_file), workflow_type="train", **dict(overrides))
    handlers = workflow.parser.get("train#rank0_handlers")
    if not progress_bar and isinstance(handlers, list):
        is_bar = lambda h: isinstance(h, dict) and str(h.get("_target_", "")).endswith("ProgressBarHandler")  # noqa: E731
        workflow.parser["train#rank0_handlers"] = [h for h in handlers if not is_bar(h)]
    start = time.perf_counter()
    workflow.initialize()
    if on_initialized is not None:
        on_initialized(workflow)
    workflow.run()
    workflow.finalize()
    seconds = time.perf_counter() - start
    state = workflow.parser.get_parsed_content("train#trainer").state
    loss = state.metrics.get("train_loss", float("nan"))
    return workflow, {"steps": int(state.iteration), "train_loss": float(loss), "train_seconds": seconds}


def _load_final(parser: ConfigParser) -> torch.nn.Module:
    """The trained ``network`` of a finished workflow, with ``models/model_final.pt`` loaded."""
    network = parser.get_parsed_content("network")
    ckpt = Path(parser.get_parsed_content("ckpt_dir")) / "model_final.pt"
    state = torch.load(ckpt, map_location=parser.get_parsed_content("device"), weights_only=True)
    network.load_state_dict(state["model"])
    return network


def run_cells(
    config_file: str | Path,
    cells: Sequence[Cell],
    evaluate: Callable[[torch.nn.Module, ConfigParser, ValidationSet], Mapping[str, float]],
    progress_bar: bool = False,
    log: Callable[[str], None] = print,
    log_metrics: Sequence[str] = ("psnr_masked", "ssim_masked"),
    on_row: Callable[[list[dict[str, Any]], ValidationSet], None] | None = None,
) -> tuple[list[dict[str, Any]], ValidationSet | None]:
    """Train the cells one after another, evaluate each trained network, and collect one row per cell.

    After training, the network of the cell's workflow gets ``models/model_final.pt`` (MAE's convention: the last
    checkpoint) and ``evaluate(network, parser, validation)`` scores it; the validation split is loaded from the
    first cell and shared by all. Each workflow is released before the next cell starts.

    Args:
        config_file: the bundle's ``train.json``.
        cells: the runs, in order.
        evaluate: ``(network, parser of the finished workflow, validation set) -> metrics``.
        progress_bar: keep the bundle's per-iteration progress bars.
        log: where progress lines go.
        log_metrics: metrics printed after each cell.
        on_row: called with the rows so far (and the validation set) after each cell, e.g. to save partial results.

    Returns:
        the rows (``cell.info``, then ``steps``, ``train_loss``, ``train_seconds``, then the metrics) and the
        validation set (``None`` when ``cells`` is empty).
    """
    rows: list[dict[str, Any]] = []
    validation: ValidationSet | None = None
    for i, cell in enumerate(cells, 1):
        log(f"[{i}/{len(cells)}] {cell.label}: training {cell.overrides.get('epochs', '?')} epoch(s) ...")
        workflow, info = train_cell(config_file, cell.overrides, progress_bar=progress_bar)
        if validation is None:  # the same preprocessed validation set for every cell
            validation = validation_set(workflow)
            if validation.labels is None:
                log("  the validation items have no 'label': region, class and lesion metrics are NaN.")
        network = _load_final(workflow.parser)
        metrics = dict(evaluate(network, workflow.parser, validation))
        rows.append({**cell.info, **info, **metrics})
        shown = ", ".join(f"{k} {format_value(metrics[k], k)}" for k in log_metrics if k in metrics)
        log(
            f"[{i}/{len(cells)}] {cell.label}: {info['steps']} steps in {info['train_seconds']:.0f} s, "
            f"loss {info['train_loss']:.4f}, {shown}"
        )
        del workflow, network
        gc.collect()
        if on_row is not None:
            on_row(rows, validation)
    return rows, validation
