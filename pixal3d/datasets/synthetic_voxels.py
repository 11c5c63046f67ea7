"""Small O-Voxel datasets in the real on-disk layout of :mod:`pixal3d.datasets.voxels`, for tests and CPU smoke runs
of the SC-VAE configs.

Every asset is a real triangle mesh (a scaled/shifted trimesh primitive) converted with the project's
``mesh_to_flexible_dual_grid`` (TRELLIS2_SPEC §3.2), quantised as ``data_toolkit/dual_grid.py`` does (§3.3) and
written with ``write_vxz``; the PBR voxels lie on the same voxels with attributes that vary smoothly with position.
View-aligned copies (PIXAL3D_SPEC §7.3) rotate the mesh about the origin before conversion.
"""
import csv
import json
import pickle
from pathlib import Path

import numpy as np

__all__ = ["write_synthetic_voxel_dataset"]

_AABB = [[-0.5, -0.5, -0.5], [0.5, 0.5, 0.5]]


def _write_csv(path: Path, rows: list) -> None:
    cols = sorted({k for r in rows for k in r} - {"sha256"})
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["sha256"] + cols)
        w.writeheader()
        for r in rows:
            w.writerow(r)


def _mesh(rng, i):
    import trimesh
    kind = i % 3
    if kind == 0:
        m = trimesh.creation.icosphere(subdivisions=2, radius=1.0)
    elif kind == 1:
        m = trimesh.creation.box(extents=(1.6, 1.2, 1.0))
    else:
        m = trimesh.creation.capsule(height=1.0, radius=0.5, count=[12, 12])
    v = np.asarray(m.vertices, np.float64)
    v = v * rng.uniform(0.6, 1.0, 3)
    v = v / np.abs(v).max() * rng.uniform(0.3, 0.42)
    v = v + rng.uniform(-0.03, 0.03, 3)
    return v.astype(np.float32), np.asarray(m.faces, np.int32)


def _rotation(rng):
    q = rng.standard_normal(4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def _dual_grid(vertices, faces, resolution):
    from pixal3d.ovoxel.flexible_dual_grid import mesh_to_flexible_dual_grid
    from pixal3d.ovoxel.io import pack_intersected, quantize_dual_vertices
    coords, dual, inter = mesh_to_flexible_dual_grid(vertices, faces, grid_size=resolution, aabb=_AABB,
                                                     face_weight=1.0, boundary_weight=0.2,
                                                     regularization_weight=1e-2)
    coords, dual, inter = coords.numpy(), dual.numpy(), inter.numpy()
    return coords, {"vertices": quantize_dual_vertices(dual, coords, resolution),
                    "intersected": pack_intersected(inter)}


def _pbr(coords, resolution, rng):
    p = (coords.astype(np.float64) + 0.5) / resolution
    tint = rng.uniform(0.2, 1.0, 3)
    base = np.clip(0.15 + 0.8 * p * tint, 0, 1)
    metallic = np.full((len(p), 1), rng.uniform(0, 1))
    rough = np.clip(0.2 + 0.6 * p[:, 2:3], 0, 1)
    alpha = np.ones((len(p), 1))
    q = lambda a: (a * 255).round().astype(np.uint8)  # noqa: E731
    return {"base_color": q(base), "metallic": q(metallic), "roughness": q(rough), "alpha": q(alpha)}


def write_synthetic_voxel_dataset(root, num_instances: int = 6, resolution: int = 16, num_views: int = 2,
                                  seed: int = 0) -> dict:
    """Writes ``root/{base,mesh_dump,dual_grid,pbr_voxel,dual_grid_view,pbr_voxel_view}`` and returns the
    ``--data_dir`` dict ``{"synthetic_vox": {role: folder}}``.

    Args:
        root: output folder (created).
        num_instances: assets (sphere / box / capsule shapes in turn, random scale and offset).
        resolution: grid size R of the dual grids and PBR voxels.
        num_views: view-aligned copies per asset.
        seed: numpy seed.

    Rows carry every column the voxel datasets filter on (``aesthetic_score`` 4.0/5.0/6.0 in turn, ``num_faces``,
    ``dual_grid_converted``/``_size``, ``pbr_voxelized``/``num_pbr_voxels`` and the per-view columns).
    """
    from pixal3d.ovoxel.io import write_vxz
    root = Path(root)
    rng = np.random.default_rng(seed)
    roles = {r: root / r for r in ("base", "mesh_dump", "dual_grid", "pbr_voxel", "dual_grid_view",
                                   "pbr_voxel_view")}
    for d in roles.values():
        d.mkdir(parents=True, exist_ok=True)
    rows = {r: [] for r in roles}
    R = resolution
    for i in range(num_instances):
        sha = f"{i:04d}" + "b" * 60
        v, f = _mesh(rng, i)
        with open(roles["mesh_dump"] / f"{sha}.pickle", "wb") as fh:
            pickle.dump({"objects": [{"vertices": v, "faces": f}], "scale": 1.0, "offset": np.zeros(3)}, fh)
        coords, dg = _dual_grid(v, f, R)
        write_vxz(roles["dual_grid"] / f"{sha}.vxz", coords, dg)
        write_vxz(roles["pbr_voxel"] / f"{sha}.vxz", coords, _pbr(coords, R, rng))
        rows["base"].append({"sha256": sha, "aesthetic_score": 4.0 + (i % 3), "num_faces": len(f)})
        rows["mesh_dump"].append({"sha256": sha, "mesh_dumped": True})
        rows["dual_grid"].append({"sha256": sha, "dual_grid_converted": True, "dual_grid_size": len(coords)})
        rows["pbr_voxel"].append({"sha256": sha, "pbr_voxelized": True, "num_pbr_voxels": len(coords)})
        dv_row, pv_row = {"sha256": sha}, {"sha256": sha}
        for view in range(num_views):
            rot = _rotation(rng)
            vr = (v.astype(np.float64) @ rot.T)
            box_scale = 0.49999 / np.abs(vr).max() * 0.9
            vr = (vr * box_scale).astype(np.float32)
            vc, vdg = _dual_grid(vr, f, R)
            for role, attrs in (("dual_grid_view", vdg), ("pbr_voxel_view", _pbr(vc, R, rng))):
                (roles[role] / sha).mkdir(exist_ok=True)
                write_vxz(roles[role] / sha / f"view{view:02d}.vxz", vc, attrs)
                scale = {"sha256": sha, "view_idx": view, "total_scale": float(box_scale), "sphere_radius": 1.0,
                         "box_scale": float(box_scale)}
                (roles[role] / sha / f"view{view:02d}_scale.json").write_text(json.dumps(scale))
            dv_row.update({f"dual_grid_view{view:02d}_converted_{R}": True, f"dual_grid_view{view:02d}_size_{R}":
                           len(vc), f"dual_grid_view{view:02d}_scale_{R}": float(box_scale)})
            pv_row.update({f"pbr_voxelized_view_fix{view:02d}_{R}": True,
                           f"num_pbr_voxels_view_fix{view:02d}_{R}": len(vc),
                           f"pbr_voxel_scale_view_fix{view:02d}_{R}": float(box_scale)})
        rows["dual_grid_view"].append(dv_row)
        rows["pbr_voxel_view"].append(pv_row)
    for r, d in roles.items():
        _write_csv(d / "metadata.csv", rows[r])
    return {"synthetic_vox": {r: str(d) for r, d in roles.items()}}
