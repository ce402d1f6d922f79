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

    python -m maskseg_monai.experiments.sweep --epochs 20 --output_dir sweeps/mae
    python -m maskseg_monai.experiments.sweep --patch_sizes 4 8 --mask_ratios 0.5 --epochs 1 --override hidden_size=48

Outputs in ``--output_dir``: ``results.csv``, ``results.md`` (the command, the settings and a table) and
``heatmap.png`` (rows = mask ratio, columns = patch size), each written atomically; one bundle root per cell under
``cells/``, and the demo data, shared by all cells, under ``demo_data/``.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.utils import ensure_tuple_rep

from maskseg_monai.experiments.cli import COMMON_RESERVED_KEYS, add_common_arguments, check_run_inputs, parse_command
from maskseg_monai.experiments.cli import parse_override as _parse_override
from maskseg_monai.experiments.evaluate import (
    BASELINE_METRICS,
    DEFAULT_SMALL_AREA,
    GLOBAL_METRICS,
    REGION_METRICS,
    evaluate_cell,
)
from maskseg_monai.experiments.report import (
    load_pyplot,
    markdown_table,
    run_settings,
    save_figure,
    write_csv,
    write_markdown,
)
from maskseg_monai.experiments.runner import (
    DEFAULT_DEMO_SET,
    Cell,
    bundle_config_file,
    prepare_data,
    probe_cells,
    read_bundle,
    run_cells,
    run_overrides,
)
from maskseg_monai.experiments.validation import ValidationSet
from maskseg_monai.masking.masks import num_masked_patches
from maskseg_monai.masking.patches import grid_size

__all__ = [
    "DEFAULT_PATCH_SIZES",
    "DEFAULT_MASK_RATIOS",
    "HEATMAP_METRICS",
    "RESERVED_KEYS",
    "default_config_file",
    "parse_override",
    "check_grid",
    "cell_overrides",
    "run_sweep",
    "plot_heatmap",
    "main",
]

DEFAULT_PATCH_SIZES: tuple[int, ...] = (4, 8, 16)
DEFAULT_MASK_RATIOS: tuple[float, ...] = (0.25, 0.5, 0.75)
DEFAULT_OUTPUT_DIR = "sweeps/mae"
#: heat-map panels, in order
HEATMAP_METRICS: tuple[str, ...] = ("psnr_masked", "ssim_masked", "psnr_masked_small", "psnr_all")
#: bundle keys the sweep sets itself; each has its own command-line option
RESERVED_KEYS: dict[str, str] = {
    "patch_size": "--patch_sizes",
    "mask_ratio": "--mask_ratios",
    "seed": "--seed",
    **COMMON_RESERVED_KEYS,
}
_INFO_COLUMNS = ("patch_size", "mask_ratio", "epochs", "steps", "train_loss", "train_seconds")


def default_config_file() -> Path:
    """The MAE bundle's ``train.json`` of the source tree the package is imported from.

    Raises:
        FileNotFoundError: when the package is not run from a checkout holding ``bundles/mae`` (pass
            ``config_file`` / ``--config_file`` then).
    """
    return bundle_config_file("mae")


def parse_override(text: str) -> tuple[str, Any]:
    """Parse one ``key=value`` bundle override (:func:`maskseg_monai.experiments.parse_override`).

    Raises:
        ValueError: without ``=``, with an empty key, or for a key the sweep sets itself (see ``RESERVED_KEYS``).

    Example:
        >>> parse_override("hidden_size=48"), parse_override("amp=false"), parse_override("loss_region=all")
        (('hidden_size', 48), ('amp', False), ('loss_region', 'all'))
    """
    return _parse_override(text, RESERVED_KEYS, "the sweep")


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


def cell_overrides(patch_size: int, mask_ratio: float, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Bundle overrides of one cell: the cell's patch size and ratio, the shared schedule, seed and data.

    Args:
        patch_size: the cell's patch side.
        mask_ratio: the cell's mask ratio.
        args, kwargs: ``epochs, seed, bundle_root, dataset_dir, demo_set=None, datalist=None, extra=None`` as in
            :func:`maskseg_monai.experiments.run_overrides`.

    Returns:
        the overrides for :class:`monai.bundle.ConfigWorkflow`.
    """
    return run_overrides(*args, **kwargs, cell={"patch_size": int(patch_size), "mask_ratio": float(mask_ratio)})


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
    plt = load_pyplot("the sweep's heat-map")
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

    return save_figure(fig, path)


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
    extra = dict(overrides or {})
    check_run_inputs(config_file, datalist, epochs, extra, RESERVED_KEYS, "the sweep")
    output_dir = Path(output_dir).resolve()

    # validate the whole grid, and build each cell's network, before any training
    base = read_bundle(config_file, extra)
    spatial_dims, img_size = int(base.get_parsed_content("spatial_dims")), base.get_parsed_content("img_size")
    check_grid(patch_sizes, mask_ratios, img_size, spatial_dims)
    small_area = DEFAULT_SMALL_AREA.get(spatial_dims, 64) if small_area is None else int(small_area)
    if small_area < 1:
        raise ValueError(f"--small_area must be at least 1, got {small_area}.")
    cells = []
    for r in (float(r) for r in mask_ratios):
        for p in (int(p) for p in patch_sizes):
            root = output_dir / "cells" / f"patch{p}_ratio{r:g}"
            over = cell_overrides(p, r, epochs, seed, root, output_dir / "demo_data", demo_set, datalist, extra)
            info = {"patch_size": p, "mask_ratio": r, "epochs": epochs}
            cells.append(Cell(f"patch {p}, mask ratio {r:g}", info, over))
    probe_cells(config_file, cells)
    prepare_data(output_dir / "demo_data", demo_set, datalist)

    def evaluate(network: torch.nn.Module, parser: ConfigParser, validation: ValidationSet) -> dict[str, float]:
        metrics = evaluate_cell(
            network, validation.images, validation.labels, validation.class_names, seed, small_area,
            norm_pix_loss=bool(parser.get_parsed_content("norm_pix_loss")),
            batch_size=int(parser.get_parsed_content("batch_size")), device=parser.get_parsed_content("device"),
        )  # fmt: skip
        first = (*GLOBAL_METRICS, *REGION_METRICS, *BASELINE_METRICS)
        return {k: metrics[k] for k in first} | {k: v for k, v in metrics.items() if k not in first}

    rows, validation = run_cells(
        config_file, cells, evaluate, progress_bar=progress_bar, log=log,
        log_metrics=("psnr_masked", "psnr_masked_small", "ssim_masked"),
    )  # fmt: skip

    small = f"connected components (per class) of fewer than {small_area} {'pixels' if spatial_dims == 2 else 'voxels'}"
    specific = {"epochs per cell": epochs, "seed (training and evaluation masks)": seed, "small objects": small}
    settings = run_settings(config_file, base, demo_set, datalist, validation, extra, specific)
    command = command or "maskseg_monai.experiments.sweep.run_sweep(...)"
    write_csv(rows, output_dir / "results.csv")
    write_markdown(
        output_dir / "results.md", "MAE patch size x mask ratio sweep", command, settings, [markdown_table(rows)]
    )
    title = f"MAE sweep, {epochs} epoch{'s' * (epochs > 1)} per cell, {settings['data']}".replace("`", "")
    plot_heatmap(rows, output_dir / "heatmap.png", title=title)
    return rows


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m maskseg_monai.experiments.sweep",
        description="Train the MAE bundle for every patch size x mask ratio and compare reconstructions, "
        "overall, on small objects and per class.",
    )
    ap.add_argument("--patch_sizes", type=int, nargs="+", default=list(DEFAULT_PATCH_SIZES))
    ap.add_argument("--mask_ratios", type=float, nargs="+", default=list(DEFAULT_MASK_RATIOS))
    ap.add_argument("--seed", type=int, default=0, help="training seed and evaluation mask seed (default 0)")
    ap.add_argument(
        "--small_area", type=int, default=None,
        help="objects with fewer pixels (voxels) are small (default 64 in 2D, 512 in 3D)",
    )  # fmt: skip
    add_common_arguments(ap, DEFAULT_OUTPUT_DIR, "mae")
    return ap


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Command-line entry point: ``python -m maskseg_monai.experiments.sweep [options]`` (see ``--help``)."""
    args, common = parse_command(_parser(), argv, "maskseg_monai.experiments.sweep", RESERVED_KEYS, "the sweep")
    rows = run_sweep(args.patch_sizes, args.mask_ratios, seed=args.seed, small_area=args.small_area, **common)
    columns = [*_INFO_COLUMNS[:2], *GLOBAL_METRICS, *REGION_METRICS, *BASELINE_METRICS]
    print(markdown_table(rows, columns))
    print(f"results in {Path(args.output_dir).resolve()}")
    return rows


if __name__ == "__main__":
    main()
