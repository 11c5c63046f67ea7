"""Stored quantisation of dual-grid O-Voxels (TRELLIS2_SPEC §3.3, ``data_toolkit/dual_grid.py``).

``dual_vertices`` are in the shifted world frame of ``aabb = [-0.5, 0.5]³`` (i.e. ``v − aabb_min`` ∈ [0, 1]³) as
returned by ``mesh_to_flexible_dual_grid``; the stored value is the vertex offset inside its voxel,
``(clamp(v·R − index, 0, 1)·255)`` truncated to uint8. Flags pack as ``ix + 2·iy + 4·iz``.
"""
from __future__ import annotations

import numpy as np

__all__ = ["quantize_dual_vertices", "dequantize_dual_vertices", "pack_intersected", "unpack_intersected"]


def quantize_dual_vertices(dual_vertices: np.ndarray, coords: np.ndarray, grid_size: int,
                           tolerance: float = 1e-3) -> np.ndarray:
    """Dual vertices (float ``[N, 3]``, shifted frame in [0, 1]³) → uint8 ``[N, 3]`` offsets inside each voxel.

    ``local = dual_vertices·R − coords`` must lie in ``[−tol, 1 + tol]`` (the reference asserts this), then it is
    clamped to [0, 1] and ``(local·255)`` is truncated. Raises ``ValueError`` for shape mismatches or a vertex
    outside its voxel (wrong frame: pass ``v − aabb_min``, not ``v``).
    """
    v = np.asarray(dual_vertices, dtype=np.float64)
    c = np.asarray(coords)
    if v.shape != c.shape or v.ndim != 2 or v.shape[1] != 3:
        raise ValueError(f"dual_vertices and coords must both be [N, 3], got {v.shape} and {c.shape}")
    local = v * float(grid_size) - c
    if local.size and (local.min() < -tolerance or local.max() > 1 + tolerance):
        bad = int(((local < -tolerance) | (local > 1 + tolerance)).any(1).sum())
        raise ValueError(f"{bad} dual vertices lie outside their voxels (local offsets in [{local.min():.4f}, "
                         f"{local.max():.4f}]); dual_vertices must be in the shifted frame v - aabb_min with "
                         f"grid_size={grid_size}")
    return (np.clip(local, 0.0, 1.0) * 255).astype(np.uint8)


def dequantize_dual_vertices(q: np.ndarray, coords: np.ndarray = None, grid_size: int = None) -> np.ndarray:
    """uint8 ``[N, 3]`` → float32 offsets ``q/255`` (what the dataset feeds the VAE); with ``coords`` and
    ``grid_size`` → float32 shifted-frame positions ``(coords + q/255)/R``."""
    local = np.asarray(q, dtype=np.float32) / np.float32(255.0)
    if coords is None:
        return local
    if grid_size is None:
        raise ValueError("grid_size is required together with coords")
    return ((np.asarray(coords, np.float32) + local) / np.float32(grid_size)).astype(np.float32)


def pack_intersected(intersected: np.ndarray) -> np.ndarray:
    """bool ``[N, 3]`` → uint8 ``[N, 1]`` = ``ix + 2·iy + 4·iz``."""
    f = np.asarray(intersected)
    if f.ndim != 2 or f.shape[1] != 3:
        raise ValueError(f"intersected must be [N, 3], got {f.shape}")
    f = f.astype(bool).astype(np.uint8)
    return (f[:, 0] + 2 * f[:, 1] + 4 * f[:, 2]).astype(np.uint8)[:, None]


def unpack_intersected(packed: np.ndarray) -> np.ndarray:
    """uint8 ``[N]`` or ``[N, 1]`` → bool ``[N, 3]`` = ``[v % 2, v // 2 % 2, v // 4 % 2]``."""
    v = np.asarray(packed).reshape(-1).astype(np.int64)
    if v.size and (v.min() < 0 or v.max() > 7):
        raise ValueError(f"packed flags must be in [0, 7], got [{v.min()}, {v.max()}]")
    return np.stack([v % 2, v // 2 % 2, v // 4 % 2], axis=1).astype(bool)
