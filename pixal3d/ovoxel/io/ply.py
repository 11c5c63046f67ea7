"""Voxels as a point ``.ply`` (TRELLIS2_SPEC §3.6): one ``vertex`` element with float32 ``x, y, z`` (voxel indices)
and a property ``{attr}_{j}`` per attribute channel in the attribute's dtype. The reader rounds xyz.

Written as ``binary_little_endian`` (what the reference's ``plyfile`` writes on x86); ascii and big-endian files are
also read.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Tuple

import numpy as np

__all__ = ["read_ply", "write_ply"]

_PLY_TYPES = {"u1": "uchar", "u2": "ushort", "u4": "uint", "i1": "char", "i2": "short", "i4": "int",
              "f4": "float", "f8": "double"}
_FROM_PLY = {v: k for k, v in _PLY_TYPES.items()}
_FROM_PLY.update({"uint8": "u1", "uint16": "u2", "uint32": "u4", "int8": "i1", "int16": "i2", "int32": "i4",
                  "float32": "f4", "float64": "f8"})


def _np(x) -> np.ndarray:
    return np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x)


def write_ply(file, coords, attrs: Dict[str, np.ndarray], overwrite: bool = True) -> None:
    """Write voxels as a binary PLY point cloud.

    Args:
        coords: int ``[N, 3]`` voxel indices (stored as float32 x, y, z).
        attrs: name → ``[N, C]`` (or ``[N]``) arrays of uint8/16/32, int8/16/32, float32/64.
    Raises ``ValueError`` for shapes/dtypes PLY cannot store; ``FileExistsError`` when not overwriting.
    """
    coords = _np(coords)
    if coords.ndim != 2 or coords.shape[1] != 3:
        raise ValueError(f"coords must have shape [N, 3], got {coords.shape}")
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    cols = [coords[:, 0], coords[:, 1], coords[:, 2]]
    for k, v in attrs.items():
        v = _np(v)
        v = v[:, None] if v.ndim == 1 else v
        code = v.dtype.str[1:]
        if code not in _PLY_TYPES or v.ndim != 2 or len(v) != len(coords):
            raise ValueError(f"attribute {k!r}: PLY needs [N={len(coords)}, C] of "
                             f"{sorted(_PLY_TYPES)}, got {v.dtype} {v.shape}")
        for j in range(v.shape[1]):
            fields.append((f"{k}_{j}", "<" + code))
            cols.append(v[:, j])
    rec = np.empty(len(coords), dtype=fields)
    for (name, _), col in zip(fields, cols):
        rec[name] = col
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {len(coords)}"]
    header += [f"property {_PLY_TYPES[t[1:]]} {n}" for n, t in fields] + ["end_header"]
    payload = ("\n".join(header) + "\n").encode("ascii") + rec.tobytes()
    if isinstance(file, (str, os.PathLike)):
        if Path(file).exists() and not overwrite:
            raise FileExistsError(f"{file} exists; pass overwrite=True to replace it")
        Path(file).write_bytes(payload)
    else:
        file.write(payload)


def read_ply(file) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
    """Read a voxel PLY → ``(coords int32 [N, 3] (rounded xyz), name → [N, C])``.

    Properties named ``{name}_{j}`` are grouped into attribute ``name`` (channels by ``j``).
    Raises ``FileNotFoundError`` or ``ValueError`` for a malformed/truncated file or missing x/y/z.
    """
    if isinstance(file, (str, os.PathLike)):
        if not Path(file).is_file():
            raise FileNotFoundError(f"ply file not found: {file}")
        data = Path(file).read_bytes()
    else:
        data = file.read()
    end = data.find(b"end_header")
    if not data.startswith(b"ply") or end < 0:
        raise ValueError("not a PLY file (missing 'ply' magic or 'end_header')")
    body_start = data.index(b"\n", end) + 1
    lines = data[:end].decode("ascii", errors="replace").splitlines()
    fmt, count, props, in_vertex = None, 0, [], False
    for line in lines:
        tok = line.split()
        if not tok:
            continue
        if tok[0] == "format":
            fmt = tok[1]
        elif tok[0] == "element":
            in_vertex = tok[1] == "vertex"
            if in_vertex:
                count = int(tok[2])
            elif props or count:
                break  # elements after 'vertex' are ignored
        elif tok[0] == "property" and in_vertex:
            if tok[1] == "list":
                raise ValueError("list properties are not supported in voxel PLY files")
            if tok[1] not in _FROM_PLY:
                raise ValueError(f"unknown PLY property type {tok[1]!r}")
            props.append((tok[2], _FROM_PLY[tok[1]]))
    names = [p[0] for p in props]
    if not {"x", "y", "z"} <= set(names):
        raise ValueError(f"PLY vertex element lacks x/y/z (properties: {names})")
    if fmt == "ascii":
        rows = data[body_start:].decode("ascii").split()
        if len(rows) < count * len(props):
            raise ValueError("ascii PLY body is truncated")
        table = np.array(rows[:count * len(props)], dtype=np.float64).reshape(count, len(props))
        rec = {n: table[:, i].astype(t) for i, (n, t) in enumerate(props)}
    elif fmt in ("binary_little_endian", "binary_big_endian"):
        order = "<" if fmt == "binary_little_endian" else ">"
        dt = np.dtype([(n, order + t) for n, t in props])
        if len(data) - body_start < count * dt.itemsize:
            raise ValueError(f"PLY body is truncated: {len(data) - body_start} bytes for {count} vertices of "
                             f"{dt.itemsize} bytes")
        arr = np.frombuffer(data, dtype=dt, count=count, offset=body_start)
        rec = {n: arr[n].astype(arr[n].dtype.newbyteorder("=")) for n in names}
    else:
        raise ValueError(f"unsupported PLY format {fmt!r}")
    coords = np.round(np.stack([rec["x"], rec["y"], rec["z"]], axis=1)).astype(np.int32)
    groups: Dict[str, Dict[int, np.ndarray]] = {}
    for n in names:
        if n in ("x", "y", "z"):
            continue
        base, _, idx = n.rpartition("_")
        if not base or not idx.isdigit():
            base, idx = n, "0"
        groups.setdefault(base, {})[int(idx)] = rec[n]
    attrs = {k: np.stack([ch[j] for j in sorted(ch)], axis=1) for k, ch in groups.items()}
    return coords, attrs
