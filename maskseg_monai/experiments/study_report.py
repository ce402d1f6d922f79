"""Tables and plot of the label-efficiency study (:mod:`maskseg_monai.experiments.study`): summaries per
labelled-set size, the paired gains over scratch, the saturation check, the curves, and ``results.md``."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from maskseg_monai.experiments.report import (
    format_value,
    load_pyplot,
    markdown_table,
    mean_std,
    paired_gains,
    save_figure,
    summarize_runs,
    write_csv,
    write_markdown,
)
from maskseg_monai.metrics.segmentation import size_bucket_names

__all__ = [
    "ARMS",
    "SUMMARY_COLUMNS",
    "GAIN_COLUMNS",
    "RUN_COLUMNS",
    "by_k",
    "gains_over_scratch",
    "saturation_check",
    "plot_study",
    "write_study_results",
]

#: the fine-tuning arms, in table order; each but ``scratch`` names the bundle that pretrains its encoder
ARMS = ("scratch", "mae", "amlp")
#: summary columns of results.md (``dice_small`` is the smallest size bucket's Dice)
SUMMARY_COLUMNS = ("dice", "dice_small", "f1", "precision", "recall", "train_seconds")
#: the scores compared between arms
GAIN_COLUMNS = ("dice", "dice_small", "f1")
#: the columns of the per-run table of results.md
RUN_COLUMNS = (
    "arm", "k", "seed", "steps", "train_loss", *GAIN_COLUMNS, "val_dice_mid", "val_dice_last", "encoder_loaded",
    "encoder_tensors", "encoder_missing", "encoder_unexpected", "train_seconds", "pretrain_seconds",
)  # fmt: skip


def by_k(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], group: str = "arm") -> list[dict[str, Any]]:
    """:func:`summarize_runs` per labelled-set size: one row per ``k`` x ``group`` (``k`` ascending, arms in
    :data:`ARMS` order)."""
    table = []
    for k in sorted({r["k"] for r in rows}):
        table += [{"k": k, **t} for t in summarize_runs([r for r in rows if r["k"] == k], columns, group, ARMS)]
    return table


def gains_over_scratch(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str] = GAIN_COLUMNS
) -> list[dict[str, Any]]:
    """Paired differences of each pretrained run from the scratch run of the same ``k`` and seed (the same items,
    seed and steps).

    Args:
        rows: study rows (``arm``, ``k``, ``seed`` and the ``columns``).
        columns: the scores to compare.

    Returns:
        one row per pretrained run that has a scratch partner: ``arm``, ``k``, ``seed``, then
        ``run[c] - scratch[c]`` per column.

    Example:
        >>> rows = [{"arm": "scratch", "k": 2, "seed": 0, "dice": 0.5}, {"arm": "mae", "k": 2, "seed": 0, "dice": 0.6}]
        >>> [(g["arm"], round(g["dice"], 3)) for g in gains_over_scratch(rows, ["dice"])]
        [('mae', 0.1)]
    """
    return paired_gains(rows, columns, "scratch", ("k", "seed"))


def saturation_check(rows: Sequence[Mapping[str, Any]], tolerance: float = 0.01) -> list[dict[str, Any]]:
    """Is the scratch arm still learning at the end of the budget? One row per ``k``.

    Compares the bundle's validation Dice (``val_mean_dice``) at the middle and at the end of fine-tuning
    (``val_dice_mid``, ``val_dice_last``) and the training loss over the steps before each (``train_loss_mid``,
    ``train_loss_last``), averaged over seeds. Scratch is *saturated* at ``k`` when its mean Dice rise is at most
    ``tolerance``: then the budget is long enough for it to reach its plateau.

    Args:
        rows: study rows; only the ``scratch`` ones are read.
        tolerance: the least mean rise of validation Dice from the middle to the end that counts as still rising.

    Returns:
        ``k``, ``runs``, the four values and ``val_dice_rise`` (mean ± std over seeds), ``loss_falling``
        (``yes``/``no``) and ``verdict`` (``rising``, or ``saturated``).
    """
    columns = ["val_dice_mid", "val_dice_last", "val_dice_rise", "train_loss_mid", "train_loss_last"]
    table = []
    for k in sorted({r["k"] for r in rows if r["arm"] == "scratch"}):
        runs = [dict(r) for r in rows if r["arm"] == "scratch" and r["k"] == k]
        for r in runs:
            r["val_dice_rise"] = r["val_dice_last"] - r["val_dice_mid"]
        (row,) = summarize_runs(runs, columns, "k")
        rise = mean_std([r["val_dice_rise"] for r in runs])[0]
        drop = mean_std([r["train_loss_mid"] - r["train_loss_last"] for r in runs])[0]
        row["loss_falling"] = "nan" if math.isnan(drop) else ("yes" if drop > 0 else "no")
        row["verdict"] = "nan" if math.isnan(rise) else ("rising" if rise > tolerance else "saturated")
        table.append(row)
    return table


def plot_study(
    rows: Sequence[Mapping[str, Any]],
    path: str | Path,
    metrics: Sequence[str] = ("dice", "dice_small"),
    labels: Sequence[str] | None = None,
    title: str = "",
) -> str:
    """Label-efficiency curves: one panel per metric, score against ``k`` per arm (mean over seeds, error bar =
    std), each seed as a dot; written atomically.

    Args:
        rows: study rows with ``arm``, ``k`` and the ``metrics``.
        path: the PNG to write.
        metrics: one panel each. Defaults to mean Dice and small-object Dice.
        labels: panel title per metric. Defaults to the metric names.
        title: figure title.

    Returns:
        the path written.

    Raises:
        ImportError: without matplotlib.
    """
    plt = load_pyplot("the study's plot")
    arms = [a for a in ARMS if any(r["arm"] == a for r in rows)]
    ks = sorted({int(r["k"]) for r in rows})
    labels = list(labels or metrics)
    fig, axes = plt.subplots(1, len(metrics), figsize=(1.0 + 3.6 * len(metrics), 3.6), squeeze=False)
    for ax, metric, label in zip(axes[0], metrics, labels):
        for i, arm in enumerate(arms):
            shift = 1.0 + 0.04 * (i - (len(arms) - 1) / 2)  # arms side by side on the log axis
            stats = [mean_std([r.get(metric, math.nan) for r in rows if r["arm"] == arm and r["k"] == k]) for k in ks]
            means = [m for m, _ in stats]
            errs = [0.0 if math.isnan(s) else s for _, s in stats]
            ax.errorbar(np.array(ks) * shift, means, yerr=errs, marker="o", capsize=3, label=arm)
            dots = [(int(r["k"]) * shift, float(r.get(metric, math.nan))) for r in rows if r["arm"] == arm]
            ax.scatter([x for x, _ in dots], [y for _, y in dots], color="black", s=8, zorder=3)
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_xlabel("labelled training images (k)")
        ax.set_ylabel("validation score")
        ax.set_ylim(0, 1)
        ax.set_title(label, fontsize="medium")
    axes[0][0].legend(title="encoder", fontsize="small")
    if title:
        fig.suptitle(title, fontsize="medium")
    fig.tight_layout()
    return save_figure(fig, path)


def write_study_results(
    rows: Sequence[Mapping[str, Any]],
    output_dir: str | Path,
    total: int,
    command: str,
    settings: Mapping[str, Any],
    size_thresholds: Sequence[int],
    saturation_tolerance: float = 0.01,
) -> None:
    """Write ``results.csv``, ``results.md`` and ``study.png`` of the runs so far into ``output_dir``, each
    atomically.

    Args:
        rows: the study's rows so far (:func:`~maskseg_monai.experiments.study.run_study`).
        output_dir: the study's output folder.
        total: the number of planned runs (fewer rows: ``results.md`` says the results are partial).
        command: the command line recorded in ``results.md``.
        settings: the settings list of ``results.md``.
        size_thresholds: object-size bucket edges of the evaluation (the columns of the by-size table).
        saturation_tolerance: see :func:`saturation_check`.
    """
    output_dir = Path(output_dir)
    buckets = size_bucket_names(size_thresholds)
    write_csv(rows, output_dir / "results.csv")
    pretrained = [r for r in rows if r["arm"] != "scratch"]
    loads = sorted({f"{r['encoder_loaded']}/{r['encoder_tensors']}" for r in pretrained})
    transfer = (
        f"{len(pretrained)} fine-tuning(s) of the pretrained arms loaded {' or '.join(loads) or 'no'} encoder "
        f"tensors: {sum(r['encoder_missing'] for r in pretrained)} missing, "
        f"{sum(r['encoder_unexpected'] for r in pretrained)} unexpected keys in all (a run with any stops the "
        "study); per run in `results.csv` (`encoder_*`)."
    )
    gains = gains_over_scratch(rows)
    sections = [
        *([f"**Partial results: {len(rows)} of {total} runs done.**"] if len(rows) < total else []),
        "## Mean ± std over seeds\n\n" + markdown_table(by_k(rows, SUMMARY_COLUMNS)),
        "## Dice by object size\n\n" + markdown_table(by_k(rows, [f"dice_{b}" for b in buckets])),
        "## Gain over scratch (paired by k and seed; mean ± std over seeds)\n\n"
        + (markdown_table(by_k(gains, GAIN_COLUMNS)) if gains else "no pair yet"),
        "## Is scratch saturated? (validation Dice and training loss, middle vs end of fine-tuning)\n\n"
        + markdown_table(saturation_check(rows, saturation_tolerance)),  # scratch runs first at each k
        "## Encoder transfer\n\n" + transfer,
        "## Runs\n\n" + markdown_table([{c: format_value(r[c], c) for c in RUN_COLUMNS} for r in rows], RUN_COLUMNS),
    ]
    write_markdown(output_dir / "results.md", "Label efficiency: UNETR from scratch vs MAE vs AMLP pretraining",
                   command, settings, sections)  # fmt: skip
    title = f"UNETR fine-tuning on k labelled images, {len({r['seed'] for r in rows})} seed(s)"
    plot_study(rows, output_dir / "study.png", labels=("Dice", f"small-object Dice ({buckets[0]})"), title=title)
