"""Small real and synthetic demo datasets, written offline and deterministically as MONAI datalists.

Each demo set is materialised under ``root/<name>/`` as image (and label) files, a decathlon-style datalist
``dataset.json`` whose paths are relative to its folder (so ``monai.data.load_decathlon_datalist(path, True,
"training")`` resolves them), a ``PROVENANCE.md`` (source, original files, licence, attribution, processing,
split) and, written last, a completion marker ``.complete`` listing every file with its SHA-256.

Every file is written atomically and no file holds a timestamp, so materialising twice gives identical bytes.
Sources are read from installed packages and the package's own ``assets/``; nothing is downloaded.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from maskseg_monai.data._io import atomic_write_json
from maskseg_monai.data.demo_oneshot import ONESHOT_BUILDERS
from maskseg_monai.data.demo_sets import ASSETS_DIR, BUILDERS, SetWriter, demo_dicom_series_dir

__all__ = [
    "DEMO_SETS",
    "DATALIST_NAME",
    "ASSETS_DIR",
    "materialize_demo",
    "ensure_demo_datalist",
    "demo_dicom_series_dir",
]

DEMO_SETS: tuple[str, ...] = (
    "nuclei2d",
    "nuclei2d_regions",
    "bloodsmear2d",
    "bloodsmear3d",
    "brain3d",
    "unlabelled2d",
    "ct3d",
    "textures2d",
    "oneshot_real2d",
)

_BUILDERS = {**BUILDERS, **ONESHOT_BUILDERS}


DATALIST_NAME = "dataset.json"


_PROVENANCE_NAME = "PROVENANCE.md"


_MARKER_NAME = ".complete"


_FORMAT_VERSION = 1


def _is_complete(folder: Path) -> bool:
    try:
        marker = json.loads((folder / _MARKER_NAME).read_text(encoding="utf-8"))
        return marker["format_version"] == _FORMAT_VERSION and all((folder / f).is_file() for f in marker["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _resolve_names(names: str | Sequence[str]) -> list[str]:
    """Validate demo set names against ``DEMO_SETS`` with MONAI's ``look_up_option`` (nearest-name suggestions).

    MONAI is imported here, on first use, so that ``python -m maskseg_monai.data prepare`` starts in about a second.
    """
    from monai.utils import look_up_option

    if isinstance(names, str):
        names = list(DEMO_SETS) if names == "all" else [names]
    return list(dict.fromkeys(look_up_option(n, DEMO_SETS) for n in names))


def materialize_demo(
    root: str | os.PathLike, names: str | Sequence[str] = "all", overwrite: bool = False
) -> dict[str, Path]:
    """Write demo sets under ``root/<name>/`` and return the path of each set's datalist.

    Idempotent: a set whose completion marker (written last) is present, current and whose listed files all exist
    is reused without rewriting. Otherwise the marker is removed first and every file is (re)written atomically.

    Args:
        root: folder that receives one subfolder per demo set; created if needed.
        names: ``"all"``, one name of ``DEMO_SETS``, or a sequence of names.
        overwrite: rewrite sets even when they are complete.

    Returns:
        ``{name: root/name/dataset.json}`` in the order requested.

    Raises:
        ValueError: when a name is not in ``DEMO_SETS`` (the message lists the valid names).
        FileNotFoundError: when a source file (package data or bundled asset) is missing.

    Example:
        >>> paths = materialize_demo("/tmp/demo", ["nuclei2d"])
        >>> from monai.data import load_decathlon_datalist
        >>> len(load_decathlon_datalist(paths["nuclei2d"], True, "training"))
        48
    """
    selected = _resolve_names(names)
    root = Path(root)
    result = {}
    for name in selected:
        folder = root / name
        if overwrite or not _is_complete(folder):
            (folder / _MARKER_NAME).unlink(missing_ok=True)
            writer = SetWriter(folder)
            datalist, provenance = _BUILDERS[name](writer)
            datalist["numTraining"], datalist["numValidation"] = len(datalist["training"]), len(datalist["validation"])
            writer.put(_PROVENANCE_NAME, provenance.encode("utf-8"))
            writer.put(DATALIST_NAME, (json.dumps(datalist, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
            atomic_write_json(
                folder / _MARKER_NAME, {"format_version": _FORMAT_VERSION, "name": name, "files": writer.files}
            )
        result[name] = folder / DATALIST_NAME
    return result


def ensure_demo_datalist(root: str | os.PathLike, name: str) -> str:
    """Return the datalist path of one demo set, materialising the set first if needed.

    Meant for bundle configs: ``"datalist": "$maskseg_monai.data.ensure_demo_datalist(@dataset_dir, 'nuclei2d')"``.

    Args:
        root: folder holding the demo sets (``root/<name>/``).
        name: one of ``DEMO_SETS``.

    Returns:
        The path of ``root/<name>/dataset.json`` as a string.

    Raises:
        ValueError: when ``name`` is not in ``DEMO_SETS``.
    """
    (name,) = _resolve_names([name])
    return str(materialize_demo(root, [name])[name])
