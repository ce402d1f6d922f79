"""The bundle configs stay in step: generated files equal their sources, and the shared skeleton does not drift.

The four bundles repeat one skeleton (roots, trainer, handlers, multi-GPU patch, ...). A copy that is changed in one
bundle only is *drift*: the same key path with a different value in two bundles. :func:`differences` finds every
such path, and the tests fail on the ones no entry of :data:`INTENDED` explains. List items of components and
statements are matched by ``_target_`` or text rather than by index, so a handler moved in its list keeps its
path (``train#handlers#<ValidationHandler>#interval``), and a statement one bundle's list lacks is reported too.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pytest
from bundle_cli import REPO
from monai.bundle import ConfigParser

from maskseg_monai import bundles as generated

BUNDLES = ("mae", "amlp", "unetr_seg", "oneshot")
PATCHES = {"multi_gpu_train.json": BUNDLES, "evaluate.json": BUNDLES}
# inference.json runs alone (Model Zoo): generated from train.json and sources/inference_patch.json in the ViT
# bundles, written out in oneshot (compared with its train.json below)
STANDALONE = ("mae", "amlp", "unetr_seg")

# key path (fnmatch pattern) -> why the bundles differ there on purpose
INTENDED = {
    # the task's own settings
    "demo_set": "the demo data of each task (nuclei tiles; texture scenes for one-shot classes)",
    "epochs": "training length of each task",
    "val_interval": "validation cadence of each task",
    "learning_rate": "optimiser settings of each task",
    "weight_decay": "optimiser settings of each task",
    "warmup_epochs": "optimiser settings of each task",
    "batch_size": "pretraining steps on batches of 32 random crops; segmentation and one-shot on 8",
    "val_mask_ratio": "AMLP validates at its final AMR ratio, MAE at its fixed mask_ratio",
    "resume": "the segmentation bundles, trained by MONAI Label, start afresh under it",
    "roi_size": "oneshot's episode crop is its own knob; the ViT bundles crop to the network grid",
    "imports#*": "each bundle imports the modules its own components use (a missing one fails at parse time)",
    # the task's own components
    "network_def#_target_": "each bundle's network",
    "network_def#mask_ratio": "AMLP starts at its AMR start ratio",
    "network_def#spatial_dims": "SG-One is 2D; oneshot segments 3D volumes slice by slice",
    "loss#_target_": "reconstruction losses (MAE, AMLP) versus DiceCE (segmentation)",
    "lr_scheduler#_target_": "oneshot anneals with PyTorch's cosine schedule, without warm-up",
    "inferer#_target_": "sliding windows (UNETR) versus support-guided one-shot inference",
    "rng_state#transforms": "oneshot's random transforms live in its episode dataset",
    "label_transforms#<EnsureTyped>#dtype": "oneshot's labels are class ids (int64) for its episode masks",
    "label_transforms#<maskseg_monai.transforms.CheckLabeld>#num_classes": "oneshot's ids go up to max_label_value",
    "train#preprocessing#transforms": "oneshot loads labels or superpixel pseudo-labels",
    "train#random_transforms#*#keys": "segmentation crops and flips the label with the image",
    "train#dataset#_target_": "oneshot trains on episodes",
    "train#dataset#data": "oneshot's episodes draw from a cached dataset",
    "train#dataloader#shuffle": "oneshot's episode dataset draws its own order",
    "train#dataloader#dataset": "pretraining epochs are steps_per_epoch batches of random crops (repeat_dataset)",
    "train#sampler#dataset": "multi-GPU pretraining shares the repeated epoch dataset between ranks",
    "train#handlers#<@amr>": "AMLP's Adaptive Masking Ratio, a control handler (every rank, before StatsHandler)",
    "train#handlers#<maskseg_monai.handlers.FreezeEncoderHandler>": "UNETR's frozen-encoder warm-up",
    "validate#preprocessing#transforms": "segmentation validates on whole labelled images; MAE/AMLP on centre crops",
    "validate#dataset#_target_": "oneshot validates on fixed episodes",
    "validate#dataset#data": "oneshot's episodes draw from a cached dataset",
    "validate#dataloader#batch_size": "whole images of different sizes (segmentation) go one at a time",
    "validate#postprocessing#transforms#<AsDiscreted>#to_onehot": "oneshot is binary (target vs background)",
    "validate#handlers#<*MetricsSaver>": "evaluate.json: each task's metrics writer",
    "initialize#<$print(*>": "each bundle's own start-up lines (encoder loaded, one-shot folds, ranks ready)",
    "run#<$maskseg_monai.networks.export_encoder(*>": "the pretraining bundles export their encoder",
    "dataset#data": "UNETR's inference reads the validation images without their labels",
    "dataset#transform": "UNETR's inference loads DICOM series and keeps the image size; MAE/AMLP crop",
    "handlers#<@saver>": "MAE/AMLP save reconstruction panels; UNETR saves masks in postprocessing",
    "saver#_target_": "MAE/AMLP save panels (a handler); UNETR label maps + DICOM SEG (a transform)",
    "dataset#_target_": "UNETR's folder inference skips bad inputs (--skip_bad_files), reported at the end",
    "handlers#<maskseg_monai.handlers.InferenceReport>": "UNETR's processed N, failed K report of its saver",
}
# oneshot/configs/inference.json repeats train.json's network and hyperparameters to run alone
ONESHOT_INFERENCE_INTENDED = {
    "imports#*": "inference imports what inference uses",
    "output_dir": "inference writes masks to outputs/, training logs to runs/",
    "datalist": "inference queries: --query_dir or the demo's validation scenes",
    "inferer#chunks": "inference exposes chunks as a knob of its own",
    "initialize#*": "inference logs its support; training seeds and logs its class folds",
    "run#*": "inference runs the evaluator, training the trainer",
}


def join(path: str, key: str) -> str:
    return f"{path}#{key}" if path else key


def _item_key(item: Any) -> str | None:
    """The key of a list item matched across bundles: a component's ``_target_``, an expression's text."""
    if isinstance(item, dict) and "_target_" in item:
        return str(item["_target_"])
    if isinstance(item, str) and item[:1] in ("$", "@"):
        return item
    return None


def flatten(config: Any) -> tuple[dict[str, str], dict[str, set[str]]]:
    """``({key path: JSON text of the leaf}, {list path: its item keys})`` of a config.

    A list of components, expressions and references is keyed by :func:`_item_key` in angle brackets
    (``run#<$@train#trainer.run()>``, ``train#handlers#<StatsHandler>#tag_name``; a repeated key gets `` (2)``);
    other lists (``"keys": ["image", "label"]``, ``"betas"``) and empty containers are leaves, compared whole.
    """
    leaves: dict[str, str] = {}
    lists: dict[str, set[str]] = {}

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict) and node:
            for k, v in node.items():
                walk(v, join(path, k))
        elif isinstance(node, list) and node and all(_item_key(i) is not None for i in node):
            keys: list[str] = []
            for item in node:
                key = _item_key(item)
                n = sum(k == key or k.startswith(f"{key} (") for k in keys)
                keys.append(key if n == 0 else f"{key} ({n + 1})")
                walk(item, join(path, f"<{keys[-1]}>"))
            lists[path] = set(keys)
        else:
            leaves[path] = json.dumps(node)

    walk(config, "")
    return leaves, lists


def _under(path: str, prefixes: Iterable[str] | None) -> bool:
    return prefixes is None or any(path == p or path.startswith(f"{p}#") for p in prefixes)


def differences(configs: Mapping[str, Any], under: Iterable[str] | None = None) -> dict[str, str]:
    """Key paths where configs differ: ``{path: "name, name: value | name: value"}``.

    A leaf path held by two or more configs differs when its values do; an item of a list held by two or more
    configs differs when some of them lack it. Paths held by one config only are not compared.

    Args:
        configs: ``{name: config dict}``, e.g. one file of each bundle.
        under: compare only these key paths and what lies below them (default: everything).
    """
    flat = {name: flatten(cfg) for name, cfg in configs.items()}
    found: dict[str, str] = {}
    for path in sorted(set().union(*(leaves for leaves, _ in flat.values()))):
        values: dict[str, list[str]] = {}
        for name, (leaves, _) in flat.items():
            if path in leaves:
                values.setdefault(leaves[path], []).append(name)
        if len(values) > 1 and _under(path, under):
            found[path] = " | ".join(f"{', '.join(names)}: {value}" for value, names in values.items())
    for path in sorted(set().union(*(lists for _, lists in flat.values()))):
        holders = {name: lists[path] for name, (_, lists) in flat.items() if path in lists}
        if len(holders) < 2 or not _under(path, under):
            continue
        for key in sorted(set().union(*holders.values())):
            lacking = [name for name, keys in holders.items() if key not in keys]
            if lacking:
                having = [name for name in holders if name not in lacking]
                found[join(path, f"<{key}>")] = f"in {', '.join(having)}; not in {', '.join(lacking)}"
    return found


def unexpected(found: Mapping[str, str], intended: Mapping[str, str] = INTENDED) -> dict[str, str]:
    """The differences that no pattern of ``intended`` explains."""
    return {p: d for p, d in found.items() if not any(fnmatch(p, pattern) for pattern in intended)}


def read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def patch_keys(patch: Mapping[str, Any]) -> set[str]:
    """The key paths a patch sets or extends (``"+initialize"`` -> ``initialize``), ``#``-separated."""
    return {key.removeprefix("+").replace("::", "#") for key in patch}


def families(bundles_dir: Path = REPO / "bundles") -> dict[str, tuple[dict[str, Any], set[str] | None]]:
    """``{family: ({bundle: config}, key paths to compare)}``: train.json, and train.json with each patch."""
    cfg = {b: bundles_dir / b / "configs" for b in BUNDLES}
    out: dict[str, tuple[dict[str, Any], set[str] | None]] = {
        "train.json": ({b: read(cfg[b] / "train.json") for b in BUNDLES}, None)
    }
    for patch, names in PATCHES.items():
        merged = {b: ConfigParser.load_config_files([str(cfg[b] / "train.json"), str(cfg[b] / patch)]) for b in names}
        out[f"train.json + {patch}"] = (merged, set().union(*(patch_keys(read(cfg[b] / patch)) for b in names)))
    standalone = {b: read(cfg[b] / "inference.json") for b in STANDALONE}
    out["inference.json"] = (
        {b: {k: v for k, v in c.items() if k != generated.GENERATED_KEY} for b, c in standalone.items()},
        None,
    )
    return out


def test_generated_files_equal_a_fresh_generation():
    diffs = generated.check()
    assert not diffs, "".join(diffs) + f"\nregenerate with: {generated.SYNC_COMMAND}"


def test_generated_train_json_is_monais_merge_of_its_sources():
    sources = [REPO / "bundles" / s for s in generated.GENERATED["amlp/configs/train.json"]]
    ours = generated.merge_config_files(sources)
    assert ours == ConfigParser.load_config_files([str(s) for s in sources])
    committed = read(REPO / "bundles" / "amlp" / "configs" / "train.json")
    assert committed.pop(generated.GENERATED_KEY).startswith("GENERATED from bundles/mae/configs/train.json")
    assert committed == ours
    # "+train#handlers" appends AMR to the control handlers: before StatsHandler, on every rank
    # (a component whose _target_ is the shared handler: MONAI's property check reads every handler as a dict)
    assert committed["train"]["handlers"][-1] == {"_target_": "@amr", "_mode_": "callable"}
    assert [h["_target_"] for h in committed["train"]["rank0_handlers"]][:2] == [
        "maskseg_monai.handlers.ProgressBarHandler", "StatsHandler"]  # fmt: skip


def test_check_reports_a_stale_file_with_a_diff_and_the_command(tmp_path):
    for b in ("mae", "amlp", "unetr_seg"):
        shutil.copytree(REPO / "bundles" / b / "configs", tmp_path / b / "configs")
    assert generated.check(tmp_path) == []
    patch = tmp_path / "amlp" / "configs" / "sources" / "train_patch.json"
    patch.write_text(patch.read_text().replace('"mps_clusters": 2', '"mps_clusters": 3'))
    (tmp_path / "amlp" / "configs" / "logging.conf").unlink()
    cmd = [sys.executable, "-m", "maskseg_monai.bundles", "check", "--bundles_dir", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert '-    "mps_clusters": 2,\n+    "mps_clusters": 3,' in proc.stdout
    assert f"{tmp_path.name}/amlp/configs/logging.conf (committed, missing)" in proc.stdout
    assert f"regenerate with:\n    python -m maskseg_monai.bundles sync --bundles_dir {tmp_path}" in proc.stderr
    assert sorted(p.name for p in generated.sync(tmp_path)) == ["inference.json", "logging.conf", "train.json"]
    assert generated.check(tmp_path) == [] and generated.sync(tmp_path) == []


@pytest.mark.parametrize("family", ["train.json", *(f"train.json + {p}" for p in PATCHES), "inference.json"])
def test_no_skeleton_drift_between_bundles(family):
    configs, under = families()[family]
    drift = unexpected(differences(configs, under))
    assert not drift, "\n".join(f"{p}: {d}" for p, d in drift.items())


def test_every_intended_difference_is_still_there():
    found = {p for configs, under in families().values() for p in differences(configs, under)}
    stale = [pattern for pattern in INTENDED if not any(fnmatch(p, pattern) for p in found)]
    assert not stale, f"no longer needed in INTENDED: {stale}"


def oneshot_inference_differences(bundles_dir: Path = REPO / "bundles") -> dict[str, str]:
    """Where oneshot's standalone inference.json differs from the train.json whose network it serves."""
    cfg = bundles_dir / "oneshot" / "configs"
    return differences({"train.json": read(cfg / "train.json"), "inference.json": read(cfg / "inference.json")})


def test_oneshot_standalone_inference_repeats_train_json():
    found = oneshot_inference_differences()
    assert not unexpected(found, ONESHOT_INFERENCE_INTENDED), found
    stale = [pattern for pattern in ONESHOT_INFERENCE_INTENDED if not any(fnmatch(p, pattern) for p in found)]
    assert not stale, f"no longer needed in ONESHOT_INFERENCE_INTENDED: {stale}"
    cfg = REPO / "bundles" / "oneshot" / "configs"
    train, inference = (flatten(read(cfg / f))[0] for f in ("train.json", "inference.json"))
    compared = {"network_def#_target_", "network_def#channels", "img_size", "hidden_size", "backbone", "in_channels"}
    assert compared <= train.keys() & inference.keys()


def _broken_copy(tmp_path: Path, bundle: str, file: str, edit: Callable[[dict[str, Any]], None]) -> Path:
    """A copy of the four bundles' configs under ``tmp_path``, with ``edit`` applied to one file."""
    for b in BUNDLES:
        shutil.copytree(REPO / "bundles" / b / "configs", tmp_path / b / "configs")
    path = tmp_path / bundle / "configs" / file
    config = read(path)
    edit(config)
    path.write_text(json.dumps(config, indent=4))
    return tmp_path


def _drift(bundles_dir: Path, family: str) -> dict[str, str]:
    configs, under = families(bundles_dir)[family]
    return unexpected(differences(configs, under))


def test_drift_of_a_dropped_error_hook_is_found(tmp_path):
    def edit(config):  # the multi-GPU initialize list as it was retyped before: without install_error_hook
        config["initialize"] = [*config.pop("+initialize"), "$monai.utils.set_determinism(seed=@seed)"]

    drift = _drift(_broken_copy(tmp_path, "mae", "multi_gpu_train.json", edit), "train.json + multi_gpu_train.json")
    assert drift == {
        "initialize#<$maskseg_monai.utils.install_error_hook()>": "in amlp, unetr_seg, oneshot; not in mae"
    }


def test_drift_of_an_unwrapped_amp_is_found(tmp_path):
    def edit(config):
        config["evaluator"]["amp"] = "@amp"

    drift = _drift(_broken_copy(tmp_path, "unetr_seg", "inference.json", edit), "inference.json")
    assert list(drift) == ["evaluator#amp"] and 'unetr_seg: "@amp"' in drift["evaluator#amp"]


def test_drift_of_an_uncapped_interval_is_found_wherever_the_handler_sits(tmp_path):
    def edit(config):
        handlers = config["train"]["handlers"]
        validation = next(h for h in handlers if isinstance(h, dict) and h["_target_"] == "ValidationHandler")
        validation["interval"] = "@val_interval"
        handlers.insert(0, handlers.pop(handlers.index(validation)))  # moved: matched by _target_, not index

    drift = _drift(_broken_copy(tmp_path, "oneshot", "train.json", edit), "train.json")
    assert list(drift) == ["train#handlers#<ValidationHandler>#interval"]


def test_drift_of_a_repeated_hyperparameter_is_found(tmp_path):
    def edit(config):
        config["hidden_size"] = 96

    found = oneshot_inference_differences(_broken_copy(tmp_path, "oneshot", "inference.json", edit))
    assert unexpected(found, ONESHOT_INFERENCE_INTENDED) == {"hidden_size": "train.json: 192 | inference.json: 96"}


def test_every_amp_is_a_boolean_from_the_command_line():
    """``--amp false`` reaches the config as the string "false": each ``amp`` argument must read it as False."""
    standalone = {"oneshot": read(REPO / "bundles" / "oneshot" / "configs" / "inference.json")}
    checked = set()
    for family, configs in [*((f, c) for f, (c, _) in families().items()), ("inference.json", standalone)]:
        for name, config in configs.items():
            parser = ConfigParser(copy.deepcopy(config))
            parser["amp"] = "false"
            for path in flatten(config)[0]:
                if path.endswith("#amp"):
                    assert parser.get_parsed_content(path) is False, f"{name} {family}: {path}"
                    checked.add(path)
    assert {"train#trainer#amp", "validate#evaluator#amp", "evaluator#amp"} <= checked


def test_training_configs_define_training_and_slice_no_lists():
    for b in BUNDLES:
        cfg = REPO / "bundles" / b / "configs"
        assert "training" in read(cfg / "train.json"), b
        files = [str(cfg / "train.json"), str(cfg / "multi_gpu_train.json")]
        assert "training" in ConfigParser.load_config_files(files), b
    for path in sorted((REPO / "bundles").glob("*/configs/**/*.json")):
        text = path.read_text()
        assert not re.search(r"\[[^\]\[]*:\s*-\d", text), f"{path}: positional list slicing"
        assert not re.search(r'"\+?[\w#]*#\d+(#[\w#]*)?"\s*:', text), f"{path}: a positional index in a key path"


def test_prune_keeps_the_roots_and_what_they_refer_to():
    config = {
        "a": 1, "unused": 2, "lst": [{"x": "@b"}, 3], "b": "$@c#d + 1", "c": {"d": 4, "e": "@missing_ok_unkept"},
        "m": "%tr", "tr": ["@a"], "root": {"keep": "@lst", "drop": "@unused"},
    }  # fmt: skip
    pruned = generated.prune(config, ["root#keep", "m", "not_there"])
    # root#keep -> lst (whole list) -> b -> c#d; m -> tr (macro) -> a; c#e and root#drop are not kept
    assert pruned == {"a": 1, "lst": [{"x": "@b"}, 3], "b": "$@c#d + 1", "c": {"d": 4}, "m": "%tr", "tr": ["@a"],
                      "root": {"keep": "@lst"}}  # fmt: skip
    with pytest.raises(ValueError, match="'root::keep' refers to 'nowhere', not in the config"):
        generated.prune({"root": {"keep": "@nowhere"}}, ["root#keep"])
    with pytest.raises(ValueError, match="a macro of another file"):
        generated.references({"x": "%other.json#y"})
