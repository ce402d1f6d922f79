"""Deterministic, atomic file writing and streaming hashing shared by the data subpackage.

Every writer encodes to bytes in memory, then writes a temporary file in the destination folder and moves it into
place with ``os.replace``, so a reader never sees a half-written file. Encoders add no timestamps, so the same
array always gives the same bytes.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from PIL import Image

from maskseg_monai.utils import atomic_write

__all__ = ["atomic_write_bytes", "atomic_write_json", "png_bytes", "nifti_bytes", "sha256_file"]


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`maskseg_monai.utils.atomic_write`)."""
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented UTF-8 JSON with a final newline, atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))


def png_bytes(array: np.ndarray) -> bytes:
    """Encode a 2D uint8 or uint16 array ``[H, W]`` as a grayscale PNG.

    Raises:
        ValueError: when the array is not 2D uint8/uint16.
    """
    if array.ndim != 2 or array.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"png_bytes needs a 2D uint8 or uint16 array, got {array.dtype} {array.shape}.")
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG")
    return buf.getvalue()


def nifti_bytes(array: np.ndarray, affine: np.ndarray, xform_code: int = 1) -> bytes:
    """Encode an array as a gzipped NIfTI-1 file (``.nii.gz``) with no timestamp in the gzip header.

    Args:
        array: voxel data, stored with its own dtype.
        affine: ``[4, 4]`` voxel-to-world (RAS, mm) matrix, written to both qform and sform.
        xform_code: NIfTI code of the world space (1 scanner, 4 MNI152).
    """
    img = nib.Nifti1Image(np.asarray(array), np.asarray(affine, dtype=np.float64))
    img.set_qform(affine, code=xform_code)
    img.set_sform(affine, code=xform_code)
    img.header.set_xyzt_units("mm")
    return gzip.compress(img.to_bytes(), compresslevel=6, mtime=0)


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks so large files are never held in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()
