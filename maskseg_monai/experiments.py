"""Experiment commands over a bundle: train a list of named runs in-process, evaluate each, write the results.

The shared machinery of :mod:`maskseg_monai.sweep` (a patch size x mask ratio grid of the MAE bundle) and
:mod:`maskseg_monai.ablation` (the AMLP components, one by one). A *cell* is one training of the bundle through
:class:`monai.bundle.ConfigWorkflow` with its own overrides and bundle root. After training, the cell's
``models/model_final.pt`` is evaluated on the validation split, preprocessed once and shared by all cells, with
masks drawn from a fixed seed (:func:`evaluate_cell`). The commands write ``results.csv`` and ``results.md``
atomically (:func:`write_csv`, :func:`write_markdown`).
"""

from __future__ import annotations

import argparse
import ast
import csv
import gc
import json
import math
import re
import shlex
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.data import MetaTensor
from monai.transforms import Compose

import maskseg_monai
from maskseg_monai.inferers import SeededMaskInferer
from maskseg_monai.metrics import reconstruct_image, reconstruction_metrics, region_psnr, small_object_mask
from maskseg_monai.utils import atomic_write

__all__ = [
    "load_pyplot",
    "save_figure",
    "DEFAULT_DEMO_SET",
    "DEFAULT_SMALL_AREA",
    "GLOBAL_METRICS",
    "REGION_METRICS",
    "BASELINE_METRICS",
    "REPORTED_KEYS",
    "Cell",
    "ValidationSet",
    "bundle_config_file",
    "parse_override",
    "check_run_inputs",
    "read_bundle",
    "run_overrides",
    "probe_cells",
    "prepare_data",
    "train_cell",
    "load_validation",
    "validation_set",
    "iter_batches",
    "evaluate_cell",
    "run_cells",
    "run_settings",
    "format_value",
    "write_csv",
    "markdown_table",
    "write_markdown",
    "add_common_arguments",
    "parse_command",
    "command_line",
    "COMMON_RESERVED_KEYS",
]

DEFAULT_DEMO_SET = "bloodsmear2d"
#: small-object threshold in pixels (2D) / voxels (3D): the area of an 8x8 patch / volume of an 8x8x8 patch
DEFAULT_SMALL_AREA: dict[int, int] = {2: 64, 3: 512}
GLOBAL_METRICS = ("psnr_masked", "ssim_masked", "psnr_all", "ssim_all")
REGION_METRICS = ("psnr_masked_small", "psnr_masked_rest")
BASELINE_METRICS = ("baseline_psnr_masked", "baseline_psnr_masked_small")
#: bundle keys whose resolved values are recorded in results.md
REPORTED_KEYS = (
    "img_size", "batch_size", "learning_rate", "weight_decay", "warmup_epochs", "loss_region", "norm_pix_loss",
    "hidden_size", "mlp_dim", "num_layers", "num_heads",
    "decoder_hidden_size", "decoder_mlp_dim", "decoder_num_layers", "decoder_num_heads",
)  # fmt: skip
#: bundle keys every command sets itself, and the option that sets them
COMMON_RESERVED_KEYS: dict[str, str] = {
    "epochs": "--epochs",
    "demo_set": "--demo_set",
    "datalist": "--datalist",
    "bundle_root": "--output_dir",
}


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


@dataclass
class ValidationSet:
    """The preprocessed validation split shared by the cells (:func:`validation_set`).

    Attributes:
        images: ``[C, *spatial]`` each.
        labels: ``[1, *spatial]`` integer label maps, or ``None`` when some item has no ``"label"``.
        class_names: class index -> column-safe name of every class found in ``labels`` (empty without labels).
        datalist_file: the datalist they came from.
    """

    images: list[torch.Tensor]
    labels: list[torch.Tensor] | None
    class_names: dict[int, str] = field(default_factory=dict)
    datalist_file: str = ""


def load_pyplot(purpose: str) -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend, imported only when a figure is drawn.

    Args:
        purpose: what the figure is, for the error message (e.g. ``"the sweep's heat-map"``).

    Raises:
        ImportError: without matplotlib.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:  # pragma: no cover - matplotlib is a plotting-only dependency
        raise ImportError(f"{purpose} needs matplotlib: pip install matplotlib.") from err
    return plt


def save_figure(fig: Any, path: str | Path) -> str:
    """Write a matplotlib figure as a 120-dpi PNG through :func:`~maskseg_monai.utils.atomic_write`, then close it.

    Returns:
        ``str(path)``.
    """
    plt = load_pyplot("saving a figure")
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    finally:
        plt.close(fig)


def bundle_config_file(bundle: str) -> Path:
    """``bundles/<bundle>/configs/train.json`` of the source tree the package is imported from.

    Raises:
        FileNotFoundError: when the package is not run from a checkout holding that bundle (pass
            ``config_file`` / ``--config_file`` then).
    """
    path = Path(maskseg_monai.__file__).resolve().parents[1] / "bundles" / bundle / "configs" / "train.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"the {bundle.upper()} bundle config {path} does not exist (the package is not imported from a source "
            f"checkout); pass --config_file path/to/bundles/{bundle}/configs/train.json."
        )
    return path


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
    config_file: str | Path, overrides: Mapping[str, Any], progress_bar: bool = False
) -> tuple[ConfigWorkflow, dict[str, float]]:
    """Train the bundle once, in-process: ``ConfigWorkflow(...).initialize(); run(); finalize()``.

    Args:
        config_file: the bundle's ``train.json``.
        overrides: bundle overrides, e.g. from :func:`run_overrides`.
        progress_bar: keep the per-iteration progress bar (``*ProgressBarHandler`` entries of
            ``train#rank0_handlers``). Defaults to False: the per-epoch log lines remain.

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
    workflow.run()
    workflow.finalize()
    seconds = time.perf_counter() - start
    state = workflow.parser.get_parsed_content("train#trainer").state
    loss = state.metrics.get("train_loss", float("nan"))
    return workflow, {"steps": int(state.iteration), "train_loss": float(loss), "train_seconds": seconds}


def _plain(x: Any) -> torch.Tensor:
    """A plain tensor (no MONAI metadata) of ``x``."""
    return x.as_tensor() if isinstance(x, MetaTensor) else torch.as_tensor(x)


def _is_intensity_transform(transform: Callable) -> bool:
    return type(transform).__module__.startswith("monai.transforms.intensity")


def _class_names(datalist_file: str | Path, found: Sequence[int]) -> dict[int, str]:
    """Class index -> column-safe name, from the datalist's ``"labels"`` (decathlon style) else ``class_<k>``."""
    try:
        labels = json.loads(Path(datalist_file).read_text()).get("labels", {})
        names = {int(k): str(v) for k, v in labels.items()}
    except (OSError, ValueError, AttributeError):
        names = {}
    names = {**{int(k): f"class_{int(k)}" for k in found}, **names}
    return {k: re.sub(r"[^0-9a-z]+", "_", v.lower()).strip("_") or f"class_{k}" for k, v in sorted(names.items())}


def load_validation(workflow: ConfigWorkflow) -> tuple[list[torch.Tensor], list[torch.Tensor] | None, str]:
    """Validation images and labels, preprocessed as the bundle's ``validate#preprocessing`` does.

    Images go through ``validate#preprocessing`` itself. Labels go through the same pipeline without its
    intensity transforms (``monai.transforms.intensity``), so that they receive the same loading, padding and
    cropping.

    Args:
        workflow: a parsed :class:`ConfigWorkflow` of the bundle.

    Returns:
        images ``[C, *spatial]``, labels ``[1, *spatial]`` (``None`` when some validation item has no ``"label"``)
        and the datalist path.

    Raises:
        ValueError: when a label stops being integer-valued (an interpolating transform in the pipeline) or
            no longer matches its image's shape.
    """
    parser = workflow.parser
    items = parser.get_parsed_content("validate#datalist")
    preprocessing = parser.get_parsed_content("validate#preprocessing")
    transforms = preprocessing.transforms if isinstance(preprocessing, Compose) else [preprocessing]
    label_pipeline = Compose([t for t in transforms if not _is_intensity_transform(t)])
    images = [_plain(preprocessing({"image": item["image"]})["image"]).float() for item in items]
    if not items or any("label" not in item for item in items):
        return images, None, parser.get_parsed_content("datalist")
    labels = []
    for item, image in zip(items, images):
        label = _plain(label_pipeline({"image": item["label"]})["image"]).float()
        if label.shape[1:] != image.shape[1:] or label.shape[0] != 1:
            raise ValueError(
                f"{item['label']}: preprocessed label {tuple(label.shape)} does not match its image "
                f"{tuple(image.shape)}."
            )
        if not torch.equal(label, label.round()):
            raise ValueError(
                f"{item['label']}: the label is no longer integer-valued after validate#preprocessing; "
                "the evaluation needs label-safe spatial transforms (pad, crop, flip, nearest resampling)."
            )
        labels.append(label)
    return images, labels, parser.get_parsed_content("datalist")


def validation_set(workflow: ConfigWorkflow) -> ValidationSet:
    """:func:`load_validation` plus the names of the classes found in the labels."""
    images, labels, datalist_file = load_validation(workflow)
    if labels is None:
        return ValidationSet(images, None, {}, str(datalist_file))
    found = sorted({int(v) for y in labels for v in torch.unique(y).tolist()})
    return ValidationSet(images, labels, _class_names(datalist_file, found), str(datalist_file))


def iter_batches(
    images: Sequence[torch.Tensor],
    labels: Sequence[torch.Tensor] | None,
    batch_size: int,
    device: torch.device | str = "cpu",
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """Stack images ``[C, *spatial]`` (and labels ``[1, *spatial]``) into float batches on ``device``, in order.

    Yields:
        ``x [B, C, *spatial]`` and ``y [B, 1, *spatial]`` (``None`` without labels).

    Raises:
        ValueError: when ``images`` is empty or ``labels`` does not pair with it.
    """
    if len(images) == 0:
        raise ValueError("the validation split is empty.")
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"got {len(labels)} labels for {len(images)} images.")
    for start in range(0, len(images), batch_size):
        stop = start + batch_size
        x = torch.stack([torch.as_tensor(i) for i in images[start:stop]]).float().to(device)
        y = None if labels is None else torch.stack([torch.as_tensor(i) for i in labels[start:stop]]).float().to(device)
        yield x, y


@torch.no_grad()
def evaluate_cell(
    network: torch.nn.Module,
    images: Sequence[torch.Tensor],
    labels: Sequence[torch.Tensor] | None,
    class_names: Mapping[int, str],
    seed: int,
    small_area: int,
    norm_pix_loss: bool = False,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    mask_ratio: float | None = None,
    lesion_classes: Sequence[int] | None = None,
) -> dict[str, float]:
    """Reconstruction quality of one trained network on fixed masks, overall, by object size and by class.

    Masks come from :class:`~maskseg_monai.inferers.SeededMaskInferer` ``(seed, mask_ratio)``: the i-th image gets
    the same mask in every evaluation of the same patch grid and ratio, whatever the network's own masking policy
    (AMLP's MPS is bypassed). Extra output channels after the pixel mask (AMLP's maps) are ignored.

    Args:
        network: a trained :class:`~maskseg_monai.networks.MaskedAutoencoderViT` (or a subclass).
        images: validation images ``[C, *spatial]`` in [0, 1].
        labels: their label maps ``[1, *spatial]`` (integers, 0 = background), or ``None``: the region and class
            metrics are then NaN.
        class_names: class index -> name; one ``psnr_masked_<name>`` per entry.
        seed: mask seed.
        small_area: components (per class) with fewer pixels are small objects.
        norm_pix_loss: whether the network predicts per-patch normalised pixels.
        batch_size: images per forward pass.
        device: where to run.
        mask_ratio: ratio of the masks. Defaults to the network's current ``mask_ratio``.
        lesion_classes: label values that make up the *lesion* region; when given, ``psnr_masked_lesion`` and
            ``baseline_psnr_masked_lesion`` are added.

    Returns:
        ``{"psnr_masked", "ssim_masked", "psnr_all", "ssim_all", "psnr_masked_small", "psnr_masked_rest",
        "baseline_psnr_masked", "baseline_psnr_masked_small", "psnr_masked_<class>"...}``, each the mean over
        images (region PSNRs: over images where the region has masked pixels; NaN when none has). The
        ``baseline_*`` values score a model that learned nothing: every masked pixel predicted as the mean of
        the image's visible pixels, on the same masks; a trained network should beat them.

    Raises:
        ValueError: when ``images`` is empty or ``labels`` does not pair with it.
    """
    network.eval()
    inferer = SeededMaskInferer(seed, mask_ratio)
    per_image: dict[str, list[torch.Tensor]] = {}
    for x, y in iter_batches(images, labels, batch_size, device):
        recon, _, pixel_mask = reconstruct_image(inferer(x, network), x, network.patch_size, norm_pix_loss)
        values = reconstruction_metrics(recon, x, pixel_mask)
        # no-learning reference: each channel's mean over the visible pixels, everywhere
        visible, dims = 1 - pixel_mask, tuple(range(2, x.ndim))
        baseline = ((x * visible).sum(dims, keepdim=True) / visible.sum(dims, keepdim=True).clamp_min(1)).expand_as(x)
        values["baseline_psnr_masked"] = region_psnr(baseline, x, pixel_mask)
        if y is not None:
            small = small_object_mask(y, small_area)
            values["psnr_masked_small"] = region_psnr(recon, x, pixel_mask * small)
            values["psnr_masked_rest"] = region_psnr(recon, x, pixel_mask * (1 - small))
            values["baseline_psnr_masked_small"] = region_psnr(baseline, x, pixel_mask * small)
            if lesion_classes is not None:
                lesion = torch.isin(y, torch.as_tensor(list(lesion_classes), dtype=y.dtype, device=y.device))
                values["psnr_masked_lesion"] = region_psnr(recon, x, pixel_mask * lesion)
                values["baseline_psnr_masked_lesion"] = region_psnr(baseline, x, pixel_mask * lesion)
            for k, name in class_names.items():
                values[f"psnr_masked_{name}"] = region_psnr(recon, x, pixel_mask * (y == k))
        for key, v in values.items():
            per_image.setdefault(key, []).append(v.float().cpu())
    result = {key: float(torch.cat(v).nanmean()) for key, v in per_image.items()}
    lesion_keys = ("psnr_masked_lesion", "baseline_psnr_masked_lesion") if lesion_classes is not None else ()
    for key in (*REGION_METRICS, *BASELINE_METRICS, *lesion_keys, *(f"psnr_masked_{n}" for n in class_names.values())):
        result.setdefault(key, float("nan"))
    return result


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


def run_settings(
    config_file: str | Path,
    base: ConfigParser,
    demo_set: str,
    datalist: str | Path | None,
    validation: ValidationSet | None,
    overrides: Mapping[str, Any],
    specific: Mapping[str, Any],
    reported_keys: Sequence[str] = REPORTED_KEYS,
) -> dict[str, Any]:
    """The settings listed in ``results.md``: config, data and validation size, then the command's own
    ``specific`` items (in order), then the overrides, the bundle values used and the torch thread count.

    Args:
        config_file: the bundle's ``train.json``.
        base: the bundle config with the shared overrides (:func:`read_bundle`).
        demo_set: the demo set, when ``datalist`` is None.
        datalist: the datalist, if any.
        validation: the validation set evaluated.
        overrides: the shared ``--override`` values.
        specific: the command's own ``name -> value`` items.
        reported_keys: bundle keys whose values are listed.
    """
    settings: dict[str, Any] = {
        "config": f"`{config_file}`",
        "data": f"datalist `{datalist}`" if datalist is not None else f"demo set `{demo_set}`",
        "validation images": len(validation.images) if validation is not None else 0,
    }
    settings.update(specific)
    settings.update(
        {
            "checkpoint evaluated": "`models/model_final.pt`",
            "overrides": ", ".join(f"`{k}={v}`" for k, v in overrides.items()) or "none",
            "bundle settings used": ", ".join(f"`{k}={base.get(k)}`" for k in reported_keys if k in base),
            "torch threads": torch.get_num_threads(),
        }
    )
    return settings


def format_value(value: Any, column: str) -> str:
    """A results value as text: PSNR-like values with 2 decimals, SSIM and loss with 4, rates with 3."""
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if column == "mask_ratio":
            return f"{value:g}"
        if column.startswith("ssim") or column == "train_loss":
            return f"{value:.4f}"
        if column.endswith(("_rate", "_precision", "_recall")):
            return f"{value:.3f}"
        return f"{value:.2f}"
    return str(value)


def write_csv(rows: Sequence[Mapping[str, Any]], path: str | Path) -> str:
    """Write one row per cell to ``path`` (atomically); columns are the keys of the first row.

    Returns:
        the path written.
    """
    columns = list(rows[0])

    def _write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows([{k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()} for r in rows])

    return atomic_write(path, _write)


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A markdown table of the rows (:func:`format_value`; strings as they are)."""
    columns = list(columns or rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(format_value(r.get(c, float("nan")), c) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_markdown(
    path: str | Path, title: str, command: str, settings: Mapping[str, Any], sections: Sequence[str]
) -> str:
    """Write ``results.md``: the title, the exact command, the settings, then the ``sections``, atomically.

    Returns:
        the path written.
    """
    text = (
        f"# {title}\n\n"
        f"```bash\n{command}\n```\n\n"
        + "\n".join(f"- {k}: {v}" for k, v in settings.items())
        + "\n\n"
        + "\n\n".join(s.strip("\n") for s in sections)
        + "\n"
    )
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def add_common_arguments(ap: argparse.ArgumentParser, default_output_dir: str, bundle: str) -> None:
    """The options every experiment command has: data, schedule, output, config, progress bar and overrides."""
    ap.add_argument("--epochs", type=int, default=20, help="training epochs of every cell (default 20)")
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


def parse_command(
    ap: argparse.ArgumentParser, argv: Sequence[str] | None, module: str, reserved: Mapping[str, str], tool: str
) -> tuple[argparse.Namespace, dict[str, Any]]:
    """Parse a command line of an experiment command built with :func:`add_common_arguments`.

    A malformed or reserved ``--override`` ends the program with ``ap.error``.

    Args:
        ap: the command's parser.
        argv: the arguments (without the program name). Defaults to ``sys.argv[1:]``.
        module: the command's module, e.g. ``"maskseg_monai.sweep"``, for the command line in ``results.md``.
        reserved: bundle keys the command sets itself -> the option that sets them.
        tool: how errors name the command, e.g. ``"the sweep"``.

    Returns:
        the parsed arguments and the keyword arguments the common options give the command's ``run_*``
        function: ``epochs``, ``demo_set``, ``datalist``, ``output_dir``, ``config_file``, ``overrides``,
        ``command`` and ``progress_bar``.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = ap.parse_args(argv)
    try:
        overrides = dict(parse_override(v, reserved, tool) for v in args.override)
    except ValueError as err:
        ap.error(str(err))
    common = {k: getattr(args, k) for k in ("epochs", "demo_set", "datalist", "output_dir", "config_file")}
    common.update(overrides=overrides, command=command_line(module, argv), progress_bar=args.progress_bar)
    return args, common


def command_line(module: str, argv: Sequence[str]) -> str:
    """The shell command that ran ``python -m module argv``, as recorded in ``results.md``."""
    return shlex.join(["python", "-m", module, *argv])
