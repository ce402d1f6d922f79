"""The tables of one fold of the SSL-ALPNet abdominal benchmark, from an evaluator over its slice episodes."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from monai.handlers import from_engine
from monai.utils import look_up_option

from maskseg_monai.handlers.collecting import CollectingSaver
from maskseg_monai.metrics.abdominal import (
    PUBLISHED_DICE,
    SUPPORTED_SETTINGS,
    dice_from_counts,
    summarize_protocol,
    write_protocol_tables,
)

__all__ = ["AbdominalProtocolSaver"]

if TYPE_CHECKING:
    from ignite.engine import Engine

logger = logging.getLogger("maskseg_monai.handlers")


def _items(batch: Any) -> list[dict]:
    """The episodes of a batch: decollated (a list of dicts) or collated (a dict of batched values)."""
    if isinstance(batch, list):
        return batch
    n = len(batch["class"])
    return [
        {k: (v[i] if isinstance(v, (list, tuple, torch.Tensor)) else v) for k, v in batch.items()} for i in range(n)
    ]


class AbdominalProtocolSaver(CollectingSaver):
    """Sum each (query volume, class)'s true/false positives and false negatives over its scored slices and write
    the fold's tables (:func:`~maskseg_monai.metrics.abdominal.write_protocol_tables`): ``per_volume.csv``,
    ``per_class.csv`` (with ``published_setting1``/``published_setting2``) and ``summary.csv``, atomically.

    The evaluator runs over :class:`~maskseg_monai.data.abdominal.ProtocolSlices` (only scored slices are episodes),
    its post-processing giving one-hot ``[2, H, W]`` ``pred`` and ``label``. At completion
    ``engine.state.metrics["abdominal_mean_dice"]`` holds the mean over classes of the mean over volumes.

    Args:
        save_dir: output folder.
        modality: ``"CT"`` or ``"MRI"`` (which published numbers to show).
        setting: 1 or 2.
        fold: the fold, recorded in every row.
        test_group: ``all``, ``upper`` or ``lower``, recorded in every row.
        class_names: ``{value: name}`` (a datalist's ``labels``); unnamed classes keep their value.
        output_transform: engine output -> ``(pred, label)`` lists of one-hot ``[2, H, W]``. Defaults to
            ``from_engine(["pred", "label"])``.

    Raises:
        ValueError: an unknown modality or setting.
    """

    def __init__(
        self,
        save_dir: str | os.PathLike,
        modality: str,
        setting: int,
        fold: int,
        test_group: str = "all",
        class_names: dict | None = None,
        output_transform: Callable = from_engine(["pred", "label"]),
    ) -> None:
        modality = "MRI" if str(modality).upper() in ("MR", "MRI") else str(modality).upper()
        self.modality = look_up_option(modality, tuple(PUBLISHED_DICE))
        self.setting = int(look_up_option(int(setting), SUPPORTED_SETTINGS))
        self.fold, self.test_group = int(fold), str(test_group)
        self.save_dir = str(save_dir)
        self.class_names = {str(k): str(v) for k, v in (class_names or {}).items()}
        self.output_transform = output_transform
        self.counts: dict[tuple[str, int], dict[str, Any]] = {}

    def reset(self, engine: Engine | None = None) -> None:
        """Forget the collected counts."""
        self.counts = {}

    def collect(self, engine: Engine) -> None:
        """Add the batch's slices to their (query, class) counts."""
        preds, labels = self.output_transform(engine.state.output)
        pred = torch.stack([torch.as_tensor(p)[1] for p in preds]).bool().flatten(1).cpu()
        gt = torch.stack([torch.as_tensor(t)[1] for t in labels]).bool().flatten(1).cpu()
        tp, fp, fn = ((pred & gt).sum(1), (pred & ~gt).sum(1), (~pred & gt).sum(1))
        for j, ep in enumerate(_items(engine.state.batch)):
            key = (str(ep["query_name"]), int(ep["class"]))
            entry = self.counts.setdefault(
                key, {"tp": 0, "fp": 0, "fn": 0, "slices": 0, "support": str(ep["support_name"]), "picks": set()}
            )
            entry["tp"] += int(tp[j])
            entry["fp"] += int(fp[j])
            entry["fn"] += int(fn[j])
            entry["slices"] += 1
            entry["picks"].add(int(ep["support_z"]))

    def rows(self) -> list[dict[str, Any]]:
        """One row per (query volume, class), :data:`~maskseg_monai.metrics.abdominal.VOLUME_COLUMNS`."""
        out = []
        for (query, c), e in sorted(self.counts.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            out.append(
                {
                    "modality": self.modality,
                    "setting": self.setting,
                    "fold": self.fold,
                    "test_group": self.test_group,
                    "class": c,
                    "class_name": self.class_names.get(str(c), str(c)),
                    "query": query,
                    "support": e["support"],
                    "support_slices": " ".join(str(z) for z in sorted(e["picks"])),
                    "n_scored_slices": e["slices"],
                    "tp": e["tp"],
                    "fp": e["fp"],
                    "fn": e["fn"],
                    "dice": float(dice_from_counts(e["tp"], e["fp"], e["fn"])),
                }
            )
        return out

    def write(self, engine: Engine | None = None) -> None:
        """Write the three tables (and the mean Dice into ``engine.state.metrics``)."""
        rows = self.rows()
        if not rows:
            raise RuntimeError("the evaluation scored no slice; nothing to write.")
        write_protocol_tables(rows, self.save_dir)
        per_class, summary = summarize_protocol(rows)
        if engine is not None:
            engine.state.metrics["abdominal_mean_dice"] = summary["mean_dice"]
        key = f"published_setting{self.setting}"
        table = "; ".join(
            f"{r['class_name']} {r['dice_percent']:.2f}" + (f" (published {r[key]:.2f})" if r[key] != "" else "")
            for r in per_class
        )
        logger.info(
            f"SSL-ALPNet protocol, {self.modality} setting {self.setting} fold {self.fold} ({self.test_group}): mean "
            f"Dice {summary['mean_dice_percent']:.2f}% over {summary['n_classes']} class(es) and "
            f"{summary['n_volumes']} query volume(s) [{table}]; published 5-fold mean "
            f"{summary[key + '_mean']:.2f}%; tables in {self.save_dir}"
        )
