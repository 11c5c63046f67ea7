"""GLB export benchmark: ``mesh_to_glb`` (the last step of ``inference.py``) on a realistic 1024³ decode, on the CPU.

The input stands in for the decoders' output (a :class:`~pixal3d.ovoxel.mesh.MeshWithVoxel`):
  * mesh: the shape O-Voxel of a real asset at 1024³ (``bench/decoder_assets.py make_structure``, default
    ``.bench_data/asset_ovoxel_1024.npz``) through ``flexible_dual_grid_to_mesh``, as the shape decoder does;
  * PBR voxels: the asset's textured mesh, normalised like ``make_structure`` (``normalize_vertices`` of the
    concatenated geometry), voxelised at 1024³ by ``textured_mesh_to_volumetric_attr`` (base colour, metallic,
    roughness, alpha in [0, 1], ``PBR_LAYOUT``). If that fails (no asset folder, unreadable mesh) or with
    ``--synthetic_attrs``, the attributes are a smooth deterministic function of the shape voxels' coordinates
    instead (the output says so); the texture bake's cost does not depend on the colour values.

Building the input is timed separately. The timed work is ``mesh_to_glb`` itself with inference.py's defaults
(Pixal3D frame, face budget 500,000, 2048² textures), writing into a temporary directory; ``to_glb`` is wrapped to
run with ``verbose=True`` so its cumulative step log gives the per-step table ("rotate + write GLB" is the rest of
``mesh_to_glb`` after ``to_glb`` returns).

    python bench/glb_export.py [--structure .bench_data/asset_ovoxel_1024.npz] [--asset DIR]
        [--decimation_target 500000] [--texture_size 2048] [--repeats 1] [--synthetic_attrs] [--json OUT]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # pixal3d when run as `python bench/<script>.py` from anywhere
DEFAULT_STRUCTURE = REPO / ".bench_data" / "asset_ovoxel_1024.npz"
DEFAULT_ASSETS = REPO.parent / "shared" / "data" / "assets3d"
RES = 1024
BOX = [[-0.5] * 3, [0.5] * 3]
MESH_SUFFIXES = (".glb", ".gltf", ".obj", ".ply")


def pbr_from_asset(asset_dir: Path):
    """(coords [L, 3], attrs [L, 6] in [0, 1]) of the asset's textured mesh at 1024³, in make_structure's frame."""
    from pixal3d.ovoxel import load_mesh, normalize_vertices, textured_mesh_to_volumetric_attr
    files = sorted(p for p in Path(asset_dir).iterdir() if p.suffix.lower() in MESH_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no mesh file in {asset_dir}")
    scene = load_mesh(files[0])
    _, center, scale = normalize_vertices(np.asarray(scene.to_geometry().vertices, np.float32))
    t = np.diag([scale, scale, scale, 1.0])
    t[:3, 3] = -center * scale
    scene.apply_transform(t)
    with warnings.catch_warnings(record=True) as caught:  # e.g. one "no UVs" warning per factor-only part
        warnings.simplefilter("always")
        coords, a = textured_mesh_to_volumetric_attr(scene, grid_size=RES, aabb=BOX)
    if caught:
        print(f"voxelisation: {len(caught)} warnings, first: {caught[0].message}")
    attrs = np.concatenate([a["base_color"], a["metallic"], a["roughness"], a["alpha"]], 1)
    return coords, attrs.astype(np.float32) / 255.0


def synthetic_attrs(coords: np.ndarray) -> np.ndarray:
    """Smooth deterministic PBR values of the voxel coordinates (alpha 1)."""
    p = coords.astype(np.float32) / RES * 2 * np.pi
    base = 0.5 + 0.4 * np.sin(3 * p + np.array([0.0, 2.1, 4.2], np.float32))
    metallic = 0.5 + 0.5 * np.sin(2 * p[:, :1] + p[:, 1:2])
    roughness = 0.6 + 0.3 * np.cos(p[:, 2:3] * 4)
    return np.concatenate([base, metallic, roughness, np.ones_like(metallic)], 1).astype(np.float32)


def build_input(structure: Path, asset_dir, force_synthetic: bool):
    """The MeshWithVoxel and a description of where its attributes came from."""
    from pixal3d.ovoxel import MeshWithVoxel, flexible_dual_grid_to_mesh
    from pixal3d.pipelines.image_to_3d import PBR_LAYOUT
    data = np.load(structure)
    c = torch.from_numpy(data["coords"].astype(np.int32))
    v, f = flexible_dual_grid_to_mesh(c, torch.from_numpy(data["local"]), torch.from_numpy(data["intersected"]),
                                      None, BOX, grid_size=RES)
    name = str(data["name"])
    asset_dir = Path(asset_dir) if asset_dir else DEFAULT_ASSETS / name
    source = None
    if not force_synthetic:
        try:
            coords, attrs = pbr_from_asset(asset_dir)
            key = lambda x: (x[:, 0].astype(np.int64) * RES + x[:, 1]) * RES + x[:, 2]  # noqa: E731
            same = np.isin(key(coords), key(c.numpy())).mean()
            source = (f"real asset: textured_mesh_to_volumetric_attr of {asset_dir} at {RES}³ "
                      f"({100 * same:.1f}% of them are shape voxels: same frame)")
        except Exception as e:  # fall back to synthetic values, loudly
            print(f"WARNING: PBR voxels from {asset_dir} failed ({type(e).__name__}: {e})", flush=True)
    if source is None:
        coords = c.numpy()
        attrs = synthetic_attrs(coords)
        source = "FALLBACK: synthetic smooth function of the shape voxel coordinates (not the asset's colours)"
    mesh = MeshWithVoxel(vertices=v.numpy(), faces=f.numpy(), coords=np.asarray(coords, np.int32), attrs=attrs,
                         layout=dict(PBR_LAYOUT), voxel_size=np.full(3, 1.0 / RES, np.float32))
    return mesh, name, source


class _Tee(io.StringIO):
    """Keeps what is printed and shows it live (to_glb's log, as the steps finish)."""

    def write(self, s):
        sys.__stdout__.write(s)
        sys.__stdout__.flush()
        return super().write(s)


def timed_export(mesh, args, out_dir: Path):
    """One mesh_to_glb call; returns (total s, [(step, s)], GLB bytes)."""
    from pixal3d.ovoxel import postprocess
    from pixal3d.pipelines.export import mesh_to_glb
    orig, marks = postprocess.to_glb, {}

    def verbose_to_glb(*a, **k):
        marks["start"] = time.perf_counter()
        out = orig(*a, **{**k, "verbose": True})
        marks["end"] = time.perf_counter()
        return out

    log, path = _Tee(), out_dir / "bench.glb"
    postprocess.to_glb = verbose_to_glb
    try:
        with contextlib.redirect_stdout(log):
            t0 = time.perf_counter()
            mesh_to_glb(mesh, RES, path, decimation_target=args.decimation_target, texture_size=args.texture_size,
                        overwrite=True)
            total = time.perf_counter() - t0
    finally:
        postprocess.to_glb = orig
    steps, prev = [("mesh_to_glb checks (before to_glb)", marks["start"] - t0)], 0.0
    for line in log.getvalue().splitlines():
        m = re.match(r"\[to_glb\s+([0-9.]+)s\]\s+(.*)", line)
        if m:
            steps.append((m.group(2), float(m.group(1)) - prev))
            prev = float(m.group(1))
    steps.append(("rotate + write GLB (after to_glb)", total - (marks["end"] - t0)))
    return total, steps, path.stat().st_size


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--structure", default=str(DEFAULT_STRUCTURE), help="1024³ shape O-Voxel .npz")
    ap.add_argument("--asset", default=None, help="asset folder with the textured mesh (default: shared asset of "
                                                  "the structure's name)")
    ap.add_argument("--decimation_target", type=int, default=500_000)
    ap.add_argument("--texture_size", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--synthetic_attrs", action="store_true", help="skip the asset; synthetic PBR values")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    t = time.perf_counter()
    mesh, name, source = build_input(Path(args.structure), args.asset, args.synthetic_attrs)
    build_s = time.perf_counter() - t
    used = len(np.unique(mesh.faces))
    print(f"input: {name} at {RES}³: {len(mesh.vertices):,} vertices ({used:,} used), {len(mesh.faces):,} faces, "
          f"{len(mesh.coords):,} PBR voxels")
    print(f"PBR attributes: {source}")
    print(f"input build (not timed below): {build_s:.1f} s")
    print(f"mesh_to_glb: face budget {args.decimation_target:,}, textures {args.texture_size}², Pixal3D frame, "
          f"torch threads {torch.get_num_threads()}")

    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            total, steps, size = timed_export(mesh, args, Path(tmp))
            runs.append(dict(total_s=total, steps=steps, glb_bytes=size))
            print(f"\nrun {i + 1}/{args.repeats}: mesh_to_glb {total:.1f} s, GLB {size / 2**20:.1f} MiB")
            print("| step | s | share |\n|---|---:|---:|")
            for s, dt in steps:
                print(f"| {s} | {dt:.2f} | {100 * dt / total:.1f}% |")
            slow = max(steps, key=lambda r: r[1])
            print(f"slowest step: {slow[0]} ({slow[1]:.1f} s, {100 * slow[1] / total:.0f}%)")
    totals = [r["total_s"] for r in runs]
    print(f"\nmesh_to_glb total: min {min(totals):.1f} s, max {max(totals):.1f} s over {len(totals)} run(s)")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(
            asset=name, structure=args.structure, attrs_source=source, vertices=len(mesh.vertices),
            used_vertices=used, faces=len(mesh.faces), pbr_voxels=len(mesh.coords), build_s=build_s,
            decimation_target=args.decimation_target, texture_size=args.texture_size, runs=runs), indent=1))


if __name__ == "__main__":
    main()
