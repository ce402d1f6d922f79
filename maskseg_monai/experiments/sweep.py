"""Patch size x mask ratio sweep of the MAE bundle, with reconstruction quality split by object size and class,
beside the fills that need no learning (``shared/methods/baselines.md``).

Every cell of the grid trains ``bundles/mae`` (in-process, through :class:`monai.bundle.ConfigWorkflow`) once per
training seed, with the same data and number of steps, then evaluates ``models/model_final.pt`` (MAE's convention:
the last checkpoint) on the validation split with masks drawn from one fixed evaluation seed at the cell's own mask
ratio. Reported per run, averaged over validation images:

- ``psnr_masked``, ``ssim_masked``, ``psnr_all``, ``ssim_all``: :func:`~maskseg_monai.metrics.reconstruction_metrics`;
- ``psnr_masked_small`` / ``psnr_masked_rest``: PSNR over masked pixels inside / outside the connected components
  (per class) smaller than ``small_area`` pixels, dilated by ``small_dilation`` pixels (a region fixed in pixels,
  the same for every patch size);
- ``psnr_masked_<class>``: PSNR over masked pixels of each class of the label map (names from the datalist's
  ``"labels"``);
- ``<fill>_psnr_masked`` / ``<fill>_psnr_masked_small`` for the fills ``global_mean``, ``visible_mean`` and
  ``gaussian`` on the same masks, and the model's gains ``gain_<fill>_...`` (model minus fill, dB). The Gaussian
  sigma and the global mean are fitted on training crops, once per (patch size, ratio)
  (:func:`~maskseg_monai.experiments.fit_cell_baselines`), never on validation images.

Region PSNRs are NaN for an image without such masked pixels and are averaged over the other images.

Run it as a module::

    python -m maskseg_monai.experiments.sweep --output_dir sweeps/mae
    python -m maskseg_monai.experiments.sweep --patch_sizes 4 8 --mask_ratios 0.5 --epochs 1 --seeds 0 \
        --override hidden_size=48

Outputs in ``--output_dir``: ``results.csv`` (one row per cell x seed), ``results.md`` (the command, the settings,
how the baselines were fitted, and mean ± std tables per cell: model, each fill, gains, *learned*) and
``heatmap.png`` (rows = mask ratio, columns = patch size: the gain over Gaussian interpolation and the PSNR, mean
over seeds), each written atomically (the tables after every run); one bundle root per run under ``cells/``, and
the demo data, shared by all runs, under ``demo_data/``.
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

from maskseg_monai.experiments.cli import (
    COMMON_RESERVED_KEYS,
    DEFAULT_SEEDS,
    add_common_arguments,
    add_seed_arguments,
    add_small_object_arguments,
    check_run_inputs,
    check_seeds,
    parse_command,
)
from maskseg_monai.experiments.evaluate import (
    BASELINE_METRICS,
    DEFAULT_BASELINE_CROPS,
    GAIN_METRICS,
    GLOBAL_METRICS,
    REGION_METRICS,
    check_small_region,
    describe_baselines,
    describe_small_region,
    evaluate_cell,
    fit_cell_baselines,
)
from maskseg_monai.experiments.report import (
    baseline_sections,
    group_runs,
    load_pyplot,
    markdown_table,
    mean_std,
    run_settings,
    save_figure,
    summarize_runs,
    write_csv,
    write_markdown,
)
from maskseg_monai.experiments.runner import (
    DEFAULT_DEMO_SET,
    DEFAULT_EPOCHS,
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
    "check_grid",
    "cell_overrides",
    "run_sweep",
    "plot_heatmap",
    "main",
]

DEFAULT_PATCH_SIZES: tuple[int, ...] = (4, 8, 16)
DEFAULT_MASK_RATIOS: tuple[float, ...] = (0.25, 0.5, 0.75)
DEFAULT_OUTPUT_DIR = "sweeps/mae"
#: heat-map panels, in order: the gain over Gaussian interpolation, then the model's PSNR
HEATMAP_METRICS: tuple[str, ...] = (
    "gain_gaussian_psnr_masked", "gain_gaussian_psnr_masked_small", "psnr_masked", "psnr_masked_small",
)  # fmt: skip
#: bundle keys the sweep sets itself; each has its own command-line option
RESERVED_KEYS: dict[str, str] = {
    "patch_size": "--patch_sizes",
    "mask_ratio": "--mask_ratios",
    "seed": "--seeds",
    **COMMON_RESERVED_KEYS,
}
_CELL = ("patch_size", "mask_ratio")
_REGIONS = {"psnr_masked": "all masked pixels", "psnr_masked_small": "masked pixels of small objects"}
_OTHER_COLUMNS = ("psnr_masked_rest", "ssim_masked", "psnr_all", "ssim_all")


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
    """One heat-map panel per metric, rows = mask ratio, columns = patch size, values (mean over a cell's runs)
    annotated; written atomically. Gains (``gain_*``) use a diverging map centred on 0 dB.

    Args:
        rows: sweep rows with ``patch_size``, ``mask_ratio`` and the ``metrics`` (several rows per cell, one per
            seed, are averaged).
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
    cells = group_runs(rows, _CELL)
    ncols = min(len(metrics), 2)
    nrows = math.ceil(len(metrics) / ncols)
    width, height = 1.6 + 1.3 * len(patches), 1.3 + 0.8 * len(ratios)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)
    for ax in axes.flat[len(metrics) :]:
        ax.axis("off")
    for ax, metric in zip(axes.flat, metrics):
        grid = np.full((len(ratios), len(patches)), np.nan)
        for (patch, ratio), runs in cells.items():
            grid[ratios.index(ratio), patches.index(patch)] = mean_std([r.get(metric, np.nan) for r in runs])[0]
        finite = grid[np.isfinite(grid)]
        gain = metric.startswith("gain_")
        limit = float(np.abs(finite).max()) if gain and finite.size else None
        cmap = plt.get_cmap("RdBu" if gain else "viridis").with_extremes(bad="lightgrey")
        im = ax.imshow(
            np.ma.masked_invalid(grid), cmap=cmap, aspect="auto",
            vmin=-limit if limit else None, vmax=limit if limit else None,
        )  # fmt: skip
        mid = (finite.min() + finite.max()) / 2 if finite.size else 0.0
        for (i, j), v in np.ndenumerate(grid):
            text = "nan" if not np.isfinite(v) else (f"{v:.3f}" if metric.startswith("ssim") else f"{v:.2f}")
            dark = np.isfinite(v) and (abs(v) < 0.6 * limit if gain and limit else v > mid)
            ax.text(j, i, text, ha="center", va="center", color="black" if dark else "white")
        ax.set_xticks(range(len(patches)), [str(p) for p in patches])
        ax.set_yticks(range(len(ratios)), [f"{r:g}" for r in ratios])
        ax.set_xlabel("patch size")
        ax.set_ylabel("mask ratio")
        ax.set_title(metric + (" (dB)" if "psnr" in metric else ""))
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if title:
        fig.suptitle(title)
    fig.tight_layout()

    return save_figure(fig, path)


def run_sweep(
    patch_sizes: Sequence[int] = DEFAULT_PATCH_SIZES,
    mask_ratios: Sequence[float] = DEFAULT_MASK_RATIOS,
    epochs: int = DEFAULT_EPOCHS,
    demo_set: str = DEFAULT_DEMO_SET,
    datalist: str | Path | None = None,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    output_dir: str | Path = DEFAULT_OUTPUT_DIR,
    config_file: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    small_area: int | None = None,
    small_dilation: int | None = None,
    eval_seed: int = 0,
    command: str | None = None,
    progress_bar: bool = False,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Train and evaluate every patch size x mask ratio cell once per seed, then write ``results.csv``,
    ``results.md`` and ``heatmap.png`` to ``output_dir``.

    The Gaussian sigma and global mean of the baselines are fitted once per cell (patch size, ratio) on
    training crops drawn with ``eval_seed`` (:func:`~maskseg_monai.experiments.fit_cell_baselines`), so every seed
    of a cell is compared with the same baselines on the same masks.

    Args:
        patch_sizes: patch sides, one per heat-map column.
        mask_ratios: mask ratios, one per heat-map row.
        epochs: training epochs of every run.
        demo_set: built-in demo set (``maskseg_monai.data.DEMO_SETS``) when no ``datalist`` is given.
        datalist: a MONAI datalist JSON (``"training"``/``"validation"`` lists of ``{"image", "label"}``).
        seeds: training seeds; every cell runs once per seed. Defaults to ``(0, 1, 2)``.
        output_dir: where results, run bundle roots (``cells/``) and demo data go.
        config_file: the bundle's ``train.json``. Defaults to the MAE bundle's.
        overrides: further bundle overrides (``key -> value``) for every run.
        small_area: small-object threshold in pixels/voxels. Defaults to 64 in 2D, 512 in 3D.
        small_dilation: pixels the small objects are grown by. Defaults to 2.
        eval_seed: seed of the evaluation masks and of the training crops the baselines are fitted on.
        command: the command line recorded in ``results.md``.
        progress_bar: keep the bundle's per-iteration progress bars.
        log: where progress lines go.

    Returns:
        one dict per run (seed-major): ``patch_size``, ``mask_ratio``, ``seed``, ``epochs``, ``steps``,
        ``train_loss``, ``train_seconds`` and the metrics of :func:`evaluate_cell`.

    Raises:
        ValueError: on a grid the bundle cannot run (checked before any training), a reserved override,
            ``epochs < 1``, no or repeated seeds, ``small_area < 1`` or ``small_dilation < 0``.
        FileNotFoundError: when ``config_file`` or ``datalist`` does not exist.
    """
    config_file = Path(config_file) if config_file is not None else bundle_config_file("mae")
    extra = dict(overrides or {})
    check_run_inputs(config_file, datalist, epochs, extra, RESERVED_KEYS, "the sweep")
    seeds = check_seeds(seeds)
    output_dir = Path(output_dir).resolve()

    # validate the whole grid, and build each cell's network, before any training
    base = read_bundle(config_file, extra)
    spatial_dims, img_size = int(base.get_parsed_content("spatial_dims")), base.get_parsed_content("img_size")
    check_grid(patch_sizes, mask_ratios, img_size, spatial_dims)
    small_area, small_dilation = check_small_region(small_area, small_dilation, spatial_dims)
    cells = []
    for seed in seeds:
        for r in (float(r) for r in mask_ratios):
            for p in (int(p) for p in patch_sizes):
                root = output_dir / "cells" / f"patch{p}_ratio{r:g}_seed{seed}"
                over = cell_overrides(p, r, epochs, seed, root, output_dir / "demo_data", demo_set, datalist, extra)
                info = {"patch_size": p, "mask_ratio": r, "seed": seed, "epochs": epochs}
                cells.append(Cell(f"patch {p}, mask ratio {r:g}, seed {seed}", info, over))
    probe_cells(config_file, cells)
    prepare_data(output_dir / "demo_data", demo_set, datalist)

    fitted: dict[tuple[int, float], dict[str, Any]] = {}  # one baseline fit per (patch size, ratio)

    def evaluate(network: torch.nn.Module, parser: ConfigParser, validation: ValidationSet) -> dict[str, float]:
        cell = (int(parser.get_parsed_content("patch_size")), float(parser.get_parsed_content("mask_ratio")))
        if cell not in fitted:
            fitted[cell] = fit_cell_baselines(parser, cell[1], eval_seed)
        metrics = evaluate_cell(
            network, validation.images, validation.labels, validation.class_names, eval_seed, small_area,
            fitted[cell], norm_pix_loss=bool(parser.get_parsed_content("norm_pix_loss")),
            batch_size=int(parser.get_parsed_content("batch_size")), device=parser.get_parsed_content("device"),
            mask_ratio=cell[1], small_dilation=small_dilation,
        )  # fmt: skip
        first = (*GLOBAL_METRICS, *REGION_METRICS, *BASELINE_METRICS, *GAIN_METRICS)
        return {k: metrics[k] for k in first} | {k: v for k, v in metrics.items() if k not in first}

    command = command or "maskseg_monai.experiments.sweep.run_sweep(...)"

    def save(rows: list[dict[str, Any]], validation: ValidationSet | None) -> None:
        specific = {
            "epochs per run": epochs,
            "training seeds": ", ".join(map(str, seeds)),
            "evaluation": f"masks at each cell's own ratio, seed {eval_seed}, the same for every training seed",
            "small objects": describe_small_region(small_area, small_dilation, spatial_dims),
        }
        settings = run_settings(config_file, base, demo_set, datalist, validation, extra, specific)
        write_csv(rows, output_dir / "results.csv")
        write_markdown(
            output_dir / "results.md", "MAE patch size x mask ratio sweep", command, settings,
            _sections(rows, validation, fitted, eval_seed, len(cells)),
        )  # fmt: skip

    rows, validation = run_cells(
        config_file, cells, evaluate, progress_bar=progress_bar, log=log,
        log_metrics=("psnr_masked", "gain_gaussian_psnr_masked", "gain_visible_mean_psnr_masked", "psnr_masked_small"),
        on_row=save,
    )  # fmt: skip
    data = f"datalist `{datalist}`" if datalist is not None else f"demo set `{demo_set}`"
    runs = f"{len(seeds)} seed{'s' * (len(seeds) > 1)}"
    title = f"MAE sweep, {epochs} epoch{'s' * (epochs > 1)} per run, mean over {runs}, {data}".replace("`", "")
    plot_heatmap(rows, output_dir / "heatmap.png", title=title)
    return rows


def _sections(
    rows: Sequence[Mapping[str, Any]],
    validation: ValidationSet | None,
    fitted: Mapping[tuple[int, float], Mapping[str, Any]],
    eval_seed: int,
    total: int,
) -> list[str]:
    classes = [f"psnr_masked_{n}" for n in (validation.class_names if validation is not None else {}).values()]
    partial = [f"**Partial results: {len(rows)} of {total} runs done.**"] if len(rows) < total else []
    fits = {f"patch {p}, ratio {r:g}": fit for (p, r), fit in fitted.items()}
    return [
        *partial,
        "## Baselines\n\n" + describe_baselines(DEFAULT_BASELINE_CROPS, eval_seed, fits),
        *baseline_sections(rows, _CELL, _REGIONS),
        "## Other reconstruction metrics\n\nMean ± std over seeds; `psnr_masked_rest`: masked pixels outside the "
        "small-object region.\n\n" + markdown_table(summarize_runs(rows, _OTHER_COLUMNS, _CELL)),
        "## Masked PSNR per class\n\n" + markdown_table(summarize_runs(rows, classes, _CELL)) if classes else "",
        "## Training\n\n" + markdown_table(summarize_runs(rows, ("steps", "train_loss", "train_seconds"), _CELL)),
    ]


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m maskseg_monai.experiments.sweep",
        description="Train the MAE bundle for every patch size x mask ratio and seed, and compare reconstructions "
        "with fills that need no learning, overall, on small objects and per class.",
    )
    ap.add_argument("--patch_sizes", type=int, nargs="+", default=list(DEFAULT_PATCH_SIZES))
    ap.add_argument("--mask_ratios", type=float, nargs="+", default=list(DEFAULT_MASK_RATIOS))
    add_seed_arguments(ap)
    add_small_object_arguments(ap)
    add_common_arguments(ap, DEFAULT_OUTPUT_DIR, "mae")
    return ap


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Command-line entry point: ``python -m maskseg_monai.experiments.sweep [options]`` (see ``--help``)."""
    args, common = parse_command(_parser(), argv, "maskseg_monai.experiments.sweep", RESERVED_KEYS, "the sweep")
    rows = run_sweep(
        args.patch_sizes, args.mask_ratios, seeds=args.seeds, small_area=args.small_area,
        small_dilation=args.small_dilation, eval_seed=args.eval_seed, **common,
    )  # fmt: skip
    columns = ["psnr_masked", "gaussian_psnr_masked", "gain_gaussian_psnr_masked", "gain_visible_mean_psnr_masked"]
    print(markdown_table(summarize_runs(rows, columns, _CELL)))
    print(f"results in {Path(args.output_dir).resolve()}")
    return rows


if __name__ == "__main__":
    main()
