"""With-vs-without-pretraining study: UNETR fine-tuned from scratch, from an MAE encoder and from an AMLP encoder.

For every seed, the ``mae`` and ``amlp`` bundles pretrain an encoder (same sizes, seed, data and number of
epochs; each writes ``models/encoder.pt``), then the ``unetr_seg`` bundle is fine-tuned three ways (*arms*) with
the same split, seed and budget:

- ``scratch``: ``pretrained_encoder=""``;
- ``mae``: the MAE encoder of the same seed;
- ``amlp``: the AMLP encoder of the same seed.

Each fine-tuned network (its final weights, ``models/model_final.pt``) segments the validation split with the
bundle's sliding-window ``inferer``; :func:`~maskseg_monai.metrics.evaluate_segmentation` scores each image
(Dice per class and by object size, detection precision/recall/F1) and
:func:`~maskseg_monai.metrics.summarize_metrics` averages over images. Training runs in-process through
:func:`maskseg_monai.experiments.train_cell`.

Run it as a module::

    python -m maskseg_monai.experiments.study --seeds 0 1 2 --pretrain_epochs 20 --finetune_epochs 20 \\
        --demo_set bloodsmear2d --override out_channels=5

Outputs in ``--output_dir``: ``results.csv`` (one row per arm x seed), ``results.md`` (the command, the settings
and mean ± std per arm) and ``study.png`` (mean Dice and small-object Dice per arm, mean ± std over seeds), each
written atomically after every fine-tuning; one bundle root per run under ``runs/`` and the demo data under
``demo_data/``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.networks.utils import one_hot

from maskseg_monai.experiments.cli import COMMON_RESERVED_KEYS, check_run_inputs, command_line, parse_override
from maskseg_monai.experiments.report import (
    format_value,
    load_pyplot,
    markdown_table,
    mean_std,
    save_figure,
    summarize_runs,
    write_csv,
    write_markdown,
)
from maskseg_monai.experiments.runner import (
    DEFAULT_DEMO_SET,
    Cell,
    bundle_config_file,
    prepare_data,
    probe_cells,
    read_bundle,
    run_overrides,
    train_cell,
)
from maskseg_monai.metrics.segmentation import (
    SIZE_THRESHOLDS,
    evaluate_segmentation,
    size_bucket_names,
    summarize_metrics,
)

__all__ = [
    "ARMS",
    "PRETRAIN_BUNDLES",
    "ENCODER_KEYS",
    "RESERVED_KEYS",
    "DEFAULT_OUTPUT_DIR",
    "split_overrides",
    "check_encoder_sizes",
    "evaluate_unetr",
    "plot_study",
    "run_study",
    "main",
]

#: the fine-tuning arms, in table order; each but ``scratch`` names the bundle that pretrains its encoder
ARMS = ("scratch", "mae", "amlp")
PRETRAIN_BUNDLES = ("mae", "amlp")
#: bundle keys that must resolve to the same value in the pretraining bundles and the UNETR
ENCODER_KEYS = (
    "spatial_dims", "in_channels", "img_size", "patch_size", "hidden_size", "mlp_dim", "num_layers", "num_heads",
)  # fmt: skip
#: bundle keys the study sets itself, and the option that sets them
RESERVED_KEYS: dict[str, str] = {
    **COMMON_RESERVED_KEYS,
    "epochs": "--pretrain_epochs / --finetune_epochs",
    "seed": "--seeds",
    "pretrained_encoder": "the study's arms",
}
DEFAULT_OUTPUT_DIR = "sweeps/unetr_study"
#: summary columns of results.md (``dice_small`` is the smallest size bucket's Dice)
SUMMARY_COLUMNS = ("dice", "dice_small", "f1", "precision", "recall", "train_seconds")


def split_overrides(overrides: Mapping[str, Any], parsers: Mapping[str, ConfigParser]) -> dict[str, dict[str, Any]]:
    """Give each bundle the overrides whose key it declares (e.g. ``out_channels`` only to the UNETR).

    Args:
        overrides: ``key -> value`` overrides for every bundle (``--override``).
        parsers: bundle name -> its parsed config (:func:`~maskseg_monai.experiments.read_bundle`).

    Returns:
        bundle name -> the overrides it declares.

    Raises:
        ValueError: for a key that no bundle declares (most likely a typo).
    """
    unknown = [k for k in overrides if not any(k in p for p in parsers.values())]
    if unknown:
        raise ValueError(f"--override keys {unknown} are declared by none of the bundles {list(parsers)}.")
    return {name: {k: v for k, v in overrides.items() if k in p} for name, p in parsers.items()}


def check_encoder_sizes(parsers: Mapping[str, ConfigParser], keys: Sequence[str] = ENCODER_KEYS) -> dict[str, Any]:
    """Check that the encoder keys resolve to the same values in every bundle, so that an encoder transfers.

    Returns:
        ``key -> value`` of the shared encoder settings.

    Raises:
        ValueError: naming the first key whose values differ, with each bundle's value.
    """
    shared: dict[str, Any] = {}
    for key in keys:
        values = {name: p.get_parsed_content(key) for name, p in parsers.items()}
        if len({json.dumps(v, default=str) for v in values.values()}) > 1:
            raise ValueError(
                f"'{key}' differs between the bundles {values}; the encoder must have the same sizes in pretraining "
                f"and fine-tuning: pass --override {key}=<value> for all of them."
            )
        shared[key] = next(iter(values.values()))
    return shared


def _class_names(parser: ConfigParser, out_channels: int) -> list[str]:
    """One name per output channel, from the datalist's ``"labels"`` when it names them all, else indices."""
    try:
        labels = json.loads(Path(parser.get_parsed_content("datalist")).read_text()).get("labels", {})
    except (OSError, ValueError, AttributeError):
        labels = {}
    return [str(labels.get(str(c), c)) for c in range(out_channels)]


@torch.no_grad()
def evaluate_unetr(
    network: torch.nn.Module,
    parser: ConfigParser,
    size_thresholds: Sequence[int] = SIZE_THRESHOLDS,
    iou_threshold: float = 0.5,
) -> dict[str, float]:
    """Segment the bundle's validation split and score it with :func:`evaluate_segmentation`.

    Each item goes through ``validate#preprocessing`` (image and label), the bundle's ``inferer`` (sliding
    window) and an argmax; Dice and detection are averaged over images (:func:`summarize_metrics`).

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
    names = _class_names(parser, out_channels)
    network.eval()
    rows: list[dict[str, float]] = []
    for item in items:
        data = preprocessing(dict(item))
        x = torch.as_tensor(data["image"])[None].float().to(device)  # [1, C, *spatial]
        y = torch.as_tensor(data["label"])[None].long()  # [1, 1, *spatial]
        pred = inferer(x, network).argmax(1, keepdim=True).cpu()  # [1, 1, *spatial]
        rows += evaluate_segmentation(
            one_hot(pred, out_channels), one_hot(y, out_channels), class_names=names,
            size_thresholds=size_thresholds, iou_threshold=iou_threshold,
        )  # fmt: skip
    summary = summarize_metrics(rows)
    summary["dice_small"] = summary.get(f"dice_{size_bucket_names(size_thresholds)[0]}", math.nan)
    return summary


def plot_study(
    rows: Sequence[Mapping[str, Any]],
    path: str | Path,
    metrics: Sequence[str] = ("dice", "dice_small"),
    labels: Sequence[str] | None = None,
    title: str = "",
) -> str:
    """Grouped bar chart: one group per metric, one bar per arm (mean over seeds, error bar = std), each seed as a
    dot; written atomically.

    Args:
        rows: study rows with ``arm`` and the ``metrics``.
        path: the PNG to write.
        metrics: one group each. Defaults to mean Dice and small-object Dice.
        labels: axis label per metric. Defaults to the metric names.
        title: figure title.

    Returns:
        the path written.

    Raises:
        ImportError: without matplotlib.
    """
    plt = load_pyplot("the study's plot")
    arms = [a for a in ARMS if any(r["arm"] == a for r in rows)]
    labels = list(labels or metrics)
    width = 0.8 / max(len(arms), 1)
    fig, ax = plt.subplots(figsize=(1.6 + 2.2 * len(metrics), 3.6))
    for i, arm in enumerate(arms):
        values = np.array([[float(r.get(m, math.nan)) for m in metrics] for r in rows if r["arm"] == arm])
        stats = [mean_std(values[:, j]) for j in range(len(metrics))]
        xs = np.arange(len(metrics)) + (i - (len(arms) - 1) / 2) * width
        means = [m for m, _ in stats]
        errs = [0.0 if math.isnan(s) else s for _, s in stats]
        ax.bar(xs, np.nan_to_num(means), width, yerr=errs, capsize=4, label=arm, alpha=0.85)
        for j, x in enumerate(xs):
            ax.scatter(np.full(len(values), x), values[:, j], color="black", s=10, zorder=3)
    ax.set_xticks(np.arange(len(metrics)), labels)
    ax.set_ylabel("Dice (validation)")
    ax.set_ylim(0, 1)
    ax.legend(title="encoder", fontsize="small")
    if title:
        ax.set_title(title, fontsize="medium")
    fig.tight_layout()

    return save_figure(fig, path)


def run_study(
    seeds: Sequence[int] = (0, 1, 2),
    pretrain_epochs: int = 20,
    finetune_epochs: int = 20,
    demo_set: str = DEFAULT_DEMO_SET,
    datalist: str | Path | None = None,
    output_dir: str | Path = DEFAULT_OUTPUT_DIR,
    config_files: Mapping[str, str | Path] | None = None,
    overrides: Mapping[str, Any] | None = None,
    size_thresholds: Sequence[int] = SIZE_THRESHOLDS,
    iou_threshold: float = 0.5,
    command: str | None = None,
    progress_bar: bool = False,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Pretrain MAE and AMLP, fine-tune UNETR from scratch / MAE / AMLP for every seed, evaluate, write the results.

    Args:
        seeds: training seeds; each seed pretrains both encoders and fine-tunes the three arms.
        pretrain_epochs: epochs of every MAE and AMLP pretraining.
        finetune_epochs: epochs of every UNETR fine-tuning.
        demo_set: built-in demo set (``maskseg_monai.data.DEMO_SETS``) when no ``datalist`` is given.
        datalist: a MONAI datalist JSON with labelled ``"training"``/``"validation"`` lists.
        output_dir: where results, run bundle roots (``runs/``) and demo data go.
        config_files: bundle name (``"mae"``, ``"amlp"``, ``"unetr_seg"``) -> its ``train.json``. Defaults to the
            repository's bundles.
        overrides: ``key -> value`` overrides, each given to every bundle that declares the key (network sizes
            to all three; ``out_channels`` to the UNETR only).
        size_thresholds: object-size bucket edges of the evaluation; the first bucket is "small".
        iou_threshold: IoU of a detection match.
        command: the command line recorded in ``results.md``.
        progress_bar: keep the bundles' per-iteration progress bars.
        log: where progress lines go.

    Returns:
        one dict per arm x seed (seed-major): ``arm``, ``seed``, ``pretrain_epochs``, ``finetune_epochs``,
        ``steps``, ``train_loss``, ``train_seconds``, ``pretrain_seconds``, ``dice``, ``dice_small``, ``f1``, then
        the other metrics of :func:`evaluate_unetr`.

    Raises:
        ValueError: on no or repeated seeds, epochs < 1, a reserved or undeclared override, encoder sizes that
            differ between the bundles, or a network a bundle cannot build (all before any training).
        FileNotFoundError: when a config file or ``datalist`` does not exist.
    """
    files = {b: Path(bundle_config_file(b)) for b in (*PRETRAIN_BUNDLES, "unetr_seg") if b not in (config_files or {})}
    files.update({b: Path(f) for b, f in (config_files or {}).items()})
    extra = dict(overrides or {})
    for option, value in (("--pretrain_epochs", pretrain_epochs), ("--finetune_epochs", finetune_epochs)):
        if value < 1:
            raise ValueError(f"{option} must be at least 1, got {value}.")
    for f in files.values():
        check_run_inputs(f, datalist, min(pretrain_epochs, finetune_epochs), extra, RESERVED_KEYS, "the study")
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds must list one or more distinct seeds, got {seeds}.")
    output_dir = Path(output_dir).resolve()
    data_dir = output_dir / "demo_data"

    per_bundle = split_overrides(extra, {b: read_bundle(f) for b, f in files.items()})
    bases = {b: read_bundle(f, per_bundle[b]) for b, f in files.items()}
    encoder = check_encoder_sizes(bases)

    def over(bundle: str, seed: int, epochs: int, root: Path, cell: Mapping[str, Any] | None = None) -> dict:
        return run_overrides(epochs, seed, root, data_dir, demo_set, datalist, per_bundle[bundle], cell)

    pretrain: dict[tuple[str, int], Cell] = {}
    finetune: list[Cell] = []
    for seed in seeds:
        for b in PRETRAIN_BUNDLES:
            root = output_dir / "runs" / f"{b}_seed{seed}"
            pretrain[b, seed] = Cell(f"pretrain {b}, seed {seed}", {"root": root}, over(b, seed, pretrain_epochs, root))
        for arm in ARMS:
            root = output_dir / "runs" / f"unetr_{arm}_seed{seed}"
            enc = "" if arm == "scratch" else str(pretrain[arm, seed].info["root"] / "models" / "encoder.pt")
            info = {"arm": arm, "seed": seed, "pretrain_epochs": 0 if arm == "scratch" else pretrain_epochs,
                    "finetune_epochs": finetune_epochs}  # fmt: skip
            cell = over("unetr_seg", seed, finetune_epochs, root, {"pretrained_encoder": enc})
            finetune.append(Cell(f"UNETR {arm}, seed {seed}", info, cell))
    for b in PRETRAIN_BUNDLES:
        probe_cells(files[b], [c for (name, _), c in pretrain.items() if name == b][:1])
    probe_cells(files["unetr_seg"], finetune[:1])
    prepare_data(data_dir, demo_set, datalist)

    command = command or "maskseg_monai.experiments.study.run_study(...)"
    small = size_bucket_names(size_thresholds)[0]
    unit = "pixels" if int(encoder["spatial_dims"]) == 2 else "voxels"
    settings = {
        "configs": ", ".join(f"`{f}`" for f in files.values()),
        "data": f"datalist `{datalist}`" if datalist is not None else f"demo set `{demo_set}`",
        "arms": "`scratch` (no pretraining), `mae` (MAE encoder), `amlp` (AMLP encoder); same split, seed, budget",
        "seeds": ", ".join(map(str, seeds)),
        "pretraining epochs (MAE and AMLP)": pretrain_epochs,
        "fine-tuning epochs (UNETR)": finetune_epochs,
        "encoder (all bundles)": ", ".join(f"`{k}={v}`" for k, v in encoder.items()),
        "overrides": ", ".join(f"`{k}={v}`" for k, v in extra.items()) or "none",
        "UNETR settings used": ", ".join(
            f"`{k}={bases['unetr_seg'].get(k)}`"
            for k in ("out_channels", "feature_size", "batch_size", "learning_rate", "weight_decay", "warmup_epochs")
        ),
        "evaluation": f"final weights (`model_final.pt`) on the validation split, sliding window, argmax; Dice "
        f"without background, averaged over classes then images; `dice_small` = Dice of ground-truth objects of "
        f"fewer than {size_thresholds[0]} {unit} (`dice_{small}`); detection at IoU >= {iou_threshold:g}",
        "torch threads": torch.get_num_threads(),
    }
    total = len(finetune)
    run_columns = ["arm", "seed", "steps", "train_loss", *SUMMARY_COLUMNS, "pretrain_seconds"]

    def save(rows: list[dict[str, Any]]) -> None:
        write_csv(rows, output_dir / "results.csv")
        partial = [f"**Partial results: {len(rows)} of {total} runs done.**"] if len(rows) < total else []
        sections = [
            *partial,
            "## Mean ± std over seeds\n\n" + markdown_table(summarize_runs(rows, SUMMARY_COLUMNS, "arm", ARMS)),
            "## Dice by object size\n\n"
            + markdown_table(
                summarize_runs(rows, [f"dice_{b}" for b in size_bucket_names(size_thresholds)], "arm", ARMS)
            ),
            "## Runs\n\n"
            + markdown_table([{c: format_value(r[c], c) for c in run_columns} for r in rows], run_columns),
        ]
        write_markdown(output_dir / "results.md", "UNETR: from scratch vs MAE vs AMLP pretraining", command,
                       settings, sections)  # fmt: skip
        title = f"UNETR fine-tuning, {len({r['seed'] for r in rows})} seed(s), {settings['data']}".replace("`", "")
        plot_study(rows, output_dir / "study.png", labels=("mean Dice", f"small-object Dice ({small})"), title=title)

    rows: list[dict[str, Any]] = []
    pretrain_seconds: dict[tuple[str, int], float] = {}
    for i, cell in enumerate(finetune, 1):
        arm, seed = cell.info["arm"], cell.info["seed"]
        for b in PRETRAIN_BUNDLES:  # both encoders of a seed, before its first fine-tuning
            if (b, seed) not in pretrain_seconds:
                log(f"{pretrain[b, seed].label}: training {pretrain_epochs} epoch(s) ...")
                workflow, info = train_cell(files[b], pretrain[b, seed].overrides, progress_bar=progress_bar)
                pretrain_seconds[b, seed] = info["train_seconds"]
                log(f"{pretrain[b, seed].label}: {info['steps']} steps in {info['train_seconds']:.0f} s, "
                    f"loss {info['train_loss']:.4f}")  # fmt: skip
                del workflow
        log(f"[{i}/{total}] {cell.label}: fine-tuning {finetune_epochs} epoch(s) ...")
        workflow, info = train_cell(files["unetr_seg"], cell.overrides, progress_bar=progress_bar)
        start = time.perf_counter()
        # the in-memory network holds the final weights, the same as models/model_final.pt
        metrics = evaluate_unetr(workflow.parser.get_parsed_content("network"), workflow.parser, size_thresholds,
                                 iou_threshold)  # fmt: skip
        first = {k: metrics[k] for k in ("dice", "dice_small", "f1", "precision", "recall")}
        row = {**cell.info, **info, "pretrain_seconds": pretrain_seconds.get((arm, seed), 0.0)}
        rows.append(row | first | {k: v for k, v in metrics.items() if k not in first})
        scores = ", ".join(f"{k} {metrics[k]:.3f}" for k in ("dice", "dice_small", "f1"))
        seconds = f"{info['train_seconds']:.0f} s (evaluation {time.perf_counter() - start:.0f} s)"
        log(f"[{i}/{total}] {cell.label}: {info['steps']} steps in {seconds}, {scores}")
        del workflow
        save(rows)
    return rows


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m maskseg_monai.experiments.study",
        description="Fine-tune the UNETR bundle from scratch, from an MAE encoder and from an AMLP encoder (each "
        "pretrained by its bundle) with the same split, budget and seeds; report Dice (all, by object size) and "
        "detection F1 as mean ± std over seeds.",
    )
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (default 0 1 2)")
    ap.add_argument("--pretrain_epochs", type=int, default=20, help="MAE/AMLP pretraining epochs (default 20)")
    ap.add_argument("--finetune_epochs", type=int, default=20, help="UNETR fine-tuning epochs (default 20)")
    data = ap.add_mutually_exclusive_group()
    data.add_argument("--demo_set", default=DEFAULT_DEMO_SET, help=f"built-in demo set (default {DEFAULT_DEMO_SET})")
    data.add_argument("--datalist", default=None, help="a MONAI datalist JSON to use instead of a demo set")
    ap.add_argument("--output_dir", default=DEFAULT_OUTPUT_DIR, help=f"default {DEFAULT_OUTPUT_DIR}")
    ap.add_argument(
        "--size_thresholds", type=int, nargs="+", default=list(SIZE_THRESHOLDS),
        help="object-size bucket edges in pixels/voxels; the first bucket is 'small' (default 16 64)",
    )  # fmt: skip
    ap.add_argument("--iou_threshold", type=float, default=0.5, help="IoU of a detection match (default 0.5)")
    ap.add_argument("--progress_bar", action="store_true", help="keep the bundles' per-iteration progress bars")
    ap.add_argument(
        "--override", action="append", default=[], metavar="KEY=VALUE",
        help="bundle override, repeatable, given to every bundle that declares KEY (e.g. --override hidden_size=96 "
        "for all three, --override out_channels=5 for the UNETR)",
    )  # fmt: skip
    return ap


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Command-line entry point: ``python -m maskseg_monai.experiments.study [options]`` (see ``--help``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = _parser()
    args = ap.parse_args(argv)
    try:
        overrides = dict(parse_override(v, RESERVED_KEYS, "the study") for v in args.override)
    except ValueError as err:
        ap.error(str(err))
    rows = run_study(
        args.seeds, args.pretrain_epochs, args.finetune_epochs, args.demo_set, args.datalist, args.output_dir,
        overrides=overrides, size_thresholds=args.size_thresholds, iou_threshold=args.iou_threshold,
        command=command_line("maskseg_monai.experiments.study", argv), progress_bar=args.progress_bar,
    )  # fmt: skip
    print(markdown_table(summarize_runs(rows, SUMMARY_COLUMNS, "arm", ARMS)))
    print(f"results in {Path(args.output_dir).resolve()}")
    return rows


if __name__ == "__main__":
    main()
