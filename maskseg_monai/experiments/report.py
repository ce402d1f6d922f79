"""Experiment reports: CSV and Markdown tables, run settings, figures (all written atomically)."""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.bundle import ConfigParser

from maskseg_monai.experiments.evaluate import REPORTED_KEYS, baseline_columns
from maskseg_monai.experiments.validation import ValidationSet
from maskseg_monai.utils import atomic_write

__all__ = [
    "LEARNED_COLUMN",
    "LEARNED_MARGIN_DB",
    "mean_std",
    "group_runs",
    "summarize_runs",
    "paired_gains",
    "effect_verdict",
    "is_learned",
    "baseline_sections",
    "load_pyplot",
    "save_figure",
    "run_settings",
    "format_value",
    "read_csv",
    "write_csv",
    "markdown_table",
    "write_markdown",
]


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


_SCORE_PREFIXES = ("dice", "f1", "precision", "recall", "val_dice", "gain_over_best_baseline")


def format_value(value: Any, column: str) -> str:
    """A results value as text: PSNR-like values with 2 decimals, SSIM and losses (``train_loss*``, ``*_loss``) with
    4, rates and scores in [0, 1] (Dice, F1, precision, recall) with 3."""
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if column == "mask_ratio":
            return f"{value:g}"
        if column.startswith(("ssim", "train_loss")) or column.endswith("_loss"):
            return f"{value:.4f}"
        if column.endswith(("_rate", "_precision", "_recall")) or column.startswith(_SCORE_PREFIXES):
            return f"{value:.3f}"
        return f"{value:.2f}"
    return str(value)


def mean_std(values: Sequence[Any]) -> tuple[float, float]:
    """Mean and standard deviation (``ddof=1``) of the finite numbers in ``values``; NaN where undefined
    (no finite value; a single value has no spread)."""
    finite = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not finite:
        return math.nan, math.nan
    return float(np.mean(finite)), float(np.std(finite, ddof=1)) if len(finite) > 1 else math.nan


def group_runs(
    rows: Sequence[Mapping[str, Any]], group: str | Sequence[str], order: Sequence[Any] | None = None
) -> dict[Any, list[Mapping[str, Any]]]:
    """The runs of each group, in table order.

    Args:
        rows: one row per run.
        group: the key that names a run's group (e.g. ``"variant"``), or several keys (e.g.
            ``("patch_size", "mask_ratio")``): the group is then the tuple of their values.
        order: the groups in table order; defaults to their order of first appearance in ``rows``.

    Example:
        >>> rows = [{"p": 8, "r": 0.5, "seed": 0}, {"p": 8, "r": 0.5, "seed": 1}, {"p": 4, "r": 0.5, "seed": 0}]
        >>> {k: len(v) for k, v in group_runs(rows, ("p", "r")).items()}
        {(8, 0.5): 2, (4, 0.5): 1}
    """
    keys = (group,) if isinstance(group, str) else tuple(group)
    name = (lambda r: r[group]) if isinstance(group, str) else (lambda r: tuple(r[k] for k in keys))
    groups: dict[Any, list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault(name(r), []).append(r)
    return groups if order is None else {k: groups[k] for k in order if k in groups}


def summarize_runs(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str],
    group: str | Sequence[str],
    order: Sequence[Any] | None = None,
) -> list[dict[str, Any]]:
    """One row per value of ``group`` (a variant, an arm, a grid cell): the ``group`` key(s), ``runs`` and
    ``"mean ± std"`` per column.

    The standard deviation is over the runs (seeds), with ``ddof=1``; a single run shows its value alone, and an
    integer that is the same in every run (e.g. ``steps``) is shown as it is. NaN values (e.g. a region absent
    from every image) are left out.

    Args:
        rows: one row per run, each with ``group`` and the ``columns``.
        columns: the columns to summarise.
        group: the key, or keys, that name a run's group (:func:`group_runs`).
        order: the groups in table order; defaults to their order of first appearance in ``rows``.

    Example:
        >>> rows = [{"arm": "mae", "dice": 0.5}, {"arm": "mae", "dice": 0.7}]
        >>> summarize_runs(rows, ["dice"], "arm")
        [{'arm': 'mae', 'runs': 2, 'dice': '0.600 ± 0.141'}]
    """
    keys = (group,) if isinstance(group, str) else tuple(group)
    table = []
    for runs in group_runs(rows, group, order).values():
        row: dict[str, Any] = {k: runs[0][k] for k in keys}
        row["runs"] = len(runs)
        for c in columns:
            values = [r.get(c, math.nan) for r in runs]
            if all(isinstance(v, int) and not isinstance(v, bool) for v in values) and len(set(values)) == 1:
                row[c] = str(values[0])
                continue
            mean, std = mean_std(values)
            text = format_value(mean, c)
            row[c] = text if math.isnan(std) else f"{text} ± {format_value(std, c)}"
        table.append(row)
    return table


def paired_gains(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str],
    reference: Any,
    pair: Sequence[str],
    group: str = "arm",
) -> list[dict[str, Any]]:
    """Paired differences of each run from the run of the ``reference`` group that shares its ``pair`` values (the
    same seed, and e.g. the same ``k`` or patch size).

    Args:
        rows: one row per run, each with ``group``, the ``pair`` keys and the ``columns``.
        columns: the scores to compare.
        reference: the group the others are compared with, e.g. ``"scratch"``.
        pair: the keys whose values pair two runs, e.g. ``("k", "seed")``.
        group: the key that names a run's group. Defaults to ``"arm"``.

    Returns:
        one row per run outside ``reference`` that has a partner: ``group``, the ``pair`` keys, then
        ``run[c] - partner[c]`` per column.

    Example:
        >>> rows = [{"arm": "random", "seed": 0, "dice": 0.5}, {"arm": "mae", "seed": 0, "dice": 0.6}]
        >>> [(g["arm"], round(g["dice"], 3)) for g in paired_gains(rows, ["dice"], "random", ["seed"])]
        [('mae', 0.1)]
    """
    key = lambda r: tuple(r[k] for k in pair)  # noqa: E731
    partners = {key(r): r for r in rows if r[group] == reference}
    return [
        {group: r[group], **{k: r[k] for k in pair}} | {c: float(r[c]) - float(partners[key(r)][c]) for c in columns}
        for r in rows
        if r[group] != reference and key(r) in partners
    ]


def effect_verdict(values: Sequence[float]) -> str:
    """Whether paired effects (one per seed) show a change: ``"shown (+)"``/``"shown (-)"`` when every seed has the
    same sign and the mean exceeds the spread between seeds (its ``ddof=1`` standard deviation), else ``"not shown"``
    (also with fewer than two seeds, which have no spread).

    Example:
        >>> effect_verdict([0.8, 1.1, 0.9]), effect_verdict([-0.5, 0.7, 0.1]), effect_verdict([0.5])
        ('shown (+)', 'not shown', 'not shown')
    """
    finite = [float(v) for v in values if math.isfinite(float(v))]
    mean, std = mean_std(finite)
    if len(finite) < 2 or not abs(mean) > std or len({math.copysign(1, v) for v in finite if v != 0}) != 1:
        return "not shown"
    return "shown (+)" if mean > 0 else "shown (-)"


#: a cell is *learned* when it beats the visible-mean fill by at least this much (dB) for every seed
LEARNED_MARGIN_DB = 1.0
#: the gain the *learned* test reads
LEARNED_COLUMN = "gain_visible_mean_psnr_masked"


def is_learned(
    runs: Sequence[Mapping[str, Any]], column: str = LEARNED_COLUMN, margin: float = LEARNED_MARGIN_DB
) -> bool:
    """Whether every run beats the visible-mean fill by at least ``margin`` dB (a NaN gain, or no run, is not).

    Example:
        >>> is_learned([{"gain_visible_mean_psnr_masked": 1.2}, {"gain_visible_mean_psnr_masked": 0.9}])
        False
    """
    gains = [r.get(column, math.nan) for r in runs]
    return bool(gains) and all(isinstance(g, (int, float)) and math.isfinite(g) and g >= margin for g in gains)


def baseline_sections(
    rows: Sequence[Mapping[str, Any]],
    group: str | Sequence[str],
    regions: Mapping[str, str],
    order: Sequence[Any] | None = None,
) -> list[str]:
    """Markdown sections comparing the model with each no-learning fill: one table per scored region.

    Each table has, per group (mean ± std over its runs), the model's PSNR, every fill's
    (:func:`~maskseg_monai.experiments.evaluate.baseline_columns`) and the model's gain over each; the first also
    says whether the group is *learned* (:func:`is_learned`).

    Args:
        rows: one row per run, with the columns of :func:`~maskseg_monai.experiments.evaluate.evaluate_cell`.
        group: the key(s) naming a run's group (:func:`group_runs`).
        regions: model PSNR column -> its heading, e.g. ``{"psnr_masked": "all masked pixels"}``.
        order: the groups in table order.
    """
    learned = {k: "yes" if is_learned(v) else "no" for k, v in group_runs(rows, group, order).items()}
    sections = []
    for i, (metric, heading) in enumerate(regions.items()):
        fills, gains = baseline_columns(metric)
        table = summarize_runs(rows, [metric, *fills, *gains], group, order)
        if i == 0:
            for row, key in zip(table, learned):
                row["learned"] = learned[key]
        note = (
            f" `learned`: beats `visible_mean` by >= {LEARNED_MARGIN_DB:g} dB on all masked pixels for every seed."
            if i == 0
            else ""
        )
        sections.append(
            f"### Model against no-learning fills: {heading}\n\nPSNR in dB, mean ± std over seeds; "
            f"`gain_<fill>_{metric}` = `{metric}` minus `<fill>_{metric}`.{note}\n\n" + markdown_table(table)
        )
    return sections


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


def _parse(text: str) -> Any:
    """A ``write_csv`` cell back as an int, a float or the text itself."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def read_csv(path: str | Path) -> list[dict[str, Any]]:
    """The rows :func:`write_csv` wrote, numbers parsed back (floats as written: 6 significant digits)."""
    with open(path, newline="") as f:
        return [{k: _parse(v) for k, v in row.items()} for row in csv.DictReader(f)]


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
