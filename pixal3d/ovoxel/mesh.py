"""Mesh loading, normalisation and validation (TRELLIS2_SPEC §3.1), plus a mesh-with-voxel-attributes container.

Frames: assets are normalised into the cube ``[-0.5, 0.5]³`` with ``center = (min + max)/2`` and
``scale = 0.99999 / max(max − min)``; voxel grids use ``aabb = [[-0.5]*3, [0.5]*3]``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Tuple, Union

import numpy as np

__all__ = ["load_mesh", "normalize_vertices", "normalize_scene", "validate_mesh", "MeshWithVoxel",
           "NORMALIZE_MARGIN"]

NORMALIZE_MARGIN = 0.99999
_SUPPORTED = (".glb", ".gltf", ".obj", ".ply", ".stl", ".off")


def load_mesh(path: Union[str, Path]):
    """Load a mesh file as a ``trimesh.Scene`` (node transforms kept, materials/textures loaded).

    Supports ``.glb``, ``.gltf``, ``.obj`` (+ ``.mtl``), ``.ply``, ``.stl``, ``.off``.
    Raises ``FileNotFoundError`` for a missing file, ``ValueError`` for an unsupported extension, a file trimesh
    cannot parse, or one without any triangle.
    """
    import trimesh

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mesh file not found: {path}")
    if path.suffix.lower() not in _SUPPORTED:
        raise ValueError(f"unsupported mesh format {path.suffix!r} for {path}; supported: {', '.join(_SUPPORTED)}")
    try:
        scene = trimesh.load(str(path), force="scene")
    except Exception as exc:  # trimesh raises many different types for corrupt files
        raise ValueError(f"could not read {path} as {path.suffix[1:].upper()}: {type(exc).__name__}: {exc}. "
                         "Is the file corrupt or truncated?") from exc
    n_faces = sum(len(g.faces) for g in scene.geometry.values() if isinstance(g, trimesh.Trimesh))
    if n_faces == 0:
        raise ValueError(f"{path} contains no triangles (only points/lines, or it is empty)")
    return scene


def normalize_vertices(vertices: np.ndarray) -> Tuple[np.ndarray, np.ndarray, float]:
    """Centre and scale vertices into ``[-0.5, 0.5]³`` (§3.1).

    Args:
        vertices: float ``[V, 3]``.
    Returns:
        ``(v', center float64 [3], scale float)`` with ``v' = (v − center)·scale``, ``center = (min + max)/2``,
        ``scale = 0.99999 / max(max − min)``; ``v'`` keeps the input's float dtype (float64 for integer input).
    Raises:
        ValueError: empty input, wrong shape, non-finite values, or zero extent (a single point).
    """
    v = np.asarray(vertices)
    if v.ndim != 2 or v.shape[1] != 3:
        raise ValueError(f"vertices must have shape [V, 3], got {v.shape}")
    if len(v) == 0:
        raise ValueError("cannot normalise an empty vertex array")
    if not np.all(np.isfinite(v)):
        raise ValueError(f"vertices contain {int((~np.isfinite(v)).any(1).sum())} rows with NaN/inf; "
                         "remove or repair them first")
    lo, hi = v.min(0).astype(np.float64), v.max(0).astype(np.float64)
    extent = float((hi - lo).max())
    if extent <= 0:
        raise ValueError("all vertices coincide (zero extent); nothing to normalise")
    center = (lo + hi) / 2
    scale = NORMALIZE_MARGIN / extent
    out_dtype = v.dtype if np.issubdtype(v.dtype, np.floating) else np.float64
    return ((v - center) * scale).astype(out_dtype), center, scale


def normalize_scene(scene):
    """Apply the §3.1 normalisation to a ``trimesh.Scene`` in place (as the fixtures do) and return it.

    ``scene.apply_transform(S·T)`` with ``T`` translating the bbox centre to the origin and ``S`` scaling by
    ``0.99999 / max extent``. Raises ``ValueError`` for an empty or zero-extent scene.
    """
    bounds = scene.bounds
    if bounds is None:
        raise ValueError("scene has no geometry to normalise")
    bounds = np.asarray(bounds, dtype=np.float64)
    extent = float((bounds[1] - bounds[0]).max())
    if not np.isfinite(extent) or extent <= 0:
        raise ValueError(f"scene bounds {bounds.tolist()} are degenerate or non-finite")
    t = np.eye(4)
    t[:3, 3] = -(bounds[0] + bounds[1]) / 2
    s = np.eye(4)
    s[:3, :3] *= NORMALIZE_MARGIN / extent
    scene.apply_transform(s @ t)
    return scene


def validate_mesh(vertices: np.ndarray, faces: np.ndarray, bound: float = 0.5) -> None:
    """Check a triangle mesh before voxelisation/export; raises ``ValueError`` naming the problem.

    Args:
        vertices: float ``[V, 3]``; faces: int ``[F, 3]``.
        bound: vertices must lie in ``[-bound, bound]³`` (the normalised frame, §3.1); ``None`` skips the check.
    Checks: shapes, at least one face, finite vertices, face indices in range, at least one non-degenerate
    (positive-area) face, and the bound.
    """
    v = np.asarray(vertices)
    f = np.asarray(faces)
    if v.ndim != 2 or v.shape[1] != 3:
        raise ValueError(f"vertices must have shape [V, 3], got {v.shape}")
    if f.ndim != 2 or f.shape[1] != 3:
        raise ValueError(f"faces must have shape [F, 3] (triangles), got {f.shape}")
    if len(f) == 0:
        raise ValueError("the mesh has no faces")
    if not np.issubdtype(f.dtype, np.integer):
        raise ValueError(f"faces must be integer indices, got dtype {f.dtype}")
    if not np.all(np.isfinite(v)):
        raise ValueError(f"{int((~np.isfinite(v)).any(1).sum())} vertices are NaN/inf; repair the mesh first")
    if f.min() < 0 or f.max() >= len(v):
        raise ValueError(f"face indices must lie in [0, {len(v)}), got [{f.min()}, {f.max()}]")
    tri = v[f].astype(np.float64)
    area2 = np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    if not np.any(area2 > 0):
        raise ValueError("every face is degenerate (zero area); nothing to voxelise or export")
    if bound is not None:
        lo, hi = v.min(0), v.max(0)
        if np.any(lo < -bound) or np.any(hi > bound):
            raise ValueError(f"vertices span {lo.tolist()}..{hi.tolist()}, outside [-{bound}, {bound}]^3; "
                             "normalise them with normalize_vertices() first")


@dataclass
class MeshWithVoxel:
    """A triangle mesh together with a sparse voxel attribute volume (the decoder's output; §3.7 inputs).

    Attributes:
        vertices: float32 ``[V, 3]`` in the Z-up world frame (normally inside ``aabb``).
        faces: int32 ``[F, 3]``.
        coords: int32 ``[L, 3]`` voxel indices of the attribute volume.
        attrs: float32 ``[L, C]`` attribute values in [0, 1].
        layout: name → slice of the ``C`` columns (e.g. ``{'base_color': slice(0, 3), 'metallic': slice(3, 4),
            'roughness': slice(4, 5), 'alpha': slice(5, 6)}``).
        aabb: float32 ``[2, 3]``; voxel_size: float32 ``[3]`` (= ``(aabb[1] − aabb[0]) / grid_size``).
    """
    vertices: np.ndarray
    faces: np.ndarray
    coords: np.ndarray
    attrs: np.ndarray
    layout: Dict[str, slice]
    aabb: np.ndarray = field(default_factory=lambda: np.array([[-0.5] * 3, [0.5] * 3], np.float32))
    voxel_size: np.ndarray = None

    def __post_init__(self):
        self.vertices = np.asarray(self.vertices, np.float32)
        self.faces = np.asarray(self.faces, np.int32)
        self.coords = np.asarray(self.coords, np.int32)
        self.attrs = np.asarray(self.attrs, np.float32)
        self.aabb = np.asarray(self.aabb, np.float32)
        if self.coords.ndim != 2 or self.coords.shape[1] != 3:
            raise ValueError(f"coords must be [L, 3], got {self.coords.shape}")
        if self.attrs.ndim != 2 or len(self.attrs) != len(self.coords):
            raise ValueError(f"attrs must be [L, C] with L = {len(self.coords)}, got {self.attrs.shape}")
        if self.voxel_size is None:
            raise ValueError("voxel_size is required (e.g. (aabb[1] - aabb[0]) / grid_size)")
        self.voxel_size = np.broadcast_to(np.asarray(self.voxel_size, np.float32), (3,)).copy()

    def query_attrs(self, points: np.ndarray, mode: str = "trilinear") -> np.ndarray:
        """Attributes at world points ``[P, 3]`` → float32 ``[P, C]`` via §1.9 sparse sampling."""
        from .uv_bake import sample_attr_volume
        return sample_attr_volume(self.attrs, self.coords, points, self.aabb, self.voxel_size, mode=mode)
