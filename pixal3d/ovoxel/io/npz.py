"""Voxels as ``.npz`` (TRELLIS2_SPEC §3.6): ``coord`` uint16 ``[N, 3]`` plus one array per attribute."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Tuple

import numpy as np

__all__ = ["read_npz", "write_npz"]


def _np(x) -> np.ndarray:
    return np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x)


def write_npz(file, coords, attrs: Dict[str, np.ndarray], compress: bool = True, overwrite: bool = True) -> None:
    """Write ``coords`` (int ``[N, 3]`` in ``[0, 65535]``, stored as uint16) and ``attrs`` (name → ``[N, ...]``).

    Raises ``ValueError`` for wrong shapes, coordinates outside the uint16 range, or an attribute named 'coord';
    ``FileExistsError`` if the path exists and ``overwrite`` is False.
    """
    coords = _np(coords)
    if coords.ndim != 2 or coords.shape[1] != 3:
        raise ValueError(f"coords must have shape [N, 3], got {coords.shape}")
    if coords.size and (coords.min() < 0 or coords.max() > 65535):
        raise ValueError(f"npz stores coords as uint16; got values in [{coords.min()}, {coords.max()}]")
    data = {"coord": coords.astype(np.uint16)}
    for k, v in attrs.items():
        if k == "coord":
            raise ValueError("'coord' is reserved for the coordinates; rename the attribute")
        v = _np(v)
        if len(v) != len(coords):
            raise ValueError(f"attribute {k!r} has {len(v)} rows, expected {len(coords)}")
        data[k] = v
    if isinstance(file, (str, os.PathLike)) and Path(file).exists() and not overwrite:
        raise FileExistsError(f"{file} exists; pass overwrite=True to replace it")
    (np.savez_compressed if compress else np.savez)(file, **data)


def read_npz(file) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
    """Read an ``.npz`` voxel file → ``(coords int32 [N, 3], name → array)``.

    Raises ``FileNotFoundError`` or ``ValueError`` (not an npz, or no ``coord`` array).
    """
    if isinstance(file, (str, os.PathLike)) and not Path(file).is_file():
        raise FileNotFoundError(f"npz file not found: {file}")
    try:
        with np.load(file, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except Exception as exc:
        raise ValueError(f"could not read {file} as .npz: {type(exc).__name__}: {exc}") from exc
    if "coord" not in arrays:
        raise ValueError(f"{file} has no 'coord' array (keys: {sorted(arrays)}); not a voxel npz")
    coords = arrays.pop("coord").astype(np.int32)
    return coords, arrays
