"""Dense linear probe of frozen encoders: random-init vs MAE vs AMLP, at several patch sizes.

What a pretrained encoder's patch tokens say about a labelled structure, with nothing trained on top but a linear
classifier. For every patch size and seed, three encoders of the same sizes (*arms*):

- ``random``: the MAE bundle's ``network_def`` initialised under ``torch.manual_seed(seed)`` (the initialisation
  scheme a pretraining starts from, not the same draw), never trained;
- ``mae``, ``amlp``: pretrained by their bundle (in-process, :func:`~maskseg_monai.experiments.train_cell`) on
  ``--pretrain_demo_set`` / ``--pretrain_datalist`` with the bundle's budget unless overridden, then read back from
  the ``models/encoder.pt`` it exports (:func:`~maskseg_monai.networks.load_pretrained_encoder`).

The probe, one choice for every arm (features of the final block, a linear classifier of every pixel, a
class-balanced L-BFGS fit on ``--probe_images`` k labelled images, scored on the validation images), is
:mod:`maskseg_monai.experiments.linear_probe`.

Run it as a module (2 bundles x 3 patch sizes x 3 seeds = 18 pretrainings at the bundles' budget)::

    python -m maskseg_monai.experiments.probe --patch_sizes 4 8 16 --seeds 0 1 2

Outputs in ``--output_dir``: ``results.csv`` (one row per arm x patch size x seed) and ``results.md`` (the
command, the settings, mean ± std per arm x patch size over seeds, by object size, and the paired gain of each
pretrained encoder over the random-init one of the same patch size and seed), both written atomically after
every row; one bundle root per pretraining under ``runs/`` and the demo data under ``demo_data/``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from maskseg_monai.experiments.cli import (
    COMMON_RESERVED_KEYS,
    add_multi_bundle_arguments,
    add_segmentation_arguments,
    check_run_inputs,
    check_seeds,
    command_line,
    parse_overrides,
)
from maskseg_monai.experiments.evaluate import score_label_maps
from maskseg_monai.experiments.linear_probe import (
    DEFAULT_WEIGHT_DECAY,
    build_encoder,
    choose_probe_images,
    encoder_features,
    fit_probe,
    labelled_splits,
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
from maskseg_monai.experiments.report import (
    format_value,
    markdown_table,
    paired_gains,
    summarize_runs,
    write_csv,
    write_markdown,
)
from maskseg_monai.experiments.runner import (
    Cell,
    bundle_config_files,
    prepare_data,
    probe_cells,
    read_bundle,
    run_overrides,
)
from maskseg_monai.experiments.sweep import check_grid
from maskseg_monai.metrics.segmentation import SIZE_THRESHOLDS, size_bucket_names

__all__ = [
    "ARMS",
    "DEFAULT_PATCH_SIZES",
    "DEFAULT_OUTPUT_DIR",
    "DEFAULT_PROBE_DEMO_SET",
    "RESERVED_KEYS",
    "run_probe",
    "main",
]

#: the encoders probed, in table order; each but ``random`` names the bundle that pretrains it
ARMS = ("random", "mae", "amlp")
DEFAULT_PATCH_SIZES = (4, 8, 16)
DEFAULT_OUTPUT_DIR = "probe_results"
#: the probe's labelled images: those the label-efficiency study fine-tunes on
DEFAULT_PROBE_DEMO_SET = DEFAULT_LABELLED_DEMO_SET
#: bundle keys the probe sets itself, and the option that sets them
RESERVED_KEYS: dict[str, str] = {
    **COMMON_RESERVED_KEYS,
    "epochs": "--pretrain_epochs",
    "demo_set": "--pretrain_demo_set / --probe_demo_set",
    "datalist": "--pretrain_datalist / --probe_datalist",
    "seed": "--seeds",
    "patch_size": "--patch_sizes",
}
#: summary columns of results.md (``dice_small`` is the smallest size bucket's Dice)
SUMMARY_COLUMNS = ("dice", "dice_small", "f1", "precision", "recall")
#: the scores compared between arms
GAIN_COLUMNS = ("dice", "dice_small", "f1")


def run_probe(
    patch_sizes: Sequence[int] = DEFAULT_PATCH_SIZES,
    seeds: Sequence[int] = (0, 1, 2),
    pretrain_epochs: int | None = None,
    pretrain_demo_set: str = DEFAULT_PRETRAIN_DEMO_SET,
    pretrain_datalist: str | Path | None = None,
    probe_demo_set: str = DEFAULT_PROBE_DEMO_SET,
    probe_datalist: str | Path | None = None,
    probe_images: int = 4,
    probe_steps: int = 100,
    probe_weight_decay: float = DEFAULT_WEIGHT_DECAY,
    class_balanced: bool = True,
    output_dir: str | Path = DEFAULT_OUTPUT_DIR,
    config_files: Mapping[str, str | Path] | None = None,
    overrides: Mapping[str, Any] | None = None,
    size_thresholds: Sequence[int] = SIZE_THRESHOLDS,
    iou_threshold: float = 0.5,
    command: str | None = None,
    progress_bar: bool = False,
    log: Callable[[str], None] = print,
    resume: bool = False,
) -> list[dict[str, Any]]:
    """Pretrain MAE and AMLP encoders, probe them and a random-init encoder at every patch size and seed.

    Args:
        patch_sizes: patch sides; each gets its own encoders.
        seeds: seeds of the pretrainings, of the random-init encoder and of the choice of probe images.
        pretrain_epochs: epochs of every pretraining. Defaults to each bundle's ``epochs``.
        pretrain_demo_set: demo set to pretrain on when no ``pretrain_datalist`` is given.
        pretrain_datalist: a MONAI datalist JSON to pretrain on (its ``"training"`` list; ``"validation"`` for the
            bundles' own validation).
        probe_demo_set: labelled demo set of the probe when no ``probe_datalist`` is given.
        probe_datalist: a labelled MONAI datalist: the probe is fitted on its ``"training"`` items, scored on its
            ``"validation"`` items.
        probe_images: number k of training images the probe is fitted on.
        probe_steps: most L-BFGS iterations of the fit.
        probe_weight_decay: L2 penalty on the probe's weights.
        class_balanced: class-balanced cross-entropy (False: plain).
        output_dir: where results, pretraining bundle roots (``runs/``) and demo data go.
        config_files: bundle name (``"mae"``, ``"amlp"``) -> its ``train.json``. Defaults to the repository's.
        overrides: ``key -> value`` overrides, each given to every bundle that declares the key.
        size_thresholds: object-size bucket edges of the evaluation; the first bucket is "small".
        iou_threshold: IoU of a detection match.
        command: the command line recorded in ``results.md``.
        progress_bar: keep the bundles' per-iteration progress bars.
        log: where progress lines go.
        resume: keep the rows of an earlier run's ``results.csv`` in ``output_dir`` whose arm, patch size, seed,
            pretraining epochs and probe images are those of a planned run (a probe stopped part way, run again with
            the same options), and run only the others; a kept pretrained arm is not pretrained again.

    Returns:
        one dict per patch size x seed x arm (in that nesting): ``arm``, ``patch_size``, ``seed``,
        ``pretrain_epochs``, ``steps``, ``train_loss``, ``pretrain_seconds``, ``probe_loss``, ``probe_seconds``,
        ``dice``, ``dice_small``, ``f1``, ``precision``, ``recall``, the other metrics of
        :func:`~maskseg_monai.experiments.score_label_maps`, and ``probe_images`` (the names of the k images).

    Raises:
        ValueError: on no or repeated seeds or patch sizes, a patch size the bundles cannot run, epochs < 1, a
            reserved or undeclared override, encoder sizes that differ between the bundles, a probe set without
            labels or with fewer than k training images (all before any training).
        FileNotFoundError: when a config file or datalist does not exist.
    """
    if pretrain_epochs is not None and pretrain_epochs < 1:
        raise ValueError(f"--pretrain_epochs must be at least 1, got {pretrain_epochs}.")
    files = bundle_config_files(PRETRAIN_BUNDLES, config_files)
    extra = dict(overrides or {})
    for f in files.values():
        check_run_inputs(f, pretrain_datalist, 1 if pretrain_epochs is None else pretrain_epochs, extra,
                         RESERVED_KEYS, "the probe")  # fmt: skip
    per_bundle = split_overrides(extra, {b: read_bundle(f) for b, f in files.items()})
    bases = {b: read_bundle(f, per_bundle[b]) for b, f in files.items()}
    epochs = {b: int(bases[b].get_parsed_content("epochs")) if pretrain_epochs is None else int(pretrain_epochs)
              for b in files}  # fmt: skip
    if probe_datalist is not None and not Path(probe_datalist).is_file():
        raise FileNotFoundError(f"--probe_datalist {probe_datalist} does not exist.")
    seeds = check_seeds(seeds)
    if probe_steps < 1:
        raise ValueError(f"--probe_steps must be at least 1, got {probe_steps}.")
    mae = bases["mae"]
    spatial_dims = int(mae.get_parsed_content("spatial_dims"))
    check_grid(patch_sizes, [float(mae.get_parsed_content("mask_ratio"))], mae.get_parsed_content("img_size"),
               spatial_dims)  # fmt: skip
    patch_sizes = [int(p) for p in patch_sizes]
    encoder = check_encoder_sizes(bases)
    output_dir = Path(output_dir).resolve()
    data_dir = output_dir / "demo_data"

    cells: dict[tuple[str, int, int], Cell] = {}
    for p in patch_sizes:
        for seed in seeds:
            for b in files:
                root = output_dir / "runs" / f"{b}_p{p}_seed{seed}"
                over = run_overrides(epochs[b], seed, root, data_dir, pretrain_demo_set, pretrain_datalist,
                                     per_bundle[b], {"patch_size": p})  # fmt: skip
                cells[b, p, seed] = Cell(f"pretrain {b}, patch {p}, seed {seed}", {"root": root}, over)
    for b in files:
        probe_cells(files[b], [cells[b, p, seeds[0]] for p in patch_sizes])

    data_over = {**per_bundle["mae"], "dataset_dir": str(data_dir)}
    data_over.update(
        {"datalist": str(Path(probe_datalist).resolve())} if probe_datalist else {"demo_set": probe_demo_set}
    )
    train_set, val_set, train_names = labelled_splits(read_bundle(files["mae"], data_over))
    chosen = {seed: choose_probe_images(len(train_set.images), probe_images, seed) for seed in seeds}
    names = {**train_set.class_names, **val_set.class_names}
    num_classes = max(names) + 1
    class_names = [names.get(c, f"class_{c}") for c in range(num_classes)]
    prepare_data(data_dir, pretrain_demo_set, pretrain_datalist)
    device = mae.get_parsed_content("device")

    command = command or "maskseg_monai.experiments.probe.run_probe(...)"
    small = size_bucket_names(size_thresholds)[0]
    unit = "pixels" if spatial_dims == 2 else "voxels"
    pretrain_data = f"datalist `{pretrain_datalist}`" if pretrain_datalist else f"demo set `{pretrain_demo_set}`"
    probe_data = f"datalist `{probe_datalist}`" if probe_datalist else f"demo set `{probe_demo_set}`"
    settings = {
        "configs": ", ".join(f"`{f}`" for f in files.values()),
        "arms": "`random` (the MAE bundle's initialisation under the seed, untrained), `mae`, `amlp` (pretrained, "
        "`models/encoder.pt`); same sizes",
        "patch sizes": ", ".join(map(str, patch_sizes)),
        "seeds": ", ".join(map(str, seeds)),
        "pretraining data": pretrain_data,
        "pretraining budget": ", ".join(
            f"{b}: {epochs[b]} epoch(s) x `steps_per_epoch="
            f"{bases[b].get_parsed_content('steps_per_epoch')}` x `batch_size="
            f"{bases[b].get_parsed_content('batch_size')}`"
            for b in files
        ),  # fmt: skip
        "pretraining settings used": ", ".join(f"`{k}={mae.get(k)}`" for k in ("learning_rate", "mask_ratio")),
        "encoder (all arms)": ", ".join(f"`{k}={v}`" for k, v in encoder.items() if k != "patch_size"),
        "probe data": f"{probe_data}: k = {probe_images} of its {len(train_set.images)} labelled training images "
        f"(a seeded choice per seed, the same for every arm and patch size), scored on its "
        f"{len(val_set.images)} validation images; preprocessing `validate#preprocessing` of the MAE bundle",
        "features": "final block's normalised patch tokens of the frozen encoder (`eval()`, no gradient) on the "
        "unmasked image; no intermediate blocks; standardised per channel on the probe's training tokens",
        "classifier": "1x1 convolution on the features upsampled bilinearly to pixels (computed as the upsampled "
        f"patch-level logits: the same by linearity); {'class-balanced' if class_balanced else 'plain'} "
        f"cross-entropy over all pixels of the k images + L2 {probe_weight_decay:g} on the weights; full-batch "
        f"L-BFGS (strong Wolfe) from zero, at most {probe_steps} iterations",
        "evaluation": f"argmax; Dice without background, averaged over classes then images; `dice_small` = Dice "
        f"of ground-truth objects of fewer than {size_thresholds[0]} {unit} (`dice_{small}`); detection at "
        f"IoU >= {iou_threshold:g}",
        "overrides": ", ".join(f"`{k}={v}`" for k, v in extra.items()) or "none",
        "torch threads": torch.get_num_threads(),
    }
    total = len(patch_sizes) * len(seeds) * len(ARMS)
    run_columns = ["arm", "patch_size", "seed", "steps", "train_loss", *SUMMARY_COLUMNS, "probe_loss",
                   "pretrain_seconds"]  # fmt: skip

    order = [(p, arm) for p in patch_sizes for arm in ARMS]

    def by_patch(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
        return markdown_table(summarize_runs(rows, columns, ("patch_size", "arm"), order))

    def save(rows: list[dict[str, Any]]) -> None:
        write_csv(rows, output_dir / "results.csv")
        partial = [f"**Partial results: {len(rows)} of {total} runs done.**"] if len(rows) < total else []
        gains = paired_gains(rows, GAIN_COLUMNS, "random", ("patch_size", "seed"))
        sections = [
            *partial,
            "## Mean ± std over seeds\n\n" + by_patch(rows, SUMMARY_COLUMNS),
            "## Dice by object size\n\n" + by_patch(rows, [f"dice_{b}" for b in size_bucket_names(size_thresholds)]),
            "## Gain over the random-init encoder (paired by patch size and seed; mean ± std over seeds)\n\n"
            + (by_patch(gains, GAIN_COLUMNS) if gains else "no pair yet"),
            "## Runs\n\n"
            + markdown_table([{c: format_value(r[c], c) for c in run_columns} for r in rows], run_columns),
        ]
        write_markdown(output_dir / "results.md", "Dense linear probe: random-init vs MAE vs AMLP encoders",
                       command, settings, sections)  # fmt: skip

    rows: list[dict[str, Any]] = []
    done: dict[tuple[Any, ...], dict[str, Any]] = {}
    if resume:
        planned = {(arm, p, seed): {"pretrain_epochs": epochs.get(arm, 0),
                   "probe_images": ";".join(train_names[i] for i in chosen[seed])}
                   for p in patch_sizes for seed in seeds for arm in ARMS}  # fmt: skip
        done = kept_rows(output_dir / "results.csv", planned, ("arm", "patch_size", "seed"), log)
    for p in patch_sizes:
        for seed in seeds:
            idx = chosen[seed]
            images = [train_set.images[i] for i in idx] + list(val_set.images)
            train_labels = torch.stack([train_set.labels[i] for i in idx])
            for arm in ARMS:
                if (arm, p, seed) in done:
                    rows.append(done[arm, p, seed])
                    continue
                info: dict[str, Any] = {"steps": 0, "train_loss": math.nan, "pretrain_seconds": 0.0}
                encoder_file = None
                if arm in PRETRAIN_BUNDLES:
                    cell = cells[arm, p, seed]
                    trained = pretrain(cell, files[arm], progress_bar, log)
                    info = {"steps": trained["steps"], "train_loss": trained["train_loss"],
                            "pretrain_seconds": trained["train_seconds"]}  # fmt: skip
                    encoder_file = cell.info["root"] / "models" / "encoder.pt"
                start = time.perf_counter()
                net = build_encoder(read_bundle(files["mae"], cells["mae", p, seed].overrides), seed, encoder_file)
                features = encoder_features(net, images, device=device)
                probe, loss = fit_probe(features[: len(idx)], train_labels, num_classes, probe_steps,
                                        probe_weight_decay, class_balanced)  # fmt: skip
                with torch.no_grad():
                    logits = probe(features[len(idx) :], val_set.images[0].shape[1:])
                metrics = score_label_maps(list(logits.argmax(1, keepdim=True)), val_set.labels, num_classes,
                                           class_names, size_thresholds, iou_threshold)  # fmt: skip
                first = {k: metrics[k] for k in SUMMARY_COLUMNS}
                row = {"arm": arm, "patch_size": p, "seed": seed, "pretrain_epochs": epochs.get(arm, 0), **info,
                       "probe_loss": loss, "probe_seconds": time.perf_counter() - start}  # fmt: skip
                row |= first | {k: v for k, v in metrics.items() if k not in first}
                row["probe_images"] = ";".join(train_names[i] for i in idx)
                rows.append(row)
                scores = ", ".join(f"{k} {metrics[k]:.3f}" for k in ("dice", "dice_small", "f1"))
                log(f"[{len(rows)}/{total}] probe {arm}, patch {p}, seed {seed}: {scores}, "
                    f"probe loss {loss:.4f} ({row['probe_seconds']:.1f} s)")  # fmt: skip
                save(rows)
    if done and len(done) == total:
        save(rows)
    return rows


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m maskseg_monai.experiments.probe",
        description="Dense linear probe of frozen encoders: pretrain MAE and AMLP encoders with their bundles, fit "
        "a linear classifier of every pixel on their final patch tokens (and on a random-init encoder's) from k "
        "labelled images, report Dice (all, small objects) and detection F1, mean ± std over seeds.",
    )
    ap.add_argument("--patch_sizes", type=int, nargs="+", default=list(DEFAULT_PATCH_SIZES), help="default 4 8 16")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="default 0 1 2")
    ap.add_argument("--pretrain_epochs", type=int, default=None, help="pretraining epochs (default: the bundles')")
    pre = ap.add_mutually_exclusive_group()
    pre.add_argument("--pretrain_demo_set", default=DEFAULT_PRETRAIN_DEMO_SET,
                     help=f"demo set to pretrain on (default {DEFAULT_PRETRAIN_DEMO_SET})")  # fmt: skip
    pre.add_argument("--pretrain_datalist", default=None, help="a MONAI datalist JSON to pretrain on instead")
    lab = ap.add_mutually_exclusive_group()
    lab.add_argument("--probe_demo_set", default=DEFAULT_PROBE_DEMO_SET,
                     help=f"labelled demo set of the probe (default {DEFAULT_PROBE_DEMO_SET})")  # fmt: skip
    lab.add_argument("--probe_datalist", default=None, help="a labelled MONAI datalist JSON for the probe instead")
    ap.add_argument("--probe_images", type=int, default=4, help="labelled training images k (default 4)")
    ap.add_argument("--probe_steps", type=int, default=100, help="most L-BFGS iterations (default 100)")
    ap.add_argument(
        "--probe_weight_decay", type=float, default=DEFAULT_WEIGHT_DECAY,
        help=f"L2 penalty on the probe's weights (default {DEFAULT_WEIGHT_DECAY:g})",
    )  # fmt: skip
    ap.add_argument("--plain_ce", action="store_true", help="unweighted cross-entropy (default: class-balanced)")
    add_segmentation_arguments(ap)
    ap.add_argument(
        "--resume", action="store_true",
        help="keep the runs of an earlier, stopped probe in --output_dir (results.csv) and run only the others",
    )  # fmt: skip
    add_multi_bundle_arguments(ap, DEFAULT_OUTPUT_DIR, "--override hidden_size=96, --override steps_per_epoch=50")
    return ap


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Command-line entry point: ``python -m maskseg_monai.experiments.probe [options]`` (see ``--help``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = _parser()
    args = ap.parse_args(argv)
    overrides = parse_overrides(ap, args.override, RESERVED_KEYS, "the probe")
    rows = run_probe(
        args.patch_sizes, args.seeds, args.pretrain_epochs, args.pretrain_demo_set, args.pretrain_datalist,
        args.probe_demo_set, args.probe_datalist, args.probe_images, args.probe_steps, args.probe_weight_decay,
        not args.plain_ce, args.output_dir, overrides=overrides, size_thresholds=args.size_thresholds,
        iou_threshold=args.iou_threshold, command=command_line("maskseg_monai.experiments.probe", argv),
        progress_bar=args.progress_bar, resume=args.resume,
    )  # fmt: skip
    print(markdown_table(summarize_runs(rows, SUMMARY_COLUMNS, ("patch_size", "arm"))))
    print(f"results in {Path(args.output_dir).resolve()}")
    return rows


if __name__ == "__main__":
    main()
