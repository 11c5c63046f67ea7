"""Narrow-band dual-contouring remesh (CuMesh ``remesh_narrow_band_dc``, TRELLIS2_SPEC §3.7 step 2), CPU version.

The input triangle soup (any orientation, open or closed, possibly non-manifold) is replaced by the offset surface
``{x : UDF(x) = eps}`` of its exact unsigned distance field, extracted on a regular grid of ``resolution³`` cells that
spans the cube ``center ± scale/2``, with ``eps = band·scale/resolution`` (``band`` cells):

1. coarse-to-fine octree refinement from a base level of at most 32 cells per axis: a cell (size ``c``, centre
   ``m``) is kept, and split into 8 children, while ``|UDF(m) − eps| < 0.87·c`` (0.87 ≥ √3/2, the half diagonal:
   since the UDF is 1-Lipschitz, a dropped cell cannot hold a point of the isosurface). No dense ``R³`` grid is ever built;
2. the exact UDF at the corners of the finest kept cells (point–triangle distance through a bucket hash of the
   triangles, queries bounded to the radius that the decision needs; numba, parallel over points);
3. "simple DC" of ``f = UDF − eps``: one dual vertex per cell = mean of the linear crossings on its sign-changing
   edges; one quad per sign-changing grid edge joining its 4 cells, oriented so that its normal points from
   ``f < 0`` (the band around the input) to ``f ≥ 0``, split into two triangles along the flatter diagonal (the one
   whose two triangle normals agree best);
4. optionally each vertex moves by the fraction ``project_back`` towards its closest point on the input surface.

The output is closed and consistently oriented with outward normals (a closed input gives two shells: the outer one
at distance ``eps`` and the inner one, facing the input, also at ``eps``; an open sheet gives one thin shell around
it).

Grid frame used internally: ``g = (x − (center − scale/2)) / h``, ``h = scale/resolution``, so cells have unit size
and grid vertex ``(i, j, k)`` sits at ``g = (i, j, k)``.
"""
from __future__ import annotations

import math
from typing import Tuple

import numpy as np
from numba import njit, prange

from .mesh import validate_mesh

__all__ = ["remesh_narrow_band_dc", "closest_points"]

_BASE_MAX = 32          # base level has at most this many cells per axis
_KEEP = 0.87            # keep factor of the refinement test (≥ √3/2)


# ----------------------------------------------------------------------------------------------------------------
# exact point-triangle closest point (numba)
# ----------------------------------------------------------------------------------------------------------------

@njit(cache=True, inline="always")
def _closest_on_segment(px, py, pz, ax, ay, az, bx, by, bz):
    dx = bx - ax; dy = by - ay; dz = bz - az
    dd = dx * dx + dy * dy + dz * dz
    t = 0.0
    if dd > 0.0:
        t = ((px - ax) * dx + (py - ay) * dy + (pz - az) * dz) / dd
        t = min(max(t, 0.0), 1.0)
    return ax + t * dx, ay + t * dy, az + t * dz


@njit(cache=True)
def _closest_on_triangle(px, py, pz, t):
    """Closest point to ``p`` on triangle ``t`` (9 floats: a, b, c), by Voronoi regions of the vertices, the
    edges and the face; degenerate (zero-area) triangles fall back to their three segments."""
    ax = t[0]; ay = t[1]; az = t[2]
    bx = t[3]; by = t[4]; bz = t[5]
    cx = t[6]; cy = t[7]; cz = t[8]
    abx = bx - ax; aby = by - ay; abz = bz - az
    acx = cx - ax; acy = cy - ay; acz = cz - az
    apx = px - ax; apy = py - ay; apz = pz - az
    d1 = abx * apx + aby * apy + abz * apz
    d2 = acx * apx + acy * apy + acz * apz
    if d1 <= 0.0 and d2 <= 0.0:
        return ax, ay, az
    bpx = px - bx; bpy = py - by; bpz = pz - bz
    d3 = abx * bpx + aby * bpy + abz * bpz
    d4 = acx * bpx + acy * bpy + acz * bpz
    if d3 >= 0.0 and d4 <= d3:
        return bx, by, bz
    vc = d1 * d4 - d3 * d2
    if vc <= 0.0 and d1 >= 0.0 and d3 <= 0.0 and d1 - d3 > 0.0:
        s = d1 / (d1 - d3)
        return ax + s * abx, ay + s * aby, az + s * abz
    cpx = px - cx; cpy = py - cy; cpz = pz - cz
    d5 = abx * cpx + aby * cpy + abz * cpz
    d6 = acx * cpx + acy * cpy + acz * cpz
    if d6 >= 0.0 and d5 <= d6:
        return cx, cy, cz
    vb = d5 * d2 - d1 * d6
    if vb <= 0.0 and d2 >= 0.0 and d6 <= 0.0 and d2 - d6 > 0.0:
        s = d2 / (d2 - d6)
        return ax + s * acx, ay + s * acy, az + s * acz
    va = d3 * d6 - d5 * d4
    if va <= 0.0 and d4 - d3 >= 0.0 and d5 - d6 >= 0.0 and (d4 - d3) + (d5 - d6) > 0.0:
        s = (d4 - d3) / ((d4 - d3) + (d5 - d6))
        return bx + s * (cx - bx), by + s * (cy - by), bz + s * (cz - bz)
    den = va + vb + vc
    if den > 1e-300:
        v = vb / den
        w = vc / den
        return ax + abx * v + acx * w, ay + aby * v + acy * w, az + abz * v + acz * w
    # degenerate triangle: closest of the three segments
    best = np.inf
    rx = ax; ry = ay; rz = az
    for e in range(3):
        if e == 0:
            qx, qy, qz = _closest_on_segment(px, py, pz, ax, ay, az, bx, by, bz)
        elif e == 1:
            qx, qy, qz = _closest_on_segment(px, py, pz, bx, by, bz, cx, cy, cz)
        else:
            qx, qy, qz = _closest_on_segment(px, py, pz, cx, cy, cz, ax, ay, az)
        d = (qx - px) ** 2 + (qy - py) ** 2 + (qz - pz) ** 2
        if d < best:
            best = d
            rx = qx; ry = qy; rz = qz
    return rx, ry, rz


@njit(cache=True, parallel=True)
def _query(points, tris, tbox, ukeys, starts, tri_ids, bucket, nb, radius, out_d, out_c):
    """Bounded unsigned distance: ``out_d[i] = min(radius, dist(points[i], surface))`` and ``out_c[i]`` the closest
    point (``points[i]`` itself when nothing lies within ``radius``). Requires ``2·radius ≤ bucket``: the ball then
    meets at most 2 buckets per axis, the bucket of the point and the neighbour on the side of its nearer face."""
    nk = nb + 2
    r2 = radius * radius
    for i in prange(points.shape[0]):
        px = points[i, 0]; py = points[i, 1]; pz = points[i, 2]
        best = r2
        cx = px; cy = py; cz = pz
        fx = px / bucket; fy = py / bucket; fz = pz / bucket
        bx = math.floor(fx); by = math.floor(fy); bz = math.floor(fz)
        sx = -1 if fx - bx < 0.5 else 1
        sy = -1 if fy - by < 0.5 else 1
        sz = -1 if fz - bz < 0.5 else 1
        for n in range(8):
            kx = int(bx) + (sx if (n & 4) else 0)
            ky = int(by) + (sy if (n & 2) else 0)
            kz = int(bz) + (sz if (n & 1) else 0)
            if kx < -1 or ky < -1 or kz < -1 or kx > nb or ky > nb or kz > nb:
                continue
            key = ((kx + 1) * nk + (ky + 1)) * nk + (kz + 1)
            j = np.searchsorted(ukeys, key)
            if j >= ukeys.shape[0] or ukeys[j] != key:
                continue
            for s in range(starts[j], starts[j + 1]):
                t = tri_ids[s]
                # squared distance to the triangle's box: cheap rejection
                dx = max(tbox[t, 0] - px, 0.0, px - tbox[t, 3])
                dy = max(tbox[t, 1] - py, 0.0, py - tbox[t, 4])
                dz = max(tbox[t, 2] - pz, 0.0, pz - tbox[t, 5])
                if dx * dx + dy * dy + dz * dz >= best:
                    continue
                qx, qy, qz = _closest_on_triangle(px, py, pz, tris[t])
                d = (qx - px) ** 2 + (qy - py) ** 2 + (qz - pz) ** 2
                if d < best:
                    best = d
                    cx = qx; cy = qy; cz = qz
        out_d[i] = math.sqrt(best)
        out_c[i, 0] = cx; out_c[i, 1] = cy; out_c[i, 2] = cz


class _TriangleHash:
    """Triangles bucketed on a cubic grid of side ``bucket`` (grid units); a triangle is listed in every bucket its
    bounding box overlaps, bucket coordinates clipped to ``[-1, nb]`` (queries lie in ``[0, nb·bucket]``, so a
    triangle beyond bucket −1 or ``nb`` is farther than ``bucket`` from any query)."""

    def __init__(self, tris: np.ndarray, tbox: np.ndarray, bucket: float, extent: float):
        self.tris, self.tbox, self.bucket = tris, tbox, float(bucket)
        self.nb = int(math.ceil(extent / bucket)) + 1
        lo = np.clip(np.floor(tbox[:, :3] / bucket), -1, self.nb).astype(np.int64)
        hi = np.clip(np.floor(tbox[:, 3:] / bucket), -1, self.nb).astype(np.int64)
        span = hi - lo + 1
        cnt = span.prod(1)
        tid = np.repeat(np.arange(len(tris), dtype=np.int64), cnt)
        local = np.arange(cnt.sum(), dtype=np.int64) - np.repeat(np.cumsum(cnt) - cnt, cnt)
        sp = span[tid]
        dz = local % sp[:, 2]
        dy = (local // sp[:, 2]) % sp[:, 1]
        dx = local // (sp[:, 2] * sp[:, 1])
        nk = self.nb + 2
        b = lo[tid] + np.stack([dx, dy, dz], 1) + 1
        keys = (b[:, 0] * nk + b[:, 1]) * nk + b[:, 2]
        order = np.argsort(keys, kind="stable")
        keys = keys[order]
        self.tri_ids = tid[order]
        self.ukeys, first = np.unique(keys, return_index=True)
        self.starts = np.append(first, len(keys)).astype(np.int64)

    def query(self, points: np.ndarray, radius: float) -> Tuple[np.ndarray, np.ndarray]:
        if 2 * radius > self.bucket * (1 + 1e-12):
            raise ValueError(f"query radius {radius} exceeds half the bucket size {self.bucket}")
        pts = np.ascontiguousarray(points, np.float64)
        d = np.empty(len(pts), np.float64)
        c = np.empty((len(pts), 3), np.float64)
        if len(pts):
            _query(pts, self.tris, self.tbox, self.ukeys, self.starts, self.tri_ids, self.bucket, self.nb,
                   float(radius), d, c)
        return d, c


def _prepare(vertices, faces):
    v = np.asarray(vertices.detach().cpu().numpy() if hasattr(vertices, "detach") else vertices, np.float64)
    f = np.asarray(faces.detach().cpu().numpy() if hasattr(faces, "detach") else faces)
    validate_mesh(v, f, bound=None)
    return v, f.astype(np.int64)


def closest_points(points, vertices, faces, max_distance: float) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Closest points on a triangle mesh, for queries within ``max_distance`` of it.

    Args:
        points: float ``[P, 3]``; vertices ``[V, 3]``, faces int ``[F, 3]`` (any orientation), same frame.
        max_distance: search radius (> 0, same units).
    Returns:
        ``(closest [P, 3], distance [P], found [P] bool)``; where nothing lies within ``max_distance`` the point is
        returned unchanged with ``distance = max_distance`` and ``found = False``.
    Raises:
        ValueError: bad shapes, indices or a non-positive radius.
    """
    v, f = _prepare(vertices, faces)
    if not max_distance > 0:
        raise ValueError(f"max_distance must be > 0, got {max_distance}")
    p = np.asarray(points, np.float64).reshape(-1, 3)
    origin = np.minimum(v.min(0), p.min(0) if len(p) else v.min(0)) - max_distance
    extent = float(np.max(np.maximum(v.max(0), p.max(0) if len(p) else v.max(0)) - origin)) + max_distance
    tris = np.ascontiguousarray((v - origin)[f].reshape(-1, 9))
    tri3 = tris.reshape(-1, 3, 3)
    tbox = np.ascontiguousarray(np.concatenate([tri3.min(1), tri3.max(1)], 1))
    h = _TriangleHash(tris, tbox, 2 * max_distance, extent)
    d, c = h.query(p - origin, max_distance)
    found = d < max_distance
    return c + origin, d, found


# ----------------------------------------------------------------------------------------------------------------
# dual contouring
# ----------------------------------------------------------------------------------------------------------------

# the 12 cell edges as (corner a, corner b); corner index = 4·dx + 2·dy + dz
_EDGES = np.array([[0, 4], [2, 6], [1, 5], [3, 7],      # along x
                   [0, 2], [4, 6], [1, 3], [5, 7],      # along y
                   [0, 1], [4, 5], [2, 3], [6, 7]],     # along z
                  np.int64)
_CORNERS = np.array([[(c >> 2) & 1, (c >> 1) & 1, c & 1] for c in range(8)], np.int64)


@njit(cache=True, parallel=True)
def _dual_vertices(cells, corner_idx, fval, edges, corners, out):
    """``out[i]`` = mean of the crossings of ``f`` on the sign-changing edges of cell ``i`` (grid frame); the cell
    centre when none changes sign (such vertices are later dropped, no quad uses them)."""
    for i in prange(cells.shape[0]):
        sx = 0.0; sy = 0.0; sz = 0.0
        n = 0
        for e in range(12):
            a = edges[e, 0]; b = edges[e, 1]
            fa = fval[corner_idx[i, a]]; fb = fval[corner_idx[i, b]]
            if (fa < 0.0) != (fb < 0.0):
                t = fa / (fa - fb)
                sx += corners[a, 0] + t * (corners[b, 0] - corners[a, 0])
                sy += corners[a, 1] + t * (corners[b, 1] - corners[a, 1])
                sz += corners[a, 2] + t * (corners[b, 2] - corners[a, 2])
                n += 1
        if n > 0:
            out[i, 0] = cells[i, 0] + sx / n
            out[i, 1] = cells[i, 1] + sy / n
            out[i, 2] = cells[i, 2] + sz / n
        else:
            out[i, 0] = cells[i, 0] + 0.5
            out[i, 1] = cells[i, 1] + 0.5
            out[i, 2] = cells[i, 2] + 0.5


def _cell_keys(c: np.ndarray, n: int) -> np.ndarray:
    return (c[:, 0] * n + c[:, 1]) * n + c[:, 2]


def _split_quads(pos: np.ndarray, quads: np.ndarray) -> np.ndarray:
    """Quads ``[M, 4]`` (counter-clockwise) → triangles ``[2M, 3]``, each split along the diagonal whose two
    triangles have the most aligned normals (the flatter split)."""
    p = pos[quads]

    def cos(n1, n2):
        return np.einsum("ij,ij->i", n1, n2) / (np.linalg.norm(n1, axis=1) * np.linalg.norm(n2, axis=1) + 1e-30)

    c02 = cos(np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]), np.cross(p[:, 2] - p[:, 0], p[:, 3] - p[:, 0]))
    c13 = cos(np.cross(p[:, 1] - p[:, 0], p[:, 3] - p[:, 0]), np.cross(p[:, 2] - p[:, 1], p[:, 3] - p[:, 1]))
    use02 = c02 >= c13
    q = quads
    t1 = np.where(use02[:, None], q[:, [0, 1, 2]], q[:, [0, 1, 3]])
    t2 = np.where(use02[:, None], q[:, [0, 2, 3]], q[:, [1, 2, 3]])
    return np.concatenate([t1, t2], 0)


def remesh_narrow_band_dc(vertices, faces, center, scale: float, resolution: int, band: float = 1.0,
                          project_back: float = 0.0, verbose: bool = False) -> Tuple[np.ndarray, np.ndarray]:
    """Offset-surface remesh of a triangle mesh by narrow-band dual contouring (see the module docstring).

    Args:
        vertices: float ``[V, 3]`` (numpy or torch), any frame; faces: int ``[F, 3]``, orientation irrelevant.
        center: ``[3]`` centre of the cubic grid domain; scale: its side (same units as ``vertices``); the input
            should lie inside ``center ± scale/2`` with a margin > ``eps`` (parts outside are not contoured).
        resolution: cells per axis ``R`` of the finest grid (cell ``h = scale/R``); any ``R ≥ 2``.
        band: offset in cells, ``eps = band·h`` (> 0).
        project_back: in [0, 1]; each output vertex moves this fraction of the way to its closest point on the
            input surface (1 puts them on it).
        verbose: print per-level cell counts.
    Returns:
        ``(vertices float64 [N, 3], faces int64 [M, 3])`` in the input frame: a closed, consistently oriented
        triangle mesh (normals point away from the input surface).
    Raises:
        ValueError: bad shapes/indices/non-finite input, ``resolution < 2``, ``band ≤ 0``, ``scale ≤ 0``,
        ``project_back`` outside [0, 1], or an empty result (the input lies outside the domain).
    """
    v, f = _prepare(vertices, faces)
    R = int(resolution)
    if R < 2:
        raise ValueError(f"resolution must be >= 2, got {resolution}")
    if not band > 0:
        raise ValueError(f"band must be > 0, got {band}")
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    if not 0.0 <= project_back <= 1.0:
        raise ValueError(f"project_back must be in [0, 1], got {project_back}")
    center = np.asarray(center.detach().cpu().numpy() if hasattr(center, "detach") else center,
                        np.float64).reshape(3)
    h = float(scale) / R
    origin = center - float(scale) / 2
    band = float(band)

    # triangles in the grid frame
    tris = np.ascontiguousarray(((v - origin) / h)[f].reshape(-1, 9))
    tri3 = tris.reshape(-1, 3, 3)
    tbox = np.ascontiguousarray(np.concatenate([tri3.min(1), tri3.max(1)], 1))

    levels = 0
    while math.ceil(R / 2 ** levels) > _BASE_MAX:
        levels += 1
    n0 = math.ceil(R / 2 ** levels)
    cells = np.stack(np.meshgrid(*[np.arange(n0)] * 3, indexing="ij"), -1).reshape(-1, 3).astype(np.int64)
    children = _CORNERS
    for lvl in range(levels + 1):
        size = float(2 ** (levels - lvl))
        radius = band + _KEEP * size
        cells = cells[np.all(cells * size < R, axis=1)]          # cells that start inside the domain
        th = _TriangleHash(tris, tbox, 2 * (radius if lvl < levels else band + 1.0), R)
        d, _ = th.query((cells + 0.5) * size, radius)
        cells = cells[np.abs(d - band) < _KEEP * size]
        if verbose:
            print(f"[remesh] level {lvl}: cell {size:g}, kept {len(cells)}")
        if lvl < levels:
            cells = (cells[:, None, :] * 2 + children[None]).reshape(-1, 3)
    if len(cells) == 0:
        raise ValueError("remesh: no cell of the narrow band lies inside the grid domain (check center/scale)")
    skeys = _cell_keys(cells, R)
    order = np.argsort(skeys)                 # lexicographic cell order: output independent of the refinement path
    cells, skeys = cells[order], skeys[order]

    # exact UDF at the corners of the finest cells (sign changes need it within band + 1 cell)
    n1 = R + 1
    ckeys = _cell_keys((cells[:, None, :] + _CORNERS[None]).reshape(-1, 3), n1)
    ukeys, corner_idx = np.unique(ckeys, return_inverse=True)
    corner_idx = corner_idx.reshape(-1, 8).astype(np.int64)
    gpts = np.stack([ukeys // (n1 * n1), (ukeys // n1) % n1, ukeys % n1], 1).astype(np.float64)
    d, _ = th.query(gpts, band + 1.0)
    fval = d - band

    dual = np.empty((len(cells), 3), np.float64)
    _dual_vertices(cells, corner_idx, fval, _EDGES, _CORNERS.astype(np.float64), dual)

    # one quad per sign-changing edge, from the edges leaving each cell's minimum corner
    inside0 = fval[corner_idx[:, 0]] < 0
    quads = []
    # (axis, far corner of the edge, the (u, v) axes with u × v = +axis)
    for axis, far, (u, w) in ((0, 4, (1, 2)), (1, 2, (2, 0)), (2, 1, (0, 1))):
        ch = np.nonzero(inside0 != (fval[corner_idx[:, far]] < 0))[0]
        if len(ch) == 0:
            continue
        ring = []
        for du, dw in ((-1, -1), (0, -1), (0, 0), (-1, 0)):     # counter-clockwise seen from +axis
            nc = cells[ch].copy()
            nc[:, u] += du
            nc[:, w] += dw
            ok = np.all(nc >= 0, axis=1)
            k = _cell_keys(np.maximum(nc, 0), R)
            j = np.minimum(np.searchsorted(skeys, k), len(skeys) - 1)
            ok &= skeys[j] == k
            ring.append(np.where(ok, j, -1))
        q = np.stack(ring, 1)
        ok = np.all(q >= 0, axis=1)               # all 4 cells exist unless the edge touches the domain border
        q = q[ok]
        flip = ~inside0[ch][ok]                    # f ≥ 0 at the min corner: the normal points along −axis
        q[flip] = q[flip][:, ::-1]
        quads.append(q)
    if not quads:
        raise ValueError("remesh: the offset surface is empty (input outside the grid domain?)")
    quads = np.concatenate(quads, 0)

    tri = _split_quads(dual, quads)
    used, tri = np.unique(tri, return_inverse=True)
    tri = tri.reshape(-1, 3).astype(np.int64)
    out_v = dual[used] * h + origin

    if project_back > 0:
        c, dist, found = closest_points(out_v, v, f, max_distance=(band + 2.0) * h)
        out_v = np.where(found[:, None], out_v + project_back * (c - out_v), out_v)
    return out_v, tri
