"""Texture baking on the CPU: UV-space rasterisation and sparse-volume attribute lookup (TRELLIS2_SPEC §3.7 step 5).

Replaces the reference's nvdiffrast pass: each triangle is rasterised in UV space at ``S × S`` texels, a texel being
covered when its centre lies inside the triangle. Image row 0 is the top of the texture, i.e. glTF ``v = 0``.
"""
from __future__ import annotations

from typing import Tuple

import numba
import numpy as np

__all__ = ["rasterize_uv", "sample_attr_volume", "inpaint_texture"]


@numba.njit(cache=True)
def _raster(uv_px, faces, size, face_id, bary):
    for f in range(faces.shape[0]):
        a, b, c = faces[f, 0], faces[f, 1], faces[f, 2]
        x0, y0 = uv_px[a, 0], uv_px[a, 1]
        x1, y1 = uv_px[b, 0], uv_px[b, 1]
        x2, y2 = uv_px[c, 0], uv_px[c, 1]
        area = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
        if area == 0.0 or not np.isfinite(area):
            continue
        xmin = max(int(np.floor(min(x0, x1, x2) - 0.5)), 0)
        xmax = min(int(np.ceil(max(x0, x1, x2) - 0.5)), size - 1)
        ymin = max(int(np.floor(min(y0, y1, y2) - 0.5)), 0)
        ymax = min(int(np.ceil(max(y0, y1, y2) - 0.5)), size - 1)
        for j in range(ymin, ymax + 1):
            py = j + 0.5
            for i in range(xmin, xmax + 1):
                px = i + 0.5
                w0 = ((x1 - px) * (y2 - py) - (x2 - px) * (y1 - py)) / area
                w1 = ((x2 - px) * (y0 - py) - (x0 - px) * (y2 - py)) / area
                w2 = 1.0 - w0 - w1
                if w0 >= 0.0 and w1 >= 0.0 and w2 >= 0.0:
                    face_id[j, i] = f
                    bary[j, i, 0] = w0
                    bary[j, i, 1] = w1
                    bary[j, i, 2] = w2


def rasterize_uv(uv: np.ndarray, faces: np.ndarray, size: int) -> Tuple[np.ndarray, np.ndarray]:
    """Rasterise a UV layout.

    Args:
        uv: float ``[V, 2]`` in glTF convention (u right, v down from the image top), nominally in [0, 1].
        faces: int ``[F, 3]``; size: texture side ``S``.
    Returns:
        ``face_id`` int32 ``[S, S]`` (−1 where no triangle covers the texel centre) and ``bary`` float32
        ``[S, S, 3]`` barycentric weights of the covering triangle's vertices.
    """
    if size < 1:
        raise ValueError(f"texture size must be positive, got {size}")
    face_id = np.full((size, size), -1, np.int32)
    bary = np.zeros((size, size, 3), np.float32)
    _raster(np.ascontiguousarray(uv, np.float64) * size, np.ascontiguousarray(faces, np.int64), size, face_id, bary)
    return face_id, bary


def sample_attr_volume(attrs: np.ndarray, coords: np.ndarray, points: np.ndarray, aabb: np.ndarray,
                       voxel_size: np.ndarray, mode: str = "trilinear", chunk: int = 1 << 20) -> np.ndarray:
    """Sample a sparse attribute volume at world points (§1.9, via ``pixal3d.sparse.grid_sample_3d``).

    Args:
        attrs: float ``[L, C]``; coords: int ``[L, 3]`` voxel indices; points: float ``[P, 3]`` world positions.
        aabb: ``[2, 3]``; voxel_size: ``[3]``; query in voxel units is ``(p − aabb_min) / voxel_size``.
        mode: 'trilinear' (8 neighbours, inactive ones weight 0, renormalised) or 'nearest'.
    Returns:
        float32 ``[P, C]``; points with no active neighbour get 0.
    """
    import torch
    from pixal3d.sparse import grid_sample_3d

    coords = np.asarray(coords, np.int64)
    feats = torch.from_numpy(np.ascontiguousarray(attrs, np.float32))
    c4 = torch.from_numpy(np.concatenate([np.zeros((len(coords), 1), np.int64), coords], axis=1))
    dims = (coords.max(0) + 2).tolist() if len(coords) else [1, 1, 1]
    shape = [1, feats.shape[1]] + dims
    q = (np.asarray(points, np.float64) - np.asarray(aabb, np.float64)[0]) / np.asarray(voxel_size, np.float64)
    out = np.zeros((len(q), feats.shape[1]), np.float32)
    with torch.no_grad():
        for s in range(0, len(q), chunk):
            grid = torch.from_numpy(q[s:s + chunk].astype(np.float32))[None]
            out[s:s + chunk] = grid_sample_3d(feats, c4, shape, grid, mode=mode)[0].numpy()
    return out


def inpaint_texture(image: np.ndarray, filled: np.ndarray, radius: int) -> np.ndarray:
    """Fill the texels where ``filled`` is False from their neighbours (OpenCV TELEA, as the reference).

    Args:
        image: uint8 ``[S, S]`` or ``[S, S, C]``; filled: bool ``[S, S]``; radius: TELEA neighbourhood radius.
    """
    import cv2
    mask = (~filled).astype(np.uint8)
    if not mask.any() or filled.sum() == 0:
        return image
    if image.ndim == 2 or image.shape[2] in (1, 3):
        return cv2.inpaint(np.ascontiguousarray(image), mask, radius, cv2.INPAINT_TELEA).reshape(image.shape)
    return np.concatenate([inpaint_texture(image[..., i:i + 1], filled, radius) for i in range(image.shape[2])],
                          axis=2)
