"""Label-efficiency study: UNETR fine-tuned on k labelled images from scratch, from an MAE and from an AMLP encoder.

Pretraining and fine-tuning have their own data: for every seed, the ``mae`` and ``amlp`` bundles pretrain an
encoder once on the pretraining data (default: the unlabelled ``nuclei2d_regions`` quadrants; same encoder sizes,
seed and epochs; each writes ``models/encoder.pt``). Then, for each labelled-set size ``k`` (``--labels``), the
``unetr_seg`` bundle is fine-tuned three ways (*arms*) on the same ``k`` training items of the fine-tuning data
(default: ``nuclei2d``), with the same seed and the same number of optimizer steps whatever ``k`` is:

- ``scratch``: ``pretrained_encoder=""``;
- ``mae``: the MAE encoder of the same seed;
- ``amlp``: the AMLP encoder of the same seed.

The ``k`` items are a seeded, nested choice (the ``k = 2`` items lie inside the ``k = 4`` items, and so on;
:func:`~maskseg_monai.experiments.finetune.nested_subsets`), written as ``datalists/k<k>_seed<seed>.json``. A
pretrained arm fails loudly unless its encoder loads whole (0 missing, 0 unexpected keys; the counts are logged
and kept in the rows). Each fine-tuned network (its final weights) segments the whole validation split of the
fine-tuning data (:func:`~maskseg_monai.experiments.finetune.evaluate_unetr`: Dice overall and by object size,
object detection F1). The saturation check compares, for the scratch arm, the bundle's validation Dice at the
middle and at the end of fine-tuning, and the training loss over the steps before each.

Run it as a module::

    python -m maskseg_monai.experiments.study --seeds 0 1 2 --labels 2 4 8 16 --finetune_steps 240

Outputs in ``--output_dir``: ``results.csv`` (one row per arm x k x seed), ``results.md`` (the command, the
settings, mean ± std over seeds per arm x k, the gain of each pretrained arm over scratch, the saturation check
and the transfer report) and ``study.png`` (Dice and small-object Dice against k per arm), each written
atomically after every fine-tuning; one bundle root per run under ``runs/``, the labelled subsets under
``datalists/`` and the demo data under ``demo_data/``.
"""

from __future__ import annotations

import argparse
import gc
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from maskseg_monai.data import ensure_demo_datalist, load_datalist
from maskseg_monai.experiments.cli import (
    COMMON_RESERVED_KEYS,
    add_multi_bundle_arguments,
    add_segmentation_arguments,
    check_run_inputs,
    check_seeds,
    command_line,
    parse_overrides,
)
from maskseg_monai.experiments.finetune import (
    FinetuneMonitor,
    evaluate_unetr,
    finetune_schedule,
    nested_subsets,
    write_subset_datalist,
)
from maskseg_monai.experiments.pretraining import (
    DEFAULT_LABELLED_DEMO_SET,
    DEFAULT_PRETRAIN_DEMO_SET,
    PRETRAIN_BUNDLES,
    check_encoder_sizes,
    kept_rows,
    pretrain,
    split_overrides,
)
from maskseg_monai.experiments.report import markdown_table
from maskseg_monai.experiments.runner import (
    Cell,
    bundle_config_files,
    prepare_data,
    probe_cells,
    read_bundle,
    run_overrides,
    train_cell,
)
from maskseg_monai.experiments.study_report import (
    ARMS,
    GAIN_COLUMNS,
    by_k,
    saturation_check,
    write_study_results,
)
from maskseg_monai.metrics.segmentation import SIZE_THRESHOLDS, size_bucket_names

__all__ = ["RESERVED_KEYS", "DEFAULT_OUTPUT_DIR", "DEFAULT_LABELS", "DEFAULT_FINETUNE_STEPS", "run_study", "main"]

#: bundle keys the study sets itself, and the option that sets them
RESERVED_KEYS: dict[str, str] = {
    **COMMON_RESERVED_KEYS,
    "epochs": "--pretrain_epochs / --finetune_steps",
    "demo_set": "--pretrain_demo_set / --finetune_demo_set",
    "datalist": "--pretrain_datalist / --finetune_datalist",
    "seed": "--seeds",
    "pretrained_encoder": "the study's arms",
    "warmup_epochs": "--finetune_warmup (the pretraining bundles keep their own)",
}
DEFAULT_OUTPUT_DIR = "sweeps/unetr_study"
DEFAULT_FINETUNE_DEMO_SET = DEFAULT_LABELLED_DEMO_SET
#: labelled-set sizes k
DEFAULT_LABELS = (2, 4, 8, 16)
#: the bundle's own fine-tuning budget: 40 epochs of the 6 batches of 8 that nuclei2d's 48 training tiles make
DEFAULT_FINETUNE_STEPS = 240


def run_study(
    seeds: Sequence[int] = (0, 1, 2),
    labels: Sequence[int] = DEFAULT_LABELS,
    pretrain_epochs: int | None = None,
    finetune_steps: int = DEFAULT_FINETUNE_STEPS,
    finetune_validations: int = 4,
    finetune_warmup: float = 0.05,
    pretrain_demo_set: str = DEFAULT_PRETRAIN_DEMO_SET,
    pretrain_datalist: str | Path | None = None,
    finetune_demo_set: str = DEFAULT_FINETUNE_DEMO_SET,
    finetune_datalist: str | Path | None = None,
    output_dir: str | Path = DEFAULT_OUTPUT_DIR,
    config_files: Mapping[str, str | Path] | None = None,
    overrides: Mapping[str, Any] | None = None,
    size_thresholds: Sequence[int] = SIZE_THRESHOLDS,
    iou_threshold: float = 0.5,
    saturation_tolerance: float = 0.01,
    command: str | None = None,
    progress_bar: bool = False,
    log: Callable[[str], None] = print,
    resume: bool = False,
) -> list[dict[str, Any]]:
    """Pretrain MAE and AMLP once per seed, fine-tune UNETR from scratch / MAE / AMLP on each ``k`` labelled
    images, evaluate, write the results.

    Args:
        seeds: training seeds; each seed pretrains both encoders, chooses its nested labelled subsets and
            fine-tunes the three arms on each.
        labels: the labelled-set sizes ``k``.
        pretrain_epochs: epochs of every MAE and AMLP pretraining (of the bundles' ``steps_per_epoch`` batches).
            Defaults to each bundle's ``epochs``.
        finetune_steps: optimizer steps of every UNETR fine-tuning, whatever ``k`` is (:func:`finetune_schedule`).
        finetune_validations: validations during each fine-tuning (even; the middle and the last feed the
            saturation check).
        finetune_warmup: the fine-tuning's linear warm-up, as a fraction of ``finetune_steps``.
        pretrain_demo_set: built-in demo set to pretrain on when no ``pretrain_datalist`` is given.
        pretrain_datalist: a MONAI datalist JSON to pretrain on (its ``"training"`` images; labels unused).
        finetune_demo_set: built-in labelled demo set to fine-tune on when no ``finetune_datalist`` is given.
        finetune_datalist: a MONAI datalist JSON with labelled ``"training"``/``"validation"`` lists.
        output_dir: where results, run bundle roots (``runs/``), subsets (``datalists/``) and demo data go.
        config_files: bundle name (``"mae"``, ``"amlp"``, ``"unetr_seg"``) -> its ``train.json``. Defaults to the
            repository's bundles.
        overrides: ``key -> value`` overrides, each given to every bundle that declares the key (network sizes
            and ``batch_size`` to all three; ``steps_per_epoch`` to the pretraining bundles; ``out_channels`` to the
            UNETR only).
        size_thresholds: object-size bucket edges of the evaluation; the first bucket is "small".
        iou_threshold: IoU of a detection match.
        saturation_tolerance: see :func:`saturation_check`.
        command: the command line recorded in ``results.md``.
        progress_bar: keep the bundles' per-iteration progress bars.
        log: where progress lines go.
        resume: keep the rows of an earlier run's ``results.csv`` in ``output_dir`` whose arm, k, seed, steps and
            pretraining epochs are those of a planned run (a study stopped part way, run again with the same
            options), and train only the others; a seed whose runs are all kept is not pretrained again (a seed with
            runs left is pretrained again, from its seed, before them).

    Returns:
        one dict per arm x k x seed (seed-major, then k, then arm): ``arm``, ``k``, ``seed``, ``pretrain_epochs``,
        ``steps``, ``train_loss``, ``train_seconds``, ``pretrain_seconds``, ``dice``, ``dice_small``, ``f1``,
        ``precision``, ``recall``, the transfer counts and the validation curve
        (:meth:`~maskseg_monai.experiments.finetune.FinetuneMonitor.columns`), then the other metrics of
        :func:`evaluate_unetr`.

    Raises:
        ValueError: on no or repeated seeds, bad labelled-set sizes, epochs < 1, a bad fine-tuning schedule, a
            reserved or undeclared override, encoder sizes that differ between the bundles, or a network a bundle
            cannot build (all before any training).
        FileNotFoundError: when a config file or datalist does not exist.
        RuntimeError: when a pretrained arm's encoder does not load whole, or a fine-tuning ran another number of
            steps than ``finetune_steps``.
    """
    files = bundle_config_files((*PRETRAIN_BUNDLES, "unetr_seg"), config_files)
    extra = dict(overrides or {})
    if pretrain_epochs is not None and pretrain_epochs < 1:
        raise ValueError(f"--pretrain_epochs must be at least 1, got {pretrain_epochs}.")
    schedule = finetune_schedule(finetune_steps, finetune_validations, finetune_warmup)
    for option, datalist in (("--pretrain_datalist", pretrain_datalist), ("--finetune_datalist", finetune_datalist)):
        if datalist is not None and not Path(datalist).is_file():
            raise FileNotFoundError(f"{option} {datalist} does not exist.")
    for f in files.values():
        check_run_inputs(f, None, pretrain_epochs or 1, extra, RESERVED_KEYS, "the study")
    seeds = check_seeds(seeds)
    nested_subsets(max(labels, default=1), labels, 0)  # the sizes themselves; their range once the data is here
    output_dir = Path(output_dir).resolve()
    data_dir = output_dir / "demo_data"

    per_bundle = split_overrides(extra, {b: read_bundle(f) for b, f in files.items()})
    bases = {b: read_bundle(f, per_bundle[b]) for b, f in files.items()}
    encoder = check_encoder_sizes(bases)
    epochs = {b: int(pretrain_epochs or bases[b].get_parsed_content("epochs")) for b in PRETRAIN_BUNDLES}
    prepare_data(data_dir, pretrain_demo_set, pretrain_datalist)
    source = Path(finetune_datalist or ensure_demo_datalist(data_dir, finetune_demo_set)).resolve()
    num_items = len(load_datalist(source, "training"))

    pretrains: dict[tuple[str, int], Cell] = {}
    finetune: list[Cell] = []
    for seed in seeds:
        for b in PRETRAIN_BUNDLES:
            root = output_dir / "runs" / f"{b}_seed{seed}"
            over = run_overrides(epochs[b], seed, root, data_dir, pretrain_demo_set, pretrain_datalist, per_bundle[b])
            pretrains[b, seed] = Cell(f"pretrain {b}, seed {seed}", {"root": root}, over)
        for k, items in nested_subsets(num_items, labels, seed, str(source)).items():
            subset = write_subset_datalist(source, items, output_dir / "datalists" / f"k{k}_seed{seed}.json")
            for arm in ARMS:
                root = output_dir / "runs" / f"unetr_{arm}_k{k}_seed{seed}"
                enc = "" if arm == "scratch" else str(pretrains[arm, seed].info["root"] / "models" / "encoder.pt")
                info = {"arm": arm, "k": k, "seed": seed, "pretrain_epochs": epochs.get(arm, 0)}
                over = run_overrides(finetune_validations, seed, root, data_dir, None, subset, per_bundle["unetr_seg"],
                                     {**schedule, "pretrained_encoder": enc})  # fmt: skip
                finetune.append(Cell(f"UNETR {arm}, k {k}, seed {seed}", info | {"encoder": enc or None}, over))
    for b in PRETRAIN_BUNDLES:
        probe_cells(files[b], [c for (name, _), c in pretrains.items() if name == b][:1])
    probe_cells(files["unetr_seg"], finetune[:1])

    command = command or "maskseg_monai.experiments.study.run_study(...)"
    buckets = size_bucket_names(size_thresholds)
    unit = "pixels" if int(encoder["spatial_dims"]) == 2 else "voxels"
    batch = {b: bases[b].get_parsed_content("batch_size") for b in files}
    data_text = lambda dl, demo: f"datalist `{dl}`" if dl is not None else f"demo set `{demo}`"  # noqa: E731
    settings = {
        "configs": ", ".join(f"`{f}`" for f in files.values()),
        "pretraining data (MAE, AMLP)": data_text(pretrain_datalist, pretrain_demo_set) + ", its training images",
        "fine-tuning data (UNETR)": f"{data_text(finetune_datalist, finetune_demo_set)}: k of its {num_items} "
        "training items, evaluated on its whole validation split",
        "labelled subsets": f"k in {', '.join(map(str, sorted(labels)))}; per seed the first k of one seeded "
        "permutation of the training items (nested: the smaller sets lie inside the larger ones), the same for "
        "the three arms; `datalists/k<k>_seed<seed>.json`",
        "arms": "`scratch` (no pretraining), `mae` (MAE encoder), `amlp` (AMLP encoder); same items, seed, steps",
        "seeds": ", ".join(map(str, seeds)),
        "pretraining": ", ".join(
            f"{b} {epochs[b]} epochs of {bases[b].get('steps_per_epoch', '?')} steps, batch {batch[b]}"
            for b in PRETRAIN_BUNDLES
        ),
        "fine-tuning budget": f"{finetune_steps} optimizer steps of batch {batch['unetr_seg']} for every k "
        f"(a RandomSampler epoch of {finetune_steps // finetune_validations} steps, {finetune_validations} epochs), "
        f"warm-up {finetune_warmup:g} of the steps, validation every {finetune_steps // finetune_validations} steps",
        "encoder (all bundles)": ", ".join(f"`{k}={v}`" for k, v in encoder.items()),
        "overrides": ", ".join(f"`{k}={v}`" for k, v in extra.items()) or "none",
        "UNETR settings used": ", ".join(
            f"`{k}={bases['unetr_seg'].get(k)}`"
            for k in ("out_channels", "feature_size", "batch_size", "learning_rate", "weight_decay")
        ),
        "evaluation": f"final weights on the validation split, sliding window, argmax; Dice without background, "
        f"averaged over classes then images; `dice_small` = Dice of ground-truth objects of fewer than "
        f"{size_thresholds[0]} {unit} (`dice_{buckets[0]}`); object detection F1 at IoU >= {iou_threshold:g}",
        "saturation check": "scratch arm, the bundle's validation Dice (`val_mean_dice`) after "
        f"{finetune_steps // 2} vs {finetune_steps} steps, and the mean training loss over the steps before each; "
        f"'saturated' when the mean Dice rise is at most {saturation_tolerance:g}",
        "torch threads": torch.get_num_threads(),
    }
    total = len(finetune)

    def save(rows: list[dict[str, Any]]) -> None:
        write_study_results(rows, output_dir, total, command, settings, size_thresholds, saturation_tolerance)

    rows: list[dict[str, Any]] = []
    done: dict[tuple[Any, ...], dict[str, Any]] = {}
    if resume:
        planned = {(c.info["arm"], c.info["k"], c.info["seed"]): {"pretrain_epochs": c.info["pretrain_epochs"],
                   "steps": finetune_steps} for c in finetune}  # fmt: skip
        done = kept_rows(output_dir / "results.csv", planned, ("arm", "k", "seed"), log)
    pretrain_seconds: dict[tuple[str, int], float] = {}
    for i, cell in enumerate(finetune, 1):
        arm, seed, enc = cell.info["arm"], cell.info["seed"], cell.info["encoder"]
        if (arm, cell.info["k"], seed) in done:
            rows.append(done[arm, cell.info["k"], seed])
            continue
        for b in PRETRAIN_BUNDLES:  # both encoders of a seed, before its first fine-tuning
            if (b, seed) not in pretrain_seconds:
                pretrain_seconds[b, seed] = pretrain(pretrains[b, seed], files[b], progress_bar, log)["train_seconds"]
        log(f"[{i}/{total}] {cell.label}: fine-tuning {finetune_steps} steps ...")
        with FinetuneMonitor(cell.label, enc) as monitor:
            workflow, info = train_cell(files["unetr_seg"], cell.overrides, progress_bar, on_initialized=monitor)
        if info["steps"] != finetune_steps:
            raise RuntimeError(f"{cell.label}: ran {info['steps']} steps instead of --finetune_steps {finetune_steps}.")
        monitored = monitor.columns()
        if enc:
            log(f"[{i}/{total}] {cell.label}: encoder transfer from {enc}: loaded {monitored['encoder_loaded']}/"
                f"{monitored['encoder_tensors']} tensors, {monitored['encoder_missing']} missing, "
                f"{monitored['encoder_unexpected']} unexpected keys")  # fmt: skip
        # the in-memory network holds the final weights, the same as models/model_final.pt
        metrics = evaluate_unetr(workflow.parser.get_parsed_content("network"), workflow.parser, size_thresholds,
                                 iou_threshold)  # fmt: skip
        first = {k: metrics[k] for k in ("dice", "dice_small", "f1", "precision", "recall")}
        row = {k: v for k, v in cell.info.items() if k != "encoder"} | info
        row |= {"pretrain_seconds": pretrain_seconds.get((arm, seed), 0.0)} | first | monitored
        rows.append(row | {k: v for k, v in metrics.items() if k not in first})
        scores = ", ".join(f"{k} {metrics[k]:.3f}" for k in GAIN_COLUMNS)
        curve = f"validation Dice {monitored['val_dice_mid']:.3f} at mid, {monitored['val_dice_last']:.3f} at end"
        log(f"[{i}/{total}] {cell.label}: {info['steps']} steps in {info['train_seconds']:.0f} s, {scores}, {curve}")
        del workflow
        gc.collect()
        save(rows)
    if done and len(done) == total:
        save(rows)
    for r in saturation_check(rows, saturation_tolerance):
        if r["verdict"] == "saturated":
            log(f"warning: scratch is saturated at k={r['k']} (validation Dice {r['val_dice_mid']} at mid, "
                f"{r['val_dice_last']} at end): the budget lets it reach its plateau.")  # fmt: skip
    return rows


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m maskseg_monai.experiments.study",
        description="Label efficiency: pretrain MAE and AMLP encoders (their bundles) on the pretraining data, then "
        "fine-tune the UNETR bundle from scratch, from the MAE encoder and from the AMLP encoder on k labelled "
        "images of the fine-tuning data (same items, steps and seeds); report Dice (all, by object size) and "
        "object F1 as mean ± std over seeds, the gain over scratch, a saturation check of scratch and the "
        "encoder transfer report.",
    )
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (default 0 1 2)")
    ap.add_argument(
        "--labels", type=int, nargs="+", default=list(DEFAULT_LABELS),
        help="labelled-set sizes k, nested per seed (default 2 4 8 16)",
    )  # fmt: skip
    ap.add_argument(
        "--pretrain_epochs", type=int, default=None,
        help="MAE/AMLP pretraining epochs of the bundles' steps_per_epoch batches (default: the bundles' epochs)",
    )  # fmt: skip
    ap.add_argument(
        "--finetune_steps", type=int, default=DEFAULT_FINETUNE_STEPS,
        help=f"optimizer steps of every UNETR fine-tuning, for every k (default {DEFAULT_FINETUNE_STEPS}: the "
        "bundle's 40 epochs of 6 batches on the 48 nuclei2d tiles)",
    )  # fmt: skip
    ap.add_argument(
        "--finetune_validations", type=int, default=4,
        help="validations during each fine-tuning, evenly spaced, even (default 4); the middle and the last feed "
        "the saturation check",
    )  # fmt: skip
    ap.add_argument(
        "--finetune_warmup", type=float, default=0.05, help="fine-tuning warm-up, fraction of the steps (default 0.05)"
    )
    pre = ap.add_mutually_exclusive_group()
    pre.add_argument(
        "--pretrain_demo_set", default=DEFAULT_PRETRAIN_DEMO_SET,
        help=f"built-in demo set to pretrain on (default {DEFAULT_PRETRAIN_DEMO_SET})",
    )  # fmt: skip
    pre.add_argument("--pretrain_datalist", default=None, help="a MONAI datalist JSON to pretrain on")
    fine = ap.add_mutually_exclusive_group()
    fine.add_argument(
        "--finetune_demo_set", default=DEFAULT_FINETUNE_DEMO_SET,
        help=f"built-in labelled demo set to fine-tune on (default {DEFAULT_FINETUNE_DEMO_SET})",
    )  # fmt: skip
    fine.add_argument(
        "--finetune_datalist", default=None, help="a labelled MONAI datalist JSON to fine-tune and evaluate on"
    )
    add_segmentation_arguments(ap)
    ap.add_argument(
        "--saturation_tolerance", type=float, default=0.01,
        help="least rise of scratch's validation Dice from mid to end that counts as still rising (default 0.01)",
    )  # fmt: skip
    ap.add_argument(
        "--resume", action="store_true",
        help="keep the runs of an earlier, stopped study in --output_dir (results.csv) and run only the others",
    )  # fmt: skip
    add_multi_bundle_arguments(
        ap, DEFAULT_OUTPUT_DIR, "--override hidden_size=96 for all three, --override steps_per_epoch=50 for MAE and "
        "AMLP, --override out_channels=5 for the UNETR",
    )  # fmt: skip
    return ap


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Command-line entry point: ``python -m maskseg_monai.experiments.study [options]`` (see ``--help``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = _parser()
    args = ap.parse_args(argv)
    overrides = parse_overrides(ap, args.override, RESERVED_KEYS, "the study")
    rows = run_study(
        args.seeds, args.labels, args.pretrain_epochs, args.finetune_steps, args.finetune_validations,
        args.finetune_warmup, args.pretrain_demo_set, args.pretrain_datalist, args.finetune_demo_set,
        args.finetune_datalist, args.output_dir, overrides=overrides, size_thresholds=args.size_thresholds,
        iou_threshold=args.iou_threshold, saturation_tolerance=args.saturation_tolerance,
        command=command_line("maskseg_monai.experiments.study", argv), progress_bar=args.progress_bar,
        resume=args.resume,
    )  # fmt: skip
    print(markdown_table(by_k(rows, GAIN_COLUMNS)))
    print(f"results in {Path(args.output_dir).resolve()}")
    return rows


if __name__ == "__main__":
    main()
