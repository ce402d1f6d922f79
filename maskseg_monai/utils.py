"""Small shared helpers: atomic file writes."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

__all__ = ["atomic_write", "atomic_torch_save", "as_bool"]


def atomic_write(path: str | os.PathLike, write: Callable[[str], Any]) -> str:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it to ``path``.

    Readers never see a half-written file; on error the temporary file is removed and ``path`` is untouched.

    Args:
        path: destination; its folder is created if needed.
        write: function that writes the whole file to the path it is given.

    Returns:
        ``str(path)``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the temporary name ends with the real one, so writers that read the extension pick the right format
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=f"-{path.name}", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return str(path)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> str:
    """``torch.save`` through :func:`atomic_write`."""
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def as_bool(value: Any, name: str = "value") -> bool:
    """A config or command-line flag as a bool.

    ``python -m monai.bundle ... --use_mps false`` passes the *string* ``"false"`` (only ``False`` becomes a
    bool), which Python treats as true; bundle configs read flags through this function instead.

    Raises:
        ValueError: on a string that is not a recognised yes/no word.
    """
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE | _FALSE:
            return word in _TRUE
        raise ValueError(f"{name} must be true or false, got {value!r}.")
    return bool(value)
