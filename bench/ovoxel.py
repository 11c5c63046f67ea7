"""Benchmark of O-Voxel geometry conversion (TRELLIS2_SPEC §3.2 / §3.4).

For the parity-fixture meshes and a few real assets (normalised into [-0.5, 0.5]^3 as in §3.1):
  * mesh -> O-Voxel (``mesh_to_flexible_dual_grid``, numba, one CPU thread) at 64/256/512 (+1024 with --full):
    best-of-N wall time, voxels/s, process peak RSS, and for fixture meshes the ratio to the reference C++ times
    recorded in ``../shared/fixtures/ovoxel.json``;
  * O-Voxel -> mesh (``flexible_dual_grid_to_mesh``) on CPU, and CUDA when available;
  * round trip quality: Chamfer distance (mean point-to-surface distance of surface samples, both directions,
    averaged) and F-score at tau = 1/grid between the input and the reconstructed mesh ([-0.5, 0.5]^3 units).

Usage: python bench/ovoxel.py [--full] [--res 64 256] [--repeat 3] [--samples 100000]
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared"

from pixal3d.ovoxel import flexible_dual_grid_to_mesh, mesh_to_flexible_dual_grid  # noqa: E402

TOOLKIT = dict(face_weight=1.0, boundary_weight=0.2, regularization_weight=1e-2)
UNIT = [[-0.5] * 3, [0.5] * 3]
ASSETS = {   # name -> path under ../shared/data/assets3d
    "suzanne": "khronos_suzanne/Suzanne.gltf",
    "avocado": "khronos_avocado/Avocado.gltf",
    "spot_cow": "keenan_spot_cow/cow.obj",
    "astronaut": "poly_astronaut/astronaut.glb",
    "barrel": "quaternius_barrel/barrel.glb",
}


def normalise(v: np.ndarray) -> np.ndarray:
    """§3.1: centre on the bbox centre and scale by 0.99999 / largest extent -> inside [-0.5, 0.5]^3."""
    lo, hi = v.min(0), v.max(0)
    return ((v - (lo + hi) / 2) * (0.99999 / (hi - lo).max())).astype(np.float32)


def load_meshes():
    import trimesh
    from safetensors.numpy import load_file
    meshes = {}
    for name in ("beetle", "bunny", "spot", "hand_closed"):
        p = SHARED / "fixtures" / f"ovoxel_{name}.safetensors"
        if not p.exists():
            p = REPO / "tests" / "fixtures" / f"ovoxel_{name}.safetensors"
        if p.exists():
            d = load_file(str(p))
            meshes[name] = (d["in.vertices"], d["in.faces"].astype(np.int64), True)
    for name, rel in ASSETS.items():
        p = SHARED / "data" / "assets3d" / rel
        if not p.exists():
            continue
        scene = trimesh.load(str(p), force="scene")
        m = scene.to_geometry() if hasattr(scene, "to_geometry") else scene.dump(concatenate=True)
        meshes[name] = (normalise(np.asarray(m.vertices)), np.asarray(m.faces, np.int64), False)
    return meshes


def timed(fn, repeat):
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best, out


def _closest_on_triangles(p, a, b, c):
    """Closest points on triangles (a, b, c) to points p, all [M, 3] (Ericson's region tests, vectorised)."""
    ab, ac, ap = b - a, c - a, p - a
    d1, d2 = (ab * ap).sum(1), (ac * ap).sum(1)
    bp = p - b
    d3, d4 = (ab * bp).sum(1), (ac * bp).sum(1)
    cp = p - c
    d5, d6 = (ab * cp).sum(1), (ac * cp).sum(1)
    va, vb, vc = d3 * d6 - d5 * d4, d5 * d2 - d1 * d6, d1 * d4 - d3 * d2
    denom = va + vb + vc
    denom = np.where(np.abs(denom) < 1e-30, 1e-30, denom)
    v, w = vb / denom, vc / denom
    out = a + ab * v[:, None] + ac * w[:, None]                         # interior
    with np.errstate(divide="ignore", invalid="ignore"):
        regions = [
            ((vc <= 0) & (d1 >= 0) & (d3 <= 0), a + ab * np.nan_to_num(d1 / (d1 - d3))[:, None]),
            ((vb <= 0) & (d2 >= 0) & (d6 <= 0), a + ac * np.nan_to_num(d2 / (d2 - d6))[:, None]),
            ((va <= 0) & (d4 - d3 >= 0) & (d5 - d6 >= 0),
             b + (c - b) * np.nan_to_num((d4 - d3) / ((d4 - d3) + (d5 - d6)))[:, None]),
            ((d1 <= 0) & (d2 <= 0), a), ((d3 >= 0) & (d4 <= d3), b), ((d6 >= 0) & (d5 <= d6), c),
        ]
    for mask, q in reversed(regions):       # vertex regions win over edge regions
        out = np.where(mask[:, None], q, out)
    return out


def point_mesh_distance(points, vertices, faces, max_edge, k=16):
    """Distance from each point to the mesh: exact point-triangle distances over the k triangles whose
    centroids are nearest (the mesh is first subdivided to edges <= max_edge so that this candidate set holds
    the true nearest triangle)."""
    import trimesh
    from scipy.spatial import cKDTree
    v, f = trimesh.remesh.subdivide_to_size(vertices, faces, max_edge=max_edge, max_iter=12)
    tri = v[f]
    _, cand = cKDTree(tri.mean(1)).query(points, k=min(k, len(f)), workers=1)
    cand = cand.reshape(len(points), -1)
    best = np.full(len(points), np.inf)
    for j in range(cand.shape[1]):
        t = tri[cand[:, j]]
        q = _closest_on_triangles(points, t[:, 0], t[:, 1], t[:, 2])
        best = np.minimum(best, np.linalg.norm(points - q, axis=1))
    return best


def surface_metrics(v_gt, f_gt, v_rec, f_rec, tau, n):
    """Chamfer (mean of the two mean point-to-surface distances of n surface samples) and F-score at tau."""
    import trimesh
    v_gt, v_rec = np.asarray(v_gt, np.float64), np.asarray(v_rec, np.float64)
    a = trimesh.Trimesh(v_gt, f_gt, process=False).sample(n)
    b = trimesh.Trimesh(v_rec, f_rec, process=False).sample(n)
    d_ab = point_mesh_distance(a, v_rec, f_rec, max_edge=2 * tau)
    d_ba = point_mesh_distance(b, v_gt, f_gt, max_edge=2 * tau)
    chamfer = 0.5 * (d_ab.mean() + d_ba.mean())
    recall, precision = (d_ab < tau).mean(), (d_ba < tau).mean()
    fscore = 2 * precision * recall / max(precision + recall, 1e-12)
    return chamfer, fscore


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="also run 1024^3")
    ap.add_argument("--res", type=int, nargs="*", default=None)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--samples", type=int, default=100_000, help="surface samples per mesh for the metrics")
    ap.add_argument("--meshes", nargs="*", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    resolutions = args.res or ([64, 256, 512] + ([1024] if args.full else []))
    ref_path = SHARED / "fixtures" / "ovoxel.json"
    ref = json.loads(ref_path.read_text())["meshes"] if ref_path.exists() else {}

    meshes = load_meshes()
    if args.meshes:
        meshes = {k: v for k, v in meshes.items() if k in args.meshes}
    # warm-up: numba compile / cache load
    v0, f0, _ = next(iter(meshes.values()))
    mesh_to_flexible_dual_grid(v0, f0, grid_size=16, aabb=UNIT, **TOOLKIT)

    cuda = torch.cuda.is_available()
    head = (f"{'mesh':<12}{'faces':>8}{'res':>6}{'voxels':>10}{'to_ovx s':>10}{'Mvox/s':>8}{'vs ref':>8}"
            f"{'to_mesh s':>11}{'cuda s':>9}{'tris':>10}{'chamfer':>10}{'F@1/R':>7}{'peakMB':>8}")
    print(head)
    print("-" * len(head))
    for name, (v, f, is_fixture) in meshes.items():
        for res in resolutions:
            kw = dict(grid_size=res, aabb=UNIT, **TOOLKIT)
            t_ovx, (coords, dual, inter) = timed(lambda: mesh_to_flexible_dual_grid(v, f, **kw),
                                                 args.repeat if res <= 512 else 1)
            local = dual * res - coords.float()
            t_mesh, (mv, mf) = timed(lambda: flexible_dual_grid_to_mesh(coords, local, inter, None, UNIT,
                                                                        grid_size=res), args.repeat)
            t_cuda = float("nan")
            if cuda:
                c, l, i = coords.cuda(), local.cuda(), inter.cuda()
                flexible_dual_grid_to_mesh(c, l, i, None, UNIT, grid_size=res)
                t_cuda, _ = timed(lambda: flexible_dual_grid_to_mesh(c, l, i, None, UNIT, grid_size=res),
                                  args.repeat)
            ref_t = ref.get(name, {}).get(f"to_ovoxel_{res}_s") if is_fixture else None
            ratio = f"{t_ovx / ref_t:.2f}x" if ref_t else "-"
            chamfer, fs = surface_metrics(v, f, mv.numpy(), mf.numpy(), 1.0 / res, args.samples)
            print(f"{name:<12}{len(f):>8}{res:>6}{len(coords):>10}{t_ovx:>10.4f}{len(coords) / t_ovx / 1e6:>8.2f}"
                  f"{ratio:>8}{t_mesh:>11.4f}{t_cuda:>9.4f}{len(mf):>10}{chamfer:>10.2e}{fs:>7.3f}"
                  f"{peak_rss_mb():>8.0f}", flush=True)
    print("\nvs ref = our time / reference C++ time (ovoxel.json, one core); peakMB = process peak RSS so far; "
          "chamfer in [-0.5, 0.5]^3 units (exact point-to-surface distances of surface samples), F@1/R = F-score at tau = 1/R.")


if __name__ == "__main__":
    main()
