"""Patch size x mask ratio sweep of the MAE bundle, with reconstruction quality split by object size and class.

Every cell of the grid trains ``bundles/mae`` (in-process, through :class:`monai.bundle.ConfigWorkflow`) with the
same seed, data and number of steps, then evaluates ``models/model_final.pt`` (MAE's convention: the last
checkpoint) on the validation split with masks drawn from one fixed seed at the cell's own mask ratio. Reported
per cell, averaged over validation images:

- ``psnr_masked``, ``ssim_masked``, ``psnr_all``, ``ssim_all``: :func:`~maskseg_monai.metrics.reconstruction_metrics`;
- ``psnr_masked_small`` / ``psnr_masked_rest``: PSNR over masked pixels inside / outside the connected components
  (per class) smaller than ``small_area`` pixels (a threshold in pixels, the same for every patch size);
- ``psnr_masked_<class>``: PSNR over masked pixels of each class of the label map (names from the datalist's
  ``"labels"``);
- ``baseline_psnr_masked`` / ``baseline_psnr_masked_small``: the same masks filled with the mean of each image's
  visible pixels, the score of a network that learned nothing (masks differ between patch sizes, so compare a
  cell's PSNR with its own baseline).

Region PSNRs are NaN for an image without such masked pixels and are averaged over the other images.

Run it as a module::

    python -m maskseg_monai.sweep --epochs 20 --output_dir sweeps/mae
    python -m maskseg_monai.sweep --patch_sizes 4 8 --mask_ratios 0.5 --epochs 1 --override hidden_size=48

Outputs in ``--output_dir``: ``results.csv``, ``results.md`` (the command, the settings and a table) and
``heatmap.png`` (rows = mask ratio, columns = patch size), each written atomically; one bundle root per cell under
``cells/``, and the demo data, shared by all cells, under ``demo_data/``.
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
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.data import MetaTensor
from monai.transforms import Compose
from monai.utils import ensure_tuple_rep

import maskseg_monai
from maskseg_monai.inferers import SeededMaskInferer
from maskseg_monai.masking import grid_size, num_masked_patches
from maskseg_monai.metrics import reconstruct_image, reconstruction_metrics, region_psnr, small_object_mask
from maskseg_monai.utils import atomic_write

__all__ = [
    "DEFAULT_PATCH_SIZES",
    "DEFAULT_MASK_RATIOS",
    "DEFAULT_SMALL_AREA",
    "HEATMAP_METRICS",
    "RESERVED_KEYS",
    "default_config_file",
    "parse_override",
    "check_grid",
    "cell_overrides",
    "train_cell",
    "load_validation",
    "evaluate_cell",
    "run_sweep",
    "write_csv",
    "markdown_table",
    "write_markdown",
    "plot_heatmap",
    "main",
]

DEFAULT_PATCH_SIZES: tuple[int, ...] = (4, 8, 16)
DEFAULT_MASK_RATIOS: tuple[float, ...] = (0.25, 0.5, 0.75)
DEFAULT_DEMO_SET = "bloodsmear2d"
DEFAULT_OUTPUT_DIR = "sweeps/mae"
#: small-object threshold in pixels (2D) / voxels (3D): the area of an 8x8 patch / volume of an 8x8x8 patch
DEFAULT_SMALL_AREA: dict[int, int] = {2: 64, 3: 512}
#: heat-map panels, in order
HEATMAP_METRICS: tuple[str, ...] = ("psnr_masked", "ssim_masked", "psnr_masked_small", "psnr_all")
#: bundle keys the sweep sets itself; each has its own command-line option
RESERVED_KEYS: dict[str, str] = {
    "patch_size": "--patch_sizes",
    "mask_ratio": "--mask_ratios",
    "epochs": "--epochs",
    "seed": "--seed",
    "demo_set": "--demo_set",
    "datalist": "--datalist",
    "bundle_root": "--output_dir",
}
_GLOBAL_METRICS = ("psnr_masked", "ssim_masked", "psnr_all", "ssim_all")
_REGION_METRICS = ("psnr_masked_small", "psnr_masked_rest")
_BASELINE_METRICS = ("baseline_psnr_masked", "baseline_psnr_masked_small")
#: bundle keys whose resolved values are recorded in results.md
_REPORTED_KEYS = (
    "img_size", "batch_size", "learning_rate", "weight_decay", "warmup_epochs", "loss_region", "norm_pix_loss",
    "hidden_size", "mlp_dim", "num_layers", "num_heads",
    "decoder_hidden_size", "decoder_mlp_dim", "decoder_num_layers", "decoder_num_heads",
)
_INFO_COLUMNS = ("patch_size", "mask_ratio", "epochs", "steps", "train_loss", "train_seconds")


def default_config_file() -> Path:
    """The MAE bundle's ``train.json`` of the source tree the package is imported from.

    Raises:
        FileNotFoundError: when the package is not run from a checkout holding ``bundles/mae`` (pass
            ``config_file`` / ``--config_file`` then).
    """
    path = Path(maskseg_monai.__file__).resolve().parents[1] / "bundles" / "mae" / "configs" / "train.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"the MAE bundle config {path} does not exist (the package is not imported from a source checkout); "
            "pass --config_file path/to/bundles/mae/configs/train.json."
        )
    return path


def parse_override(text: str) -> tuple[str, Any]:
    """Parse one ``key=value`` bundle override; the value is read as JSON, then as a Python literal, else a string.

    Args:
        text: e.g. ``"hidden_size=48"``, ``"amp=false"``, ``"train#dataloader#shuffle=False"``, ``"loss_region=all"``.

    Returns:
        ``(key, value)``.

    Raises:
        ValueError: without ``=``, with an empty key, or for a key the sweep sets itself (see ``RESERVED_KEYS``).

    Example:
        >>> parse_override("hidden_size=48"), parse_override("amp=false"), parse_override("loss_region=all")
        (('hidden_size', 48), ('amp', False), ('loss_region', 'all'))
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ValueError(f"--override expects key=value, got {text!r}.")
    if key in RESERVED_KEYS:
        raise ValueError(f"--override {key}=... is set by the sweep; use {RESERVED_KEYS[key]} instead.")
    raw = raw.strip()
    for parse in (json.loads, ast.literal_eval):
        try:
            return key, parse(raw)
        except (ValueError, SyntaxError):
            continue
    return key, raw


def check_grid(
    patch_sizes: Sequence[int], mask_ratios: Sequence[float], img_size: Sequence[int] | int, spatial_dims: int
) -> None:
    """Fail before any training when a cell of the grid cannot run.

    Args:
        patch_sizes: patch sides (one int per cell column, the same along every axis).
        mask_ratios: mask ratios (one per cell row).
        img_size: the bundle's network input size, an int or one entry per axis.
        spatial_dims: 2 or 3.

    Raises:
        ValueError: on an empty or repeated list, a patch that does not divide ``img_size`` (or leaves fewer
            than two patches), or a ratio outside (0, 1).
    """
    for name, values in (("--patch_sizes", patch_sizes), ("--mask_ratios", mask_ratios)):
        if len(values) == 0:
            raise ValueError(f"{name} is empty.")
        if len(set(values)) != len(values):
            raise ValueError(f"{name} repeats a value: {list(values)}.")
    img = ensure_tuple_rep(img_size, spatial_dims)
    for p in patch_sizes:
        if int(p) != p or p < 1:
            raise ValueError(f"--patch_sizes must be positive integers, got {p}.")
        try:
            n_patches = math.prod(grid_size(img, p))
        except ValueError as err:
            raise ValueError(f"--patch_sizes: patch {p} does not divide img_size {list(img)}: {err}") from None
        for r in mask_ratios:
            try:
                num_masked_patches(n_patches, r)
            except ValueError as err:
                raise ValueError(f"cell patch {p}, mask ratio {r} ({n_patches} patches): {err}") from None


def cell_overrides(
    patch_size: int,
    mask_ratio: float,
    epochs: int,
    seed: int,
    bundle_root: str | Path,
    dataset_dir: str | Path,
    demo_set: str | None = None,
    datalist: str | Path | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Bundle overrides of one cell: the cell's patch size and ratio, the shared schedule, seed and data.

    Validation during training runs once, after the last epoch (``val_interval = epochs``), unless ``extra``
    sets ``val_interval``.

    Args:
        patch_size: the cell's patch side.
        mask_ratio: the cell's mask ratio.
        epochs: training epochs.
        seed: seed of ``set_determinism`` (weights, data order, training masks).
        bundle_root: the cell's bundle root (checkpoints, logs).
        dataset_dir: where demo sets are materialised, shared by the cells.
        demo_set: demo set name; ignored when ``datalist`` is given.
        datalist: a MONAI datalist JSON with ``"training"`` and ``"validation"`` lists.
        extra: further ``key -> value`` overrides (``--override``).

    Returns:
        the overrides for :class:`monai.bundle.ConfigWorkflow`.
    """
    over: dict[str, Any] = {"val_interval": epochs, **dict(extra or {})}
    over.update(
        patch_size=int(patch_size),
        mask_ratio=float(mask_ratio),
        epochs=int(epochs),
        seed=int(seed),
        bundle_root=str(bundle_root),
        dataset_dir=str(dataset_dir),
    )
    if datalist is not None:
        over["datalist"] = str(Path(datalist).resolve())
    elif demo_set is not None:
        over["demo_set"] = demo_set
    return over


def train_cell(
    config_file: str | Path, overrides: Mapping[str, Any], progress_bar: bool = False
) -> tuple[ConfigWorkflow, dict[str, float]]:
    """Train the bundle once, in-process: ``ConfigWorkflow(...).initialize(); run(); finalize()``.

    Args:
        config_file: the bundle's ``train.json``.
        overrides: bundle overrides, e.g. from :func:`cell_overrides`.
        progress_bar: keep the per-iteration progress bar (``*ProgressBarHandler`` entries of
            ``train#handlers``). Defaults to False: the per-epoch log lines remain.

    Returns:
        the finished workflow (its parser holds the trained ``network``) and
        ``{"steps", "train_loss", "train_seconds"}``.
    """
    workflow = ConfigWorkflow(config_file=str(config_file), workflow_type="train", **dict(overrides))
    handlers = workflow.parser.get("train#handlers")
    if not progress_bar and isinstance(handlers, list):
        is_bar = lambda h: isinstance(h, dict) and str(h.get("_target_", "")).endswith("ProgressBarHandler")  # noqa: E731
        workflow.parser["train#handlers"] = [h for h in handlers if not is_bar(h)]
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
                "the sweep needs label-safe spatial transforms (pad, crop, flip, nearest resampling)."
            )
        labels.append(label)
    return images, labels, parser.get_parsed_content("datalist")


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
) -> dict[str, float]:
    """Reconstruction quality of one trained network on fixed masks, overall, by object size and by class.

    Masks come from :class:`~maskseg_monai.inferers.SeededMaskInferer` ``(seed)`` at the network's own
    ``mask_ratio``: the i-th image gets the same mask in every evaluation of the same patch grid.

    Args:
        network: a trained :class:`~maskseg_monai.networks.MaskedAutoencoderViT`.
        images: validation images ``[C, *spatial]`` in [0, 1].
        labels: their label maps ``[1, *spatial]`` (integers, 0 = background), or ``None``: the region and class
            metrics are then NaN.
        class_names: class index -> name; one ``psnr_masked_<name>`` per entry.
        seed: mask seed.
        small_area: components (per class) with fewer pixels are small objects.
        norm_pix_loss: whether the network predicts per-patch normalised pixels.
        batch_size: images per forward pass.
        device: where to run.

    Returns:
        ``{"psnr_masked", "ssim_masked", "psnr_all", "ssim_all", "psnr_masked_small", "psnr_masked_rest",
        "baseline_psnr_masked", "baseline_psnr_masked_small", "psnr_masked_<class>"...}``, each the mean over
        images (region PSNRs: over images where the region has masked pixels; NaN when none has). The
        ``baseline_*`` values score a model that learned nothing: every masked pixel predicted as the mean of
        the image's visible pixels, on the same masks; a trained network should beat them.

    Raises:
        ValueError: when ``images`` is empty or ``labels`` does not pair with it.
    """
    if len(images) == 0:
        raise ValueError("the validation split is empty.")
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"got {len(labels)} labels for {len(images)} images.")
    network.eval()
    inferer = SeededMaskInferer(seed)
    per_image: dict[str, list[torch.Tensor]] = {}
    for start in range(0, len(images), batch_size):
        x = torch.stack([torch.as_tensor(i) for i in images[start : start + batch_size]]).float().to(device)
        recon, _, pixel_mask = reconstruct_image(inferer(x, network), x, network.patch_size, norm_pix_loss)
        values = reconstruction_metrics(recon, x, pixel_mask)
        # no-learning reference: each channel's mean over the visible pixels, everywhere
        visible, dims = 1 - pixel_mask, tuple(range(2, x.ndim))
        baseline = ((x * visible).sum(dims, keepdim=True) / visible.sum(dims, keepdim=True).clamp_min(1)).expand_as(x)
        values["baseline_psnr_masked"] = region_psnr(baseline, x, pixel_mask)
        if labels is not None:
            y = torch.stack([torch.as_tensor(i) for i in labels[start : start + batch_size]]).float().to(device)
            small = small_object_mask(y, small_area)
            values["psnr_masked_small"] = region_psnr(recon, x, pixel_mask * small)
            values["psnr_masked_rest"] = region_psnr(recon, x, pixel_mask * (1 - small))
            values["baseline_psnr_masked_small"] = region_psnr(baseline, x, pixel_mask * small)
            for k, name in class_names.items():
                values[f"psnr_masked_{name}"] = region_psnr(recon, x, pixel_mask * (y == k))
        for key, v in values.items():
            per_image.setdefault(key, []).append(v.float().cpu())
    result = {key: float(torch.cat(v).nanmean()) for key, v in per_image.items()}
    for key in (*_REGION_METRICS, *_BASELINE_METRICS, *(f"psnr_masked_{n}" for n in class_names.values())):
        result.setdefault(key, float("nan"))
    return result


def _fmt(value: Any, column: str) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if column == "mask_ratio":
            return f"{value:g}"
        if column.startswith("ssim") or column == "train_loss":
            return f"{value:.4f}"
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
    """A markdown table of the rows (PSNR in dB with 2 decimals, SSIM and loss with 4)."""
    columns = list(columns or rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r.get(c, float("nan")), c) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_markdown(
    rows: Sequence[Mapping[str, Any]], path: str | Path, command: str, settings: Mapping[str, Any]
) -> str:
    """Write ``results.md``: the exact command, the settings and the table, atomically.

    Returns:
        the path written.
    """
    text = (
        "# MAE patch size x mask ratio sweep\n\n"
        f"```bash\n{command}\n```\n\n"
        + "\n".join(f"- {k}: {v}" for k, v in settings.items())
        + "\n\n"
        + markdown_table(rows)
        + "\n"
    )
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def plot_heatmap(
    rows: Sequence[Mapping[str, Any]], path: str | Path, metrics: Sequence[str] = HEATMAP_METRICS, title: str = ""
) -> str:
    """One heat-map panel per metric, rows = mask ratio, columns = patch size, values annotated; written atomically.

    Args:
        rows: sweep rows with ``patch_size``, ``mask_ratio`` and the ``metrics``.
        path: the PNG to write.
        metrics: one panel each. Defaults to :data:`HEATMAP_METRICS`.
        title: figure title.

    Returns:
        the path written.

    Raises:
        ImportError: without matplotlib.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:  # pragma: no cover - matplotlib is a plotting-only dependency
        raise ImportError("the sweep's heat-map needs matplotlib: pip install matplotlib.") from err
    patches = sorted({r["patch_size"] for r in rows})
    ratios = sorted({r["mask_ratio"] for r in rows})
    ncols = min(len(metrics), 2)
    nrows = math.ceil(len(metrics) / ncols)
    width, height = 1.6 + 1.3 * len(patches), 1.3 + 0.8 * len(ratios)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)
    for ax in axes.flat[len(metrics) :]:
        ax.axis("off")
    for ax, metric in zip(axes.flat, metrics):
        grid = np.full((len(ratios), len(patches)), np.nan)
        for r in rows:
            grid[ratios.index(r["mask_ratio"]), patches.index(r["patch_size"])] = r.get(metric, np.nan)
        cmap = plt.get_cmap("viridis").with_extremes(bad="lightgrey")
        im = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, aspect="auto")
        finite = grid[np.isfinite(grid)]
        mid = (finite.min() + finite.max()) / 2 if finite.size else 0.0
        for (i, j), v in np.ndenumerate(grid):
            text = "nan" if not np.isfinite(v) else (f"{v:.3f}" if metric.startswith("ssim") else f"{v:.2f}")
            ax.text(j, i, text, ha="center", va="center", color="black" if np.isfinite(v) and v > mid else "white")
        ax.set_xticks(range(len(patches)), [str(p) for p in patches])
        ax.set_yticks(range(len(ratios)), [f"{r:g}" for r in ratios])
        ax.set_xlabel("patch size")
        ax.set_ylabel("mask ratio")
        ax.set_title(metric + (" (dB)" if metric.startswith("psnr") else ""))
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if title:
        fig.suptitle(title)
    fig.tight_layout()

    def _write(tmp: str) -> None:
        fig.savefig(tmp, dpi=120, format="png")

    try:
        return atomic_write(path, _write)
    finally:
        plt.close(fig)


def run_sweep(
    patch_sizes: Sequence[int] = DEFAULT_PATCH_SIZES,
    mask_ratios: Sequence[float] = DEFAULT_MASK_RATIOS,
    epochs: int = 20,
    demo_set: str = DEFAULT_DEMO_SET,
    datalist: str | Path | None = None,
    seed: int = 0,
    output_dir: str | Path = DEFAULT_OUTPUT_DIR,
    config_file: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    small_area: int | None = None,
    command: str | None = None,
    progress_bar: bool = False,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Train and evaluate every patch size x mask ratio cell, then write ``results.csv``, ``results.md`` and
    ``heatmap.png`` to ``output_dir``.

    Args:
        patch_sizes: patch sides, one per heat-map column.
        mask_ratios: mask ratios, one per heat-map row.
        epochs: training epochs of every cell.
        demo_set: built-in demo set (``maskseg_monai.data.DEMO_SETS``) when no ``datalist`` is given.
        datalist: a MONAI datalist JSON (``"training"``/``"validation"`` lists of ``{"image", "label"}``).
        seed: training seed and evaluation mask seed, the same for every cell.
        output_dir: where results, cell bundle roots (``cells/``) and demo data go.
        config_file: the bundle's ``train.json``. Defaults to :func:`default_config_file`.
        overrides: further bundle overrides (``key -> value``) for every cell.
        small_area: small-object threshold in pixels/voxels. Defaults to 64 in 2D, 512 in 3D.
        command: the command line recorded in ``results.md``.
        progress_bar: keep the bundle's per-iteration progress bars.
        log: where progress lines go.

    Returns:
        one dict per cell: ``patch_size``, ``mask_ratio``, ``epochs``, ``steps``, ``train_loss``,
        ``train_seconds`` and the metrics of :func:`evaluate_cell`.

    Raises:
        ValueError: on a grid the bundle cannot run (checked before any training), a reserved override,
            ``epochs < 1`` or ``small_area < 1``.
        FileNotFoundError: when ``config_file`` or ``datalist`` does not exist.
    """
    config_file = Path(config_file) if config_file is not None else default_config_file()
    if not config_file.is_file():
        raise FileNotFoundError(f"--config_file {config_file} does not exist.")
    if datalist is not None and not Path(datalist).is_file():
        raise FileNotFoundError(f"--datalist {datalist} does not exist.")
    if epochs < 1:
        raise ValueError(f"--epochs must be at least 1, got {epochs}.")
    extra = dict(overrides or {})
    reserved = sorted(set(extra) & set(RESERVED_KEYS))
    if reserved:
        raise ValueError(f"overrides {reserved} are set by the sweep; use {[RESERVED_KEYS[k] for k in reserved]}.")
    output_dir = Path(output_dir).resolve()

    # validate the whole grid, and build each cell's network, before any training
    base = ConfigParser()
    base.read_config(str(config_file))
    base.update(extra)
    spatial_dims, img_size = int(base.get_parsed_content("spatial_dims")), base.get_parsed_content("img_size")
    check_grid(patch_sizes, mask_ratios, img_size, spatial_dims)
    small_area = DEFAULT_SMALL_AREA.get(spatial_dims, 64) if small_area is None else int(small_area)
    if small_area < 1:
        raise ValueError(f"--small_area must be at least 1, got {small_area}.")
    cells = [(int(p), float(r)) for r in mask_ratios for p in patch_sizes]
    for p, r in cells:
        probe = ConfigParser()
        probe.read_config(str(config_file))
        probe.update({**extra, "patch_size": p, "mask_ratio": r})
        try:
            probe.get_parsed_content("network_def", instantiate=True)
        except Exception as err:  # report the cell, keep the bundle's message
            raise ValueError(f"cell patch {p}, mask ratio {r}: the bundle cannot build its network: {err}") from err

    if datalist is None:  # materialise the demo set once, outside the timed training of the first cell
        from maskseg_monai.data import ensure_demo_datalist

        ensure_demo_datalist(output_dir / "demo_data", demo_set)

    rows: list[dict[str, Any]] = []
    images = labels = class_names = None
    for i, (p, r) in enumerate(cells, 1):
        over = cell_overrides(
            p, r, epochs, seed, output_dir / "cells" / f"patch{p}_ratio{r:g}", output_dir / "demo_data",
            demo_set=demo_set, datalist=datalist, extra=extra,
        )
        log(f"[{i}/{len(cells)}] patch {p}, mask ratio {r:g}: training {epochs} epoch(s) ...")
        workflow, info = train_cell(config_file, over, progress_bar=progress_bar)
        if images is None:  # the same preprocessed validation set for every cell
            images, labels, datalist_file = load_validation(workflow)
            found = sorted({int(v) for y in labels for v in torch.unique(y).tolist()}) if labels is not None else []
            class_names = _class_names(datalist_file, found) if labels is not None else {}
            if labels is None:
                log("  the validation items have no 'label': object-size and class metrics are NaN.")
        parser = workflow.parser
        network = parser.get_parsed_content("network")
        device = parser.get_parsed_content("device")
        ckpt = Path(parser.get_parsed_content("ckpt_dir")) / "model_final.pt"
        network.load_state_dict(torch.load(ckpt, map_location=device, weights_only=True)["model"])
        metrics = evaluate_cell(
            network, images, labels, class_names, seed, small_area,
            norm_pix_loss=bool(parser.get_parsed_content("norm_pix_loss")),
            batch_size=int(parser.get_parsed_content("batch_size")), device=device,
        )
        first = (*_GLOBAL_METRICS, *_REGION_METRICS, *_BASELINE_METRICS)
        rows.append(
            {"patch_size": p, "mask_ratio": r, "epochs": epochs, **info}
            | {k: metrics[k] for k in first}
            | {k: v for k, v in metrics.items() if k not in first}
        )
        log(
            f"[{i}/{len(cells)}] patch {p}, mask ratio {r:g}: {info['steps']} steps in {info['train_seconds']:.0f} s, "
            f"loss {info['train_loss']:.4f}, masked PSNR {metrics['psnr_masked']:.2f} dB, "
            f"small-object masked PSNR {metrics['psnr_masked_small']:.2f} dB, masked SSIM {metrics['ssim_masked']:.4f}"
        )
        del workflow, network, parser
        gc.collect()

    settings = {
        "config": f"`{config_file}`",
        "data": f"datalist `{datalist}`" if datalist is not None else f"demo set `{demo_set}`",
        "validation images": len(images or []),
        "epochs per cell": epochs,
        "seed (training and evaluation masks)": seed,
        "small objects": f"connected components (per class) of fewer than {small_area} "
        f"{'pixels' if spatial_dims == 2 else 'voxels'}",
        "checkpoint evaluated": "`models/model_final.pt`",
        "overrides": ", ".join(f"`{k}={v}`" for k, v in extra.items()) or "none",
        "bundle settings used": ", ".join(f"`{k}={base.get(k)}`" for k in _REPORTED_KEYS if k in base),
        "torch threads": torch.get_num_threads(),
    }
    command = command or "maskseg_monai.sweep.run_sweep(...)"
    write_csv(rows, output_dir / "results.csv")
    write_markdown(rows, output_dir / "results.md", command, settings)
    title = f"MAE sweep, {epochs} epoch{'s' * (epochs > 1)} per cell, {settings['data']}".replace("`", "")
    plot_heatmap(rows, output_dir / "heatmap.png", title=title)
    return rows


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m maskseg_monai.sweep",
        description="Train the MAE bundle for every patch size x mask ratio and compare reconstructions, "
        "overall, on small objects and per class.",
    )
    ap.add_argument("--patch_sizes", type=int, nargs="+", default=list(DEFAULT_PATCH_SIZES))
    ap.add_argument("--mask_ratios", type=float, nargs="+", default=list(DEFAULT_MASK_RATIOS))
    ap.add_argument("--epochs", type=int, default=20, help="training epochs of every cell (default 20)")
    ap.add_argument("--demo_set", default=DEFAULT_DEMO_SET, help=f"built-in demo set (default {DEFAULT_DEMO_SET})")
    ap.add_argument("--datalist", default=None, help="a MONAI datalist JSON to use instead of a demo set")
    ap.add_argument("--seed", type=int, default=0, help="training seed and evaluation mask seed (default 0)")
    ap.add_argument("--output_dir", default=DEFAULT_OUTPUT_DIR, help=f"default {DEFAULT_OUTPUT_DIR}")
    ap.add_argument("--config_file", default=None, help="the MAE bundle's train.json (default: the repository's)")
    ap.add_argument(
        "--small_area", type=int, default=None,
        help="objects with fewer pixels (voxels) are small (default 64 in 2D, 512 in 3D)",
    )
    ap.add_argument("--progress_bar", action="store_true", help="keep the bundle's per-iteration progress bars")
    ap.add_argument(
        "--override", action="append", default=[], metavar="KEY=VALUE",
        help="bundle override for every cell, repeatable (e.g. --override hidden_size=96)",
    )
    return ap


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Command-line entry point: ``python -m maskseg_monai.sweep [options]`` (see ``--help``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    try:
        overrides = dict(parse_override(o) for o in args.override)
    except ValueError as err:
        _parser().error(str(err))
    rows = run_sweep(
        patch_sizes=args.patch_sizes,
        mask_ratios=args.mask_ratios,
        epochs=args.epochs,
        demo_set=args.demo_set,
        datalist=args.datalist,
        seed=args.seed,
        output_dir=args.output_dir,
        config_file=args.config_file,
        overrides=overrides,
        small_area=args.small_area,
        command=shlex.join(["python", "-m", "maskseg_monai.sweep", *argv]),
        progress_bar=args.progress_bar,
    )
    columns = [*_INFO_COLUMNS[:2], *_GLOBAL_METRICS, *_REGION_METRICS, *_BASELINE_METRICS]
    print(markdown_table(rows, columns))
    print(f"results in {Path(args.output_dir).resolve()}")
    return rows


if __name__ == "__main__":
    main()
