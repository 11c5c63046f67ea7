"""The data-toolkit steps (TRELLIS2_SPEC §5.7, PIXAL3D_SPEC §7) as :class:`pixal3d.data.runner.Step` objects.

Output layout under ``--root R`` (each folder also gets ``metadata.csv`` via ``new_records`` + ``--finalize``):

=====================  ======================================================  =========================================
step                   files                                                   metadata columns (folder [+ root])
=====================  ======================================================  =========================================
dump_mesh              ``mesh_dumps/{sha}.pickle``                             ``mesh_dumped`` (+root)
dump_pbr               ``pbr_dumps/{sha}.pickle``                              ``pbr_dumped`` (+root)
asset_stats            ``asset_stats/{sha}.json``                              ``num_faces``, ``num_vertices``,
                                                                               ``num_{basecolor,metallic,roughness,
                                                                               alpha}_tex`` (+root)
render_cond            ``renders_cond/{sha}/{000..}.png`` + ``transforms.json``  ``cond_rendered``, ``num_cond_views``
                                                                               (+root)
dual_grid              ``dual_grid_{R}/{sha}.vxz``                             ``dual_grid_converted``, ``dual_grid_size``
voxelize_pbr           ``pbr_voxels_{R}/{sha}.vxz``                            ``pbr_voxelized``, ``num_pbr_voxels``
dual_grid_view         ``dual_grid_view_{R}/{sha}/view{VV}.vxz`` + ``view{VV}_scale.json``
                                                                               ``dual_grid_view{VV}_{converted,size,
                                                                               scale}_{R}``
voxelize_pbr_view      ``pbr_voxels_view_fix_{R}/{sha}/view{VV}.vxz`` + scale  ``pbr_voxelized_view_fix{VV}_{R}``,
                                                                               ``num_pbr_voxels_view_fix{VV}_{R}``,
                                                                               ``pbr_voxel_scale_view_fix{VV}_{R}``
encode_shape_latent    ``shape_latents/{enc}_{R}/{sha}.npz`` or               ``shape_latent_encoded``,
                       ``shape_latents/{enc}_{R}_view/{sha}/view{VV}.npz``     ``shape_latent_tokens`` / per view
                       (+ scale json)                                          ``shape_latent_view{VV}_{encoded,tokens}``
encode_pbr_latent      ``pbr_latents/{enc}_{R}[_view]/...``                    ``pbr_latent[_view{VV}]_{encoded,tokens}``
encode_ss_latent       ``ss_latents/{enc}_{res}[_view]/...`` (``{'z'}``)       ``ss_latent[_view{VV}]_encoded``
=====================  ======================================================  =========================================
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from .runner import Step, atomic_path

__all__ = ["DUMP_MESH", "DUMP_PBR", "ASSET_STATS", "RENDER_COND", "DUAL_GRID", "VOXELIZE_PBR", "DUAL_GRID_VIEW",
           "VOXELIZE_PBR_VIEW", "ENCODE_SHAPE_LATENT", "ENCODE_PBR_LATENT", "ENCODE_SS_LATENT", "STEPS"]

REPO = Path(__file__).resolve().parents[2]
BLENDER_SCRIPT = REPO / "data_toolkit" / "blender_script" / "render_cond.py"


def _true(v) -> bool:
    return v is True or v == "True"


def _no_args(parser):
    return None


def _write_json(path: Path, obj) -> None:
    tmp = atomic_path(path)
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def _write_vxz(path: Path, coords, attrs) -> None:
    from pixal3d.ovoxel.io import write_vxz
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = atomic_path(path)
    write_vxz(str(tmp), coords, attrs)
    os.replace(tmp, path)


def _write_npz(path: Path, **arrays) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = atomic_path(path)
    np.savez(str(tmp), **arrays)
    os.replace(tmp, path)


def _vxz_count(path: Path) -> int:
    from pixal3d.ovoxel.io import read_vxz_info
    return int(read_vxz_info(str(path))["num_voxel"])


# ====================================================================== dumps
def _dump_setup(kind):
    def setup(args):
        out = Path(args.root) / f"{kind}_dumps"
        out.mkdir(parents=True, exist_ok=True)
        return {"root": str(args.root), "out": str(out), "kind": kind, "record_dirs": [str(out), str(args.root)]}
    return setup


def _dump_select(ctx, row):
    return bool(row.get("local_path"))


def _dump_done(ctx, sha):
    return (Path(ctx["out"]) / f"{sha}.pickle").is_file()


def _dump_record(ctx, sha, row):
    return {f"{ctx['kind']}_dumped": True}


def _dump_process(ctx, sha, row):
    from .dumps import mesh_dump_from_asset, pbr_dump_from_asset, save_dump
    fn = mesh_dump_from_asset if ctx["kind"] == "mesh" else pbr_dump_from_asset
    dump = fn(row["local_path"])
    save_dump(dump, Path(ctx["out"]) / f"{sha}.pickle")
    return _dump_record(ctx, sha, row)


DUMP_MESH = Step("dump_mesh", _no_args, _dump_setup("mesh"), _dump_select, _dump_done, _dump_process, _dump_record,
                 "Load assets with trimesh, normalise into [-0.5, 0.5]^3 (Blender Z-up frame), write mesh_dumps/")
DUMP_PBR = Step("dump_pbr", _no_args, _dump_setup("pbr"), _dump_select, _dump_done, _dump_process, _dump_record,
                "Load assets with trimesh and write PBR dumps (objects, UVs, normals, materials, PNG textures)")


# ====================================================================== asset stats
def _stats_setup(args):
    out = Path(args.root) / "asset_stats"
    out.mkdir(parents=True, exist_ok=True)
    return {"root": str(args.root), "out": str(out), "pbr": str(Path(args.root) / "pbr_dumps"),
            "record_dirs": [str(out), str(args.root)]}


def _stats_select(ctx, row):
    return (Path(ctx["pbr"]) / f"{row['sha256']}.pickle").is_file()


def _stats_done(ctx, sha):
    return (Path(ctx["out"]) / f"{sha}.json").is_file()


def _stats_existing(ctx, sha, row):
    return json.loads((Path(ctx["out"]) / f"{sha}.json").read_text())


def _stats_process(ctx, sha, row):
    from .dumps import load_dump, texture_counts
    d = load_dump(Path(ctx["pbr"]) / f"{sha}.pickle")
    rec = {"num_faces": int(sum(len(o["faces"]) for o in d["objects"])),
           "num_vertices": int(sum(len(o["vertices"]) for o in d["objects"])),
           **texture_counts(d),
           "num_objects": len(d["objects"]), "num_materials": len(d.get("materials", []))}
    _write_json(Path(ctx["out"]) / f"{sha}.json", rec)
    return rec


ASSET_STATS = Step("asset_stats", _no_args, _stats_setup, _stats_select, _stats_done, _stats_process, _stats_existing,
                   "Per-asset statistics from the PBR dumps: faces, vertices, textures per channel")


# ====================================================================== render_cond
def _render_args(p):
    p.add_argument("--num_views", type=int, default=2, help="conditioning views per asset (Pixal3D: 2)")
    p.add_argument("--resolution", type=int, default=1024, help="image side in pixels (reference: 1024)")
    p.add_argument("--samples", type=int, default=32, help="Cycles samples of the final render")
    p.add_argument("--probe_samples", type=int, default=1, help="Cycles samples of the retry-loop probe renders")
    p.add_argument("--no_denoise", action="store_true", help="disable the denoiser (reference: on)")
    p.add_argument("--max_retries", type=int, default=10, help="radius adjustments of the retry loop (0 = off)")
    p.add_argument("--border_px", type=float, default=130.0,
                   help="accepted largest border distance in pixels at 1024^2 (scaled with --resolution)")
    p.add_argument("--fov_min", type=float, default=10.0, help="smallest FOV in degrees")
    p.add_argument("--fov_max", type=float, default=70.0, help="largest FOV in degrees")
    p.add_argument("--lighting", choices=["points", "hdri"], default="points",
                   help="'points': the reference's random point-light rig + white world; 'hdri': a random HDRI")
    p.add_argument("--hdri_dir", default=None, help="folder of .hdr/.exr maps for --lighting hdri")
    p.add_argument("--hdri_strength", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0, help="base seed; each asset uses (seed, sha256)")
    p.add_argument("--blender_python", default=sys.executable,
                   help="Python interpreter that can `import bpy` (Blender 4.2-4.5 as a module)")
    p.add_argument("--render_threads", type=int, default=None, help="Cycles threads (default: --threads)")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds before a Blender run is killed")


def _render_setup(args):
    out = Path(args.root) / "renders_cond"
    out.mkdir(parents=True, exist_ok=True)
    hdris = []
    if args.lighting == "hdri":
        if not args.hdri_dir or not Path(args.hdri_dir).is_dir():
            raise FileNotFoundError(f"--lighting hdri needs --hdri_dir with .hdr/.exr files, got {args.hdri_dir!r}")
        hdris = sorted(str(p) for p in Path(args.hdri_dir).iterdir() if p.suffix.lower() in (".hdr", ".exr"))
        if not hdris:
            raise FileNotFoundError(f"no .hdr/.exr files in {args.hdri_dir}")
    if args.num_views < 1 or args.resolution < 8:
        raise ValueError("--num_views must be >= 1 and --resolution >= 8")
    return {"root": str(args.root), "out": str(out), "pbr": str(Path(args.root) / "pbr_dumps"),
            "record_dirs": [str(out), str(args.root)], "num_views": args.num_views,
            "resolution": args.resolution, "samples": args.samples, "probe_samples": args.probe_samples,
            "denoise": not args.no_denoise, "max_retries": args.max_retries,
            "max_border_px": args.border_px * args.resolution / 1024.0,
            "fov_range": (args.fov_min, args.fov_max), "lighting": args.lighting, "hdri_files": hdris,
            "hdri_strength": args.hdri_strength, "seed": args.seed, "python": args.blender_python,
            "threads": args.render_threads or args.threads, "timeout": args.timeout}


def _render_select(ctx, row):
    return (Path(ctx["pbr"]) / f"{row['sha256']}.pickle").is_file()


def _render_done(ctx, sha):
    d = Path(ctx["out"]) / sha
    tj = d / "transforms.json"
    if not tj.is_file():
        return False
    try:
        frames = json.loads(tj.read_text())["frames"]
    except (ValueError, KeyError):
        return False
    return len(frames) >= ctx["num_views"] and all((d / f["file_path"]).is_file() for f in frames)


def _render_existing(ctx, sha, row):
    frames = json.loads((Path(ctx["out"]) / sha / "transforms.json").read_text())["frames"]
    return {"cond_rendered": True, "num_cond_views": len(frames)}


def render_job(ctx: dict, sha: str, dump_path: str, out_dir: str) -> dict:
    """The JSON job for ``blender_script/render_cond.py``: cameras (Hammersley yaw/pitch with one random offset per
    asset, FOV per view) and per-view lighting, all drawn from ``default_rng([seed, int(sha[:15], 16)])``."""
    from .cameras import camera_position, sample_point_lights, sample_views
    from .dumps import load_dump
    rng = np.random.default_rng([int(ctx["seed"]), int(sha[:15], 16)])
    views = sample_views(ctx["num_views"], rng, ctx["fov_range"])
    for v in views:
        if ctx["lighting"] == "points":
            lights, world = sample_point_lights(rng, camera_position(v["yaw"], v["pitch"], 1.0))
            v.update(lights=lights, world_strength=world)
        else:
            v.update(lights=[], world_strength=ctx["hdri_strength"],
                     hdri=ctx["hdri_files"][int(rng.integers(len(ctx["hdri_files"])))],
                     hdri_rotation=float(rng.uniform(0, 2 * math.pi)))
        v.pop("transform_matrix")
    d = load_dump(dump_path)
    return {"dump": dump_path, "out_dir": out_dir, "resolution": ctx["resolution"], "samples": ctx["samples"],
            "probe_samples": ctx["probe_samples"], "denoise": ctx["denoise"], "threads": ctx["threads"],
            "max_retries": ctx["max_retries"], "max_border_px": ctx["max_border_px"], "lighting": ctx["lighting"],
            "seed": ctx["seed"], "scale": float(d.get("scale", 1.0)),
            "offset": [float(x) for x in np.asarray(d.get("offset", np.zeros(3)))], "views": views}


_NUMPY_BANNER = ("NumPy 1.x", "NumPy 2", "numpy<2", "pybind11", "user of the module", "need time to support",
                 "numpy.core", "_multiarray_umath", "raise ImportError", "ImportError: ", "Unable to initialise audio",
                 "import bpy", "Traceback (most recent call last)", "versions of NumPy", "downgrade to", "Some module")


def _blender_error_lines(stderr: str) -> list:
    """Informative stderr lines of a Blender run (bpy's harmless numpy-2 import banner removed)."""
    return [ln for ln in stderr.splitlines() if ln.strip() and not any(b in ln for b in _NUMPY_BANNER)]


def _render_process(ctx, sha, row):
    final = Path(ctx["out"]) / sha
    work = Path(ctx["out"]) / f".{sha}.tmp{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        job = render_job(ctx, sha, str(Path(ctx["pbr"]) / f"{sha}.pickle"), str(work))
        job_path = work / "job.json"
        job_path.write_text(json.dumps(job))
        env = dict(os.environ, PIXAL3D_REPO=str(REPO), PYTHONPATH=str(REPO) + os.pathsep +
                   os.environ.get("PYTHONPATH", ""))
        try:
            proc = subprocess.run([ctx["python"], str(BLENDER_SCRIPT), str(job_path)], env=env, capture_output=True,
                                  text=True, timeout=ctx["timeout"])
        except subprocess.TimeoutExpired as e:
            raise TimeoutError(f"Blender render exceeded {ctx['timeout']} s") from e
        if proc.returncode != 0 or not (work / "transforms.json").is_file():
            tail = "\n".join(_blender_error_lines(proc.stderr or "")[-8:])
            if "No module named 'bpy'" in (proc.stderr or ""):
                raise RuntimeError(f"{ctx['python']} cannot import bpy; install Blender as a module "
                                   f"(`pip install bpy==4.5.*`, Python 3.11) or pass --blender_python")
            how = (f"crashed (signal {-proc.returncode})" if proc.returncode < 0 else f"failed (exit {proc.returncode})")
            raise RuntimeError(f"Blender render {how}: {tail}")
        job_path.unlink()
        (work / "blender.log").write_text((proc.stderr or "")[-20000:])
        if final.exists():
            shutil.rmtree(final)
        os.replace(work, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return _render_existing(ctx, sha, row)


RENDER_COND = Step("render_cond", _render_args, _render_setup, _render_select, _render_done, _render_process,
                   _render_existing, "Render conditioning views with Blender Cycles (CPU) + transforms.json")


# ====================================================================== canonical voxelisation
def _res_args(default):
    def add(p):
        p.add_argument("--resolution", type=int, default=default, help="voxel grid resolution R")
    return add


def _canon_setup(kind):
    def setup(args):
        if args.resolution < 2:
            raise ValueError(f"--resolution must be >= 2, got {args.resolution}")
        name = f"dual_grid_{args.resolution}" if kind == "mesh" else f"pbr_voxels_{args.resolution}"
        out = Path(args.root) / name
        out.mkdir(parents=True, exist_ok=True)
        return {"root": str(args.root), "out": str(out), "res": args.resolution, "kind": kind,
                "dumps": str(Path(args.root) / f"{kind}_dumps"), "record_dirs": [str(out)]}
    return setup


def _canon_select(ctx, row):
    return (Path(ctx["dumps"]) / f"{row['sha256']}.pickle").is_file()


def _canon_done(ctx, sha):
    return (Path(ctx["out"]) / f"{sha}.vxz").is_file()


def _canon_existing(ctx, sha, row):
    n = _vxz_count(Path(ctx["out"]) / f"{sha}.vxz")
    if ctx["kind"] == "mesh":
        return {"dual_grid_converted": True, "dual_grid_size": n}
    return {"pbr_voxelized": True, "num_pbr_voxels": n}


def _canon_process(ctx, sha, row):
    from .dumps import load_dump
    from .view_align import dual_grid_arrays, mesh_vertices_canonical, pbr_voxel_arrays
    d = load_dump(Path(ctx["dumps"]) / f"{sha}.pickle")
    if ctx["kind"] == "mesh":
        v, f = mesh_vertices_canonical(d)
        coords, attrs = dual_grid_arrays(v, f, ctx["res"])
    else:
        coords, attrs = pbr_voxel_arrays(d, ctx["res"])
    if len(coords) == 0:
        raise ValueError(f"no voxels at resolution {ctx['res']} (every triangle is smaller than a voxel)")
    _write_vxz(Path(ctx["out"]) / f"{sha}.vxz", coords, attrs)
    return _canon_existing(ctx, sha, row)


DUAL_GRID = Step("dual_grid", _res_args(256), _canon_setup("mesh"), _canon_select, _canon_done, _canon_process,
                 _canon_existing, "Mesh dumps -> flexible dual grids dual_grid_{R}/{sha}.vxz (TRELLIS2_SPEC 3.3)")
VOXELIZE_PBR = Step("voxelize_pbr", _res_args(256), _canon_setup("pbr"), _canon_select, _canon_done,
                    _canon_process, _canon_existing,
                    "PBR dumps -> PBR voxels pbr_voxels_{R}/{sha}.vxz (TRELLIS2_SPEC 3.5)")


# ====================================================================== per-view voxelisation
def _view_args(p):
    p.add_argument("--resolution", type=int, default=256, help="voxel grid resolution R")
    p.add_argument("--num_views", type=int, default=None,
                   help="views per asset (default: every frame of renders_cond/{sha}/transforms.json)")


def _view_setup(kind):
    def setup(args):
        if args.resolution < 2:
            raise ValueError(f"--resolution must be >= 2, got {args.resolution}")
        name = (f"dual_grid_view_{args.resolution}" if kind == "mesh"
                else f"pbr_voxels_view_fix_{args.resolution}")
        out = Path(args.root) / name
        out.mkdir(parents=True, exist_ok=True)
        return {"root": str(args.root), "out": str(out), "res": args.resolution, "kind": kind,
                "num_views": args.num_views, "dumps": str(Path(args.root) / f"{kind}_dumps"),
                "renders": str(Path(args.root) / "renders_cond"), "record_dirs": [str(out)]}
    return setup


def _view_select(ctx, row):
    sha = row["sha256"]
    return ((Path(ctx["dumps"]) / f"{sha}.pickle").is_file()
            and (Path(ctx["renders"]) / sha / "transforms.json").is_file())


def _frames(ctx, sha):
    from pixal3d.datasets.images import read_transforms
    frames = read_transforms(Path(ctx["renders"]) / sha)["frames"]
    n = ctx["num_views"] or len(frames)
    if n > len(frames):
        raise ValueError(f"{sha}: --num_views {n} but transforms.json has {len(frames)} frames")
    return frames[:n]


def _view_n(ctx, sha):
    try:
        return len(_frames(ctx, sha))
    except (ValueError, OSError):
        return None


def _view_done(ctx, sha):
    n = _view_n(ctx, sha)
    d = Path(ctx["out"]) / sha
    return n is not None and all((d / f"view{v:02d}.vxz").is_file() and (d / f"view{v:02d}_scale.json").is_file()
                                 for v in range(n))


def _view_cols(ctx, v, n, total_scale):
    r = ctx["res"]
    if ctx["kind"] == "mesh":
        return {f"dual_grid_view{v:02d}_converted_{r}": True, f"dual_grid_view{v:02d}_size_{r}": n,
                f"dual_grid_view{v:02d}_scale_{r}": total_scale}
    return {f"pbr_voxelized_view_fix{v:02d}_{r}": True, f"num_pbr_voxels_view_fix{v:02d}_{r}": n,
            f"pbr_voxel_scale_view_fix{v:02d}_{r}": total_scale}


def _view_existing(ctx, sha, row):
    d = Path(ctx["out"]) / sha
    rec = {}
    for v in range(_view_n(ctx, sha)):
        scale = json.loads((d / f"view{v:02d}_scale.json").read_text())["total_scale"]
        rec.update(_view_cols(ctx, v, _vxz_count(d / f"view{v:02d}.vxz"), scale))
    return rec


def _view_process(ctx, sha, row):
    from .dumps import dump_vertices_faces, load_dump
    from .view_align import dual_grid_arrays, mesh_vertices_view, pbr_voxel_arrays, view_scale_transform
    d = load_dump(Path(ctx["dumps"]) / f"{sha}.pickle")
    out = Path(ctx["out"]) / sha
    out.mkdir(parents=True, exist_ok=True)
    rec = {}
    for v, fr in enumerate(_frames(ctx, sha)):
        c2w = np.asarray(fr["transform_matrix"], np.float64)
        if ctx["kind"] == "mesh":
            verts, faces, info = mesh_vertices_view(d, c2w)
            coords, attrs = dual_grid_arrays(verts, faces, ctx["res"])
        else:
            m, info = view_scale_transform(dump_vertices_faces(d)[0], c2w)
            coords, attrs = pbr_voxel_arrays(d, ctx["res"], m)
        if len(coords) == 0:
            raise ValueError(f"view {v}: no voxels at resolution {ctx['res']}")
        _write_vxz(out / f"view{v:02d}.vxz", coords, attrs)
        _write_json(out / f"view{v:02d}_scale.json", {"sha256": sha, "view_idx": v, **info})
        rec.update(_view_cols(ctx, v, len(coords), info["total_scale"]))
    return rec


DUAL_GRID_VIEW = Step("dual_grid_view", _view_args, _view_setup("mesh"), _view_select, _view_done, _view_process,
                      _view_existing, "Mesh dumps rotated into each render's view frame -> per-view dual grids "
                      "(PIXAL3D_SPEC 7.2-7.3)")
VOXELIZE_PBR_VIEW = Step("voxelize_pbr_view", _view_args, _view_setup("pbr"), _view_select, _view_done,
                         _view_process, _view_existing,
                         "PBR dumps rotated into each render's view frame -> per-view PBR voxels (PIXAL3D_SPEC 7.3)")


# ====================================================================== latents
_ENCODERS = {}


def _encoder(path: str, device: str):
    key = (path, device)
    if key not in _ENCODERS:
        from pixal3d.models.pretrained import from_pretrained
        _ENCODERS[key] = from_pretrained(path, device=device).eval()
    return _ENCODERS[key]


def _enc_args(kind):
    def add(p):
        p.add_argument("--enc_pretrained", required=True,
                       help="encoder checkpoint stem (dir/name for name.json + name.safetensors, or a HF path)")
        p.add_argument("--enc_name", default=None, help="name used in the output folder (default: stem basename)")
        p.add_argument("--view", action="store_true", help="encode the per-view voxels/latents (Pixal3D)")
        p.add_argument("--device", default="cpu")
        p.add_argument("--input_dir", default=None, help="override the input folder")
        if kind == "ss":
            p.add_argument("--resolution", type=int, default=64,
                           help="occupancy grid side built from the shape-latent coords (reference: 64)")
            p.add_argument("--shape_latent_dir", default=None,
                           help="shape latent folder (required unless --input_dir is given)")
        else:
            p.add_argument("--resolution", type=int, default=256, help="voxel resolution of the inputs")
    return add


def _enc_setup(kind):
    def setup(args):
        root = Path(args.root)
        enc = args.enc_name or Path(str(args.enc_pretrained)).name
        suffix = "_view" if args.view else ""
        if kind == "ss":
            inp = args.input_dir or args.shape_latent_dir
            if not inp:
                raise ValueError("encode_ss_latent needs --shape_latent_dir (e.g. R/shape_latents/ENC_1024[_view])")
            out = root / "ss_latents" / f"{enc}_{args.resolution}{suffix}"
        else:
            base = {"shape": ("dual_grid_view_{}", "dual_grid_{}"),
                    "pbr": ("pbr_voxels_view_fix_{}", "pbr_voxels_{}")}[kind]
            inp = args.input_dir or str(root / (base[0] if args.view else base[1]).format(args.resolution))
            out = root / f"{kind}_latents" / f"{enc}_{args.resolution}{suffix}"
        if not Path(inp).is_dir():
            raise FileNotFoundError(f"input folder {inp} does not exist; run the previous step first")
        out.mkdir(parents=True, exist_ok=True)
        return {"root": str(root), "out": str(out), "input": str(inp), "kind": kind, "view": bool(args.view),
                "res": args.resolution, "enc": str(args.enc_pretrained), "device": args.device,
                "renders": str(root / "renders_cond"), "record_dirs": [str(out)]}
    return setup


def _in_ext(ctx):
    return ".npz" if ctx["kind"] == "ss" else ".vxz"


def _enc_views(ctx, sha):
    """View indices present in the input folder of ``sha`` (contiguous from 0)."""
    d = Path(ctx["input"]) / sha
    n = 0
    while (d / f"view{n:02d}{_in_ext(ctx)}").is_file():
        n += 1
    return n


def _enc_select(ctx, row):
    sha = row["sha256"]
    if ctx["view"]:
        return _enc_views(ctx, sha) > 0
    return (Path(ctx["input"]) / f"{sha}{_in_ext(ctx)}").is_file()


def _enc_done(ctx, sha):
    out = Path(ctx["out"])
    if not ctx["view"]:
        return (out / f"{sha}.npz").is_file()
    n = _enc_views(ctx, sha)
    return n > 0 and all((out / sha / f"view{v:02d}.npz").is_file() and
                         (out / sha / f"view{v:02d}_scale.json").is_file() for v in range(n))


def _enc_cols(ctx, view, n_tokens):
    p = ctx["kind"]
    tag = "" if view is None else f"_view{view:02d}"
    rec = {f"{p}_latent{tag}_encoded": True}
    if p != "ss":
        rec[f"{p}_latent{tag}_tokens"] = int(n_tokens)
    return rec


def _enc_existing(ctx, sha, row):
    out = Path(ctx["out"])
    if not ctx["view"]:
        with np.load(out / f"{sha}.npz") as f:
            return _enc_cols(ctx, None, len(f["coords"]) if "coords" in f.files else 0)
    rec = {}
    for v in range(_enc_views(ctx, sha)):
        with np.load(out / sha / f"view{v:02d}.npz") as f:
            rec.update(_enc_cols(ctx, v, len(f["coords"]) if "coords" in f.files else 0))
    return rec


def encode_sparse_file(path, kind: str, model, device: str = "cpu") -> dict:
    """Encodes one ``.vxz`` (shape: dual grid; pbr: PBR voxels) with an SC-VAE encoder (posterior mean).

    Shape input: ``vertices = u8/255`` ``[N, 3]`` and ``intersected`` bool ``[N, 3]`` (TRELLIS2_SPEC §3.3); PBR input:
    ``concat(base_color, metallic, roughness, alpha)/255·2 − 1`` ``[N, 6]`` (§5.5).

    Returns:
        ``{'feats': float32 [M, C], 'coords': uint8 [M, 3]}`` with tokens sorted lexicographically by (x, y, z).

    Raises:
        ValueError: missing attributes in the file, or latent coords ≥ 256 (not storable as uint8).
    """
    import torch
    from pixal3d.ovoxel.io import read_vxz, unpack_intersected
    from pixal3d.sparse import SparseTensor
    coords, attrs = read_vxz(str(path))
    c = torch.cat([torch.zeros(len(coords), 1, dtype=torch.int32),
                   torch.from_numpy(np.ascontiguousarray(coords, np.int32))], dim=1).to(device)
    with torch.no_grad():
        if kind == "shape":
            missing = [k for k in ("vertices", "intersected") if k not in attrs]
            if missing:
                raise ValueError(f"{path} lacks {missing} (not a dual-grid file)")
            vert = torch.from_numpy(attrs["vertices"].astype(np.float32) / 255.0).to(device)
            inter = torch.from_numpy(unpack_intersected(attrs["intersected"])).to(device)
            z = model(SparseTensor(vert, c), SparseTensor(inter, c))
        else:
            from .view_align import PBR_ATTRS
            missing = [k for k in PBR_ATTRS if k not in attrs]
            if missing:
                raise ValueError(f"{path} lacks {missing} (not a PBR voxel file)")
            x = np.concatenate([attrs[k] for k in PBR_ATTRS], axis=1).astype(np.float32) / 255.0 * 2 - 1
            z = model(SparseTensor(torch.from_numpy(x).to(device), c))
    zc = z.coords[:, 1:].cpu().numpy().astype(np.int64)
    feats = z.feats.float().cpu().numpy()
    if zc.size and zc.max() > 255:
        raise ValueError(f"latent coords up to {zc.max()} do not fit uint8")
    order = np.lexsort((zc[:, 2], zc[:, 1], zc[:, 0]))
    return {"feats": feats[order].astype(np.float32), "coords": zc[order].astype(np.uint8)}


def encode_ss_file(path, resolution: int, model, device: str = "cpu") -> dict:
    """Encodes the occupancy of a shape latent's coords (``resolution``³ grid, 1 at each coord) with the dense SS
    encoder (posterior mean) → ``{'z': float32 [C, r, r, r]}``.

    Raises:
        ValueError: coords ≥ ``resolution`` (wrong --resolution for these latents) or no ``coords`` key.
    """
    import torch
    with np.load(path) as f:
        if "coords" not in f.files:
            raise ValueError(f"{path} has no 'coords' (not a shape latent)")
        coords = f["coords"].astype(np.int64)
    if coords.size and coords.max() >= resolution:
        raise ValueError(f"{path}: latent coords reach {coords.max()} >= --resolution {resolution}")
    occ = torch.zeros(1, 1, resolution, resolution, resolution)
    occ[0, 0, coords[:, 0], coords[:, 1], coords[:, 2]] = 1.0
    with torch.no_grad():
        z = model(occ.to(device), sample_posterior=False)
    return {"z": z[0].float().cpu().numpy().astype(np.float32)}


def _enc_one(ctx, src: Path, dst: Path) -> int:
    model = _encoder(ctx["enc"], ctx["device"])
    if ctx["kind"] == "ss":
        out = encode_ss_file(src, ctx["res"], model, ctx["device"])
        _write_npz(dst, **out)
        return 0
    out = encode_sparse_file(src, ctx["kind"], model, ctx["device"])
    _write_npz(dst, **out)
    return len(out["coords"])


def _enc_process(ctx, sha, row):
    inp, out = Path(ctx["input"]), Path(ctx["out"])
    if not ctx["view"]:
        return _enc_cols(ctx, None, _enc_one(ctx, inp / f"{sha}{_in_ext(ctx)}", out / f"{sha}.npz"))
    rec = {}
    for v in range(_enc_views(ctx, sha)):
        n = _enc_one(ctx, inp / sha / f"view{v:02d}{_in_ext(ctx)}", out / sha / f"view{v:02d}.npz")
        scale = inp / sha / f"view{v:02d}_scale.json"
        if not scale.is_file():
            raise FileNotFoundError(f"{scale} is missing (written by dual_grid_view / voxelize_pbr_view)")
        dst = out / sha / f"view{v:02d}_scale.json"
        tmp = atomic_path(dst)
        shutil.copyfile(scale, tmp)
        os.replace(tmp, dst)
        rec.update(_enc_cols(ctx, v, n))
    return rec


def _enc_step(kind, desc):
    return Step(f"encode_{kind}_latent", _enc_args(kind), _enc_setup(kind), _enc_select, _enc_done, _enc_process,
                _enc_existing, desc)


ENCODE_SHAPE_LATENT = _enc_step("shape", "Dual grids -> shape SC-VAE latents (posterior mean)")
ENCODE_PBR_LATENT = _enc_step("pbr", "PBR voxels -> texture SC-VAE latents (posterior mean)")
ENCODE_SS_LATENT = _enc_step("ss", "Shape-latent coords -> occupancy -> sparse-structure VAE latents")

STEPS = {s.name: s for s in (DUMP_MESH, DUMP_PBR, ASSET_STATS, RENDER_COND, DUAL_GRID, VOXELIZE_PBR, DUAL_GRID_VIEW,
                             VOXELIZE_PBR_VIEW, ENCODE_SHAPE_LATENT, ENCODE_PBR_LATENT, ENCODE_SS_LATENT)}
