"""CPU mesh clean-up used before GLB export (TRELLIS2_SPEC §3.7 steps 1–2, CuMesh's role in the reference).

Operations on plain arrays (float ``[V, 3]`` vertices, int ``[F, 3]`` faces): degenerate/duplicate face removal,
unreferenced-vertex compaction, small-component removal by area, boundary-loop hole filling by perimeter, and
quadric decimation via ``fast_simplification``.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

__all__ = ["clean_faces", "remove_small_components", "fill_holes", "decimate", "compact"]


def compact(vertices: np.ndarray, faces: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Drop vertices no face uses and renumber the faces."""
    used, inv = np.unique(faces.reshape(-1), return_inverse=True)
    return vertices[used], inv.reshape(-1, 3).astype(np.int64)


def clean_faces(vertices: np.ndarray, faces: np.ndarray, merge_tol: float = 0.0) -> Tuple[np.ndarray, np.ndarray]:
    """Merge coincident vertices (exactly equal, or within ``merge_tol``), then remove faces with a repeated vertex,
    zero-area faces and duplicate faces (same vertex set, any order), and compact."""
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64)
    key = np.round(v / merge_tol).astype(np.int64) if merge_tol > 0 else v
    _, first, inv = np.unique(key, axis=0, return_index=True, return_inverse=True)
    f = inv.reshape(-1)[f]
    v = v[first]
    ok = (f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 0] != f[:, 2])
    f = f[ok]
    tri = v[f]
    area2 = np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    f = f[area2 > 0]
    _, keep = np.unique(np.sort(f, axis=1), axis=0, return_index=True)
    f = f[np.sort(keep)]
    if len(f) == 0:
        return v[:0], f
    return compact(v, f)


def _face_components(faces: np.ndarray, n_vertices: int) -> np.ndarray:
    """Connected-component label per face (faces sharing a vertex are connected)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    fi = np.repeat(np.arange(len(faces)), 3)
    g = coo_matrix((np.ones(len(fi)), (fi, faces.reshape(-1))), shape=(len(faces), n_vertices)).tocsr()
    _, vlab = connected_components(g.T @ g, directed=False)
    return vlab[faces[:, 0]]


def remove_small_components(vertices: np.ndarray, faces: np.ndarray, min_area: float = 1e-5
                            ) -> Tuple[np.ndarray, np.ndarray]:
    """Remove connected components whose total surface area is below ``min_area`` (world units²)."""
    if len(faces) == 0:
        return vertices, faces
    lab = _face_components(faces, len(vertices))
    tri = vertices[faces]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    comp_area = np.bincount(lab, weights=area)
    keep = comp_area[lab] >= min_area
    if keep.all():
        return vertices, faces
    return compact(vertices, faces[keep])


def _boundary_loops(faces: np.ndarray):
    """Directed boundary loops (lists of vertex ids) of a mesh; loops through non-manifold vertices are skipped."""
    e = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    und = np.sort(e, axis=1)
    _, inv, cnt = np.unique(und, axis=0, return_inverse=True, return_counts=True)
    bnd = e[cnt[inv.reshape(-1)] == 1]
    if len(bnd) == 0:
        return []
    # boundary edges keep the face's orientation; walking them backwards gives loops the fill must follow
    starts, ends = bnd[:, 0], bnd[:, 1]
    outdeg = np.bincount(starts)
    nxt = {}
    for s, t in zip(starts.tolist(), ends.tolist()):
        nxt[s] = t
    bad = set(np.flatnonzero(outdeg > 1).tolist())
    seen, loops = set(), []
    for s in starts.tolist():
        if s in seen:
            continue
        loop, cur, ok = [], s, True
        while cur not in seen:
            if cur in bad or cur not in nxt:
                ok = False
                break
            seen.add(cur)
            loop.append(cur)
            cur = nxt[cur]
        if ok and cur == s and len(loop) >= 3:
            loops.append(loop)
    return loops


def fill_holes(vertices: np.ndarray, faces: np.ndarray, max_perimeter: float = 3e-2
               ) -> Tuple[np.ndarray, np.ndarray]:
    """Close every simple boundary loop whose perimeter is below ``max_perimeter`` (world units).

    A loop of 3 vertices becomes one triangle; longer loops get a new vertex at their centroid and a fan, oriented
    consistently with the surrounding faces (§3.7 step 1, CuMesh ``fill_holes``).
    """
    loops = _boundary_loops(faces)
    new_v, new_f = [vertices], [faces]
    nv = len(vertices)
    for loop in loops:
        p = vertices[loop]
        per = np.linalg.norm(np.roll(p, -1, axis=0) - p, axis=1).sum()
        if per >= max_perimeter:
            continue
        # the hole's faces run opposite to the boundary edges (s→t) of the existing faces
        if len(loop) == 3:
            new_f.append(np.array([[loop[0], loop[2], loop[1]]]))
            continue
        new_v.append(p.mean(0, keepdims=True))
        ring = np.array(loop)
        new_f.append(np.stack([np.roll(ring, -1), ring, np.full(len(ring), nv)], axis=1))
        nv += 1
    return np.concatenate(new_v), np.concatenate(new_f).astype(np.int64)


def decimate(vertices: np.ndarray, faces: np.ndarray, target_faces: int,
             max_passes: int = 4) -> Tuple[np.ndarray, np.ndarray]:
    """Quadric edge-collapse decimation to at most ``target_faces`` faces (no-op when already below).

    One ``fast_simplification`` pass can stop early on meshes with many locked (boundary or non-manifold) edges, so
    further passes run, each aiming at the remaining excess, until the budget holds or a pass makes no progress.

    Raises:
        ValueError: ``target_faces`` < 1.
    """
    if target_faces < 1:
        raise ValueError(f"target_faces must be >= 1, got {target_faces}")
    if len(faces) <= target_faces:
        return vertices, faces
    import fast_simplification
    v = np.ascontiguousarray(vertices, np.float32)
    f = np.ascontiguousarray(faces, np.int32)
    for _ in range(max_passes):
        if len(f) <= target_faces:
            break
        nv, nf = fast_simplification.simplify(v, f, target_reduction=1.0 - target_faces / len(f))
        if len(nf) >= len(f):  # no progress: the remaining edges cannot collapse
            break
        v, f = np.ascontiguousarray(nv, np.float32), np.ascontiguousarray(nf, np.int32)
    return np.asarray(v, np.float64), np.asarray(f, np.int64)
