"""Scoring of the SSL-ALPNet one-shot abdominal benchmark, next to the published numbers.

Protocol of Ouyang et al., "Self-supervision with Superpixels: Training Few-shot Medical Image Segmentation without
Annotation", ECCV 2020 (``util/metric.py`` and ``validation.py`` of its public code): for every test class and
every query volume, true/false positives and false negatives are summed over the scored slices (the class's first
to last labelled slice of the query), giving one 3D Dice per class per query volume; the class's Dice is the mean
over query volumes and the benchmark's Dice the mean over classes. Published numbers are percentages.

The rows this module reads and writes (one per query volume and class, :data:`VOLUME_COLUMNS`) come from
:class:`~maskseg_monai.handlers.abdominal_saver.AbdominalProtocolSaver`; :func:`summarize_protocol` also merges the
rows of the five folds into the table comparable to the paper
(``python -m maskseg_monai.data.abdominal summarize``).
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from maskseg_monai.utils import atomic_write

__all__ = [
    "PUBLISHED_DICE",
    "SUPPORTED_MODALITIES",
    "SUPPORTED_SETTINGS",
    "VOLUME_COLUMNS",
    "dice_from_counts",
    "read_volume_rows",
    "summarize_protocol",
    "write_protocol_tables",
]

#: ``modality``, as the published tables name the two benchmarks
SUPPORTED_MODALITIES = ("CT", "MRI")
#: 1: test classes may appear (unlabelled) in training images; 2: training slices holding them are removed
SUPPORTED_SETTINGS = (1, 2)

#: mean Dice (%) of SSL-ALPNet, 1-way 1-shot, 5-fold (Ouyang et al., ECCV 2020, Table 1). Only the means of
#: setting 2 are pinned here; its per-class values are left out rather than quoted unverified.
PUBLISHED_DICE: dict[str, dict[int, dict[str, float]]] = {
    "CT": {
        1: {"liver": 78.29, "spleen": 70.96, "left_kidney": 72.36, "right_kidney": 71.81, "mean": 73.35},
        2: {"mean": 63.02},
    },
    "MRI": {
        1: {"liver": 76.10, "spleen": 72.18, "left_kidney": 81.92, "right_kidney": 85.18, "mean": 78.84},
        2: {"mean": 73.02},
    },
}

#: columns of ``per_volume.csv``: one row per (query volume, class)
VOLUME_COLUMNS = (
    "modality",
    "setting",
    "fold",
    "test_group",
    "class",
    "class_name",
    "query",
    "support",
    "support_slices",
    "n_scored_slices",
    "tp",
    "fp",
    "fn",
    "dice",
)
_INT_COLUMNS = ("setting", "fold", "class", "n_scored_slices", "tp", "fp", "fn")


def dice_from_counts(tp: Any, fp: Any, fn: Any) -> np.ndarray:
    """Dice ``2 TP / (2 TP + FP + FN)`` of summed counts (arrays broadcast); NaN where all three are 0.

    Example:
        >>> dice_from_counts([3, 0], [1, 0], [1, 0]).tolist()
        [0.75, nan]
    """
    tp, fp, fn = (np.asarray(v, dtype=np.float64) for v in (tp, fp, fn))
    den = 2 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, 2 * tp / np.where(den > 0, den, 1), np.nan)


def _check_modality(modality: str) -> str:
    modality = str(modality).upper()
    modality = "MRI" if modality in ("MR", "MRI") else modality
    if modality not in SUPPORTED_MODALITIES:
        raise ValueError(f"Unsupported modality: {modality!r}, available options are {list(SUPPORTED_MODALITIES)}.")
    return modality


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def _write_csv(path: Path, columns: Sequence[str], rows: Iterable[dict]) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(columns)
            writer.writerows([_fmt(r.get(c, "")) for c in columns] for r in rows)

    atomic_write(path, write)


def read_volume_rows(paths: Sequence[str | os.PathLike]) -> list[dict[str, Any]]:
    """The rows of one or more ``per_volume.csv`` files (e.g. the five folds of one setting).

    Raises:
        ValueError: a file lacks a column of :data:`VOLUME_COLUMNS` (naming the file and the column).
    """
    rows = []
    for path in paths:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in VOLUME_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise ValueError(f"{path}: not a per-volume protocol table, missing column(s) {missing}.")
            for r in reader:
                row: dict[str, Any] = dict(r)
                for c in _INT_COLUMNS:
                    row[c] = int(row[c])
                row["dice"] = float(row["dice"]) if row["dice"] != "" else float("nan")
                row["_source"] = str(path)
                rows.append(row)
    return rows


def summarize_protocol(rows: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per-class means over query volumes and the mean over classes, with the published numbers beside them.

    Args:
        rows: per-volume rows (:data:`VOLUME_COLUMNS`), of one modality and one setting; they may come from several
            folds (and, in setting 2, from the ``upper`` and ``lower`` models).

    Returns:
        ``(per_class, summary)``: ``per_class`` rows (``class``, ``class_name``, ``n_volumes``, ``dice_mean``,
        ``dice_std``, ``dice_percent``, ``published_setting1``, ``published_setting2``), ordered by class value;
        ``summary`` (``modality``, ``setting``, ``folds``, ``n_volumes``, ``n_classes``, ``mean_dice``,
        ``mean_dice_percent``, ``published_setting1_mean``, ``published_setting2_mean``). Published values are
        percentages, ``""`` where none is pinned.

    Raises:
        ValueError: no rows, rows of several modalities or settings, or one (query, class) scored twice.
    """
    if not rows:
        raise ValueError("no per-volume rows to summarize.")
    modalities = {_check_modality(r["modality"]) for r in rows}
    settings = {int(r["setting"]) for r in rows}
    if len(modalities) > 1 or len(settings) > 1:
        raise ValueError(
            f"the rows mix modalities {sorted(modalities)} or settings {sorted(settings)}; summarize one benchmark "
            "(one modality, one setting) at a time."
        )
    (modality,), (setting,) = modalities, settings
    seen: dict[tuple[str, int], str] = {}
    for r in rows:
        key = (str(r["query"]), int(r["class"]))
        where = str(r.get("_source", f"fold {r['fold']}"))
        if key in seen:
            raise ValueError(
                f"query {key[0]} class {key[1]} is scored twice ({seen[key]} and {where}); pass each fold's "
                "per_volume.csv once."
            )
        seen[key] = where
    published = PUBLISHED_DICE[modality]
    per_class = []
    for c in sorted({int(r["class"]) for r in rows}):
        mine = [r for r in rows if int(r["class"]) == c]
        name = str(mine[0]["class_name"])
        dice = np.array([float(r["dice"]) for r in mine], dtype=np.float64)
        valid = dice[~np.isnan(dice)]
        mean = float(valid.mean()) if valid.size else float("nan")
        per_class.append(
            {
                "class": c,
                "class_name": name,
                "n_volumes": len(mine),
                "dice_mean": mean,
                "dice_std": float(valid.std()) if valid.size else float("nan"),
                "dice_percent": 100.0 * mean,
                "published_setting1": published[1].get(name, ""),
                "published_setting2": published[2].get(name, ""),
            }
        )
    means = np.array([r["dice_mean"] for r in per_class], dtype=np.float64)
    mean_dice = float(np.nanmean(means)) if np.isfinite(means).any() else float("nan")
    summary = {
        "modality": modality,
        "setting": setting,
        "folds": " ".join(str(f) for f in sorted({int(r["fold"]) for r in rows})),
        "test_groups": " ".join(sorted({str(r["test_group"]) for r in rows})),
        "n_volumes": len({str(r["query"]) for r in rows}),
        "n_classes": len(per_class),
        "mean_dice": mean_dice,
        "mean_dice_percent": 100.0 * mean_dice,
        "published_setting1_mean": published[1]["mean"],
        "published_setting2_mean": published[2]["mean"],
    }
    return per_class, summary


def write_protocol_tables(rows: Sequence[dict[str, Any]], save_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``per_volume.csv``, ``per_class.csv`` and ``summary.csv`` (``metric,value``) into ``save_dir``.

    Every file is written atomically (:func:`~maskseg_monai.utils.atomic_write`); see :func:`summarize_protocol`
    for the columns.

    Returns:
        ``{"per_volume": path, "per_class": path, "summary": path}``.
    """
    save_dir = Path(save_dir)
    per_class, summary = summarize_protocol(rows)
    paths = {name: save_dir / f"{name}.csv" for name in ("per_volume", "per_class", "summary")}
    ordered = sorted(rows, key=lambda r: (int(r["class"]), str(r["query"])))
    _write_csv(paths["per_volume"], VOLUME_COLUMNS, ordered)
    _write_csv(paths["per_class"], list(per_class[0]), per_class)
    _write_csv(paths["summary"], ("metric", "value"), [{"metric": k, "value": v} for k, v in summary.items()])
    return paths
