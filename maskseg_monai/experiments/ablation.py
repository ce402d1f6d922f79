"""Ablation of the AMLP bundle: MAE, +MPS, +ARL, +CCL, +AMR on the same data, seeds, budget and evaluation masks.

The variants are cumulative: each switches on one more AMLP component of ``bundles/amlp`` (methods note
``shared/methods/amlp.md``, "What to measure"):

============  ======================================================================================
``mae``       ``use_mps=false``, ``arl_weight=0``, ``ccl_weight=0``, ``use_amr=false`` (fixed ``mask_ratio``)
``+mps``      Masked Patch Selection on (``use_mps`` as in the bundle)
``+arl``      plus the Attention (relative) Reconstruction Loss (the bundle's ``arl_weight``)
``+ccl``      plus the Category Consistency Loss (the bundle's ``ccl_weight``)
``+amr``      plus the Adaptive Masking Ratio (``amr_start`` -> ``amr_end``): the full AMLP
============  ======================================================================================

Every variant trains in-process with the same seed, data and epochs (:mod:`maskseg_monai.experiments`), then its
``models/model_final.pt`` is evaluated twice on the validation split:

- **reconstruction**, with masks drawn from one fixed seed at one fixed ratio for every variant (default: the
  bundle's ``amr_end``), so MPS is bypassed and all variants see the same masked pixels: ``psnr_masked``,
  ``ssim_masked``, ``psnr_all``, ``ssim_all``, ``psnr_masked_lesion`` (masked pixels of the lesion classes),
  ``psnr_masked_small`` / ``psnr_masked_rest`` (small connected components, a region fixed in pixels:
  ``--small_area``, ``--small_dilation``), ``psnr_masked_<class>``, and the fills that need no learning on the
  same masks (``global_mean``, ``visible_mean``, ``gaussian``: ``<fill>_psnr_masked``, ``..._small``,
  ``..._lesion``) with the model's gains over them (``gain_<fill>_...``, model minus fill); the Gaussian sigma and
  the global mean are fitted once on training crops at the evaluation ratio
  (:func:`maskseg_monai.experiments.fit_cell_baselines`), never on validation images (see
  :func:`maskseg_monai.experiments.evaluate_cell`);
- **masked patch selection**, with each network masking by its own policy in eval mode at the same ratio (MPS
  when on, uniformly random otherwise): ``mps_hit_rate`` (fraction of masked patches holding lesion pixels)
  against ``chance_hit_rate`` (fraction of all patches holding lesion pixels), and ``category_precision`` /
  ``category_recall`` of MPS's lesion category against the lesion patches (NaN without MPS); see
  :func:`~maskseg_monai.metrics.mps_hit_rates`. *Lesion* is any label > 0 unless ``--lesion_classes`` says otherwise.

Downstream Dice is not the ablation's: the label-efficiency study (:mod:`maskseg_monai.experiments.study`) fine-tunes
UNETR from the MAE and AMLP encoders, and the probe (:mod:`maskseg_monai.experiments.probe`) scores their frozen
features.

Run it as a module::

    python -m maskseg_monai.experiments.ablation --epochs 500 --seeds 0 1 2 --override learning_rate=2e-3
    python -m maskseg_monai.experiments.ablation --variants mae +mps --epochs 1 --seeds 0 --override hidden_size=48

Outputs in ``--output_dir``: ``results.csv`` (one row per variant x seed) and ``results.md`` (the command, the
settings, how the baselines were fitted, and mean ± std tables per variant: model, each fill, gains, *learned*),
each written atomically and refreshed after every run; one bundle
root per run under ``cells/``, and the demo data, shared by all runs, under ``demo_data/``.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser
from monai.utils import ensure_tuple_rep, look_up_option

from maskseg_monai.experiments.cli import (
    COMMON_RESERVED_KEYS,
    DEFAULT_SEEDS,
    add_common_arguments,
    add_seed_arguments,
    add_small_object_arguments,
    check_run_inputs,
    check_seeds,
    parse_command,
)
from maskseg_monai.experiments.evaluate import (
    BASELINE_METRICS,
    DEFAULT_BASELINE_CROPS,
    GAIN_METRICS,
    GLOBAL_METRICS,
    LESION_METRICS,
    MPS_METRICS,
    REGION_METRICS,
    REPORTED_KEYS,
    check_small_region,
    describe_baselines,
    describe_small_region,
    evaluate_cell,
    evaluate_mps,
    fit_cell_baselines,
)
from maskseg_monai.experiments.report import (
    baseline_sections,
    effect_verdict,
    markdown_table,
    paired_gains,
    run_settings,
    summarize_runs,
    write_csv,
    write_markdown,
)
from maskseg_monai.experiments.runner import (
    DEFAULT_DEMO_SET,
    DEFAULT_EPOCHS,
    Cell,
    bundle_config_file,
    prepare_data,
    probe_cells,
    read_bundle,
    run_cells,
    run_overrides,
)
from maskseg_monai.experiments.validation import ValidationSet
from maskseg_monai.masking.masks import num_masked_patches
from maskseg_monai.masking.patches import grid_size
from maskseg_monai.utils import as_bool

__all__ = [
    "VARIANTS",
    "COMPONENTS",
    "RESERVED_KEYS",
    "check_variants",
    "component_values",
    "variant_overrides",
    "component_effects",
    "run_ablation",
    "main",
]

#: the variants, in their cumulative order: each adds the next component of COMPONENTS
VARIANTS: tuple[str, ...] = ("mae", "+mps", "+arl", "+ccl", "+amr")
#: component -> (bundle key, its value when off); variant VARIANTS[i] switches on the first i components
COMPONENTS: dict[str, tuple[str, Any]] = {
    "mps": ("use_mps", False),
    "arl": ("arl_weight", 0.0),
    "ccl": ("ccl_weight", 0.0),
    "amr": ("use_amr", False),
}
DEFAULT_OUTPUT_DIR = "sweeps/amlp_ablation"
#: bundle keys the ablation sets itself; each has its own command-line option
RESERVED_KEYS: dict[str, str] = {"seed": "--seeds", **COMMON_RESERVED_KEYS}
_AMLP_KEYS = (
    "patch_size", "mask_ratio", "amr_start", "amr_end", "amr_schedule", "mps_features", "mps_clusters", "mps_iters",
    "mps_warmup", "mps_prob", "ccl_hidden", "arl_gamma", "ccl_target",
)  # fmt: skip
_REGIONS = {
    "psnr_masked": "all masked pixels",
    "psnr_masked_lesion": "masked pixels of the lesion classes",
    "psnr_masked_small": "masked pixels of small objects",
}
_OTHER_COLUMNS = ("psnr_masked_rest", "psnr_all", "ssim_masked", "ssim_all")
#: the scores whose paired change each component's table reports
EFFECT_COLUMNS = ("psnr_masked", "psnr_masked_lesion", "psnr_masked_small", "mps_hit_rate")


def component_effects(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str] = EFFECT_COLUMNS, order: Sequence[str] = VARIANTS
) -> list[dict[str, Any]]:
    """What each component changes: every variant's run minus the run of the variant before it (in ``order``, among
    those present) with the same seed, then the last variant minus the first (all components together).

    Returns:
        one row per pair of variants: ``change`` (e.g. ``"+arl - +mps"``), ``runs`` (seeds paired), per column
        ``"mean ± std"`` of the paired differences (as :func:`summarize_runs`) and ``verdict_<column>``
        (:func:`~maskseg_monai.experiments.report.effect_verdict`).

    Example:
        >>> rows = [{"variant": v, "seed": s, "psnr_masked": 10.0 + s + (v == "+mps")} for v in ("mae", "+mps")
        ...         for s in (0, 1)]
        >>> effect = component_effects(rows, ["psnr_masked"])[0]
        >>> effect["change"], effect["psnr_masked"], effect["verdict_psnr_masked"]
        ('+mps - mae', '1.00 ± 0.00', 'shown (+)')
    """
    present = [v for v in order if any(r["variant"] == v for r in rows)]
    steps = list(zip(present, present[1:]))
    if len(present) > 2:
        steps.append((present[0], present[-1]))
    table = []
    for before, after in steps:
        pairs = [r for r in rows if r["variant"] in (before, after)]
        gains = paired_gains(pairs, columns, before, ("seed",), group="variant")
        if not gains:
            continue
        row = summarize_runs(gains, columns, "variant")[0]
        row = {"change": f"{after} - {before}", **{k: v for k, v in row.items() if k != "variant"}}
        for c in columns:
            row[f"verdict_{c}"] = effect_verdict([g[c] for g in gains])
        table.append(row)
    return table


def check_variants(variants: Sequence[str]) -> list[str]:
    """The requested variants in their cumulative order.

    Raises:
        ValueError: on an empty or repeated list, or an unknown name (the message lists the valid ones).
    """
    if len(variants) == 0:
        raise ValueError(f"--variants is empty; choose from {list(VARIANTS)}.")
    if len(set(variants)) != len(variants):
        raise ValueError(f"--variants repeats a name: {list(variants)}.")
    for v in variants:
        look_up_option(v, VARIANTS)
    return sorted(variants, key=VARIANTS.index)


def component_values(base: ConfigParser) -> dict[str, Any]:
    """The bundle's values of the component keys (with the shared overrides): what each variant switches on."""
    values: dict[str, Any] = {}
    for key, off in COMPONENTS.values():
        raw = base.get_parsed_content(key)
        values[key] = as_bool(raw, key) if isinstance(off, bool) else float(raw)
    return values


def variant_overrides(variant: str, on: Mapping[str, Any]) -> dict[str, Any]:
    """Component keys of one variant: the first ``VARIANTS.index(variant)`` components on, the others off.

    Args:
        variant: one of :data:`VARIANTS`.
        on: component key -> its value when on (:func:`component_values`).

    Raises:
        ValueError: on an unknown variant, or when a component the variant needs is off in ``on`` (the
            variant would then repeat the one before it).

    Example:
        >>> variant_overrides("+arl", {"use_mps": True, "arl_weight": 1.0, "ccl_weight": 0.1, "use_amr": True})
        {'use_mps': True, 'arl_weight': 1.0, 'ccl_weight': 0.0, 'use_amr': False}
    """
    n_on = VARIANTS.index(look_up_option(variant, VARIANTS))
    over = {}
    for i, (name, (key, off)) in enumerate(COMPONENTS.items()):
        if i < n_on and on[key] == off:
            raise ValueError(
                f"variant {variant} switches on {name.upper()}, but the bundle's {key} is {on[key]!r} (off); "
                f"set it with --override {key}=..."
            )
        over[key] = on[key] if i < n_on else off
    return over


def _sections(
    rows: Sequence[Mapping[str, Any]],
    class_names: Mapping[int, str],
    eval_ratio: float,
    total: int,
    baselines: str,
) -> list:
    classes = [f"psnr_masked_{n}" for n in class_names.values()]
    partial = [f"**Partial results: {len(rows)} of {total} runs done.**"] if len(rows) < total else []
    return [
        *partial,
        f"## Reconstruction (seeded random masks at ratio {eval_ratio:g}, the same for every variant)\n\n" + baselines,
        *baseline_sections(rows, "variant", _REGIONS),
        "### Other reconstruction metrics\n\nMean ± std over seeds; `psnr_masked_rest`: masked pixels outside the "
        "small-object region.\n\n" + markdown_table(summarize_runs(rows, _OTHER_COLUMNS, "variant")),
        "## What each component changes (paired by seed)\n\n"
        "Each variant's run minus the previous variant's run of the same seed (the last row: all components "
        "against MAE); mean ± std of the differences over seeds (PSNR in dB). `shown (+)`/`shown (-)`: the same "
        "sign for every seed and a mean beyond the spread between seeds; otherwise `not shown`.\n\n"
        + (markdown_table(effects) if (effects := component_effects(rows)) else "no pair yet"),
        f"## Masked Patch Selection (each variant masks by its own policy at ratio {eval_ratio:g})\n\n"
        "`mps_hit_rate`: fraction of masked patches holding lesion pixels; `chance_hit_rate`: fraction of all "
        "patches holding lesion pixels (what random masking hits on average). Category precision/recall: MPS's "
        "lesion category against the lesion patches (nan without MPS).\n\n"
        + markdown_table(summarize_runs(rows, MPS_METRICS, "variant")),
        "## Masked PSNR per class\n\n" + markdown_table(summarize_runs(rows, classes, "variant")) if classes else "",
        "## Training\n\n`train_loss` is the last epoch's mean training loss; it includes the ARL and CCL terms, "
        "so it is not comparable between variants.\n\n"
        + markdown_table(summarize_runs(rows, ("steps", "train_loss", "train_seconds"), "variant")),
        "## Downstream segmentation\n\nNot measured here: `python -m maskseg_monai.experiments.study` fine-tunes "
        "UNETR from MAE and AMLP encoders (Dice by object size against scratch) and `python -m "
        "maskseg_monai.experiments.probe` fits a linear probe on their frozen features. No Dice value is reported "
        "here.",
    ]


def run_ablation(
    variants: Sequence[str] = VARIANTS,
    epochs: int = DEFAULT_EPOCHS,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    demo_set: str = DEFAULT_DEMO_SET,
    datalist: str | Path | None = None,
    output_dir: str | Path = DEFAULT_OUTPUT_DIR,
    config_file: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    eval_mask_ratio: float | None = None,
    eval_seed: int = 0,
    lesion_classes: Sequence[int] | None = None,
    small_area: int | None = None,
    small_dilation: int | None = None,
    command: str | None = None,
    progress_bar: bool = False,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Train and evaluate every variant x seed, then write ``results.csv`` and ``results.md`` to ``output_dir``.

    Args:
        variants: a subset of :data:`VARIANTS` (run in their cumulative order).
        epochs: training epochs of every run.
        seeds: training seeds; every variant runs once per seed. Defaults to ``(0, 1, 2)``.
        demo_set: built-in demo set (``maskseg_monai.data.DEMO_SETS``) when no ``datalist`` is given.
        datalist: a MONAI datalist JSON (``"training"``/``"validation"`` lists of ``{"image", "label"}``).
        output_dir: where results, run bundle roots (``cells/``) and demo data go.
        config_file: the AMLP bundle's ``train.json``. Defaults to the repository's ``bundles/amlp``.
        overrides: further bundle overrides (``key -> value``) for every run; the component keys set what the
            variants switch on (e.g. ``ccl_weight=0.3``).
        eval_mask_ratio: the ratio of every evaluation. Defaults to the bundle's ``amr_end``.
        eval_seed: seed of the evaluation masks and of the training crops the baselines are fitted on, the same
            for every run.
        lesion_classes: label values that count as lesion. Defaults to every class > 0 in the validation labels.
        small_area: small-object threshold in pixels/voxels. Defaults to 64 in 2D, 512 in 3D.
        small_dilation: pixels the small objects are grown by. Defaults to 2.
        command: the command line recorded in ``results.md``.
        progress_bar: keep the bundle's per-iteration progress bars.
        log: where progress lines go.

    Returns:
        one dict per run: ``variant``, ``seed``, ``epochs``, ``steps``, ``train_loss``, ``train_seconds``, the
        metrics of :func:`~maskseg_monai.experiments.evaluate_cell` and :func:`~maskseg_monai.experiments.evaluate_mps`.

    Raises:
        ValueError: on a bad variant list, no or repeated seeds, a reserved override, ``epochs < 1``, an
            evaluation ratio the patch grid cannot mask, a negative lesion class, a bad small-object region, a
            variant whose component is off in the bundle, or a network the bundle cannot build (all checked before
            any training).
        FileNotFoundError: when ``config_file`` or ``datalist`` does not exist.
    """
    config_file = Path(config_file) if config_file is not None else bundle_config_file("amlp")
    extra = dict(overrides or {})
    check_run_inputs(config_file, datalist, epochs, extra, RESERVED_KEYS, "the ablation")
    variants = check_variants(variants)
    seeds = check_seeds(seeds)
    if lesion_classes is not None and (not lesion_classes or min(lesion_classes) < 0):
        raise ValueError(f"--lesion_classes must list label values >= 0, got {list(lesion_classes)}.")
    output_dir = Path(output_dir).resolve()

    base = read_bundle(config_file, extra)
    spatial_dims = int(base.get_parsed_content("spatial_dims"))
    img = ensure_tuple_rep(base.get_parsed_content("img_size"), spatial_dims)
    n_patches = math.prod(grid_size(img, base.get_parsed_content("patch_size")))
    eval_ratio = float(base.get_parsed_content("amr_end") if eval_mask_ratio is None else eval_mask_ratio)
    try:
        num_masked_patches(n_patches, eval_ratio)
    except ValueError as err:
        raise ValueError(f"--eval_mask_ratio {eval_ratio} ({n_patches} patches): {err}") from None
    small_area, small_dilation = check_small_region(small_area, small_dilation, spatial_dims)
    on = component_values(base)
    cells = []
    for seed in seeds:
        for v in variants:
            root = output_dir / "cells" / f"{v.lstrip('+')}_seed{seed}"
            cell = variant_overrides(v, on)
            over = run_overrides(epochs, seed, root, output_dir / "demo_data", demo_set, datalist, extra, cell)
            cells.append(Cell(f"variant {v}, seed {seed}", {"variant": v, "seed": seed, "epochs": epochs}, over))
    probe_cells(config_file, cells)
    prepare_data(output_dir / "demo_data", demo_set, datalist)

    fitted: dict[str, Any] = {}  # one baseline fit for every run: same patch size, ratio and training data

    def lesion_of(validation: ValidationSet) -> list[int]:
        return list(lesion_classes) if lesion_classes is not None else [k for k in validation.class_names if k > 0]

    def evaluate(network: torch.nn.Module, parser: ConfigParser, validation: ValidationSet) -> dict[str, float]:
        lesion = lesion_of(validation)
        batch = {
            "batch_size": int(parser.get_parsed_content("batch_size")),
            "device": parser.get_parsed_content("device"),
        }
        norm_pix = as_bool(parser.get_parsed_content("norm_pix_loss"), "norm_pix_loss")
        images, labels = validation.images, validation.labels
        if not fitted:
            fitted.update(fit_cell_baselines(parser, eval_ratio, eval_seed))
        metrics = evaluate_cell(
            network, images, labels, validation.class_names, eval_seed, small_area, fitted, norm_pix,
            mask_ratio=eval_ratio, lesion_classes=lesion, small_dilation=small_dilation, **batch,
        )  # fmt: skip
        metrics |= evaluate_mps(network, images, labels, lesion, eval_ratio, eval_seed, **batch)
        first = (*GLOBAL_METRICS, *LESION_METRICS, *REGION_METRICS, *BASELINE_METRICS, *GAIN_METRICS, *MPS_METRICS)
        return {k: metrics[k] for k in first} | {k: v for k, v in metrics.items() if k not in first}

    def settings_of(validation: ValidationSet | None) -> dict[str, Any]:
        names = validation.class_names if validation is not None else {}
        lesion = lesion_of(validation) if validation is not None else lesion_classes or []
        described = [
            f"`{v}`: " + ", ".join(f"`{k}={x}`" for k, x in variant_overrides(v, on).items()) for v in variants
        ]
        specific = {
            "variants": "; ".join(described),
            "epochs per run": epochs,
            "training seeds": ", ".join(map(str, seeds)),
            "evaluation": f"mask ratio {eval_ratio:g} for every variant; masks, MPS tie-breaks: seed {eval_seed}",
            "lesion classes (label values)": ", ".join(f"{k} ({names.get(k, '?')})" for k in lesion) or "none found",
            "small objects": describe_small_region(small_area, small_dilation, spatial_dims),
        }
        keys = REPORTED_KEYS + _AMLP_KEYS
        return run_settings(config_file, base, demo_set, datalist, validation, extra, specific, keys)

    command = command or "maskseg_monai.experiments.ablation.run_ablation(...)"

    def save(rows: list[dict[str, Any]], validation: ValidationSet | None) -> None:
        names = validation.class_names if validation is not None else {}
        write_csv(rows, output_dir / "results.csv")
        patch = base.get_parsed_content("patch_size")
        fits = {f"patch {patch}, ratio {eval_ratio:g}": fitted} if fitted else {}
        baselines = describe_baselines(DEFAULT_BASELINE_CROPS, eval_seed, fits)
        sections = _sections(rows, names, eval_ratio, len(cells), baselines)
        write_markdown(output_dir / "results.md", "AMLP ablation", command, settings_of(validation), sections)

    rows, _ = run_cells(
        config_file, cells, evaluate, progress_bar=progress_bar, log=log,
        log_metrics=("psnr_masked", "psnr_masked_lesion", "mps_hit_rate", "chance_hit_rate"), on_row=save,
    )  # fmt: skip
    return rows


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m maskseg_monai.experiments.ablation",
        description="Train the AMLP bundle as MAE, +MPS, +ARL, +CCL and +AMR (cumulative) on the same data, seeds "
        "and budget; compare reconstructions and how often MPS masks lesion patches.",
    )
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), help=f"subset of {' '.join(VARIANTS)}")
    add_seed_arguments(ap)
    ap.add_argument(
        "--eval_mask_ratio", type=float, default=None, help="mask ratio of every evaluation (default: amr_end)"
    )
    ap.add_argument(
        "--lesion_classes", type=int, nargs="+", default=None,
        help="label values that count as lesion (default: every label > 0)",
    )  # fmt: skip
    add_small_object_arguments(ap)
    add_common_arguments(ap, DEFAULT_OUTPUT_DIR, "amlp")
    return ap


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Command-line entry point: ``python -m maskseg_monai.experiments.ablation [options]`` (see ``--help``)."""
    args, common = parse_command(_parser(), argv, "maskseg_monai.experiments.ablation", RESERVED_KEYS, "the ablation")
    rows = run_ablation(
        args.variants, seeds=args.seeds, eval_mask_ratio=args.eval_mask_ratio, eval_seed=args.eval_seed,
        lesion_classes=args.lesion_classes, small_area=args.small_area, small_dilation=args.small_dilation, **common,
    )  # fmt: skip
    columns = ("psnr_masked", "gain_gaussian_psnr_masked", "gain_visible_mean_psnr_masked", "psnr_masked_lesion")
    print(markdown_table(summarize_runs(rows, (*columns, *MPS_METRICS), "variant")))
    print(f"results in {Path(args.output_dir).resolve()}")
    return rows


if __name__ == "__main__":
    main()
