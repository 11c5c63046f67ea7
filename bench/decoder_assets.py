"""Which real asset gives the SC-VAE decoder benchmark the reference's workload, and its cached 1024³ structure.

The speed issue quotes the reference decoders at 1024³ for 2,240 latents at 64³ (-> 873,270 voxels for the texture
decoder guided by the real subdivisions, 496,555 for the shape decoder). ``bench/pipeline.py`` used
``quaternius_robot_expressive`` (5,529 latents, 1,545,824 voxels), 2.47x the work, so its decoder times could not be
compared with the reference's. ``--decoder_asset auto`` picks the shared asset whose latent count at 64³ is closest to
2,240 instead.

The latent count is the number of occupied 64³ cells of the asset's 1024³ O-Voxel. Building that O-Voxel takes
seconds to tens of seconds per asset on a CPU, so assets are *ranked* with a proxy: the project's own O-Voxel
(``mesh_to_flexible_dual_grid``) at 64³, i.e. the 64³ cells the surface crosses, which takes well under a second.
It agrees with the 1024³ count to within a few voxels (``quaternius_robot_expressive``: 5,521 vs 5,529). Only the
chosen asset gets the 1024³ O-Voxel, and the benchmark reports its exact counts.

Both results are cached under ``.bench_data/`` (git-ignored): the ranking in ``decoder_asset_ranking.json`` and each
structure in ``ovoxel_1024_<asset>.npz``. A machine without the asset folder (the GPU device) can then run
``--decoder_asset auto`` or ``--decoder_asset NAME`` from the cache alone, when ``.bench_data`` is carried along.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Dict, Optional

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # pixal3d when run as `python bench/<script>.py` from anywhere
BENCH_DATA = REPO / ".bench_data"
DEFAULT_ASSETS = REPO.parent / "shared" / "data" / "assets3d"
RANKING_FILE = "decoder_asset_ranking.json"
PROXY_RESOLUTION = 64

#: The reference decoder measurement quoted in the speed issue (nvidia-h100-x1, FlexGEMM).
REFERENCE = {"latents_64": 2240, "tex_voxels_1024": 873270, "shape_voxels_1024": 496555, "tex_ms": 42.5,
             "shape_ms": 45.5}

_OVOXEL_ARGS = dict(aabb=[[-.5] * 3, [.5] * 3], face_weight=1.0, boundary_weight=0.2, regularization_weight=1e-2)


def asset_files(assets_root: Path) -> Dict[str, Path]:
    """``{asset name: main mesh file}`` for every asset folder (or loose mesh file) under ``assets_root``."""
    from pixal3d.data.metadata import scan_assets
    return {a["name"]: Path(a["local_path"]) for a in scan_assets(assets_root, hash_files=False)}


def _load_normalized(mesh_path: Path):
    from pixal3d.ovoxel import load_mesh, normalize_vertices
    m = load_mesh(mesh_path).to_geometry()
    v, _, _ = normalize_vertices(np.asarray(m.vertices, np.float32))
    return v, np.asarray(m.faces)


def estimate_latents_64(mesh_path: Path) -> int:
    """The proxy: number of voxels of the mesh's O-Voxel at 64³ (the 64³ cells its surface crosses)."""
    from pixal3d.ovoxel import mesh_to_flexible_dual_grid
    v, f = _load_normalized(mesh_path)
    c, _, _ = mesh_to_flexible_dual_grid(v, f, grid_size=PROXY_RESOLUTION, **_OVOXEL_ARGS)
    return int(len(c))


def rank_assets(assets_root: Optional[Path] = None, cache_dir: Path = BENCH_DATA, verbose: bool = True) -> dict:
    """Estimated latents at 64³ for every asset, cached in ``cache_dir/decoder_asset_ranking.json``.

    With an assets folder, assets missing from the cache are estimated (and the cache rewritten); without one the
    cached ranking is returned as is.

    Returns:
        ``{"proxy": str, "reference_latents_64": 2240, "assets": {name: {"file", "latents_64_est"} or {"error"}}}``.

    Raises:
        FileNotFoundError: neither an assets folder nor a cached ranking.
    """
    cache = Path(cache_dir) / RANKING_FILE
    data = json.loads(cache.read_text()) if cache.is_file() else {}
    entries = data.get("assets", {})
    root = Path(assets_root) if assets_root is not None else DEFAULT_ASSETS
    if root.is_dir():
        changed = False
        for name, path in sorted(asset_files(root).items()):
            if name in entries:
                continue
            t = time.time()
            try:
                entries[name] = {"file": str(path), "latents_64_est": estimate_latents_64(path)}
            except Exception as e:  # a broken asset must not stop the ranking; it is recorded and never chosen
                entries[name] = {"file": str(path), "error": f"{type(e).__name__}: {e}"}
            changed = True
            if verbose:
                print(f"  {name}: {entries[name].get('latents_64_est', entries[name].get('error'))} "
                      f"({time.time() - t:.1f} s)", flush=True)
        if changed:
            data = {"proxy": f"O-Voxel at {PROXY_RESOLUTION}³ (mesh_to_flexible_dual_grid), voxel count",
                    "reference_latents_64": REFERENCE["latents_64"], "assets": entries}
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps(data, indent=1, sort_keys=True))
    elif not entries:
        raise FileNotFoundError(f"no assets folder at {root} and no cached ranking at {cache}; pass --assets DIR")
    return data


def ranked(ranking: dict, target: int = REFERENCE["latents_64"]):
    """``[(name, estimated latents)]`` sorted by distance to ``target`` (then by name), broken assets left out."""
    rows = [(n, e["latents_64_est"]) for n, e in ranking["assets"].items() if "latents_64_est" in e]
    return sorted(rows, key=lambda r: (abs(r[1] - target), r[0]))


def pick_asset(assets_root: Optional[Path] = None, cache_dir: Path = BENCH_DATA, target: int = REFERENCE["latents_64"],
               verbose: bool = True) -> str:
    """Name of the asset whose estimated latent count at 64³ is closest to ``target`` (ties: alphabetical)."""
    rows = ranked(rank_assets(assets_root, cache_dir, verbose), target)
    if not rows:
        raise ValueError("no asset could be ranked (all failed to load)")
    if verbose:
        print(f"assets closest to {target:,} latents at 64³ (proxy estimate): "
              + ", ".join(f"{n} {c:,}" for n, c in rows[:5]), flush=True)
    return rows[0][0]


def structure_path(name: str, cache_dir: Path = BENCH_DATA) -> Path:
    """Where the 1024³ O-Voxel of asset ``name`` is cached."""
    return Path(cache_dir) / f"ovoxel_1024_{name}.npz"


def make_structure(mesh_path, out: Path, name: Optional[str] = None) -> None:
    """Mesh -> O-Voxel at 1024³ (CPU), stored as int16 coords + voxel-local dual vertices + flags, and ``name``
    (default: the mesh file's stem)."""
    from pixal3d.ovoxel import mesh_to_flexible_dual_grid
    v, f = _load_normalized(Path(mesh_path))
    t = time.time()
    c, dv, inter = mesh_to_flexible_dual_grid(v, f, grid_size=1024, **_OVOXEL_ARGS)
    print(f"mesh -> O-Voxel 1024³: {len(c):,} voxels in {time.time() - t:.2f} s", flush=True)
    c = c.numpy()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, coords=c.astype(np.int16), local=(dv.numpy() * 1024 - c).astype(np.float32),
                        intersected=inter.numpy(), name=name or Path(mesh_path).stem)


def resolve_structure(spec: str, assets_root: Optional[Path] = None, cache_dir: Path = BENCH_DATA,
                      verbose: bool = True, target: int = REFERENCE["latents_64"]) -> Path:
    """The structure file for ``--decoder_asset spec``: ``auto``, an asset name, a mesh file or an ``.npz``.

    ``auto`` picks the asset whose estimated latent count is closest to ``target``. ``auto`` and names use (and
    fill) the cache under ``cache_dir``; building a missing structure needs the asset's mesh (the assets folder).

    Raises:
        FileNotFoundError: the structure is not cached and the mesh cannot be found.
    """
    p = Path(spec)
    if p.suffix == ".npz":
        return p
    if p.is_file():  # a mesh file, named after its asset folder
        name = p.resolve().parent.name or p.stem
        out = structure_path(name, cache_dir)
        if not out.is_file():
            make_structure(p, out, name)
        return out
    name = pick_asset(assets_root, cache_dir, target, verbose) if spec == "auto" else spec
    out = structure_path(name, cache_dir)
    if out.is_file():
        return out
    root = Path(assets_root) if assets_root is not None else DEFAULT_ASSETS
    files = asset_files(root) if root.is_dir() else {}
    if name not in files:
        raise FileNotFoundError(f"no cached structure {out} for asset {name!r} and no mesh for it under {root}")
    if verbose:
        print(f"building the 1024³ O-Voxel of {name} ({files[name]})", flush=True)
    make_structure(files[name], out, name)
    return out


def exact_counts(coords1024: np.ndarray) -> dict:
    """Exact latents at 64³ (occupied 64³ cells of the 1024³ O-Voxel) and voxels at 1024³."""
    c = np.asarray(coords1024).astype(np.int64)
    return {"latents_64": int(len(np.unique(c // 16, axis=0))), "voxels_1024": int(len(c))}


if __name__ == "__main__":  # prints the ranking (and caches it)
    import argparse
    ap = argparse.ArgumentParser(description="rank the shared assets by estimated latents at 64³")
    ap.add_argument("--assets", default=str(DEFAULT_ASSETS))
    ap.add_argument("--target", type=int, default=REFERENCE["latents_64"])
    a = ap.parse_args()
    for n, c in ranked(rank_assets(Path(a.assets)), a.target):
        print(f"{n}\t{c}")
