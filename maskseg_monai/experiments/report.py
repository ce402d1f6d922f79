"""Experiment reports: CSV and Markdown tables, run settings, figures (all written atomically)."""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser

from maskseg_monai.experiments.evaluate import REPORTED_KEYS
from maskseg_monai.experiments.validation import ValidationSet
from maskseg_monai.utils import atomic_write

__all__ = [
    "load_pyplot",
    "save_figure",
    "run_settings",
    "format_value",
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
