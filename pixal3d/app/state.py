"""The hand-over file between the demo's ``/generate`` and ``/extract_glb`` endpoints.

``/generate`` decodes the asset and stores it as a compressed ``.npz`` (plain arrays, loaded with
``allow_pickle=False``, so a file sent back by an API client is never unpickled); ``/extract_glb`` reads it and bakes
the GLB with the requested texture size and face budget, so different export settings do not need a new generation.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Tuple

import numpy as np

__all__ = ["save_generation", "load_generation", "STATE_VERSION"]

STATE_VERSION = 1
_ARRAYS = ("vertices", "faces", "coords", "attrs", "aabb", "voxel_size")


def save_generation(path, mesh, resolution: int, meta: Dict[str, Any]) -> Path:
    """Writes one decoded asset (a :class:`~pixal3d.ovoxel.mesh.MeshWithVoxel`) plus JSON-able ``meta`` to ``path``."""
    path = Path(path)
    layout = {k: [s.start, s.stop] for k, s in mesh.layout.items()}
    header = {"version": STATE_VERSION, "resolution": int(resolution), "layout": layout, "meta": meta}
    np.savez_compressed(path, header=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8),
                        **{k: np.asarray(getattr(mesh, k)) for k in _ARRAYS})
    return path


def load_generation(path) -> Tuple[Any, int, Dict[str, Any]]:
    """Reads a file written by :func:`save_generation`.

    Returns:
        ``(mesh, resolution, meta)`` with ``mesh`` a :class:`~pixal3d.ovoxel.mesh.MeshWithVoxel`.

    Raises:
        ValueError: not such a file (wrong format, missing arrays, other version, inconsistent shapes).
    """
    from ..ovoxel.mesh import MeshWithVoxel

    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in _ARRAYS}
            header = json.loads(bytes(data["header"]).decode())
    except (OSError, KeyError, ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"not a Pixal3D generation file (.npz from /generate): {e}") from e
    if header.get("version") != STATE_VERSION:
        raise ValueError(f"generation file version {header.get('version')!r} is not supported "
                         f"(expected {STATE_VERSION}); generate again")
    layout = {k: slice(int(a), int(b)) for k, (a, b) in header["layout"].items()}
    try:
        mesh = MeshWithVoxel(layout=layout, **arrays)
    except (TypeError, ValueError) as e:
        raise ValueError(f"corrupt generation file: {e}") from e
    return mesh, int(header["resolution"]), dict(header.get("meta", {}))
