"""Dataset manifests: describe a public dataset, verify a local copy, write its MONAI datalist.

A manifest is a JSON file (see ``data_manifests/README.md``) naming the dataset, its source, licence and citation,
the files a complete copy holds (exact paths with optional size and SHA-256, or glob patterns with an expected
count) and how to pair files into datalist items. :func:`prepare_dataset` checks a local copy against it, reports
every problem at once, and only then writes the decathlon-style datalist (atomically). ``write_checksums`` records
the SHA-256 of every matched file in a lock file beside the datalist (trust on first use); later runs verify
against it.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from maskseg_monai.data._io import atomic_write_json, sha256_file

__all__ = [
    "MANIFEST_KEYS",
    "ManifestError",
    "VerificationError",
    "load_manifest",
    "lock_path",
    "prepare_dataset",
]

REQUIRED_KEYS = (
    "name",
    "task",
    "description",
    "source_url",
    "licence",
    "citation",
    "download",
    "spatial_dims",
    "files",
    "datalist",
)
OPTIONAL_KEYS = ("labels", "modality", "notes")
MANIFEST_KEYS = REQUIRED_KEYS + OPTIONAL_KEYS
_PATH_ENTRY_KEYS = {"path", "sha256", "size"}
_GLOB_ENTRY_KEYS = {"glob", "count"}
_DATALIST_KEYS = {"image_glob", "from_image", "split", "test_glob"}
_SPLIT_KEYS = {"validation_regex", "validation_fraction", "seed"}
_SHA256 = re.compile(r"[0-9a-f]{64}")
MAX_LISTED_PROBLEMS = 20
DEFAULT_VAL_FRACTION = 0.2


class ManifestError(ValueError):
    """A manifest is malformed; the message names the manifest file and the offending key."""


class VerificationError(RuntimeError):
    """A local copy does not match its manifest (or lock file).

    Attributes:
        problems: every problem found, one line each (missing, wrong size, wrong checksum, wrong count, ...).
    """

    def __init__(self, manifest_path: str | os.PathLike, root: str | os.PathLike, problems: list[str]) -> None:
        self.problems = list(problems)
        shown = "\n".join(f"  - {p}" for p in problems[:MAX_LISTED_PROBLEMS])
        more = len(problems) - MAX_LISTED_PROBLEMS
        tail = f"\n  ... and {more} more" if more > 0 else ""
        super().__init__(
            f"{manifest_path}: the dataset under {root} failed verification, {len(problems)} problem(s); "
            f"nothing was written:\n{shown}{tail}"
        )


def _fail(path: Path, message: str) -> ManifestError:
    return ManifestError(f"{path}: {message}")


def _check_keys(path: Path, where: str, entry: Any, allowed: set[str], required: set[str]) -> None:
    if not isinstance(entry, dict):
        raise _fail(path, f"'{where}' must be an object, got {type(entry).__name__}.")
    for key in entry:
        if key not in allowed:
            raise _fail(path, f"unknown key '{where}.{key}', allowed keys are {sorted(allowed)}.")
    for key in sorted(required - entry.keys()):
        raise _fail(path, f"missing required key '{where}.{key}'.")


def _check_relative(path: Path, where: str, value: Any) -> None:
    if not isinstance(value, str) or not value or Path(value).is_absolute() or ".." in Path(value).parts:
        raise _fail(path, f"'{where}' must be a non-empty relative path inside the dataset root, got {value!r}.")


def _check_regex(path: Path, where: str, value: Any) -> None:
    try:
        re.compile(value)
    except (re.error, TypeError) as e:
        raise _fail(path, f"'{where}' is not a valid regular expression ({e}).") from None


def _check_count(path: Path, where: str, value: Any) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
        raise _fail(path, f"'{where}' must be a non-negative integer or null, got {value!r}.")


def load_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a dataset manifest.

    Args:
        path: the manifest JSON file.

    Returns:
        The manifest as a dict, unchanged.

    Raises:
        ManifestError: when the file is not JSON, a required key is missing, a key is unknown or a value has the
            wrong type; the message names the manifest path and the key.
    """
    path = Path(path)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise _fail(path, f"cannot read the manifest ({e.strerror}).") from None
    except ValueError as e:
        raise _fail(path, f"not valid JSON ({e}).") from None
    if not isinstance(manifest, dict):
        raise _fail(path, "the manifest must be a JSON object.")
    for key in manifest:
        if key not in MANIFEST_KEYS:
            raise _fail(path, f"unknown key '{key}', allowed keys are {list(MANIFEST_KEYS)}.")
    for key in REQUIRED_KEYS:
        if key not in manifest:
            raise _fail(path, f"missing required key '{key}'.")
    for key in ("name", "task", "description", "source_url", "licence", "citation", "download"):
        if not isinstance(manifest[key], str) or not manifest[key].strip():
            raise _fail(path, f"'{key}' must be a non-empty string.")
    if manifest["spatial_dims"] not in (2, 3) or isinstance(manifest["spatial_dims"], bool):
        raise _fail(path, f"'spatial_dims' must be 2 or 3, got {manifest['spatial_dims']!r}.")
    for key in ("labels", "modality"):
        if key in manifest and not isinstance(manifest[key], dict):
            raise _fail(path, f"'{key}' must be an object, got {type(manifest[key]).__name__}.")
    files = manifest["files"]
    if not isinstance(files, list) or not files:
        raise _fail(path, "'files' must be a non-empty list.")
    for i, entry in enumerate(files):
        where = f"files[{i}]"
        is_glob = isinstance(entry, dict) and "glob" in entry
        _check_keys(
            path, where, entry, _GLOB_ENTRY_KEYS if is_glob else _PATH_ENTRY_KEYS, {"glob"} if is_glob else {"path"}
        )
        _check_relative(path, f"{where}.{'glob' if is_glob else 'path'}", entry["glob" if is_glob else "path"])
        _check_count(path, f"{where}.{'count' if is_glob else 'size'}", entry.get("count" if is_glob else "size"))
        sha = entry.get("sha256")
        if sha is not None and (not isinstance(sha, str) or not _SHA256.fullmatch(sha)):
            raise _fail(path, f"'{where}.sha256' must be 64 lowercase hex digits or null, got {sha!r}.")
    spec = manifest["datalist"]
    _check_keys(path, "datalist", spec, _DATALIST_KEYS, {"image_glob"})
    for key in ("image_glob", "test_glob"):
        if key in spec:
            _check_relative(path, f"datalist.{key}", spec[key])
    if not isinstance(spec.get("from_image", {}), dict):
        raise _fail(path, "'datalist.from_image' must be an object mapping datalist keys to {pattern, replace}.")
    for key, rule in spec.get("from_image", {}).items():
        _check_keys(path, f"datalist.from_image.{key}", rule, {"pattern", "replace"}, {"pattern", "replace"})
        _check_regex(path, f"datalist.from_image.{key}.pattern", rule["pattern"])
        if key == "image" or not isinstance(rule["replace"], str):
            raise _fail(
                path, f"'datalist.from_image.{key}' must derive a key other than 'image' with a string 'replace'."
            )
    split = spec.get("split", {})
    _check_keys(path, "datalist.split", split, _SPLIT_KEYS, set())
    if "validation_regex" in split:
        if "validation_fraction" in split:
            raise _fail(path, "'datalist.split' takes 'validation_regex' or 'validation_fraction', not both.")
        _check_regex(path, "datalist.split.validation_regex", split["validation_regex"])
    fraction = split.get("validation_fraction", DEFAULT_VAL_FRACTION)
    if not isinstance(fraction, (int, float)) or isinstance(fraction, bool) or not 0.0 <= fraction < 1.0:
        raise _fail(path, f"'datalist.split.validation_fraction' must be in [0, 1), got {fraction!r}.")
    _check_count(path, "datalist.split.seed", split.get("seed"))
    return manifest


def lock_path(datalist_path: str | os.PathLike) -> Path:
    """The lock file that records checksums beside a datalist: ``<name>.json`` -> ``<name>.lock.json``."""
    datalist_path = Path(datalist_path)
    stem = datalist_path.name[: -len(".json")] if datalist_path.name.endswith(".json") else datalist_path.name
    return datalist_path.with_name(f"{stem}.lock.json")


def _rel(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()


def _glob(root: Path, pattern: str) -> list[str]:
    return sorted(_rel(root, p) for p in root.glob(pattern) if p.is_file())


def _check_file(root: Path, rel: str, size: int | None, sha256: str | None, source: str = "") -> str | None:
    """One problem line for a file, or None when it exists and matches the given size and checksum."""
    path = root / rel
    if not path.is_file():
        return f"missing{source}: {rel}"
    found = path.stat().st_size
    if size is not None and found != size:
        return f"wrong size{source}: {rel} (expected {size} bytes, found {found})"
    if sha256 is not None and (digest := sha256_file(path)) != sha256:
        return f"wrong sha256{source}: {rel} (expected {sha256[:12]}..., found {digest[:12]}...)"
    return None


def _split(n: int, fraction: float, seed: int) -> set[int]:
    """Indices of a seeded random validation subset; at least one item when ``fraction > 0`` and ``n > 1``."""
    if n < 2 or fraction <= 0:
        return set()
    n_val = min(max(int(round(fraction * n)), 1), n - 1)
    return set(np.random.default_rng(seed).permutation(n)[:n_val].tolist())


def prepare_dataset(
    manifest_path: str | os.PathLike,
    root: str | os.PathLike,
    output: str | os.PathLike | None = None,
    val_fraction: float | None = None,
    seed: int | None = None,
    write_checksums: bool = False,
) -> Path:
    """Verify a local copy of a dataset against its manifest and write its MONAI datalist.

    Checks, all before writing anything: every ``files`` path exists with the given size and SHA-256; every
    ``files`` glob matches the expected count; every image of ``datalist.image_glob`` has its derived files
    (``datalist.from_image``); and, when a lock file exists beside the output and ``write_checksums`` is False,
    every file matches its recorded size and SHA-256 and no matched file is missing from the lock. Files without
    any checksum are reported with a ``UserWarning`` as unverified.

    The split is, in order of precedence: a seeded random split of ``val_fraction`` when given; the manifest's
    ``split.validation_regex`` (``re.search`` on the image path); the manifest's ``split.validation_fraction``
    (default 0.2) with ``seed`` or ``split.seed`` (default 0).

    Args:
        manifest_path: the manifest JSON.
        root: the folder holding the dataset; manifest paths are relative to it.
        output: datalist path; default ``root/<manifest name>_datalist.json``. Its paths are relative to its folder.
        val_fraction: fraction in [0, 1) of images for validation (random, seeded); overrides the manifest split.
        seed: seed of the random split; overrides ``split.seed``.
        write_checksums: hash every matched file and write ``lock_path(output)`` (trust on first use), replacing
            any existing lock file.

    Returns:
        The path of the written datalist.

    Raises:
        ManifestError: when the manifest is malformed.
        ValueError: when ``val_fraction`` is not in [0, 1).
        VerificationError: when the dataset does not match; lists every problem, writes nothing.
    """
    manifest = load_manifest(manifest_path)
    if val_fraction is not None and not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}.")
    root = Path(root)
    output = Path(output) if output is not None else root / f"{manifest['name']}_datalist.json"
    lock_file = lock_path(output)
    if not root.is_dir():
        raise VerificationError(manifest_path, root, [f"root {root} is not a folder"])

    problems: list[str] = []
    matched: dict[str, str | None] = {}  # relative path -> sha256 known from the manifest
    for entry in manifest["files"]:
        if "glob" in entry:
            found = _glob(root, entry["glob"])
            if entry.get("count") is not None and len(found) != entry["count"]:
                problems.append(
                    f"wrong count: glob '{entry['glob']}' matched {len(found)} files, expected {entry['count']}"
                )
            matched.update({f: matched.get(f) for f in found})
        else:
            problem = _check_file(root, entry["path"], entry.get("size"), entry.get("sha256"))
            problems += [problem] if problem else []
            matched[entry["path"]] = entry.get("sha256")

    spec = manifest["datalist"]
    images = _glob(root, spec["image_glob"])
    if not images:
        problems.append(f"no files: datalist.image_glob '{spec['image_glob']}' matched nothing")
    items = []
    for image in images:
        item = {"image": image}
        for key, rule in spec.get("from_image", {}).items():
            derived = re.sub(rule["pattern"], rule["replace"], image)
            if not (root / derived).is_file():
                problems.append(f"missing {key} for {image}: {derived}")
            item[key] = derived
        items.append(item)
    tests = [{"image": p} for p in _glob(root, spec["test_glob"])] if "test_glob" in spec else []
    referenced = sorted({v for item in items + tests for v in item.values()} | matched.keys())

    locked: dict[str, tuple[int, str]] = {}
    if lock_file.is_file() and not write_checksums:
        try:
            records = json.loads(lock_file.read_text(encoding="utf-8"))["files"]
            locked = {str(rel): (int(r["size"]), str(r["sha256"])) for rel, r in records.items()}
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise VerificationError(manifest_path, root, [f"unreadable lock file {lock_file} ({e!r})"]) from None
        for rel, (size, sha256) in locked.items():
            problem = _check_file(root, rel, size, sha256, source=" (lock file)")
            problems += [problem] if problem else []
        problems += [f"not in lock file {lock_file.name}: {rel}" for rel in referenced if rel not in locked]
    if problems:
        raise VerificationError(manifest_path, root, problems)
    unverified = [rel for rel in referenced if matched.get(rel) is None and rel not in locked]
    if unverified and not write_checksums:
        warnings.warn(
            f"{manifest_path}: {len(unverified)} file(s) are unverified (no checksum in the manifest or a lock "
            f"file; only existence and glob counts were checked), e.g. {unverified[0]}; rerun with "
            "--write-checksums to record their checksums.",
            stacklevel=2,
        )

    split = spec.get("split", {})
    if val_fraction is None and "validation_regex" in split:
        val = {i for i, item in enumerate(items) if re.search(split["validation_regex"], item["image"])}
    else:
        fraction = val_fraction if val_fraction is not None else split.get("validation_fraction", DEFAULT_VAL_FRACTION)
        val = _split(len(items), fraction, seed if seed is not None else split.get("seed", 0))

    def relative(item: dict[str, str]) -> dict[str, str]:
        return {k: Path(os.path.relpath(root / v, output.parent)).as_posix() for k, v in item.items()}

    datalist: dict[str, Any] = {
        "name": manifest["name"],
        "description": manifest["description"],
        "licence": manifest["licence"],
        "reference": manifest["citation"],
        "source_url": manifest["source_url"],
        "tensorImageSize": f"{manifest['spatial_dims']}D",
        **{k: manifest[k] for k in ("modality", "labels") if k in manifest},
        "numTraining": len(items) - len(val),
        "numValidation": len(val),
        "training": [relative(it) for i, it in enumerate(items) if i not in val],
        "validation": [relative(it) for i, it in enumerate(items) if i in val],
    }
    if "test_glob" in spec:
        datalist["numTest"], datalist["test"] = len(tests), [relative(t) for t in tests]
    if write_checksums:
        records = {rel: {"size": (root / rel).stat().st_size, "sha256": sha256_file(root / rel)} for rel in referenced}
        atomic_write_json(lock_file, {"manifest": manifest["name"], "files": records})
    atomic_write_json(output, datalist)
    return output
