"""Full-size Pixal3D cascade with random weights: per-stage time and peak GPU memory, plus decoder and
O-Voxel -> mesh timings on a real asset's structure.

Random weights make random structures, so the structure comes from a real asset's O-Voxel at 1024³ (made with
``--make_structure MESH``): the sparse-structure stage runs for timing but its coordinates are replaced by the asset's
32³ latent voxels, and the shape decoder's upsampling by the asset's 512³ voxels. The texture decoder is guided by the
asset's own subdivisions, like the reference measurement.

    python bench/pipeline.py --make_structure ../shared/data/assets3d/quaternius_robot_expressive/*.glb  # once, CPU
    python bench/pipeline.py [--structure .bench_data/asset_ovoxel_1024.npz] [--resolution 1024] [--low_vram]
    python bench/pipeline.py --skip cascade,to_mesh --decoder_asset auto [--json out.json]

``--decoder_asset`` (``auto``, an asset name, a mesh or an ``.npz``) gives the decoder benchmark its own structure:
``auto`` picks the shared asset whose latent count at 64³ is closest to the reference measurement's 2,240 (see
``bench/decoder_assets.py``), so the decoder times compare with the reference's at the same workload; the table
reports the asset's exact counts next to the reference's. ``--json`` writes everything measured.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

import decoder_assets

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # pixal3d when run as `python bench/<script>.py` from anywhere
DEFAULT_STRUCTURE = REPO / ".bench_data" / "asset_ovoxel_1024.npz"
MODEL_CONFIGS = {
    "sparse_structure_flow_model": "pixal3d/ss_flow_img_dit_1_3B_64_bf16",
    "sparse_structure_decoder": "trellis2/ss_dec_conv3d_16l8_fp16",
    "shape_slat_flow_model_512": "pixal3d/slat_flow_img2shape_dit_1_3B_512_bf16",
    "shape_slat_flow_model_1024": "pixal3d/slat_flow_img2shape_dit_1_3B_1024_bf16",
    "tex_slat_flow_model_1024": "pixal3d/slat_flow_imgshape2tex_dit_1_3B_1024_bf16",
    "shape_slat_decoder": "trellis2/shape_dec_next_dc_f16c32_fp16",
    "tex_slat_decoder": "trellis2/tex_dec_next_dc_f16c32_fp16",
}


make_structure = decoder_assets.make_structure  # mesh -> 1024³ O-Voxel .npz (CPU)


def _levels(coords1024: torch.Tensor, device):
    """Unique voxel sets at 32, 64, 128, 256, 512 and 1024 (lexicographic), batch column prepended."""
    out = {}
    for res in (32, 64, 128, 256, 512, 1024):
        c = torch.unique(coords1024.long() // (1024 // res), dim=0)
        out[res] = torch.cat([torch.zeros(len(c), 1, dtype=torch.long), c], 1).int().to(device)
    return out


def guide_subs(levels, start: int, device):
    """The asset's subdivision masks in the decoder's row order (parents in order, children by sub-index)."""
    from pixal3d.sparse import SparseTensor
    offs = torch.tensor([[s % 2, s // 2 % 2, s // 4 % 2] for s in range(8)], device=device)
    subs, parents, res = [], levels[start], start
    while res < 1024:
        fine = levels[res * 2]
        key = lambda c: (c[..., 1].long() * 4096 + c[..., 2]) * 4096 + c[..., 3]  # noqa: E731
        fine_keys = torch.sort(key(fine)).values
        child = parents[:, None, 1:] * 2 + offs[None]
        ck = key(torch.cat([parents[:, None, :1].expand(-1, 8, -1), child], -1))
        pos = torch.searchsorted(fine_keys, ck).clamp_max(len(fine_keys) - 1)
        mask = fine_keys[pos] == ck
        subs.append(SparseTensor(mask, parents))
        parents = torch.cat([parents[:, None, :1].expand(-1, 8, -1), child], -1)[mask].int()
        res *= 2
    return subs


def random_model(key: str, device):
    from pixal3d.models import get_model_class
    cfg = json.loads((REPO / "configs" / "models" / f"{MODEL_CONFIGS[key]}.json").read_text())
    with torch.device(device):
        model = get_model_class(cfg["name"])(**cfg["args"])
    g = torch.Generator(device="cpu").manual_seed(0)
    with torch.no_grad():  # zero-initialised output layers would make the random network degenerate
        for p in model.parameters():
            if p.is_floating_point() and not p.any():
                p.copy_((torch.randn(p.shape, generator=g) * 0.02).to(p))
    return model.eval()


def random_extractors(device, stages):
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    from pixal3d.conditioning import NAF, DinoV3ProjFeatureExtractor
    from pixal3d.pipelines.image_to_3d import PIXAL3D_IMAGE_COND_CONFIGS
    dino = DINOv3ViTModel(DINOv3ViTConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                                          intermediate_size=4096, num_register_tokens=4, patch_size=16)).to(device)
    naf = NAF().to(device).eval()
    out = {}
    for stage in stages:
        args = {k: v for k, v in PIXAL3D_IMAGE_COND_CONFIGS[stage]["args"].items() if k != "model_name"}
        out[stage] = DinoV3ProjFeatureExtractor(model=dino, naf_model=naf if args.get("use_naf_upsample") else None,
                                                **args).to(device).eval()
    return out


class StageTimer:
    """Wall time per stage (synchronised on CUDA) and the running peak of allocated GPU memory at each stage's end:
    the stage where that running peak jumps is the one that sets the peak."""

    def __init__(self, device):
        self.device, self.times, self.peaks = device, {}, {}

    @contextmanager
    def __call__(self, name):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peaks[name] = torch.cuda.max_memory_allocated() / 2 ** 30
        self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - t


def run_cascade(args, device, levels):
    from PIL import Image

    from pixal3d.pipelines.image_to_3d import Pixal3DImageTo3DPipeline
    cfg = json.loads((REPO / "configs" / "pipelines" / "pixal3d.json").read_text())["args"]
    for k in ("sparse_structure_sampler", "shape_slat_sampler", "tex_slat_sampler"):
        cfg[k]["params"]["steps"] = args.steps
        if args.batch_cfg != "default":
            cfg[k]["params"]["batch_cfg"] = args.batch_cfg == "on"
    t0 = time.time()
    # random init of 4 B parameters takes minutes on the CPU: low-VRAM models are built on the GPU, then parked
    models = {k: random_model(k, device).to("cpu") if args.low_vram else random_model(k, device) for k in MODEL_CONFIGS}
    pipe = Pixal3DImageTo3DPipeline(models, cfg, device=device, low_vram=args.low_vram)
    stages = ["ss", "shape_512", "shape_1024", "tex_1024"]
    pipe._extractors = {k: v.to("cpu") if args.low_vram else v for k, v in random_extractors(device, stages).items()}
    if device.type == "cuda":
        torch.cuda.empty_cache()
    resident = torch.cuda.memory_allocated() / 2 ** 30 if device.type == "cuda" else float("nan")
    print(f"built random full-size models in {time.time() - t0:.1f} s; resident on the GPU: {resident:.2f} GiB",
          flush=True)
    timer = StageTimer(device)
    for name in ("sample_sparse_structure", "sample_shape_slat", "sample_tex_slat", "decode_latent"):
        orig = getattr(pipe, name)

        def wrapped(*a, _orig=orig, _name=name, **k):
            label = _name if _name != "sample_shape_slat" else f"{_name}:{a[0][-4:]}"
            with timer(label):
                out = _orig(*a, **k)
            if _name == "sample_sparse_structure":
                return levels[32]  # the asset's structure instead of the random one
            return out
        setattr(pipe, name, wrapped)
    sdec = pipe.models["shape_slat_decoder"]
    orig_up = sdec.upsample

    def upsample(x, upsample_times):
        with timer("shape_decoder.upsample"):
            orig_up(x, upsample_times)
        return levels[512]
    sdec.upsample = upsample
    image = Image.new("RGB", (512, 512), (128, 100, 90))
    for _ in range(args.warmup):  # untimed runs: JIT compiles (Triton) and neighbour maps stay out of the numbers
        pipe.run(image, camera_params={"camera_angle_x": 0.8}, seed=0, preprocess_image=False,
                 pipeline_type=f"{args.resolution}_cascade")
        timer.times.clear()
        timer.peaks.clear()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with timer("total"):
        meshes, (shape, tex, res) = pipe.run(image, camera_params={"camera_angle_x": 0.8}, seed=0,
                                             preprocess_image=False, return_latent=True,
                                             pipeline_type=f"{args.resolution}_cascade")
    peak = torch.cuda.max_memory_allocated() / 2 ** 30 if device.type == "cuda" else float("nan")
    print(f"\n{args.resolution}_cascade (low_vram={args.low_vram}, {args.steps} steps/stage): tokens 32³={len(levels[32])}"
          f", HR={len(shape.feats)} at {res}³; decoded {len(meshes[0].vertices):,} vertices / {len(meshes[0].faces):,} "
          f"faces, {len(meshes[0].coords):,} PBR voxels")
    print("| stage | seconds | running peak GiB at its end |\n|---|---|---|")
    for k, v in timer.times.items():
        print(f"| {k} | {v:.2f} | {timer.peaks.get(k, float('nan')):.1f} |")
    print(f"peak GPU memory: {peak:.2f} GiB = {peak * 2 ** 30 / 1e9:.2f} GB (resident models {resident:.2f} GiB)")
    out = dict(resident_gib=resident, pipeline_type=f"{args.resolution}_cascade", low_vram=args.low_vram, steps=args.steps,
               warmup=args.warmup, resolution=res, tokens_32=len(levels[32]), hr_tokens=len(shape.feats),
               vertices=len(meshes[0].vertices), faces=len(meshes[0].faces), pbr_voxels=len(meshes[0].coords),
               stage_s=dict(timer.times), stage_running_peak_gib=dict(timer.peaks), peak_gib=peak)
    del pipe, models
    return out


@contextmanager
def count_map_builds():
    """Counts neighbour-map builds of the sparse convs (both backends) while active: ``counts['builds']``."""
    from pixal3d.sparse import conv, conv_triton
    counts = {"builds": 0}
    orig = conv.build_neighbor_map, conv_triton.build_triton_map

    def wrap(f):
        def w(*a, **k):
            counts["builds"] += 1
            return f(*a, **k)
        return w
    conv.build_neighbor_map, conv_triton.build_triton_map = wrap(orig[0]), wrap(orig[1])
    try:
        yield counts
    finally:
        conv.build_neighbor_map, conv_triton.build_triton_map = orig


def count_syncs(fn, device) -> int:
    """Synchronising CUDA calls made by ``fn()`` (:func:`pixal3d.utils.cuda_sync.count_cuda_syncs`); -1 off CUDA."""
    from pixal3d.utils.cuda_sync import count_cuda_syncs
    return -1 if device.type != "cuda" else count_cuda_syncs(fn)


@torch.no_grad()
def bench_decoders(device, levels, repeats=5, structure=None):
    """Times the texture (guided by the structure's own subdivisions) and shape (predicted subdivisions, raw output)
    decoders on the structure's 64³ latents; returns one dict per decoder."""
    from pixal3d.sparse import SparseTensor
    rows = []
    lat = levels[64]
    ref = decoder_assets.REFERENCE
    for key in ("tex_slat_decoder", "shape_slat_decoder"):
        t0 = time.time()
        dec = random_model(key, device)
        z = SparseTensor(torch.randn(len(lat), 32, device=device), lat)
        kwargs = {"guide_subs": guide_subs(levels, 64, device)} if key == "tex_slat_decoder" else {}
        if key == "shape_slat_decoder":
            dec.set_resolution(1024)
            fn = lambda dec=dec, z=z: super(type(dec), dec).forward(z, return_subs=True)  # noqa: E731 - raw, no mesh
        else:
            fn = lambda dec=dec, z=z, kwargs=kwargs: dec(z, **kwargs)  # noqa: E731
        torch.cuda.synchronize() if device.type == "cuda" else None
        with count_map_builds() as builds:
            out = fn()
        torch.cuda.synchronize() if device.type == "cuda" else None
        first = time.time() - t0
        n_out = len(out[0].feats) if isinstance(out, tuple) else len(out.feats)
        times = []
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        for _ in range(repeats):
            torch.cuda.synchronize() if device.type == "cuda" else None
            t = time.perf_counter()
            fn()
            torch.cuda.synchronize() if device.type == "cuda" else None
            times.append(time.perf_counter() - t)
        peak = torch.cuda.max_memory_allocated() / 2 ** 30 if device.type == "cuda" else float("nan")
        syncs = count_syncs(fn, device)
        name = "tex" if key == "tex_slat_decoder" else "shape"
        rows.append(dict(decoder=key, latents=len(lat), output_voxels=n_out, first_call_s=first,
                         median_ms=statistics.median(times) * 1e3, times_ms=[t * 1e3 for t in times], peak_gib=peak,
                         map_builds_first_call=builds["builds"], syncs_per_call=syncs,
                         reference_latents=ref["latents_64"], reference_output_voxels=ref[f"{name}_voxels_1024"],
                         reference_ms=ref[f"{name}_ms"]))
        del dec, z, fn, out, kwargs  # the next decoder's peak then excludes this one's weights and outputs
        if device.type == "cuda":
            torch.cuda.empty_cache()

    label = f" ({structure})" if structure else ""
    print(f"\nSC-VAE decoders at 1024³{label}; reference: {ref['latents_64']:,} latents -> "
          f"{ref['tex_voxels_1024']:,} (tex) / {ref['shape_voxels_1024']:,} (shape) voxels")
    print("| decoder | latents (ref) | output voxels (ref) | build + first call (s) | map builds | syncs/call | "
          "median ms (ref) | peak GiB |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['decoder']} | {r['latents']:,} ({r['reference_latents']:,}) | {r['output_voxels']:,} "
              f"({r['reference_output_voxels']:,}) | {r['first_call_s']:.1f} | {r['map_builds_first_call']} | "
              f"{r['syncs_per_call']} | {r['median_ms']:.1f} ({r['reference_ms']}) | {r['peak_gib']:.2f} |")
    return rows


def bench_to_mesh(device, data, repeats=10):
    from pixal3d.ovoxel.flexible_dual_grid import flexible_dual_grid_to_mesh
    c = torch.from_numpy(data["coords"].astype(np.int32)).to(device)
    v = torch.from_numpy(data["local"]).to(device)
    f = torch.from_numpy(data["intersected"]).to(device)
    kw = dict(split_weight=None, aabb=[[-.5] * 3, [.5] * 3], grid_size=1024)
    flexible_dual_grid_to_mesh(c, v, f, **kw)
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize() if device.type == "cuda" else None
        t = time.perf_counter()
        verts, faces = flexible_dual_grid_to_mesh(c, v, f, **kw)
        torch.cuda.synchronize() if device.type == "cuda" else None
        times.append(time.perf_counter() - t)
    print(f"\nO-Voxel -> mesh at 1024³ ({len(c):,} voxels -> {len(faces):,} faces) on {device}: "
          f"median {statistics.median(times) * 1e3:.1f} ms")
    return dict(voxels=len(c), faces=len(faces), median_ms=statistics.median(times) * 1e3)


def _load_structure(path, device):
    data = np.load(path)
    levels = _levels(torch.from_numpy(data["coords"].astype(np.int64)), device)
    counts = decoder_assets.exact_counts(data["coords"])
    info = dict(file=str(path), name=str(data["name"]), **counts, levels={r: len(c) for r, c in levels.items()})
    print(f"structure {info['name']} ({path}): " + ", ".join(f"{r}³: {len(c):,}" for r, c in levels.items()),
          flush=True)
    return data, levels, info


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--make_structure", default=None, help="mesh file: write --structure from it and exit")
    ap.add_argument("--structure", default=str(DEFAULT_STRUCTURE))
    ap.add_argument("--decoder_asset", default=None,
                    help="structure for the decoder benchmark: 'auto' (latents at 64³ closest to the reference's "
                         "2,240), an asset name, a mesh file or an .npz (default: --structure)")
    ap.add_argument("--decoder_target", type=int, default=decoder_assets.REFERENCE["latents_64"],
                    help="latents at 64³ that --decoder_asset auto aims for (the reference measurement's 2,240)")
    ap.add_argument("--assets", default=str(decoder_assets.DEFAULT_ASSETS),
                    help="asset folder for --decoder_asset (ranking and building a missing structure)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--resolution", type=int, default=1024, choices=[1024, 1536])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--low_vram", action="store_true")
    ap.add_argument("--batch_cfg", default="default", choices=["default", "on", "off"],
                    help="CFG passes as one batch-2B forward (on) or two forwards (off); default: the sampler's "
                         "default (on, off under --low_vram)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed cascade runs before the timed one (0 = cold)")
    ap.add_argument("--decoder_repeats", type=int, default=5)
    ap.add_argument("--skip", default="", help="comma list of parts to skip: cascade,decoders,to_mesh")
    ap.add_argument("--json", default=None, help="write the results to this JSON file")
    args = ap.parse_args(argv)
    if args.make_structure:
        make_structure(args.make_structure, Path(args.structure))
        return
    device = torch.device(args.device)
    skip = set(args.skip.split(","))
    result = dict(bench="pipeline", device=str(device), torch=torch.__version__,
                  gpu=torch.cuda.get_device_name() if device.type == "cuda" else None,
                  conv_backend=os.environ.get("SPARSE_CONV_BACKEND", "auto"))
    if not {"to_mesh", "cascade"} <= skip or args.decoder_asset is None:
        data, levels, result["structure"] = _load_structure(args.structure, device)
    if "to_mesh" not in skip:
        result["to_mesh"] = bench_to_mesh(device, data)
    if "decoders" not in skip:
        if args.decoder_asset is not None:
            path = decoder_assets.resolve_structure(args.decoder_asset, Path(args.assets), decoder_assets.BENCH_DATA,
                                                    target=args.decoder_target)
            _, dec_levels, result["decoder_structure"] = _load_structure(path, device)
        else:
            dec_levels, result["decoder_structure"] = levels, result["structure"]
        result["decoder_structure"]["reference"] = decoder_assets.REFERENCE
        result["decoders"] = bench_decoders(device, dec_levels, args.decoder_repeats,
                                            result["decoder_structure"]["name"])
    if "cascade" not in skip:
        result["cascade"] = run_cascade(args, device, levels)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1, default=str))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
