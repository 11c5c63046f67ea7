"""Geometry metrics for comparing a predicted mesh with a ground-truth mesh.

All functions work in float64 numpy and in whatever length unit the vertices are in (after
:func:`normalize_to_unit_cube`, "unit cube" units: the larger bbox side of the mesh is 1).

Conventions (state them when you report numbers):

* **Surface sampling** (:func:`sample_surface`): ``n`` points drawn uniformly *by area* (face chosen with probability
  proportional to its area, then a uniform point inside it via ``sqrt`` barycentrics), deterministic for a given
  ``seed`` (numpy ``default_rng``). Each point carries the unit normal of its face (orientation = the face winding).
* **Chamfer distance** (:func:`chamfer_distance`), with ``d(p, Q) = min_q ||p − q||_2`` found by ``scipy.spatial.cKDTree``:

  - ``'l1'`` (Occupancy-Networks "Chamfer-L1"): ``½·(mean_p d(p,Q) + mean_q d(q,P))`` — the mean *Euclidean*
    distance, in length units. Two concentric spheres of radii r and r' give exactly ``|r − r'|``.
  - ``'l2'``: ``½·(mean_p d(p,Q)² + mean_q d(q,P)²)`` — mean *squared* distance, in length² units.
  - ``reduction='sum'`` adds the two directional terms instead of averaging them (some papers, e.g. the
    TRELLIS/Direct3D family, report the sum: it is exactly 2× the ``'mean'`` value).
* **F-score** at threshold τ (:func:`f_score`): precision = fraction of predicted samples within τ of the GT samples,
  recall = fraction of GT samples within τ of the predicted samples, ``F = 2PR/(P+R)`` (0 when P+R = 0).
* **Normal consistency** (:func:`normal_consistency`): for every sample, ``|n_p · n_q|`` with q its nearest neighbour
  in the other set, averaged per direction and then over both directions. ``oriented=True`` uses ``n_p · n_q``
  (signed) instead — only meaningful when both meshes have consistent outward winding; O-Voxel meshes have arbitrary
  face orientation, so the default is unoriented (the Occupancy-Networks definition). Unoriented, a flipped or
  inconsistently wound mesh still scores ≈ 1; the chance level is **0.5** (``E|cos θ|`` of independent isotropic
  directions), i.e. a score near 0.5 means the normals are uncorrelated with their nearest neighbours' (a
  surface that is wrong or crumpled at the sampling scale), not that they are flipped.
* **Volume IoU** (:func:`volume_iou`): occupancy of both meshes evaluated at the centres of the same ``R³`` voxel grid
  over a box (default: the union of both bboxes, padded by one voxel), ``|A∩B| / |A∪B|``. Three occupancy methods:

  - ``'parity'`` (default): a ray parallel to +z through every (x, y) column of voxel centres is intersected with all
    triangles; a centre is inside when an odd number of crossings lie above it. Exact for watertight (closed,
    non-self-intersecting) meshes; cost O(R²·F). The rays are shifted by a tiny fixed offset (1e-7 of the box size,
    two different irrational multiples in x and y) so they never pass exactly through a mesh edge or vertex.
  - ``'winding'``: a voxel centre is inside when its generalised winding number (sum of signed solid angles
    of the triangles, van Oosterom–Strackee formula, / 4π) exceeds 0.5. Exact for closed meshes and robust to small
    holes / self-intersections; O(R³·F), computed in chunks with torch — fine for R ≤ 64 and F ≤ ~50k.
  - ``'fill'``: the surface is rasterised into the grid (dense barycentric point sampling, spacing < ½ voxel), and the
    interior found by ``scipy.ndimage.binary_fill_holes``; the surface shell voxels count as occupied (≈ +½ voxel of
    thickness: a bias of order 3/R in IoU for unit-size shapes). Fast for large meshes; a hole larger than a voxel
    lets the fill leak (the shape then becomes just its shell).

* **Frames / alignment** (:func:`align_to_frame`, :func:`normalize_to_unit_cube`): Pixal3D outputs live in the
  *view-aligned* frame (PIXAL3D_SPEC §2.1: +x right, +y up, +z towards the conditioning camera) while GT assets are in
  the canonical (Blender Z-up) frame. Nothing is guessed: pass the rotation that maps one into the other
  (e.g. ``pixal3d.conditioning.camera.view_alignment_transform(c2w)[:3, :3]`` maps canonical → view frame, or
  ``R_BACK`` for the front camera). Normalisation to the unit cube centres the bbox and scales its largest side to 1
  (optionally ``0.99999``, the O-Voxel margin of TRELLIS2_SPEC §3.1).
"""
from __future__ import annotations

import math
from typing import Dict, Iterable, Optional, Sequence, Tuple

import numpy as np

__all__ = [
    "as_mesh_arrays", "sample_surface", "chamfer_distance", "nearest_distances", "f_score", "normal_consistency",
    "volume_iou", "occupancy", "winding_number", "normalize_to_unit_cube", "align_to_frame", "evaluate_geometry",
]


# ----------------------------------------------------------------------------------------------------------------------
# input handling
# ----------------------------------------------------------------------------------------------------------------------
def as_mesh_arrays(mesh=None, vertices=None, faces=None) -> Tuple[np.ndarray, np.ndarray]:
    """``(vertices float64 [V, 3], faces int64 [F, 3])`` from a ``trimesh.Trimesh``/``Scene``, a ``(v, f)`` pair or
    objects with ``.vertices``/``.faces`` (torch or numpy).

    A ``trimesh.Scene`` is flattened with its node transforms (``scene.to_geometry()``/``dump(concatenate=True)``).

    Raises:
        ValueError: wrong shapes, no faces, non-finite vertices, out-of-range face indices.
    """
    if mesh is not None:
        try:
            import trimesh
            if isinstance(mesh, trimesh.Scene):
                mesh = (mesh.to_geometry() if hasattr(mesh, "to_geometry") else mesh.dump(concatenate=True))
        except ImportError:  # pragma: no cover - trimesh is a hard dependency
            pass
        if isinstance(mesh, (tuple, list)) and len(mesh) == 2:
            vertices, faces = mesh
        else:
            vertices, faces = mesh.vertices, mesh.faces
    v = _np(vertices, np.float64)
    f = _np(faces, None)
    if v.ndim != 2 or v.shape[1] != 3:
        raise ValueError(f"vertices must be [V, 3], got shape {v.shape}")
    if f.ndim != 2 or f.shape[1] != 3:
        raise ValueError(f"faces must be [F, 3] triangles, got shape {f.shape}")
    if len(f) == 0:
        raise ValueError("mesh has no faces")
    if not np.issubdtype(f.dtype, np.integer):
        raise ValueError(f"faces must hold integer indices, got dtype {f.dtype}")
    f = f.astype(np.int64)
    if f.min() < 0 or f.max() >= len(v):
        raise ValueError(f"face indices must lie in [0, {len(v)}), got [{f.min()}, {f.max()}]")
    if not np.isfinite(v).all():
        raise ValueError("vertices contain NaN/inf")
    return v, f


def _np(x, dtype):
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    return x.astype(dtype) if dtype is not None else x


def _face_geometry(v: np.ndarray, f: np.ndarray):
    tri = v[f]
    cross = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    area2 = np.linalg.norm(cross, axis=1)
    normals = cross / np.maximum(area2, 1e-300)[:, None]
    return tri, 0.5 * area2, normals


# ----------------------------------------------------------------------------------------------------------------------
# sampling and distances
# ----------------------------------------------------------------------------------------------------------------------
def sample_surface(vertices, faces, n: int, seed: int = 0) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Area-weighted uniform samples on a triangle mesh.

    Args:
        vertices: float ``[V, 3]``; faces: int ``[F, 3]``.
        n: number of samples (> 0).
        seed: RNG seed (numpy ``default_rng``); equal seeds give identical samples.

    Returns:
        ``(points float64 [n, 3], normals float64 [n, 3] unit face normals, face_index int64 [n])``.

    Raises:
        ValueError: ``n <= 0`` or the mesh has zero total area.
    """
    v, f = as_mesh_arrays(vertices=vertices, faces=faces)
    if int(n) <= 0:
        raise ValueError(f"n must be a positive sample count, got {n}")
    tri, area, normals = _face_geometry(v, f)
    total = area.sum()
    if not total > 0:
        raise ValueError("mesh has zero surface area; cannot sample it")
    rng = np.random.default_rng(seed)
    fi = rng.choice(len(f), size=int(n), p=area / total)
    r1 = np.sqrt(rng.random(int(n)))
    r2 = rng.random(int(n))
    w0, w1, w2 = 1 - r1, r1 * (1 - r2), r1 * r2
    t = tri[fi]
    pts = w0[:, None] * t[:, 0] + w1[:, None] * t[:, 1] + w2[:, None] * t[:, 2]
    return pts, normals[fi], fi.astype(np.int64)


def nearest_distances(src: np.ndarray, dst: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """For every point of ``src`` ``[N, 3]``, the Euclidean distance to its nearest point of ``dst`` ``[M, 3]`` and
    that point's index: ``(dist float64 [N], index int64 [N])``. Uses ``scipy.spatial.cKDTree``."""
    from scipy.spatial import cKDTree
    src, dst = _np(src, np.float64), _np(dst, np.float64)
    for name, a in (("src", src), ("dst", dst)):
        if a.ndim != 2 or a.shape[1] != 3 or len(a) == 0:
            raise ValueError(f"{name} must be a non-empty [N, 3] point set, got shape {a.shape}")
    d, i = cKDTree(dst).query(src, k=1)
    return d, i.astype(np.int64)


def chamfer_distance(p, q, norm: str = "l1", reduction: str = "mean") -> float:
    """Symmetric Chamfer distance between point sets ``p [N, 3]`` and ``q [M, 3]`` (see module docstring).

    Args:
        norm: ``'l1'`` — mean Euclidean distance (length units); ``'l2'`` — mean squared distance (length²).
        reduction: ``'mean'`` (½ of the sum of both directional means) or ``'sum'`` (their sum).

    Raises:
        ValueError: unknown ``norm``/``reduction`` or bad point sets.
    """
    if norm not in ("l1", "l2"):
        raise ValueError(f"norm must be 'l1' (mean distance) or 'l2' (mean squared distance), got {norm!r}")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    d_pq, _ = nearest_distances(p, q)
    d_qp, _ = nearest_distances(q, p)
    if norm == "l2":
        d_pq, d_qp = d_pq ** 2, d_qp ** 2
    s = float(d_pq.mean() + d_qp.mean())
    return s / 2 if reduction == "mean" else s


def f_score(d_pred_to_gt, d_gt_to_pred, thresholds: Iterable[float]) -> Dict[float, Dict[str, float]]:
    """F-score from nearest-neighbour distances (see module docstring).

    Args:
        d_pred_to_gt: ``[N]`` distance of each predicted sample to the GT samples.
        d_gt_to_pred: ``[M]`` distance of each GT sample to the predicted samples.
        thresholds: distances τ > 0 (same units as the distances). A point at exactly τ counts as matched.

    Returns:
        ``{τ: {'precision', 'recall', 'fscore'}}`` (floats in [0, 1]).
    """
    a, b = _np(d_pred_to_gt, np.float64).ravel(), _np(d_gt_to_pred, np.float64).ravel()
    if a.size == 0 or b.size == 0:
        raise ValueError("distance arrays must be non-empty")
    out = {}
    for t in thresholds:
        t = float(t)
        if not t > 0:
            raise ValueError(f"F-score thresholds must be > 0, got {t}")
        p, r = float((a <= t).mean()), float((b <= t).mean())
        out[t] = {"precision": p, "recall": r, "fscore": 0.0 if p + r == 0 else 2 * p * r / (p + r)}
    return out


def normal_consistency(p, n_p, q, n_q, oriented: bool = False) -> float:
    """Mean normal agreement between two oriented point sets (see module docstring); in [0, 1] (unoriented) or
    [−1, 1] (oriented). ``p, q``: ``[N, 3]``/``[M, 3]`` points; ``n_p, n_q``: matching unit normals."""
    n_p, n_q = _np(n_p, np.float64), _np(n_q, np.float64)
    _, i_pq = nearest_distances(p, q)
    _, i_qp = nearest_distances(q, p)
    c_pq = (n_p * n_q[i_pq]).sum(-1)
    c_qp = (n_q * n_p[i_qp]).sum(-1)
    if not oriented:
        c_pq, c_qp = np.abs(c_pq), np.abs(c_qp)
    return float(0.5 * (c_pq.mean() + c_qp.mean()))


# ----------------------------------------------------------------------------------------------------------------------
# volume IoU
# ----------------------------------------------------------------------------------------------------------------------
def winding_number(vertices, faces, points, chunk: int = 2 ** 22) -> np.ndarray:
    """Generalised winding number of a triangle mesh at query points (float64 ``[P]``; ≈1 inside a closed outward-
    or inward-wound mesh up to sign, 0 outside). The sign follows the face winding; use ``abs`` if unsure.

    Solid angle of a triangle (a, b, c) seen from the origin (van Oosterom & Strackee 1983):
    ``Ω = 2·atan2(a·(b×c), |a||b||c| + (a·b)|c| + (b·c)|a| + (c·a)|b|)``; the winding number is ``ΣΩ / 4π``.
    Computed with torch float64 in chunks of ``≈chunk`` point×face pairs.
    """
    import torch
    v, f = as_mesh_arrays(vertices=vertices, faces=faces)
    pts = _np(points, np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ValueError(f"points must be [P, 3], got shape {pts.shape}")
    tri = torch.from_numpy(v[f])  # [F, 3, 3]
    P = torch.from_numpy(pts)
    step = max(1, chunk // max(1, len(f)))
    out = torch.empty(len(P), dtype=torch.float64)
    for s in range(0, len(P), step):
        rel = tri[None] - P[s:s + step, None, None, :]  # [p, F, 3, 3]
        a, b, c = rel[:, :, 0], rel[:, :, 1], rel[:, :, 2]
        la, lb, lc = a.norm(dim=-1), b.norm(dim=-1), c.norm(dim=-1)
        det = (a * torch.cross(b, c, dim=-1)).sum(-1)
        den = la * lb * lc + (a * b).sum(-1) * lc + (b * c).sum(-1) * la + (c * a).sum(-1) * lb
        out[s:s + step] = (2 * torch.atan2(det, den)).sum(-1) / (4 * math.pi)
    return out.numpy()


def _grid_centres(bounds: np.ndarray, resolution: int) -> np.ndarray:
    lo, hi = bounds
    axes = [lo[i] + (np.arange(resolution) + 0.5) * (hi[i] - lo[i]) / resolution for i in range(3)]
    g = np.stack(np.meshgrid(*axes, indexing="ij"), -1)
    return g.reshape(-1, 3)


def _surface_voxels(v, f, bounds, resolution) -> np.ndarray:
    """Boolean ``[R, R, R]``: voxels touched by the surface (dense barycentric sampling, spacing < ½ voxel)."""
    lo, hi = bounds
    h = float(np.min((hi - lo) / resolution))
    tri = v[f]
    edge = np.max(np.linalg.norm(tri - np.roll(tri, 1, axis=1), axis=-1), axis=1)
    nsub = np.maximum(1, np.ceil(edge / (0.45 * h))).astype(np.int64)
    occ = np.zeros((resolution,) * 3, dtype=bool)
    for k in np.unique(nsub):
        t = tri[nsub == k]
        i, j = np.meshgrid(np.arange(k + 1), np.arange(k + 1), indexing="ij")
        keep = (i + j) <= k
        b1, b2 = i[keep] / k, j[keep] / k
        b0 = 1 - b1 - b2
        pts = (b0[None, :, None] * t[:, None, 0] + b1[None, :, None] * t[:, None, 1]
               + b2[None, :, None] * t[:, None, 2]).reshape(-1, 3)
        idx = np.floor((pts - lo) / (hi - lo) * resolution).astype(np.int64)
        idx = np.clip(idx, 0, resolution - 1)
        occ[idx[:, 0], idx[:, 1], idx[:, 2]] = True
    return occ


def _parity_occupancy(v, f, bounds, resolution, chunk: int = 2 ** 22) -> np.ndarray:
    """Inside/outside by counting +z ray crossings above each voxel centre (see module docstring)."""
    import torch
    lo, hi = bounds
    size = hi - lo
    c = [lo[i] + (np.arange(resolution) + 0.5) * size[i] / resolution for i in range(3)]
    X, Y = np.meshgrid(c[0] + 1e-7 * math.sqrt(2) * size[0], c[1] + 1e-7 * math.sqrt(3) * size[1], indexing="ij")
    rays = torch.from_numpy(np.stack([X.ravel(), Y.ravel()], 1))  # [R², 2]
    tri = torch.from_numpy(v[f])  # [F, 3, 3]
    a, b, cc = tri[:, 0], tri[:, 1], tri[:, 2]
    det = (b[:, 0] - a[:, 0]) * (cc[:, 1] - a[:, 1]) - (cc[:, 0] - a[:, 0]) * (b[:, 1] - a[:, 1])
    keep = det.abs() > 1e-300  # triangles seen edge-on from +z cannot be crossed by a jittered ray
    a, b, cc, det = a[keep], b[keep], cc[keep], det[keep]
    zc = torch.from_numpy(c[2])
    count = torch.zeros((len(rays), resolution), dtype=torch.int32)
    step = max(1, chunk // max(1, len(a)))
    for s in range(0, len(rays), step):
        px, py = rays[s:s + step, 0:1], rays[s:s + step, 1:2]  # [r, 1]
        w1 = ((px - a[:, 0]) * (cc[:, 1] - a[:, 1]) - (cc[:, 0] - a[:, 0]) * (py - a[:, 1])) / det
        w2 = ((b[:, 0] - a[:, 0]) * (py - a[:, 1]) - (px - a[:, 0]) * (b[:, 1] - a[:, 1])) / det
        w0 = 1 - w1 - w2
        hit = (w0 >= 0) & (w1 >= 0) & (w2 >= 0)  # [r, F]
        r_idx, f_idx = hit.nonzero(as_tuple=True)
        z = (w0[r_idx, f_idx] * a[f_idx, 2] + w1[r_idx, f_idx] * b[f_idx, 2] + w2[r_idx, f_idx] * cc[f_idx, 2])
        # number of crossings strictly above each voxel centre of the column
        above = (z[:, None] > zc[None, :]).to(torch.int32)  # [hits, R]
        count.index_add_(0, r_idx + s, above)
    return (count % 2 == 1).numpy().reshape((resolution,) * 3)


def occupancy(vertices, faces, bounds, resolution: int = 64, method: str = "parity") -> np.ndarray:
    """Boolean occupancy ``[R, R, R]`` (index order x, y, z) of a mesh at the voxel centres of ``bounds``
    (``[2, 3]`` min/max corners). ``method`` as in the module docstring (``'parity'``, ``'winding'`` or ``'fill'``)."""
    v, f = as_mesh_arrays(vertices=vertices, faces=faces)
    bounds = _np(bounds, np.float64)
    if bounds.shape != (2, 3) or not np.all(bounds[1] > bounds[0]):
        raise ValueError(f"bounds must be [[xmin,ymin,zmin],[xmax,ymax,zmax]] with max > min, got {bounds.tolist()}")
    resolution = int(resolution)
    if resolution < 2:
        raise ValueError(f"resolution must be >= 2, got {resolution}")
    if method == "parity":
        return _parity_occupancy(v, f, bounds, resolution)
    if method == "winding":
        w = winding_number(v, f, _grid_centres(bounds, resolution))
        return (np.abs(w) > 0.5).reshape((resolution,) * 3)
    if method == "fill":
        from scipy.ndimage import binary_fill_holes
        return binary_fill_holes(_surface_voxels(v, f, bounds, resolution))
    raise ValueError(f"method must be 'parity', 'winding' or 'fill', got {method!r}")


def volume_iou(pred, gt, resolution: int = 64, bounds=None, method: str = "parity") -> float:
    """Volume IoU of two meshes (``(v, f)`` pairs or trimesh objects) on a shared ``R³`` grid.

    Args:
        bounds: ``[2, 3]`` box; default the union of both bboxes padded by one voxel on each side.
    Returns:
        ``|A∩B| / |A∪B|`` (1.0 if both are empty).
    """
    vp, fp = as_mesh_arrays(pred)
    vg, fg = as_mesh_arrays(gt)
    if bounds is None:
        lo = np.minimum(vp.min(0), vg.min(0))
        hi = np.maximum(vp.max(0), vg.max(0))
        pad = (hi - lo).max() / max(int(resolution) - 2, 1)
        bounds = np.stack([lo - pad, hi + pad])
    a = occupancy(vp, fp, bounds, resolution, method)
    b = occupancy(vg, fg, bounds, resolution, method)
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


# ----------------------------------------------------------------------------------------------------------------------
# frames
# ----------------------------------------------------------------------------------------------------------------------
def normalize_to_unit_cube(vertices, margin: float = 1.0) -> Tuple[np.ndarray, np.ndarray, float]:
    """Centre the bbox at the origin and scale its largest side to ``margin`` (1 → ``[-0.5, 0.5]`` along that axis).

    Returns ``(v' float64 [V, 3], center [3], scale)`` with ``v' = (v − center)·scale``. Raises ``ValueError`` for a
    zero-extent or empty input.
    """
    v = _np(vertices, np.float64)
    if v.ndim != 2 or v.shape[1] != 3 or len(v) == 0:
        raise ValueError(f"vertices must be a non-empty [V, 3] array, got shape {v.shape}")
    lo, hi = v.min(0), v.max(0)
    ext = float((hi - lo).max())
    if not ext > 0:
        raise ValueError("all vertices coincide; cannot normalise")
    center = (lo + hi) / 2
    scale = float(margin) / ext
    return (v - center) * scale, center, scale


def align_to_frame(vertices, rotation=None, translation=None) -> np.ndarray:
    """Apply an explicit frame change ``v' = R v + t`` (``R`` ``[3, 3]`` orthonormal, det +1; ``t`` ``[3]``).

    Use it to bring a canonical-frame GT into the Pixal3D view-aligned frame (or back with ``R.T``).
    Raises ``ValueError`` when ``R`` is not a proper rotation (tolerance 1e-5).
    """
    v = _np(vertices, np.float64)
    if rotation is not None:
        R = _np(rotation, np.float64)
        if R.shape == (4, 4):
            if translation is None:
                translation = R[:3, 3]
            R = R[:3, :3]
        if R.shape != (3, 3):
            raise ValueError(f"rotation must be [3, 3] (or [4, 4] rigid), got {R.shape}")
        if not (np.allclose(R @ R.T, np.eye(3), atol=1e-5) and abs(np.linalg.det(R) - 1) < 1e-5):
            raise ValueError("rotation is not a proper rotation matrix (R R^T = I, det R = +1)")
        v = v @ R.T
    if translation is not None:
        v = v + _np(translation, np.float64).reshape(1, 3)
    return v


# ----------------------------------------------------------------------------------------------------------------------
# all-in-one
# ----------------------------------------------------------------------------------------------------------------------
def evaluate_geometry(pred, gt, n_points: int = 100_000, thresholds: Sequence[float] = (0.005, 0.01, 0.02),
                      seed: int = 0, normalize: Optional[str] = None, pred_rotation=None, gt_rotation=None,
                      iou_resolution: Optional[int] = 64, iou_method: str = "parity",
                      oriented_normals: bool = False, report_floor: bool = True) -> Dict[str, float]:
    """All geometry metrics for one (prediction, GT) pair.

    Args:
        pred, gt: meshes (trimesh objects or ``(vertices, faces)``).
        n_points: surface samples per mesh. ``seed`` for the GT; ``seed + 1`` for the prediction.
        thresholds: F-score thresholds (length units after the optional normalisation).
        normalize: ``None`` (use the meshes as given), ``'each'`` (each mesh to the unit cube independently — removes
            any scale/translation error) or ``'gt'`` (both with the GT's centre/scale — keeps the prediction's
            misplacement measurable).
        pred_rotation / gt_rotation: optional ``[3, 3]`` rotations applied first (frame alignment; see
            :func:`align_to_frame`).
        iou_resolution: grid resolution for volume IoU; ``None`` skips it (open meshes).
        report_floor: also return ``chamfer_l1_floor``, the Chamfer-L1 of the GT against an independent resampling
            of itself — the score of a perfect prediction at this ``n_points``. Point-to-point Chamfer has this
            sampling-noise floor (≈ 0.5/√(n/area) per direction); report it, or raise ``n_points`` until it is
            well below the differences you compare.
    Returns:
        dict with ``chamfer_l1``, ``chamfer_l2``, ``fscore@τ``/``precision@τ``/``recall@τ`` per threshold,
        ``normal_consistency`` and (if computed) ``volume_iou``.
    """
    vp, fp = as_mesh_arrays(pred)
    vg, fg = as_mesh_arrays(gt)
    if pred_rotation is not None:
        vp = align_to_frame(vp, pred_rotation)
    if gt_rotation is not None:
        vg = align_to_frame(vg, gt_rotation)
    if normalize == "each":
        vp = normalize_to_unit_cube(vp)[0]
        vg = normalize_to_unit_cube(vg)[0]
    elif normalize == "gt":
        _, c, s = normalize_to_unit_cube(vg)
        vp, vg = (vp - c) * s, (vg - c) * s
    elif normalize is not None:
        raise ValueError(f"normalize must be None, 'each' or 'gt', got {normalize!r}")
    pg, ng, _ = sample_surface(vg, fg, n_points, seed)
    pp, npred, _ = sample_surface(vp, fp, n_points, seed + 1)
    d_pg, i_pg = nearest_distances(pp, pg)
    d_gp, i_gp = nearest_distances(pg, pp)
    out = {
        "chamfer_l1": float(0.5 * (d_pg.mean() + d_gp.mean())),
        "chamfer_l2": float(0.5 * ((d_pg ** 2).mean() + (d_gp ** 2).mean())),
    }
    for t, r in f_score(d_pg, d_gp, thresholds).items():
        for k, val in r.items():
            out[f"{k}@{t:g}"] = val
    c1 = (npred * ng[i_pg]).sum(-1)
    c2 = (ng * npred[i_gp]).sum(-1)
    if not oriented_normals:
        c1, c2 = np.abs(c1), np.abs(c2)
    out["normal_consistency"] = float(0.5 * (c1.mean() + c2.mean()))
    if report_floor:
        # what a perfect prediction scores: GT against an independent GT resampling (sampling-noise floor)
        pg2, _, _ = sample_surface(vg, fg, n_points, seed + 2)
        a, _ = nearest_distances(pg2, pg)
        b, _ = nearest_distances(pg, pg2)
        out["chamfer_l1_floor"] = float(0.5 * (a.mean() + b.mean()))
    if iou_resolution:
        out["volume_iou"] = volume_iou((vp, fp), (vg, fg), iou_resolution, method=iou_method)
    return out
