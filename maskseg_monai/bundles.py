"""The bundles' folder, and their generated configs: ``python -m maskseg_monai.bundles path|copy|sync|check``.

``path NAME`` prints a bundle's folder (inside the installed package when installed from a wheel) and ``copy NAME
DEST`` copies it to a new folder to run or edit (``python -m monai.bundle run training --config_file
DEST/configs/train.json``).

A MONAI bundle must run from its own folder (``--config_file bundles/amlp/configs/train.json``), but MONAI configs
have no include, and a ``%`` macro opens its file relative to the current directory. A bundle that is another
bundle plus a short patch (AMLP = MAE + ``bundles/amlp/configs/sources/*_patch.json``) therefore keeps standalone
copies that are *generated*: :data:`GENERATED` names each generated file and its sources, merged left to right as
``--config_file "['a.json','b.json']"`` merges them (:func:`merge_config_files`). Every generated JSON file is
written by one formatter (:func:`render`, ``json`` with ``indent=4``) and starts with a ``"_generated_"`` entry
naming its sources: a plain string that no config refers to, which MONAI's parser keeps and never runs.

Example::

    python -m maskseg_monai.bundles sync    # rewrite the generated files from their sources
    python -m maskseg_monai.bundles check   # exit status 1, with a diff, when a committed file is out of date
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from monai.bundle import ConfigParser
from monai.bundle.properties import InferProperties
from monai.bundle.reference_resolver import ReferenceResolver
from monai.bundle.utils import EXPR_KEY, ID_REF_KEY, ID_SEP_KEY, MACRO_KEY, MERGE_KEY, merge_kv
from monai.utils import BundleProperty, BundlePropertyConfig

__all__ = [
    "BUNDLES_DIR",
    "GENERATED",
    "GENERATED_KEY",
    "STANDALONE",
    "bundle_dir",
    "bundle_names",
    "copy_bundle",
    "SYNC_COMMAND",
    "check",
    "generate",
    "merge_config_files",
    "prune",
    "references",
    "render",
    "sync",
]

#: the bundles: installed inside the package (``maskseg_monai/bundle_files``, from a wheel), else the ``bundles/``
#: folder of the source tree the package is imported from (a checkout, editable install)
_INSTALLED_BUNDLES = Path(__file__).resolve().parent / "bundle_files"
BUNDLES_DIR = _INSTALLED_BUNDLES if _INSTALLED_BUNDLES.is_dir() else Path(__file__).resolve().parents[1] / "bundles"
#: generated file -> its sources, merged left to right; paths relative to the bundles folder.
GENERATED: dict[str, tuple[str, ...]] = {
    "amlp/configs/train.json": ("mae/configs/train.json", "amlp/configs/sources/train_patch.json"),
    "mae/configs/inference.json": ("mae/configs/train.json", "mae/configs/sources/inference_patch.json"),
    "amlp/configs/inference.json": (
        "mae/configs/train.json",
        "amlp/configs/sources/train_patch.json",
        "mae/configs/sources/inference_patch.json",
        "amlp/configs/sources/inference_patch.json",
    ),
    "unetr_seg/configs/inference.json": (
        "unetr_seg/configs/train.json",
        "unetr_seg/configs/sources/inference_patch.json",
    ),
    "amlp/configs/evaluate.json": ("mae/configs/evaluate.json",),
    "amlp/configs/multi_gpu_train.json": ("mae/configs/multi_gpu_train.json",),
    "amlp/configs/logging.conf": ("mae/configs/logging.conf",),
}
#: generated files that run alone (the Model Zoo's ``configs/inference.json``) -> the sources whose entries they
#: keep: the merge of all sources is pruned to those entries, the infer workflow's required properties and
#: everything they refer to (:func:`prune`); the rest of ``train.json`` (trainer, optimiser, ...) is left out.
STANDALONE: dict[str, tuple[str, ...]] = {
    "mae/configs/inference.json": ("mae/configs/sources/inference_patch.json",),
    "amlp/configs/inference.json": (
        "mae/configs/sources/inference_patch.json",
        "amlp/configs/sources/inference_patch.json",
    ),
    "unetr_seg/configs/inference.json": ("unetr_seg/configs/sources/inference_patch.json",),
}
#: ids MONAI's infer workflow requires (``ConfigWorkflow(workflow_type="infer").check_properties()``)
INFER_REQUIRED = tuple(p[BundlePropertyConfig.ID] for p in InferProperties.values() if p[BundleProperty.REQUIRED])
GENERATED_KEY = "_generated_"
SYNC_COMMAND = "python -m maskseg_monai.bundles sync"


def merge_config_files(files: Sequence[str | os.PathLike]) -> dict[str, Any]:
    """Merge bundle config files left to right, as ``monai.bundle`` merges a ``--config_file`` list.

    An entry whose target the files before it hold is merged as ``ConfigParser.load_config_files`` merges it
    (MONAI's ``merge_kv``): it replaces its key path (``"network_def#mask_ratio"``) or, with a ``+`` prefix,
    updates a dict or extends a list (``"+train#handlers"``). So the merge of a whole ``train.json`` and a patch
    equals ``load_config_files``. An entry whose target they do not hold, as when the first file is itself a patch
    (``"+imports"`` or ``"train#sampler"`` of ``inference.json``), stays an entry of the merged patch, applied when
    it runs after ``train.json``; ``load_config_files`` would turn ``"+imports"`` into a replacing ``"imports"``
    and fail on the nested key.

    Args:
        files: JSON or YAML config files, the first one the base.

    Returns:
        the merged config.

    Raises:
        ValueError: when two files keep the same entry (its order relative to the others would be lost), or a
            ``+`` entry meets a value that is not of its type.
    """
    parser = ConfigParser(config={})
    for file in files:
        for key, value in ConfigParser.load_config_file(file).items():
            append = key.startswith(MERGE_KEY)
            target = ReferenceResolver.normalize_id(key[len(MERGE_KEY) :] if append else key)
            # "+x" needs x itself, "a#b" needs its parent "a" ("" for a top-level key: always there)
            if (target if append else ReferenceResolver.split_id(target, last=True)[0]) in parser:
                merge_kv(parser, key, value)
            elif key in parser.config:
                raise ValueError(f"{file}: '{key}' is already an entry of the merged patch; merge it by hand.")
            else:
                parser.config[key] = value
    return parser.get()


def references(node: Any) -> set[str]:
    """The config ids a config node refers to: ``@id`` references, ``@id`` inside ``$`` expressions, ``%id`` macros.

    Ids are normalised to MONAI's ``::`` separator (``train#dataset`` -> ``train::dataset``).

    Raises:
        ValueError: on a macro of another file (``%other.json#id``) or a relative id (``@::x``, ``@#x``), which a
            pruned standalone config cannot follow.
    """
    found: set[str] = set()
    if isinstance(node, Mapping):
        for value in node.values():
            found |= references(value)
    elif isinstance(node, list):
        for value in node:
            found |= references(value)
    elif isinstance(node, str):
        text = ReferenceResolver.normalize_id(node)
        if text.startswith(MACRO_KEY):
            path, ref = ConfigParser.split_path_id(text[len(MACRO_KEY) :])
            if path:
                raise ValueError(f"'{node}': a macro of another file cannot be kept in a standalone config.")
            ids = [ref]
        elif text.startswith(EXPR_KEY):
            ids = list(ReferenceResolver.match_refs_pattern(text))
        elif text.startswith(ID_REF_KEY):
            ids = [text[len(ID_REF_KEY) :]]
        else:
            ids = []
        for ref in ids:
            if not ref or ref.startswith(ID_SEP_KEY):
                raise ValueError(f"'{node}': relative ids cannot be followed in a standalone config.")
            found.add(ref)
    return found


def prune(config: Mapping[str, Any], roots: Sequence[str]) -> dict[str, Any]:
    """``config`` reduced to the entries at ``roots`` and, transitively, every entry they refer to (:func:`references`).

    A kept entry is kept whole; its parents keep only their kept children, in their order. A reference into a list
    keeps the whole list (list positions are not stable ids).

    Args:
        config: a whole config (e.g. a ``train.json`` merged with an inference patch).
        roots: ids to keep (``"dataset"``, ``"saver#mps_channel"``); ids the config lacks are skipped.

    Returns:
        the pruned config.

    Raises:
        ValueError: naming a kept entry that refers to an id the config does not hold.
    """

    def holder(ids: tuple[str, ...]) -> tuple[str, ...] | None:
        """``ids`` cut at its first list; None when the config has no such entry."""
        node: Any = config
        for depth, key in enumerate(ids):
            if isinstance(node, list):
                return ids[:depth]
            if not isinstance(node, Mapping) or key not in node:
                return None
            node = node[key]
        return ids

    def node_at(ids: tuple[str, ...]) -> Any:
        node: Any = config
        for key in ids:
            node = node[key]
        return node

    keep: set[tuple[str, ...]] = set()
    todo = [(tuple(ReferenceResolver.split_id(ReferenceResolver.normalize_id(r))), None) for r in roots]
    while todo:
        ids, referrer = todo.pop()
        path = holder(ids)
        if path is None:
            if referrer is None:
                continue
            raise ValueError(f"'{ID_SEP_KEY.join(referrer)}' refers to '{ID_SEP_KEY.join(ids)}', not in the config.")
        if any(path[:n] in keep for n in range(1, len(path) + 1)):
            continue
        keep.add(path)
        todo.extend((tuple(ReferenceResolver.split_id(ref)), path) for ref in references(node_at(path)))

    def select(node: Mapping[str, Any], prefix: tuple[str, ...]) -> dict[str, Any]:
        out = {}
        for key, value in node.items():
            ids = (*prefix, key)
            if ids in keep:
                out[key] = value
            elif any(p[: len(ids)] == ids for p in keep):
                out[key] = select(value, ids)
        return out

    return select(config, ())


def render(config: Mapping[str, Any]) -> str:
    """The one text form of every generated JSON file: ``json.dumps(config, indent=4)`` and a final newline."""
    return json.dumps(config, indent=4) + "\n"


def generate(bundles_dir: str | os.PathLike = BUNDLES_DIR) -> dict[Path, str]:
    """Freshly generated text of every file in :data:`GENERATED`, from the sources under ``bundles_dir``.

    Args:
        bundles_dir: the folder holding the bundles (default: this repository's ``bundles/``).

    Returns:
        ``{generated file: text}``. A JSON file's first entry is ``"_generated_"``, a note naming its sources;
        any other file (``logging.conf``) is its single source after a ``#`` comment line with that note.
    """
    root = Path(bundles_dir)
    texts = {}
    for target, sources in GENERATED.items():
        note = (
            f"GENERATED from {' + '.join(f'bundles/{s}' for s in sources)} by `{SYNC_COMMAND}`: "
            "edit those and run it again; do not edit this file"
        )
        if target.endswith(".json"):
            merged = merge_config_files([root / s for s in sources])
            merged.pop(GENERATED_KEY, None)
            if target in STANDALONE:
                kept = [
                    k.removeprefix(MERGE_KEY)
                    for s in STANDALONE[target]
                    for k in ConfigParser.load_config_file(root / s)
                ]
                merged = prune(merged, [*kept, *INFER_REQUIRED])
            texts[root / target] = render({GENERATED_KEY: note, **merged})
        else:
            (source,) = sources
            texts[root / target] = f"# {note}\n" + (root / source).read_text()
    return texts


def sync(bundles_dir: str | os.PathLike = BUNDLES_DIR) -> list[Path]:
    """Write every generated file whose text differs from a fresh generation.

    Args:
        bundles_dir: the folder holding the bundles.

    Returns:
        the files written (none when all were up to date).
    """
    written = []
    for path, text in generate(bundles_dir).items():
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)
            written.append(path)
    return written


def check(bundles_dir: str | os.PathLike = BUNDLES_DIR) -> list[str]:
    """Compare every committed generated file with a fresh generation.

    Args:
        bundles_dir: the folder holding the bundles.

    Returns:
        one unified diff (committed -> generated) per file that differs or is missing; empty when all are up to
        date.
    """
    root = Path(bundles_dir)
    diffs = []
    for path, text in generate(root).items():
        committed = path.read_text() if path.is_file() else ""
        if committed != text:
            name = f"{root.name}/{path.relative_to(root).as_posix()}"
            lines = difflib.unified_diff(
                committed.splitlines(keepends=True),
                text.splitlines(keepends=True),
                fromfile=f"{name} (committed{'' if path.is_file() else ', missing'})",
                tofile=f"{name} (generated from its sources)",
            )
            diffs.append("".join(lines))
    return diffs


def bundle_names(bundles_dir: str | os.PathLike = BUNDLES_DIR) -> list[str]:
    """The bundles under ``bundles_dir``: its folders holding ``configs/metadata.json``."""
    return sorted(p.parent.parent.name for p in Path(bundles_dir).glob("*/configs/metadata.json"))


def bundle_dir(name: str, bundles_dir: str | os.PathLike = BUNDLES_DIR) -> Path:
    """The folder of bundle ``name``.

    Raises:
        FileNotFoundError: naming the bundles there are when ``name`` is not one of them.
    """
    if name not in bundle_names(bundles_dir):
        raise FileNotFoundError(f"no bundle '{name}' in {bundles_dir}; the bundles are {bundle_names(bundles_dir)}.")
    return Path(bundles_dir) / name


def copy_bundle(name: str, dest: str | os.PathLike, bundles_dir: str | os.PathLike = BUNDLES_DIR) -> Path:
    """Copy bundle ``name`` (configs, docs, LICENSE; no outputs) to the new folder ``dest``.

    The copy is made beside ``dest`` and renamed into place, so ``dest`` is the whole bundle or absent.

    Returns:
        ``dest``, absolute.

    Raises:
        FileExistsError: when ``dest`` exists (nothing is overwritten).
        FileNotFoundError: as :func:`bundle_dir`.
    """
    source, target = bundle_dir(name, bundles_dir), Path(dest).resolve()
    if target.exists():
        raise FileExistsError(f"{target} exists; copy the bundle to a new folder.")
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    ignore = shutil.ignore_patterns("__pycache__", "models", "runs", "eval", "outputs", "demo_data")
    try:
        shutil.copytree(source, tmp, ignore=ignore)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def main(argv: Sequence[str] | None = None) -> int:
    """``sync`` or ``check`` the generated bundle configs; returns the exit status (1: ``check`` found a diff)."""
    parser = argparse.ArgumentParser(
        prog="python -m maskseg_monai.bundles",
        description="Write (sync) or compare (check) the bundle configs generated from other bundles' configs.",
    )
    parser.add_argument("command", choices=("sync", "check", "path", "copy"))
    parser.add_argument("name", nargs="?", help="path, copy: the bundle (" + ", ".join(bundle_names()) + ")")
    parser.add_argument("dest", nargs="?", help="copy: the new folder to copy the bundle to")
    parser.add_argument("--bundles_dir", default=str(BUNDLES_DIR), help="the folder holding the bundles")
    args = parser.parse_args(argv)
    if args.command in ("path", "copy"):
        if args.name is None or (args.command == "copy") != (args.dest is not None):
            parser.error(f"usage: {parser.prog} path NAME | copy NAME DEST")
        try:
            folder = bundle_dir(args.name, args.bundles_dir)
            print(folder if args.command == "path" else copy_bundle(args.name, args.dest, args.bundles_dir))
        except (FileNotFoundError, FileExistsError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        return 0
    if args.command == "sync":
        written = sync(args.bundles_dir)
        print("\n".join(f"wrote {p}" for p in written) or f"all {len(GENERATED)} generated files up to date")
        return 0
    diffs = check(args.bundles_dir)
    if not diffs:
        print(f"all {len(GENERATED)} generated files up to date")
        return 0
    command = SYNC_COMMAND
    if Path(args.bundles_dir).resolve() != BUNDLES_DIR:
        command += f" --bundles_dir {args.bundles_dir}"
    print("".join(diffs), end="")
    print(f"{len(diffs)} generated file(s) differ from their sources; regenerate with:\n    {command}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
