"""The SSL-ALPNet one-shot abdominal benchmark: folds, settings and the slice-wise evaluation episodes.

Protocol of Ouyang et al., "Self-supervision with Superpixels: Training Few-shot Medical Image Segmentation without
Annotation" (ECCV 2020), as its public code runs it (``dataloaders/ManualAnnoDatasetv2.py``,
``dataloaders/common.py``, ``validation.py``, ``examples/test_ssl_abdominal_*.sh``); reproduced here:

- **Data**: 30 BTCV CT volumes or 20 CHAOS T2-SPIR MR volumes, converted to one class scheme (1 liver, 2 spleen,
  3 left kidney, 4 right kidney) by ``python -m maskseg_monai.data.abdominal btcv-to-nifti|chaos-to-nifti``
  (:mod:`maskseg_monai.data.abdominal_convert`).
- **Folds** (:func:`fold_split`): the volumes sorted by case number are cut into 5 consecutive folds (6 CT or
  4 MR volumes each). Fold ``k`` tests on its volumes; the **support** is the volume right after the fold
  (circularly: fold 4's support is the first volume), ALPNet's ``support_idx`` 6 (CT) or 4 (MR) of the loaded
  test scans; training uses the remaining volumes (neither test nor support).
- **Settings**: 1, test classes may appear unlabelled in training images, one model scores all four classes;
  2, every training slice holding a pixel of a test class is removed (:func:`exclude_test_slices`), so one model
  per class group: ``lower`` = {left, right kidney} (ALPNet ``label_sets=0``, ``exclude_cls_list=[2,3]``) and
  ``upper`` = {liver, spleen} (``label_sets=1``).
- **Episodes** (:class:`ProtocolSlices`): 1-way 1-shot, 3 chunks. The support's slices holding the class (sorted)
  give one support slice per chunk, the slice at fraction ``1/6, 1/2, 5/6`` of that list
  (:func:`alpnet_support_slices`). Query slice ``z`` goes to chunk ``floor((z - zmin) / ((zmax - zmin) / 3))``,
  clamped to 0..2, with ``zmin``/``zmax`` the query's first and last slice holding the class
  (:func:`alpnet_query_chunks`); only slices ``zmin..zmax`` are scored, so only they are episodes.
- **Scoring**: :mod:`maskseg_monai.metrics.abdominal` (3D Dice per class per query volume over the scored slices,
  mean over volumes, then classes).

Commands (see ``data_manifests/README.md``): ``btcv-to-nifti ROOT OUT``, ``chaos-to-nifti ROOT OUT``,
``fold-datalist DATALIST --fold K --setting S [--test-group G] --output FILE`` (a datalist to train fold ``K``
with ``bundles/oneshot/configs/train.json``), ``summarize PER_VOLUME_CSV... --output DIR`` (the five folds'
table, comparable to the paper).

Setting 2 in training: ``train.json`` cannot know the protocol, so the fold datalist carries it (its
``abdominal`` entry) and one override wraps the training dataset (``_target_`` imports the module)::

    CONFIGS=bundles/oneshot/configs
    EXCLUDE="{'_target_': 'maskseg_monai.data.abdominal.exclude_test_slices', 'data': '@train#cache',"
    EXCLUDE="$EXCLUDE 'items': '@train#datalist', 'datalist': '@datalist'}"
    python -m monai.bundle run training --config_file "$CONFIGS/train.json" --train#dataset#data "$EXCLUDE" ...

or, in a config file merged after ``train.json``::

    "train#dataset#data": {"_target_": "maskseg_monai.data.abdominal.exclude_test_slices",
                           "data": "@train#cache", "items": "@train#datalist", "datalist": "@datalist"}

In setting 1 it returns the dataset unchanged, so the same command trains both settings.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from monai.utils import look_up_option

from maskseg_monai.data._io import atomic_write_json
from maskseg_monai.data.abdominal_convert import ABDOMINAL_LABELS, convert_btcv, convert_chaos
from maskseg_monai.data.abdominal_slices import (
    ExcludedSlicesDataset,
    ProtocolSlices,
    alpnet_query_chunks,
    alpnet_support_slices,
)
from maskseg_monai.data.validate import load_datalist
from maskseg_monai.metrics.abdominal import (
    SUPPORTED_MODALITIES,
    SUPPORTED_SETTINGS,
    read_volume_rows,
    write_protocol_tables,
)
from maskseg_monai.utils import BadInputError, run_command

__all__ = [
    "CLASS_GROUPS",
    "N_FOLDS",
    "ExcludedSlicesDataset",
    "ProtocolSlices",
    "alpnet_query_chunks",
    "alpnet_support_slices",
    "case_number",
    "datalist_modality",
    "exclude_test_slices",
    "fold_split",
    "protocol_classes",
    "protocol_split",
    "write_fold_datalist",
]

logger = logging.getLogger("maskseg_monai.data")

N_FOLDS = 5
#: test classes of each group: ``all`` (setting 1), ``upper`` abdomen (liver, spleen), ``lower`` (kidneys)
CLASS_GROUPS = {"all": (1, 2, 3, 4), "upper": (1, 2), "lower": (3, 4)}
#: datalist key under which :func:`write_fold_datalist` records the fold's protocol
PROTOCOL_KEY = "abdominal"
_LISTS = ("training", "validation", "test")


def case_number(path: str | os.PathLike) -> int:
    """The case number of a volume: the last run of digits in its file name (``btcv_0021.nii.gz`` -> 21)."""
    digits = re.findall(r"\d+", Path(str(path)).name)
    if not digits:
        raise BadInputError(f"{path}: no case number in the file name; the folds sort volumes by it.")
    return int(digits[-1])


def fold_split(cases: Sequence[int], fold: int, n_folds: int = N_FOLDS) -> dict[str, Any]:
    """ALPNet's cross-validation split of case numbers (module docstring).

    Args:
        cases: case numbers of every labelled volume (any order; duplicates are an error).
        fold: the fold, ``0 <= fold < n_folds``.
        n_folds: number of folds. Defaults to 5.

    Returns:
        ``{"test": [...], "support": case, "train": [...]}``, each list sorted.

    Raises:
        ValueError: a fold out of range, duplicated case numbers, or fewer than ``n_folds + 1`` cases.

    Example:
        >>> fold_split([1, 2, 3, 4, 5, 21, 22, 23, 24, 25], fold=4)
        {'test': [24, 25], 'support': 1, 'train': [2, 3, 4, 5, 21, 22, 23]}
    """
    ids = sorted(int(c) for c in cases)
    if len(set(ids)) != len(ids):
        dup = sorted({c for c in ids if ids.count(c) > 1})
        raise ValueError(f"case numbers {dup} appear more than once; each volume needs its own number.")
    if not 0 <= int(fold) < int(n_folds):
        raise ValueError(f"fold must be in 0..{int(n_folds) - 1}, got {fold}.")
    n = len(ids)
    if n < n_folds + 1:
        raise ValueError(f"{n} volumes cannot make {n_folds} folds plus a support volume; need at least {n_folds + 1}.")
    sep = [k * n // n_folds for k in range(n_folds + 1)]
    test = ids[sep[fold] : sep[fold + 1]]
    support = ids[sep[fold + 1] % n]
    return {"test": test, "support": support, "train": [c for c in ids if c not in test and c != support]}


def protocol_classes(setting: int, test_group: str = "all") -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(test classes, classes excluded from training)`` of a setting and class group.

    Raises:
        ValueError: an unknown setting or group, or setting 2 with ``test_group="all"``.
    """
    setting = int(look_up_option(int(setting), SUPPORTED_SETTINGS))
    group = look_up_option(str(test_group), tuple(CLASS_GROUPS))
    if setting == 2 and group == "all":
        raise ValueError(
            "setting 2 removes the test classes' slices from training, one model per class group: pass "
            "test_group 'lower' (kidneys, ALPNet label_sets=0) or 'upper' (liver and spleen, label_sets=1)."
        )
    classes = CLASS_GROUPS[group]
    return classes, (classes if setting == 2 else ())


def _read_json(path: str | os.PathLike) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise BadInputError(f"{path}: cannot read the datalist ({e}).") from None


def _cases(datalist: str | os.PathLike, base_dir: str | os.PathLike | None) -> list[dict]:
    """Every labelled item of a datalist (its training, validation and test lists), once, sorted by case number."""
    data = _read_json(datalist)
    items: dict[str, dict] = {}
    for key in _LISTS:
        if data.get(key):
            for item in load_datalist(datalist, key, base_dir):
                if "label" in item:
                    items.setdefault(str(item["image"]), {"image": item["image"], "label": item["label"]})
    by_case: dict[int, dict] = {}
    for item in items.values():
        c = case_number(item["image"])
        if c in by_case:
            raise BadInputError(f"{datalist}: {by_case[c]['image']} and {item['image']} have the same case number {c}.")
        by_case[c] = item
    if not by_case:
        raise BadInputError(f"{datalist}: no labelled items (image and label) in {list(_LISTS)}.")
    return [by_case[c] for c in sorted(by_case)]


def protocol_split(
    datalist: str | os.PathLike,
    fold: int,
    setting: int = 1,
    test_group: str = "all",
    n_folds: int = N_FOLDS,
    base_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """The evaluation of one fold: support and query items and test classes, from any datalist of the benchmark.

    Args:
        datalist: the datalist written by ``python -m maskseg_monai.data prepare`` (or by :func:`write_fold_datalist`:
            its lists together hold every volume, and its recorded fold must match).
        fold: the fold, ``0..n_folds - 1``.
        setting: 1 or 2.
        test_group: ``all``, ``upper`` or ``lower`` (:data:`CLASS_GROUPS`).
        n_folds: number of folds. Defaults to 5.
        base_dir: folder the datalist's paths are relative to; defaults to its folder.

    Returns:
        ``{"support": item, "queries": [items], "train": [items], "test_classes": (...), "excluded_classes": (...),
        "fold", "setting", "test_group"}``; items are ``{"image", "label"}`` with absolute paths.

    Raises:
        ValueError: bad fold, setting or group, or a fold datalist written for another fold or setting.
        BadInputError: an unreadable datalist, or one without labelled items.
    """
    test_classes, excluded = protocol_classes(setting, test_group)
    recorded = _read_json(datalist).get(PROTOCOL_KEY)
    if isinstance(recorded, dict):
        asked = {"fold": int(fold), "setting": int(setting), "test_group": str(test_group)}
        was = {k: recorded.get(k) for k in asked}
        if was != asked:
            raise ValueError(
                f"{datalist}: this fold datalist was written for {was}, not {asked}; "
                "pass the matching --fold/--setting/--test_group or the full prepared datalist."
            )
    cases = _cases(datalist, base_dir)
    by_case = {case_number(item["image"]): item for item in cases}
    split = fold_split(list(by_case), fold, n_folds)
    return {
        "support": by_case[split["support"]],
        "queries": [by_case[c] for c in split["test"]],
        "train": [by_case[c] for c in split["train"]],
        "test_classes": test_classes,
        "excluded_classes": excluded,
        "fold": int(fold),
        "setting": int(setting),
        "test_group": str(test_group),
    }


def datalist_modality(datalist: str | os.PathLike) -> str:
    """``"CT"`` or ``"MRI"`` from a datalist's ``modality`` table (``{"0": "CT"}``, ``{"0": "MR"}``).

    Raises:
        BadInputError: naming the file, when the table names neither.
    """
    values = [str(v).upper() for v in (_read_json(datalist).get("modality") or {}).values()]
    if any(v.startswith("CT") for v in values):
        return "CT"
    if any(v.startswith("MR") for v in values):
        return "MRI"
    raise BadInputError(
        f"{datalist}: 'modality' {values} names neither CT nor MR; pass --modality with one of "
        f"{list(SUPPORTED_MODALITIES)}."
    )


def write_fold_datalist(
    datalist: str | os.PathLike,
    fold: int,
    setting: int = 1,
    test_group: str = "all",
    output: str | os.PathLike | None = None,
    n_folds: int = N_FOLDS,
) -> Path:
    """Write the datalist that trains fold ``fold`` of a setting with ``bundles/oneshot/configs/train.json``.

    ``training``: the fold's training volumes (neither test nor support); ``validation``: the support volume (the
    one labelled example a one-shot user has; the bundle's ``model.pt`` is selected on its slices, ALPNet instead
    keeps the last snapshot, ``model_final.pt``); ``test``: the fold's query volumes (with labels). The protocol is
    recorded under ``"abdominal"`` (fold, setting, test group, test and excluded classes) for
    :func:`exclude_test_slices` and the evaluation. Paths are relative to the output's folder; written atomically.

    Args:
        datalist: the prepared datalist of the whole benchmark.
        fold, setting, test_group, n_folds: as :func:`protocol_split`.
        output: the file to write; defaults to ``<datalist folder>/folds/setting<S>_<group>_fold<K>.json``.

    Returns:
        the written path.
    """
    split = protocol_split(datalist, fold, setting, test_group, n_folds)
    output = (
        Path(output) if output else Path(datalist).parent / "folds" / f"setting{setting}_{test_group}_fold{fold}.json"
    )
    source = _read_json(datalist)

    def rel(item: dict) -> dict:
        return {k: Path(os.path.relpath(v, output.parent.resolve())).as_posix() for k, v in item.items()}

    record = {
        "fold": int(fold),
        "n_folds": int(n_folds),
        "setting": int(setting),
        "test_group": str(test_group),
        "test_classes": list(split["test_classes"]),
        "excluded_classes": list(split["excluded_classes"]),
        "support": rel(split["support"])["image"],
        "queries": [rel(q)["image"] for q in split["queries"]],
        "protocol": "SSL-ALPNet one-shot abdominal benchmark (Ouyang et al., ECCV 2020); maskseg_monai.data.abdominal",
    }
    out = {
        k: source[k] for k in ("name", "description", "licence", "reference", "source_url", "modality") if k in source
    }
    out.update(
        tensorImageSize="3D",
        labels={str(k): v for k, v in ABDOMINAL_LABELS.items()},
        class_sets={"upper_abdomen": list(CLASS_GROUPS["upper"]), "lower_abdomen": list(CLASS_GROUPS["lower"])},
        numTraining=len(split["train"]),
        numValidation=1,
        numTest=len(split["queries"]),
        training=[rel(i) for i in split["train"]],
        validation=[rel(split["support"])],
        test=[rel(q) for q in split["queries"]],
    )
    out[PROTOCOL_KEY] = record
    atomic_write_json(output, out)
    return output


def exclude_test_slices(data: Sequence[dict], items: Sequence[dict], datalist: str | os.PathLike) -> Any:
    """The training dataset of a fold datalist's setting: unchanged in setting 1, :class:`ExcludedSlicesDataset`
    of its excluded classes in setting 2 (recorded by :func:`write_fold_datalist` under ``"abdominal"``).

    Use as the override (module docstring) ``--train#dataset#data "{'_target_':
    'maskseg_monai.data.abdominal.exclude_test_slices', 'data': '@train#cache', 'items': '@train#datalist',
    'datalist': '@datalist'}"``.

    Raises:
        BadInputError: the datalist records no protocol (it is not a fold datalist).
    """
    record = _read_json(datalist).get(PROTOCOL_KEY)
    if not isinstance(record, dict) or "excluded_classes" not in record:
        raise BadInputError(
            f"{datalist}: no '{PROTOCOL_KEY}' protocol record; write a fold datalist with python -m "
            "maskseg_monai.data.abdominal fold-datalist to train one fold of a setting."
        )
    classes = [int(c) for c in record["excluded_classes"]]
    return ExcludedSlicesDataset(data, items, classes) if classes else data


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m maskseg_monai.data.abdominal",
        description="Convert, split and summarize the SSL-ALPNet one-shot abdominal benchmark (BTCV CT, CHAOS MR).",
        epilog="Exit status: 0 success, 1 bad input data, 2 bad arguments.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, what in (("btcv-to-nifti", "BTCV RawData/Training"), ("chaos-to-nifti", "CHAOS Train_Sets/MR T2SPIR")):
        conv = sub.add_parser(name, help=f"convert {what} to NIfTI pairs of the shared class scheme")
        conv.add_argument("root", help="the unpacked download")
        conv.add_argument("out", help="output folder (imagesTr, labelsTr, conversion.json); pass it as prepare --root")
        conv.add_argument("--size", type=int, default=256, help="in-plane output size (default: 256, as ALPNet)")
    fold = sub.add_parser("fold-datalist", help="write the datalist that trains one fold of a setting")
    fold.add_argument("datalist", help="the prepared datalist (python -m maskseg_monai.data prepare ...)")
    fold.add_argument("--fold", type=int, required=True, help="fold 0..4")
    fold.add_argument("--setting", type=int, default=1, choices=SUPPORTED_SETTINGS, help="1 or 2 (default: 1)")
    fold.add_argument("--test-group", default="all", choices=tuple(CLASS_GROUPS), help="setting 2: upper or lower")
    fold.add_argument("--output", help="default: <datalist folder>/folds/setting<S>_<group>_fold<K>.json")
    summ = sub.add_parser("summarize", help="merge the folds' per_volume.csv into the benchmark's table")
    summ.add_argument("tables", nargs="+", help="per_volume.csv files (or evaluation folders holding one)")
    summ.add_argument("--output", required=True, help="folder for per_volume.csv, per_class.csv, summary.csv")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``) and return the exit status."""
    args = _parser().parse_args(argv)

    def run() -> None:
        if args.command == "btcv-to-nifti":
            print(convert_btcv(args.root, args.out, args.size))
        elif args.command == "chaos-to-nifti":
            print(convert_chaos(args.root, args.out, args.size))
        elif args.command == "fold-datalist":
            print(write_fold_datalist(args.datalist, args.fold, args.setting, args.test_group, args.output))
        else:
            tables = [Path(t) / "per_volume.csv" if Path(t).is_dir() else Path(t) for t in args.tables]
            paths = write_protocol_tables(read_volume_rows(tables), args.output)
            print("\n".join(str(p) for p in paths.values()))
            print(Path(paths["summary"]).read_text().strip())

    return run_command(run, [(BadInputError, 1), ((ValueError, FileNotFoundError), 2)])


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sys.exit(main())
