"""Per-image and summary CSVs of segmentation metrics (UNETR evaluation, one-shot episodes)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from monai.handlers import from_engine
from monai.metrics import compute_dice
from monai.utils import look_up_option

from maskseg_monai.handlers.collecting import CollectingSaver
from maskseg_monai.handlers.degenerate import degenerate_mask
from maskseg_monai.metrics.oneshot_baselines import SUPPORTED_ONESHOT_BASELINES, oneshot_baselines
from maskseg_monai.metrics.segmentation import (
    SIZE_THRESHOLDS,
    evaluate_segmentation,
    summarize_metrics,
    write_metrics_csv,
)
from maskseg_monai.utils import atomic_write

__all__ = ["OneShotMetricsSaver", "SegmentationMetricsSaver"]

if TYPE_CHECKING:
    from ignite.engine import Engine


logger = logging.getLogger("maskseg_monai.handlers")


def _filenames(batch: Sequence, key: str) -> list[str]:
    names = []
    for i, item in enumerate(batch):
        img = item.get(key) if isinstance(item, dict) else None
        meta = getattr(img, "meta", {}) or {}
        name = meta.get("filename_or_obj", f"item{i}")
        names.append(os.path.basename(str(name)))
    return names


def _write_summary(summary: dict[str, float], save_dir: str) -> None:
    """``<save_dir>/metrics_summary.csv``: ``metric,value`` lines, written atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.writelines(f"{k},{v}\n" for k, v in summary.items())

    atomic_write(os.path.join(save_dir, "metrics_summary.csv"), write)


class SegmentationMetricsSaver(CollectingSaver):
    """Write per-image small-object segmentation metrics (:mod:`maskseg_monai.metrics.segmentation`) of an evaluator.

    Collects the post-processed one-hot ``pred`` and ``label`` of every iteration and, when the run completes,
    writes ``<save_dir>/metrics_per_image.csv`` (one row per image, ``filename`` first) and
    ``<save_dir>/metrics_summary.csv`` (``metric,value`` lines, NaN-ignoring means over images), both atomically.
    Use it in a single process (rank 0 only under DDP sees its own shard).

    Args:
        save_dir: output folder.
        output_transform: engine output -> ``(y_pred, y)`` lists of one-hot ``[C, *spatial]`` tensors.
            Defaults to ``from_engine(["pred", "label"])``.
        image_key: batch key whose ``meta["filename_or_obj"]`` names the rows. Defaults to ``"image"``.
        include_background, class_names, size_thresholds, iou_threshold, connectivity, ignore_empty: as for
            :func:`~maskseg_monai.metrics.evaluate_segmentation`.
    """

    def __init__(
        self,
        save_dir: str | os.PathLike,
        output_transform: Callable = from_engine(["pred", "label"]),
        image_key: str = "image",
        include_background: bool = False,
        class_names: Sequence[str] | None = None,
        size_thresholds: Sequence[int] = SIZE_THRESHOLDS,
        iou_threshold: float = 0.5,
        connectivity: int = 1,
        ignore_empty: bool = True,
    ) -> None:
        self.save_dir = str(save_dir)
        self.output_transform = output_transform
        self.image_key = image_key
        self.kwargs = dict(
            include_background=include_background,
            class_names=class_names,
            size_thresholds=size_thresholds,
            iou_threshold=float(iou_threshold),
            connectivity=int(connectivity),
            ignore_empty=ignore_empty,
        )
        self.rows: list[dict[str, float]] = []
        self.ids: list[str] = []

    def reset(self, engine: Engine | None = None) -> None:
        """Forget the collected rows."""
        self.rows, self.ids = [], []

    def collect(self, engine: Engine) -> None:
        """Evaluate the images of the current batch."""
        y_pred, y = self.output_transform(engine.state.output)
        y_pred = torch.stack([torch.as_tensor(p) for p in y_pred])
        y = torch.stack([torch.as_tensor(t) for t in y])
        self.rows += evaluate_segmentation(y_pred, y, **self.kwargs)
        batch = engine.state.batch
        self.ids += _filenames(batch if isinstance(batch, list) else [{}] * len(y), self.image_key)

    def write(self, engine: Engine | None = None) -> None:
        """Write the two CSV files."""
        write_metrics_csv(self.rows, os.path.join(self.save_dir, "metrics_per_image.csv"), self.ids)
        _write_summary(summarize_metrics(self.rows), self.save_dir)
        logger.info(f"per-image metrics of {len(self.rows)} images written to {self.save_dir}")


class OneShotMetricsSaver(SegmentationMetricsSaver):
    """Per-episode and per-class metrics of one-shot segmentation over held-out classes.

    Like :class:`SegmentationMetricsSaver` on the two-class (background, target) output of every episode, with the
    episode's class (batch key ``class_key``) added to each row. On completion it writes
    ``metrics_per_episode.csv`` (one row per episode), ``metrics_per_class.csv`` (NaN-ignoring means per class)
    and ``metrics_summary.csv`` (the mean over classes of the per-class means, so that every class weighs the
    same, with ``n_episodes``), all atomically; and puts ``mean_dice_over_classes`` into
    ``engine.state.metrics``.

    Args:
        save_dir: output folder.
        class_key: batch key of the episode's class. Defaults to ``"class"``.
        baseline_key: batch key of the query's mask of every object (any class); when present, each row also gets
            ``dice_all_objects_baseline``, the Dice a support-blind "segment every object" answer would score.
        class_names: ``{value: name}`` for the rows of ``metrics_per_class.csv``; unnamed classes keep their value.
        size_thresholds, iou_threshold, connectivity: as for :class:`SegmentationMetricsSaver`.
        baselines: support-aware baselines scored on every episode as ``dice_<name>_baseline``
            (:mod:`maskseg_monai.metrics.oneshot_baselines`: ``otsu``, ``copy_support``, ``body``, ``all_pixels``);
            they read the batch's ``image_key``, ``support_<image_key>``, ``support_label`` and ``body_key``.
        body_key: batch key of the query's body/tissue mask (baseline ``body``). Defaults to ``"body"``.
        class_sets: ``{set name: [class values]}``; when given, ``metrics_per_set.csv`` holds, per set, the mean
            over its classes of the model's Dice and of each baseline, the best baseline and the model's gain over
            it (a set is one real task, e.g. the brain tissue classes).
        image_key: batch key of the query images. Defaults to ``"image"``.
        name_key: batch key of the query's name (e.g. its file), used in warnings. Defaults to ``"query_name"``.

    Predictions that are empty or cover the whole query are logged as warnings naming the query and the class:
    they mean the model answered without using the support (an empty mask has Dice 0 on a query that holds the
    class).
    """

    def __init__(
        self,
        save_dir: str | os.PathLike,
        class_key: str = "class",
        baseline_key: str = "label_objects",
        class_names: dict | None = None,
        size_thresholds: Sequence[int] = SIZE_THRESHOLDS,
        iou_threshold: float = 0.5,
        connectivity: int = 1,
        baselines: Sequence[str] = (),
        body_key: str = "body",
        class_sets: dict | None = None,
        image_key: str = "image",
        name_key: str = "query_name",
    ) -> None:
        super().__init__(
            save_dir,
            image_key=image_key,
            size_thresholds=size_thresholds,
            iou_threshold=iou_threshold,
            connectivity=connectivity,
        )
        self.class_key = class_key
        self.baseline_key = baseline_key
        self.class_names = {str(k): str(v) for k, v in (class_names or {}).items()}
        for name in baselines:
            look_up_option(name, SUPPORTED_ONESHOT_BASELINES)
        self.baselines = tuple(baselines)
        self.body_key, self.name_key = body_key, name_key
        self.class_sets = {str(k): [int(c) for c in v] for k, v in (class_sets or {}).items()}
        self.classes: list[int] = []

    def reset(self, engine: Engine | None = None) -> None:
        """Forget the collected rows."""
        super().reset(engine)
        self.classes = []

    def collect(self, engine: Engine) -> None:
        """Evaluate the episodes of the current batch and record their classes."""
        n = len(self.rows)
        super().collect(engine)
        batch = engine.state.batch
        cls = batch[self.class_key] if isinstance(batch, dict) else [b[self.class_key] for b in batch]
        self.classes += [int(c) for c in torch.as_tensor(cls).flatten().tolist()]
        self.ids[n:] = [f"episode_{i:05d}" for i in range(n, len(self.rows))]
        for row, c in zip(self.rows[n:], self.classes[n:]):
            row["class"] = c
        items = [batch] if isinstance(batch, dict) else list(batch)
        _, y = self.output_transform(engine.state.output)
        target = torch.stack([torch.as_tensor(t)[1:2] for t in y]).float().cpu()  # [N, 1, *spatial], the class
        objects = self._gather(engine, items, self.baseline_key)
        if objects is not None:  # Dice of the class-agnostic all-objects mask
            objects = objects.reshape(target.shape)
            for row, d in zip(self.rows[n:], compute_dice(objects, target, ignore_empty=False).flatten().tolist()):
                row["dice_all_objects_baseline"] = d
        if self.baselines:
            self._score_baselines(engine, items, n, target)
        self._warn_degenerate(engine, items, n)

    @staticmethod
    def _gather(engine: Engine, items: list, key: str) -> torch.Tensor | None:
        """``key`` of every episode of the batch as one float CPU tensor ``[N, ...]``; ``None`` when an item lacks it.

        ``items`` are single episodes (stacked) when the engine's batch is a decollated list, else batches
        (concatenated).
        """
        if not items or not all(key in b for b in items):
            return None
        parts = [torch.as_tensor(b[key]) for b in items]
        return (torch.stack(parts) if isinstance(engine.state.batch, list) else torch.cat(parts)).float().cpu()

    def _score_baselines(self, engine: Engine, items: list, n: int, target: torch.Tensor) -> None:
        """Dice of every baseline's answer to the batch's episodes (against ``target`` ``[N, 1, *spatial]``), into
        the rows from ``n``."""
        query = self._gather(engine, items, self.image_key)
        support = self._gather(engine, items, f"support_{self.image_key}")
        support_mask = self._gather(engine, items, "support_label")
        if query is None or support is None or support_mask is None:
            raise KeyError(
                f"one-shot baselines need the batch keys '{self.image_key}', 'support_{self.image_key}' and "
                "'support_label' (episodes of maskseg_monai.data.episodes.EpisodeDataset)."
            )
        body = self._gather(engine, items, self.body_key)
        masks = oneshot_baselines(self.baselines, query, support, support_mask, body)
        for name, mask in masks.items():
            dice = compute_dice(mask, target, ignore_empty=False).flatten().tolist()
            for row, d in zip(self.rows[n:], dice):
                row[f"dice_{name}_baseline"] = d

    def _warn_degenerate(self, engine: Engine, items: list, n: int) -> None:
        """Warn, naming the query, about empty and all-foreground predictions of the batch."""
        y_pred, _ = self.output_transform(engine.state.output)
        names = [x for b in items for x in _as_list(b.get(self.name_key))] if items else []
        for j, pred in enumerate(y_pred):
            what = degenerate_mask(torch.as_tensor(pred)[1] > 0)
            if what:
                query = names[j] if j < len(names) else self.ids[n + j]
                logger.warning(
                    f"{self.ids[n + j]}: the prediction for query {query} (class {self.classes[n + j]}) is {what}."
                )

    def per_class(self) -> dict[int, dict[str, float]]:
        """NaN-ignoring mean metrics of each class, with ``n_episodes``."""
        out = {}
        for c in sorted(set(self.classes)):
            rows = [{k: v for k, v in r.items() if k != "class"} for r in self.rows if r["class"] == c]
            out[c] = {**summarize_metrics(rows), "n_episodes": len(rows)}
        return out

    def write(self, engine: Engine | None = None) -> None:
        """Write the three CSV files (and the metric into ``engine.state.metrics``)."""
        write_metrics_csv(self.rows, os.path.join(self.save_dir, "metrics_per_episode.csv"), self.ids)
        per_class = self.per_class()
        names = [self.class_names.get(str(c), str(c)) for c in per_class]
        write_metrics_csv(list(per_class.values()), os.path.join(self.save_dir, "metrics_per_class.csv"), names)
        if self.class_sets:
            self._write_sets(per_class)
        means = summarize_metrics([{k: v for k, v in r.items() if k != "n_episodes"} for r in per_class.values()])
        summary = {"mean_dice_over_classes": means.get("dice", float("nan")), "n_episodes": len(self.rows)}
        summary.update({f"mean_{k}": v for k, v in means.items() if k != "dice"})
        _write_summary(summary, self.save_dir)
        if engine is not None:
            engine.state.metrics["mean_dice_over_classes"] = summary["mean_dice_over_classes"]
        per = ", ".join(f"{n}: {r.get('dice', float('nan')):.4f}" for n, r in zip(names, per_class.values()))
        logger.info(
            f"one-shot Dice over {len(self.rows)} episodes: mean over classes "
            f"{summary['mean_dice_over_classes']:.4f} ({per})"
            + (
                f"; all-objects baseline {summary['mean_dice_all_objects_baseline']:.4f}"
                if "mean_dice_all_objects_baseline" in summary
                else ""
            )
            + f"; CSV files in {self.save_dir}"
        )

    def per_set(self, per_class: dict[int, dict[str, float]] | None = None) -> dict[str, dict[str, float]]:
        """Per class set: mean over its classes of the model's Dice and of each baseline's, the best baseline and
        the model's gain over it (classes of a set without episodes are left out of its means)."""
        per_class = self.per_class() if per_class is None else per_class
        out = {}
        for name, classes in self.class_sets.items():
            rows = [per_class[c] for c in classes if c in per_class]
            if not rows:
                continue
            keys = ["dice"] + [f"dice_{b}_baseline" for b in self.baselines]  # all-objects: the label itself when
            # a set's images hold one class, so not a baseline to beat
            means = {k: float(np.mean([r[k] for r in rows])) for k in keys if all(k in r for r in rows)}
            base = {k: v for k, v in means.items() if k != "dice"}
            row = {**means, "n_classes": len(rows), "n_episodes": int(sum(r["n_episodes"] for r in rows))}
            if base:
                best = max(base, key=base.get)
                row.update(best_baseline=best[len("dice_") : -len("_baseline")], best_baseline_dice=base[best])
                row["gain_over_best_baseline"] = means["dice"] - base[best]
            out[name] = row
        return out

    def _write_sets(self, per_class: dict[int, dict[str, float]]) -> None:
        sets = self.per_set(per_class)
        write_metrics_csv(list(sets.values()), os.path.join(self.save_dir, "metrics_per_set.csv"), list(sets), "set")
        for name, r in sets.items():
            if "best_baseline" in r:
                logger.info(
                    f"one-shot set {name}: Dice {r['dice']:.4f}, best baseline {r['best_baseline']} "
                    f"{r['best_baseline_dice']:.4f}, gain {r['gain_over_best_baseline']:+.4f}"
                )


def _as_list(value) -> list:
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]
