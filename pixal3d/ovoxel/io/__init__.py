"""O-Voxel file formats (TRELLIS2_SPEC §3.6): ``.vxz`` (reference-compatible), ``.npz``, ``.ply``, plus the §3.3
dual-grid quantisation helpers. :func:`read` / :func:`write` dispatch on the file extension."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Tuple

import numpy as np

from .npz import read_npz, write_npz
from .ply import read_ply, write_ply
from .quantize import dequantize_dual_vertices, pack_intersected, quantize_dual_vertices, unpack_intersected
from .svo import VxzFormatError
from .vxz import read_vxz, read_vxz_info, write_vxz

__all__ = ["read", "write", "read_vxz", "read_vxz_info", "write_vxz", "read_npz", "write_npz", "read_ply",
           "write_ply", "VxzFormatError", "quantize_dual_vertices", "dequantize_dual_vertices",
           "pack_intersected", "unpack_intersected"]

_READERS = {".vxz": read_vxz, ".npz": read_npz, ".ply": read_ply}
_WRITERS = {".vxz": write_vxz, ".npz": write_npz, ".ply": write_ply}


def _suffix(path) -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"read/write dispatch needs a file path, got {type(path).__name__}; call read_vxz/"
                        "read_npz/read_ply directly for file objects")
    suf = Path(path).suffix.lower()
    if suf not in _READERS:
        raise ValueError(f"unsupported voxel file type {suf!r} for {path}; use .vxz, .npz or .ply")
    return suf


def read(path) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
    """Read voxels from ``.vxz`` / ``.npz`` / ``.ply`` → ``(coords int32 [N, 3], name → array [N, C])``."""
    return _READERS[_suffix(path)](path)


def write(path, coords, attrs: Dict[str, np.ndarray], **kwargs) -> None:
    """Write voxels to ``.vxz`` / ``.npz`` / ``.ply`` by extension; ``kwargs`` go to the format's writer."""
    _WRITERS[_suffix(path)](path, coords, attrs, **kwargs)
