"""View alignment and (per-view) voxelisation of dumps (TRELLIS2_SPEC §3.1–3.5, PIXAL3D_SPEC §7.2–7.3).

Frames: dumps are in the Blender world (Z up, inside ``[-0.5, 0.5]³``); a view-aligned object is in the view frame
(+x image right, +y image up, +z towards the camera, camera at ``(0, 0, r)``), scaled into ``[-0.5, 0.5]³`` so that
``view-frame coordinates = total_scale · T_final · (dump coordinates)``.
"""
from __future__ import annotations

from typing import Dict, Tuple

import numpy as np

from pixal3d.conditioning.camera import view_alignment_transform

__all__ = ["AABB", "view_scale_transform", "canonical_transform", "apply_affine", "dual_grid_arrays",
           "pbr_voxel_arrays", "mesh_vertices_view", "mesh_vertices_canonical", "DUAL_GRID_KWARGS", "PBR_ATTRS"]

AABB = [[-0.5, -0.5, -0.5], [0.5, 0.5, 0.5]]
#: ``mesh_to_flexible_dual_grid`` settings of the data toolkit (TRELLIS2_SPEC §3.2).
DUAL_GRID_KWARGS = dict(face_weight=1.0, boundary_weight=0.2, regularization_weight=1e-2)
#: Stored PBR attributes, in this order (TRELLIS2_SPEC §3.5).
PBR_ATTRS = ("base_color", "metallic", "roughness", "alpha")


def view_scale_transform(vertices: np.ndarray, c2w) -> Tuple[np.ndarray, Dict[str, float]]:
    """The affine map taking dump coordinates into the view-aligned voxel frame of camera ``c2w``.

    Steps (PIXAL3D_SPEC §7.3, the ``voxelize_pbr_view`` variant, used for both geometry and PBR so that their voxel
    sets agree exactly): ``box_scale_init = 0.99999/max extent`` (no centring; ≈ 1 for the toolkit's dumps, which
    are already normalised); ``sphere_radius`` = largest distance from the bbox centre (asserted within 0.25 of the
    origin; no re-centring); ``T_final = R_back·F(r)·inv(c2w)``; ``box_scale = 0.49999/max|v|`` of the rotated
    vertices; ``total_scale = box_scale_init·box_scale/sphere_radius``.

    Args:
        vertices: float ``[V, 3]`` dump vertices (all objects).
        c2w: ``[4, 4]`` Blender camera-to-world of the view (``transforms.json`` ``transform_matrix``).

    Returns:
        ``(M float64 [4, 4], info)``: ``v_view = M[:3, :3] v + M[:3, 3]``; ``info`` = ``{'total_scale',
        'sphere_radius', 'box_scale', 'box_scale_init'}`` (``box_scale`` is the final box scale).

    Raises:
        ValueError: empty/non-finite vertices, an off-centre object, or a bad camera matrix.
    """
    v = np.asarray(vertices, np.float64)
    if v.ndim != 2 or v.shape[1] != 3 or len(v) == 0 or not np.isfinite(v).all():
        raise ValueError(f"vertices must be a finite non-empty [V, 3] array, got shape {v.shape}")
    lo, hi = v.min(0), v.max(0)
    init = 0.99999 / float((hi - lo).max())
    center = (lo + hi) / 2 * init
    if np.abs(center).max() > 0.25:
        raise ValueError(f"bbox centre {center.tolist()} is more than 0.25 from the origin; the dump is not "
                         "centred (re-run dump_mesh / dump_pbr)")
    radius = float(np.linalg.norm(v * init - center, axis=1).max())
    t = view_alignment_transform(c2w)
    rot = t[:3, :3]
    pre = (init / radius) * rot
    shift = t[:3, 3]
    v_rot = v @ pre.T + shift
    box = 0.49999 / float(np.abs(v_rot).max())
    m = np.eye(4)
    m[:3, :3] = box * pre
    m[:3, 3] = box * shift
    info = {"total_scale": init * box / radius, "sphere_radius": radius, "box_scale": box, "box_scale_init": init}
    return m, info


def apply_affine(v: np.ndarray, m: np.ndarray) -> np.ndarray:
    """``v @ m[:3, :3].T + m[:3, 3]`` in float64, written element-wise (no BLAS) so that the same vertex always maps
    to bit-identical coordinates whatever array it is part of (the geometry and PBR voxelisations must agree)."""
    v = np.asarray(v, np.float64)
    m = np.asarray(m, np.float64)
    return (v[:, 0:1] * m[:3, 0] + v[:, 1:2] * m[:3, 1]) + (v[:, 2:3] * m[:3, 2] + m[:3, 3])


def canonical_transform(vertices: np.ndarray) -> np.ndarray:
    """The §3.1 re-normalisation as a ``[4, 4]`` matrix: ``scale·(v − center)`` with ``center = (min + max)/2``,
    ``scale = 0.99999/max extent`` (:func:`pixal3d.ovoxel.normalize_vertices`).

    Raises:
        ValueError: from ``normalize_vertices`` (empty, non-finite or zero-extent vertices).
    """
    from pixal3d.ovoxel import normalize_vertices
    _, center, scale = normalize_vertices(np.asarray(vertices, np.float64))
    m = np.eye(4)
    m[:3, :3] *= scale
    m[:3, 3] = -center * scale
    return m


def dual_grid_arrays(vertices: np.ndarray, faces: np.ndarray, resolution: int) -> Tuple[np.ndarray, dict]:
    """Flexible dual grid of a mesh already inside ``[-0.5, 0.5]³`` → what ``dual_grid*.vxz`` stores (§3.3).

    Returns:
        ``(coords int32 [N, 3], {'vertices': uint8 [N, 3], 'intersected': uint8 [N, 1]})``.

    Raises:
        ValueError: from ``mesh_to_flexible_dual_grid`` (empty/degenerate mesh, vertices outside the box).
    """
    from pixal3d.ovoxel import mesh_to_flexible_dual_grid
    from pixal3d.ovoxel.io import pack_intersected, quantize_dual_vertices

    coords, dual, inter = mesh_to_flexible_dual_grid(np.asarray(vertices, np.float32), np.asarray(faces, np.int64),
                                                     grid_size=int(resolution), aabb=AABB, **DUAL_GRID_KWARGS)
    coords = coords.numpy().astype(np.int32)
    q = quantize_dual_vertices(dual.numpy(), coords, int(resolution))
    return coords, {"vertices": q, "intersected": pack_intersected(inter.numpy())}


def pbr_voxel_arrays(dump: dict, resolution: int, transform: np.ndarray = None) -> Tuple[np.ndarray, dict]:
    """PBR voxels of a PBR dump (vertices mapped by ``transform`` first, if given) → what ``pbr_voxels*.vxz`` stores.

    ``transform`` None means the canonical §3.1 re-normalisation (``normalize_vertices``). Emissive and normal are
    dropped; attributes ``base_color (3), metallic (1), roughness (1), alpha (1)`` uint8 in that order.

    Raises:
        ValueError: no triangles / bad transform.
    """
    from pixal3d.ovoxel import textured_mesh_to_volumetric_attr
    from .dumps import dump_to_trimesh_scene, dump_vertices_faces

    if transform is None:
        transform = canonical_transform(dump_vertices_faces(dump)[0])
    scene = dump_to_trimesh_scene(dump, transform)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        coords, attrs = textured_mesh_to_volumetric_attr(scene, grid_size=int(resolution), aabb=AABB)
    return coords.astype(np.int32), {k: attrs[k] for k in PBR_ATTRS}


def mesh_vertices_view(dump: dict, c2w) -> Tuple[np.ndarray, np.ndarray, Dict[str, float]]:
    """Mesh-dump vertices in the view frame: ``(vertices float32 [V, 3], faces int64 [F, 3], info)``."""
    from .dumps import dump_vertices_faces
    v, f = dump_vertices_faces(dump)
    m, info = view_scale_transform(v, c2w)
    return apply_affine(v, m).astype(np.float32), f, info


def mesh_vertices_canonical(dump: dict) -> Tuple[np.ndarray, np.ndarray]:
    """Mesh-dump vertices re-normalised as §3.1 (``normalize_vertices``): ``(float32 [V, 3], int64 [F, 3])``."""
    from .dumps import dump_vertices_faces
    v, f = dump_vertices_faces(dump)
    return apply_affine(v, canonical_transform(v)).astype(np.float32), f
