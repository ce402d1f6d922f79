"""Fine-tuning pieces of the label-efficiency study (:mod:`maskseg_monai.experiments.study`).

- :func:`nested_subsets` and :func:`write_subset_datalist`: the ``k`` labelled training items of a seed, chosen so
  that the smaller sets lie inside the larger ones, written as a datalist the ``unetr_seg`` bundle reads;
- :func:`finetune_schedule`: bundle overrides for a fixed number of optimizer steps, whatever ``k`` is;
- :class:`FinetuneMonitor`: what one fine-tuning loaded into its encoder (the
  :class:`~maskseg_monai.networks.transfer.TransferReport`, checked) and its validation curve;
- :func:`evaluate_unetr`: Dice overall and by object size, and object detection F1, on the validation split.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.handlers import MetricLogger

from maskseg_monai.data import datalist_labels, load_datalist
from maskseg_monai.experiments.evaluate import score_label_maps
from maskseg_monai.metrics.segmentation import SIZE_THRESHOLDS
from maskseg_monai.networks.transfer import TransferReport
from maskseg_monai.networks.transfer import logger as transfer_logger
from maskseg_monai.utils import atomic_write

__all__ = [
    "nested_subsets",
    "write_subset_datalist",
    "finetune_schedule",
    "TransferLog",
    "transfer_columns",
    "FinetuneMonitor",
    "evaluate_unetr",
]


def nested_subsets(
    num_items: int, labels: Sequence[int], seed: int, source: str = "the datalist"
) -> dict[int, list[int]]:
    """Seeded nested choice of labelled items: the first ``k`` of one random permutation, for each ``k``.

    The ``k = 2`` items are inside the ``k = 4`` items, and so on, so that a larger labelled set only adds images.

    Args:
        num_items: training items to choose from.
        labels: the labelled-set sizes ``k``.
        seed: seed of the permutation (``numpy.random.default_rng``).
        source: how errors name the training list.

    Returns:
        ``k -> sorted item indices``, ``k`` ascending.

    Raises:
        ValueError: when ``labels`` is empty, repeats a size, holds one below 1 or above ``num_items``.

    Example:
        >>> subsets = nested_subsets(48, [4, 2], seed=0)
        >>> list(subsets), len(subsets[4]), set(subsets[2]) <= set(subsets[4])
        ([2, 4], 4, True)
    """
    counts = [int(k) for k in labels]
    if not counts or len(set(counts)) != len(counts) or min(counts) < 1:
        raise ValueError(f"--labels must list distinct labelled-set sizes >= 1, got {list(labels)}.")
    if max(counts) > num_items:
        raise ValueError(f"--labels {max(counts)} is more than the {num_items} training items of {source}.")
    order = np.random.default_rng(seed).permutation(num_items).tolist()
    return {k: sorted(order[:k]) for k in sorted(counts)}


def write_subset_datalist(datalist: str | Path, indices: Sequence[int], path: str | Path) -> str:
    """Write a datalist holding the chosen training items and the whole validation split of ``datalist``.

    Paths are written absolute (the new file lives elsewhere); ``labels`` are copied, and ``source`` and
    ``training_indices`` record where the items come from. The file is written atomically.

    Args:
        datalist: the fine-tuning datalist (``"training"`` and ``"validation"`` lists).
        indices: positions of the chosen items in its ``"training"`` list.
        path: the datalist to write.

    Returns:
        the path written.

    Raises:
        BadInputError: naming ``datalist`` when it cannot be read (:func:`~maskseg_monai.data.load_datalist`).
        ValueError: naming ``datalist`` when it has no validation items or an index is out of range.
    """
    training = load_datalist(datalist, "training")
    validation = load_datalist(datalist, "validation")
    if not validation:
        raise ValueError(f"{datalist}: the study evaluates on the 'validation' list, which is empty.")
    bad = [i for i in indices if not 0 <= int(i) < len(training)]
    if bad:
        raise ValueError(f"{datalist}: training indices {bad} out of range (it has {len(training)} items).")
    content = {
        "description": f"{len(indices)} of the {len(training)} training items of {datalist}, all its validation items",
        "source": str(Path(datalist).resolve()),
        "training_indices": [int(i) for i in indices],
        "labels": datalist_labels(datalist),
        "training": [training[int(i)] for i in indices],
        "validation": validation,
    }
    return atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(content, indent=2)))


def finetune_schedule(steps: int, validations: int = 4, warmup: float = 0.05) -> dict[str, Any]:
    """``unetr_seg`` overrides that train exactly ``steps`` optimizer steps of the bundle's ``batch_size``,
    however few the training items, with ``validations`` evenly spaced validations.

    The bundle's epoch is one pass over its training items, so with ``k = 2`` items and drop-last batches of 8 it
    would have no step at all. Instead each of ``validations`` epochs draws ``steps / validations * batch_size``
    items with torch's ``RandomSampler(num_samples=...)``: whole random permutations of the items, one after the
    other, so every item is seen equally often (within one) and the random transforms make each draw a new view.
    :func:`~maskseg_monai.data.repeat_dataset` would round an epoch up to whole repeats of the ``k`` items, so the
    step count would depend on ``k``. The warm-up is a fraction of the budget (the bundle's default is 2 of 40
    epochs, 0.05); ``warmup_epochs`` becomes ``warmup * validations``.

    Args:
        steps: optimizer steps of every fine-tuning.
        validations: validations during training (after every ``steps / validations`` steps); even, so that one
            falls at the middle of the budget.
        warmup: linear warm-up as a fraction of ``steps``, in ``[0, 1)``.

    Returns:
        the overrides: ``epochs``, ``val_interval``, ``warmup_epochs``, ``train#dataloader#shuffle`` and
        ``train#dataloader#sampler``.

    Raises:
        ValueError: when ``validations`` is not an even number >= 2, ``steps`` is not a positive multiple of it, or
            ``warmup`` is outside ``[0, 1)``.

    Example:
        >>> finetune_schedule(240)["train#dataloader#sampler"]["num_samples"]
        '$60 * @batch_size'
    """
    if validations < 2 or validations % 2:
        raise ValueError(f"--finetune_validations must be an even number >= 2, got {validations}.")
    if steps < validations or steps % validations:
        raise ValueError(
            f"--finetune_steps must be a positive multiple of --finetune_validations ({validations}), got {steps}."
        )
    if not 0 <= warmup < 1:
        raise ValueError(f"--finetune_warmup must be a fraction in [0, 1), got {warmup}.")
    return {
        "epochs": validations,
        "val_interval": 1,
        "warmup_epochs": warmup * validations,
        "train#dataloader#shuffle": False,
        "train#dataloader#sampler": {
            "_target_": "torch.utils.data.RandomSampler",
            "data_source": "@train#dataset",
            "num_samples": f"${steps // validations} * @batch_size",
        },
    }


class TransferLog(logging.Handler):
    """Collect the :class:`~maskseg_monai.networks.transfer.TransferReport` of every encoder load made while the
    context is open (:func:`~maskseg_monai.networks.transfer.load_pretrained_encoder` logs each, the report
    riding on the record).

    The handler sits on the ``maskseg_monai.transfer`` logger, which is lowered to ``INFO`` while the context is
    open, so loads are collected whatever the logging configuration of the bundle.

    Example::

        with TransferLog() as log:
            network.load_encoder("models/encoder.pt")
        print(log.reports[0].summary())
    """

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.reports: list[TransferReport] = []
        self._level = logging.NOTSET

    def emit(self, record: logging.LogRecord) -> None:
        report = getattr(record, "transfer_report", None)
        if isinstance(report, TransferReport):
            self.reports.append(report)

    def __enter__(self) -> TransferLog:
        self._level = transfer_logger.level
        if transfer_logger.getEffectiveLevel() > logging.INFO:
            transfer_logger.setLevel(logging.INFO)
        transfer_logger.addHandler(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        transfer_logger.removeHandler(self)
        transfer_logger.setLevel(self._level)


def transfer_columns(reports: Sequence[TransferReport], encoder: str | None, label: str) -> dict[str, int]:
    """Check the encoder loads of one fine-tuning and give their counts as results columns.

    Args:
        reports: the loads made while the bundle initialised (:class:`TransferLog`).
        encoder: the encoder file the arm must load, or None for training from scratch.
        label: how errors name the run.

    Returns:
        ``encoder_loaded``, ``encoder_tensors`` (those the encoder needs), ``encoder_missing`` and
        ``encoder_unexpected``; all 0 from scratch.

    Raises:
        RuntimeError: from scratch, when something was loaded; with ``encoder``, unless exactly one load of that
            file took place with no missing, unexpected or shape-mismatched tensor (the report is in the message).
    """
    if encoder is None:
        if reports:
            raise RuntimeError(f"{label}: training from scratch, but an encoder was loaded: {reports[0].summary()}")
        return {"encoder_loaded": 0, "encoder_tensors": 0, "encoder_missing": 0, "encoder_unexpected": 0}
    if len(reports) != 1 or Path(reports[0].source).resolve() != Path(encoder).resolve():
        loads = "; ".join(r.summary() for r in reports) or "none"
        raise RuntimeError(f"{label}: the bundle must load {encoder} once before training; loads seen: {loads}.")
    report = reports[0]
    if report.missing or report.unexpected or report.shape_mismatch:
        raise RuntimeError(f"{label}: the encoder did not transfer whole, so the arm is not what it claims:\n{report}")
    return {
        "encoder_loaded": len(report.loaded),
        "encoder_tensors": report.num_encoder_keys,
        "encoder_missing": len(report.missing),
        "encoder_unexpected": len(report.unexpected),
    }


class FinetuneMonitor:
    """What the study checks and records of one ``unetr_seg`` fine-tuning.

    Open it around :func:`~maskseg_monai.experiments.train_cell` and pass it as ``on_initialized``: it collects
    the encoder loads of ``initialize`` (:class:`TransferLog`), checks them (:func:`transfer_columns`) before any
    training step, and attaches MONAI's :class:`~monai.handlers.MetricLogger` to the trainer (per-step loss) and
    to the evaluator (its key metric, the bundle's ``val_mean_dice``, at each validation).

    Args:
        label: how logs and errors name the run.
        encoder: the encoder file the arm loads, or None from scratch.

    Example::

        with FinetuneMonitor("UNETR mae, k 2, seed 0", "runs/mae_seed0/models/encoder.pt") as monitor:
            workflow, info = train_cell(config_file, overrides, on_initialized=monitor)
        row = {**info, **monitor.columns()}
    """

    def __init__(self, label: str, encoder: str | None) -> None:
        self.label, self.encoder = label, encoder
        self.log = TransferLog()
        self.transfer: dict[str, int] = {}
        self.history: MetricLogger | None = None
        self.metric = ""

    def __enter__(self) -> FinetuneMonitor:
        self.log.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.log.__exit__(*exc)

    def __call__(self, workflow: ConfigWorkflow) -> None:
        self.transfer = transfer_columns(self.log.reports, self.encoder, self.label)
        parser = workflow.parser
        # built first, right after set_determinism, as the pretrained arms' initialize builds it to load the
        # encoder: every arm of a seed starts its decoder from the same weights, whatever else the trainer builds
        parser.get_parsed_content("network_def")
        trainer, evaluator = parser.get_parsed_content("train#trainer"), parser.get_parsed_content("validate#evaluator")
        self.metric = evaluator.state.key_metric_name
        self.history = MetricLogger(loss_transform=lambda output: output["loss"].detach().item(), evaluator=evaluator)
        self.history.attach(trainer)

    def curve(self) -> list[tuple[int, float]]:
        """``(step, validation metric)`` after each validation."""
        if self.history is None:
            return []
        return [(int(i), float(v)) for i, v in self.history.metrics.get(self.metric, [])]

    def columns(self) -> dict[str, Any]:
        """Results columns: the transfer counts, then the validation curve and the saturation check's values.

        ``val_dice_mid``/``val_dice_last``: the bundle's validation metric at the middle and at the end of training;
        ``train_loss_mid``/``train_loss_last``: the mean training loss over the steps since the validation before
        each; ``val_dice_curve``: ``step:value`` pairs of every validation.
        """
        curve = self.curve()
        losses = self.history.loss if self.history is not None else []
        points = {"mid": len(curve) // 2 - 1, "last": len(curve) - 1} if len(curve) >= 2 else {}
        dice, loss = {}, {}
        for name, i in points.items():
            start, end = curve[i - 1][0] if i else 0, curve[i][0]
            window = [value for step, value in losses if start < step <= end]
            dice[name], loss[name] = curve[i][1], float(np.mean(window)) if window else math.nan
        out: dict[str, Any] = dict(self.transfer)
        out |= {f"val_dice_{n}": dice.get(n, math.nan) for n in ("mid", "last")}
        out |= {f"train_loss_{n}": loss.get(n, math.nan) for n in ("mid", "last")}
        out["val_dice_curve"] = " ".join(f"{s}:{v:.4f}" for s, v in curve)
        return out


@torch.no_grad()
def evaluate_unetr(
    network: torch.nn.Module,
    parser: ConfigParser,
    size_thresholds: Sequence[int] = SIZE_THRESHOLDS,
    iou_threshold: float = 0.5,
) -> dict[str, float]:
    """Segment the bundle's validation split and score it with :func:`~maskseg_monai.experiments.score_label_maps`.

    Each item goes through ``validate#preprocessing`` (image and label), the bundle's ``inferer`` (sliding
    window) and an argmax; Dice and detection are averaged over images. Class names
    come from the datalist's ``"labels"`` when it names every channel, else the channel indices.

    Args:
        network: the trained UNETR.
        parser: the parser of its finished workflow.
        size_thresholds: object-size bucket edges in pixels/voxels. Defaults to ``(16, 64)``.
        iou_threshold: IoU for a detection match. Defaults to 0.5.

    Returns:
        the summarized metrics (``dice``, ``dice_<bucket>``, ``f1``, ``precision``, ``recall``, per-class keys,
        ``n_*`` counts) plus ``dice_small``, the Dice of the smallest size bucket.

    Raises:
        ValueError: when the validation split is empty or some item has no ``"label"``.
    """
    items = parser.get_parsed_content("validate#datalist")
    if not items or any("label" not in item for item in items):
        raise ValueError("the study needs a labelled, non-empty validation split ('validation' items with 'label').")
    preprocessing = parser.get_parsed_content("validate#preprocessing")
    inferer, device = parser.get_parsed_content("inferer"), parser.get_parsed_content("device")
    out_channels = int(parser.get_parsed_content("out_channels"))
    labels: Mapping[str, Any] = datalist_labels(parser.get_parsed_content("datalist"))
    names = [str(labels.get(str(c), c)) for c in range(out_channels)]
    network.eval()
    preds, targets = [], []
    for item in items:
        data = preprocessing(dict(item))
        x = torch.as_tensor(data["image"])[None].float().to(device)  # [1, C, *spatial]
        targets.append(torch.as_tensor(data["label"]).long())  # [1, *spatial]
        preds.append(inferer(x, network).argmax(1).cpu())  # [1, *spatial]
    return score_label_maps(preds, targets, out_channels, names, size_thresholds, iou_threshold)
