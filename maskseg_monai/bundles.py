"""Generated bundle configs: ``python -m maskseg_monai.bundles sync`` writes them, ``check`` compares them.

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
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from monai.bundle import ConfigParser
from monai.bundle.reference_resolver import ReferenceResolver
from monai.bundle.utils import MERGE_KEY, merge_kv

__all__ = [
    "BUNDLES_DIR",
    "GENERATED",
    "GENERATED_KEY",
    "SYNC_COMMAND",
    "check",
    "generate",
    "merge_config_files",
    "render",
    "sync",
]

#: the bundles of the source tree the package is imported from
BUNDLES_DIR = Path(__file__).resolve().parents[1] / "bundles"
#: generated file -> its sources, merged left to right; paths relative to the bundles folder.
GENERATED: dict[str, tuple[str, ...]] = {
    "amlp/configs/train.json": ("mae/configs/train.json", "amlp/configs/sources/train_patch.json"),
    "amlp/configs/inference.json": ("mae/configs/inference.json", "amlp/configs/sources/inference_patch.json"),
    "amlp/configs/evaluate.json": ("mae/configs/evaluate.json",),
    "amlp/configs/multi_gpu_train.json": ("mae/configs/multi_gpu_train.json",),
    "amlp/configs/logging.conf": ("mae/configs/logging.conf",),
}
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


def main(argv: Sequence[str] | None = None) -> int:
    """``sync`` or ``check`` the generated bundle configs; returns the exit status (1: ``check`` found a diff)."""
    parser = argparse.ArgumentParser(
        prog="python -m maskseg_monai.bundles",
        description="Write (sync) or compare (check) the bundle configs generated from other bundles' configs.",
    )
    parser.add_argument("command", choices=("sync", "check"))
    parser.add_argument("--bundles_dir", default=str(BUNDLES_DIR), help="the folder holding the bundles")
    args = parser.parse_args(argv)
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
