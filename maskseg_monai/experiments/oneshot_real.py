"""One-shot segmentation on real classes never trained on, over training seeds, next to the baselines.

For each seed the oneshot bundle is trained as a user trains it (``python -m monai.bundle run training``, default:
pseudo-classes of the real ``oneshot_real2d`` images, no labels) and evaluated with ``evaluate.json`` on the real
class sets of its datalist (``class_sets``: brain tissue across MR slices, nuclei across microscopy tiles), on the
same fixed episodes for every seed. Training-free arms (``--free_arm NAME=JSON``, a ``network_def`` that needs no
checkpoint, e.g. prototype matching on fixed features) are evaluated once on the same episodes. The episodes'
baselines (Otsu on the support's side, copy the support mask, body, all pixels) come from the evaluation itself.

Writes ``results.csv`` (one row per arm, seed and set) and ``results.md`` (mean +- std over seeds per arm and set,
the best baseline, the gain over it with its spread, and whether the target gain is met on every seed).

Example::

    python -m maskseg_monai.experiments.oneshot_real --output_dir runs/oneshot_real --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from maskseg_monai.bundles import BUNDLES_DIR
from maskseg_monai.experiments.cli import check_seeds, command_line
from maskseg_monai.experiments.report import markdown_table, mean_std, read_csv, write_csv, write_markdown

__all__ = ["run_oneshot_real", "summarize", "main"]

_CONFIGS = BUNDLES_DIR / "oneshot" / "configs"
_BASELINES = ("otsu", "copy_support", "body", "all_pixels")


def _bundle(args: Sequence[str], log: Path) -> None:
    """``python -m monai.bundle ARGS``, output to ``log``; a failure raises naming the log."""
    with open(log, "w") as f:
        proc = subprocess.run([sys.executable, "-m", "monai.bundle", *args], stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(args[:2])} failed (exit {proc.returncode}); see {log}")


def _flags(overrides: Mapping[str, Any]) -> list[str]:
    return [x for k, v in overrides.items() for x in (f"--{k}", v if isinstance(v, str) else json.dumps(v))]


def _evaluate(root: Path, common: list[str], extra: list[str], episodes: int) -> list[dict[str, Any]]:
    configs = str([str(_CONFIGS / "train.json"), str(_CONFIGS / "evaluate.json")])
    _bundle(["run", "evaluating", "--config_file", configs, "--bundle_root", str(root), "--eval_episodes",
             str(episodes), *common, *extra], root / "evaluate.log")  # fmt: skip
    with open(root / "eval" / "metrics_per_set.csv", newline="") as f:
        return list(csv.DictReader(f))


def _row(arm: str, seed: Any, r: Mapping[str, str]) -> dict[str, Any]:
    row: dict[str, Any] = {"arm": arm, "seed": seed, "set": r["set"], "dice": float(r["dice"])}
    row.update({f"{b}_baseline": float(r[f"dice_{b}_baseline"]) for b in _BASELINES if f"dice_{b}_baseline" in r})
    row.update(best_baseline=r["best_baseline"], gain_over_best_baseline=float(r["gain_over_best_baseline"]))
    row["n_episodes"] = int(r["n_episodes"])
    return row


def run_oneshot_real(
    output_dir: str | Path,
    seeds: Sequence[int] = (0, 1, 2),
    overrides: Mapping[str, Any] | None = None,
    free_arms: Mapping[str, Mapping[str, Any]] | None = None,
    eval_episodes: int = 300,
    target_gain: float = 0.05,
    resume: bool = False,
    command: str = "",
) -> list[dict[str, Any]]:
    """Train the oneshot bundle per seed, evaluate every arm on the real class sets, write the tables.

    Args:
        output_dir: one folder per run (``seed<S>/``, ``<arm>/``) and ``results.csv`` / ``results.md``.
        seeds: training seeds of the trained arm (``sgone``); the evaluation episodes are the same for all.
        overrides: bundle keys for training and evaluation (e.g. ``{"epochs": 20}``).
        free_arms: ``{name: network_def}`` of training-free arms (evaluated without a checkpoint).
        eval_episodes: evaluation episodes per run.
        target_gain: the gain over the best baseline a set must reach on every seed.
        resume: reuse runs whose rows are already in ``results.csv``.
        command: the command line, for ``results.md``.

    Returns:
        the rows of ``results.csv``.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    common = _flags({"dataset_dir": str(out / "demo_data"), **dict(overrides or {})})
    done = read_csv(out / "results.csv") if resume and (out / "results.csv").is_file() else []
    rows = list(done)
    have = {(str(r["arm"]), str(r["seed"])) for r in done}
    for seed in check_seeds(seeds):
        if ("sgone", str(seed)) in have:
            continue
        root = out / f"seed{seed}"
        root.mkdir(exist_ok=True)
        _bundle(["run", "training", "--config_file", str(_CONFIGS / "train.json"), "--bundle_root", str(root),
                 "--seed", str(seed), *common], root / "train.log")  # fmt: skip
        # the final model: validation during training uses these classes, so its best checkpoint would be chosen
        # on the evaluation episodes' classes
        res = _evaluate(root, common, ["--eval_checkpoint", "model_final.pt"], eval_episodes)
        rows += [_row("sgone", seed, r) for r in res]
        write_csv(rows, out / "results.csv")
    for arm, network_def in (free_arms or {}).items():
        if (arm, "-") in have:
            continue
        root = out / arm
        root.mkdir(exist_ok=True)
        extra = ["--network_def", json.dumps(network_def), "--validate#handlers#0#_disabled_", "true"]
        rows += [_row(arm, "-", r) for r in _evaluate(root, common, extra, eval_episodes)]
        write_csv(rows, out / "results.csv")
    sections = summarize(rows, target_gain)
    write_markdown(
        out / "results.md",
        "One-shot segmentation on real classes never trained on",
        command,
        {
            "seeds": list(seeds),
            "evaluation episodes per run": eval_episodes,
            "target gain": target_gain,
            "overrides": dict(overrides or {}) or "none",
        },  # fmt: skip
        sections,
    )
    return rows


def summarize(rows: Sequence[Mapping[str, Any]], target_gain: float = 0.05) -> list[str]:
    """The markdown sections of ``results.md``: per arm and set, mean +- std over seeds of the model's Dice, of each
    baseline and of the gain over the best baseline, and whether every seed reaches ``target_gain``."""
    table = []
    for arm in dict.fromkeys(r["arm"] for r in rows):
        for name in dict.fromkeys(r["set"] for r in rows):
            group = [r for r in rows if r["arm"] == arm and r["set"] == name]
            if not group:
                continue
            row: dict[str, Any] = {"arm": arm, "set": name, "runs": len(group)}
            for col in ("dice", *(f"{b}_baseline" for b in _BASELINES), "gain_over_best_baseline"):
                m, s = mean_std([r.get(col) for r in group])
                row[col] = f"{m:.3f}" + (f" ± {s:.3f}" if s == s else "")
            row["best_baseline"] = "/".join(sorted({str(r["best_baseline"]) for r in group}))
            gains = [float(r["gain_over_best_baseline"]) for r in group]
            row["target met"] = "yes" if all(g >= target_gain for g in gains) else "no"
            table.append(row)
    columns = ["arm", "set", "runs", "dice", *(f"{b}_baseline" for b in _BASELINES), "best_baseline",
               "gain_over_best_baseline", "target met"]  # fmt: skip
    per_run = markdown_table(
        [dict(r) for r in rows], ["arm", "seed", "set", "dice", "best_baseline", "gain_over_best_baseline"]
    )
    return [
        "## Mean ± std over runs\n\n" + markdown_table(table, columns),
        f"Target: the model beats the best baseline by at least {target_gain} mean Dice on the set, on every seed.",
        "## Every run\n\n" + per_run,
    ]


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m maskseg_monai.experiments.oneshot_real", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("--output_dir", default="runs/oneshot_real")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--eval_episodes", type=int, default=300)
    ap.add_argument("--target_gain", type=float, default=0.05)
    ap.add_argument("--override", action="append", default=[], metavar="KEY=JSON", help="bundle key for all runs")
    ap.add_argument("--free_arm", action="append", default=[], metavar="NAME=JSON",
                    help="a training-free arm: its network_def as JSON")  # fmt: skip
    ap.add_argument("--resume", action="store_true", help="reuse the runs already in results.csv")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = ap.parse_args(argv)
    pairs = {}
    for text in [*args.override, *args.free_arm]:
        key, sep, value = text.partition("=")
        if not sep or not key:
            ap.error(f"expected KEY=JSON, got {text!r}")
        try:
            pairs[text] = (key, json.loads(value))
        except json.JSONDecodeError:
            pairs[text] = (key, value)
    overrides = dict(pairs[t] for t in args.override)
    free = dict(pairs[t] for t in args.free_arm)
    if any(not isinstance(v, dict) for v in free.values()):
        ap.error("--free_arm NAME=JSON needs a JSON object (a network_def)")
    run_oneshot_real(args.output_dir, args.seeds, overrides, free, args.eval_episodes, args.target_gain,
                     args.resume, command_line("maskseg_monai.experiments.oneshot_real", argv))  # fmt: skip


if __name__ == "__main__":
    main()
