"""Small shared helpers: atomic file writes, command-line flags, one clear error line for bad input, safe output
file names."""

from __future__ import annotations

import hashlib
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "BadInputError",
    "as_bool",
    "atomic_torch_save",
    "atomic_write",
    "error_summary",
    "install_error_hook",
    "output_stem",
    "run_command",
    "safe_stem",
]


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


class BadInputError(ValueError):
    """An input file (or datalist key) that cannot be used; the message is ``"<file>: <problem>"``."""


def _exception_chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the exceptions it was raised from (``__cause__``, else ``__context__`` unless suppressed by
    ``raise ... from None``), outermost first."""
    chain: list[BaseException] = []
    while exc is not None and exc not in chain:
        chain.append(exc)
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    return chain


def error_summary(exc: BaseException) -> str:
    """One line naming the culprit of a (possibly wrapped) exception: ``"error: <file>: <problem>"``.

    MONAI wraps errors raised in transforms and config components (``applying transform ...``, ``Failed to
    instantiate component ...``), so the last line of a bundle's traceback says nothing about the input. This picks
    the outermost :class:`BadInputError` of the chain, else the innermost exception (the root cause).
    """
    chain = _exception_chain(exc)
    bad = [e for e in chain if isinstance(e, BadInputError)]
    culprit = bad[0] if bad else chain[-1]
    message = str(culprit).strip()
    if "Original Traceback" in message:  # re-raised from a DataLoader worker: keep the worker's last line
        message = message.splitlines()[-1].split(": ", 1)[-1]
    return f"error: {message}" if bad else f"error: {type(culprit).__name__}: {message}"


def install_error_hook() -> None:
    """Print :func:`error_summary` after the traceback of an uncaught exception (bundle ``initialize`` step).

    The exit status stays non-zero (Python's for an uncaught exception). Calling it again does nothing.
    """
    previous = sys.excepthook
    if getattr(previous, "_maskseg_error_hook", False):
        return

    def hook(exc_type: type[BaseException], exc: BaseException, tb: Any) -> None:
        previous(exc_type, exc, tb)
        if isinstance(exc, Exception):
            sys.stderr.write(error_summary(exc) + "\n")
            sys.stderr.flush()

    hook._maskseg_error_hook = True  # type: ignore[attr-defined]
    sys.excepthook = hook


def run_command(
    action: Callable[[], Any], exit_codes: Sequence[tuple[type[BaseException] | tuple[type[BaseException], ...], int]]
) -> int:
    """Run one command-line action and return its exit status.

    The status is 0, or that of the first ``exit_codes`` entry whose exception type(s) match what the action
    raised, after printing ``error: <message>`` to stderr; any other exception propagates. Warnings the action
    raises are printed to stderr as ``warning: <message>``, also when it fails, so that none is lost behind an
    error. Shared by ``python -m maskseg_monai.data`` and ``python -m maskseg_monai.data.abdominal``.

    Example:
        >>> run_command(lambda: None, [(ValueError, 2)]), run_command(lambda: int("x"), [(ValueError, 2)])
        (0, 2)
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        try:
            action()
            return 0
        except Exception as err:
            code = next((c for types, c in exit_codes if isinstance(err, types)), None)
            if code is None:
                raise
            print(f"error: {err}", file=sys.stderr)
            return code
        finally:
            for w in caught:
                print(f"warning: {w.message}", file=sys.stderr)


_STRIP_EXTENSIONS = (".nii.gz", ".nii", ".png", ".tif", ".tiff", ".mha", ".nrrd", ".dcm", ".jpg", ".jpeg")


def safe_stem(name: str | os.PathLike) -> str:
    """A file-name stem made of ``[A-Za-z0-9._-]`` only, safe to join to an output folder.

    Path separators and ``.``/``..`` parts are dropped (the remaining parts joined with ``_``), every run of other
    characters becomes ``_``, and leading dots are stripped; an empty result falls back to ``input_<hash>``.

    Example:
        >>> safe_stem("../../etc/passwd"), safe_stem("Doe^John"), safe_stem("")
        ('etc_passwd', 'Doe_John', 'input_e3b0c44298fc')
    """
    text = str(name)
    parts = [p for p in re.split(r"[/\\]+", text) if p not in ("", ".", "..")]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", "_".join(parts)).lstrip(".")
    stem = re.sub(r"\.{2,}", ".", stem).strip("_")
    return stem or f"input_{hashlib.sha256(text.encode('utf-8')).hexdigest()[:12]}"


def output_stem(path: str | os.PathLike) -> str:
    """:func:`safe_stem` of an input's base name without its image extension (``.nii.gz``, ``.png``, ``.dcm``...)."""
    name = os.path.basename(os.path.normpath(str(path)))
    for ext in _STRIP_EXTENSIONS:
        if name.lower().endswith(ext) and len(name) > len(ext):
            name = name[: -len(ext)]
            break
    return safe_stem(name)
