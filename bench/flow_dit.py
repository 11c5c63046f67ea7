"""Forward time of the full-size flow DiTs (random weights) and their bf16-vs-fp32 agreement.

Shapes follow the speed issue's reference table: sparse-structure flow on 16³ dense tokens, batch 2 (one CFG pair);
shape / texture SLat flows (Pixal3D proj, 2048 proj channels) on sphere-shell tokens, batch 2.

    python bench/flow_dit.py [--device cuda] [--tokens 2200,9600,24000] [--models ss,shape,tex] [--repeats 10]
                             [--varlen_meta on|off|both] [--fused on|off|both] [--cuda_graph off|on|both]
                             [--json out.json]

Prints a table (median ms per forward, tokens/s) and the relative error of the bf16 model against an fp32 copy with the
same weights (TF32 off), on a small input. ``--varlen_meta both`` times the SLat flows twice per size: ``off`` gives
each attention call ``cu_seqlens`` tensors (one device-to-host read per call, the behaviour before ``VarLenMeta``),
``on`` the cached per-forward metadata. On CUDA each row also counts the synchronising calls of one forward
(``torch.cuda.set_sync_debug_mode``). ``--fused both`` times every row with the fused inference kernels
(``PIXAL3D_FUSED_KERNELS=auto``) and without them (``torch``), in the same process. ``--cuda_graph on`` times the
forward as the samplers run it under ``cuda_graph``: replayed from a CUDA graph
(:class:`pixal3d.pipelines.samplers.cuda_graph.GraphedForward`, input copy and output copy included), captured after
the warm-up calls. ``--json`` writes the rows and the machine description.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # pixal3d when run as `python bench/<script>.py` from anywhere
CONFIGS = {
    "ss": REPO / "configs/models/pixal3d/ss_flow_img_dit_1_3B_64_bf16.json",
    "shape": REPO / "configs/models/pixal3d/slat_flow_img2shape_dit_1_3B_1024_bf16.json",
    "tex": REPO / "configs/models/pixal3d/slat_flow_imgshape2tex_dit_1_3B_1024_bf16.json",
}
# reference ms / forward (PyTorch 2.11, SDPA, nvidia-h100-x1), from the speed issue
REFERENCE_MS = {("ss", 4096): 90.0, ("shape", 2200): 116.0, ("shape", 9600): 263.0, ("shape", 24000): 883.0,
                ("tex", 2200): 136.0, ("tex", 9600): 270.0, ("tex", 24000): 889.0}


def sphere_shell(n: int, grid: int, device) -> torch.Tensor:
    """``[n, 3]`` int32 voxels of a one-voxel-thick sphere shell centred in a ``grid³`` box (first ``n`` by z-order)."""
    r = math.sqrt(n / (4 * math.pi))
    while True:
        g = torch.arange(grid, device=device, dtype=torch.float32) + 0.5 - grid / 2
        x, y, z = torch.meshgrid(g, g, g, indexing="ij")
        d = (x * x + y * y + z * z).sqrt()
        idx = torch.argwhere((d - r).abs() < 0.5)
        if len(idx) >= n or r > grid / 2 - 1:
            break
        r *= 1.02
    if len(idx) < n:
        raise ValueError(f"a {grid}³ grid cannot hold a {n}-voxel shell")
    return idx[:n].int()


def build(name: str, device, dtype=None):
    from pixal3d.models import get_model_class
    cfg = json.loads(CONFIGS[name].read_text())
    args = dict(cfg["args"])
    if dtype is not None:
        args["dtype"] = dtype
    with torch.device(device):
        model = get_model_class(cfg["name"])(**args)
    # the training init zeroes out_layer and the adaLN projection: an all-zero output would hide errors (0/0)
    # and time a degenerate network, so give those layers random values too
    g = torch.Generator(device="cpu").manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.is_floating_point() and not p.any():
                p.copy_((torch.randn(p.shape, generator=g) * 0.02).to(p))
    return model.eval()


def make_inputs(name: str, model, tokens: int, batch: int, device):
    from pixal3d.sparse import SparseTensor
    g = torch.Generator(device="cpu").manual_seed(0)
    t = torch.full((batch,), 500.0, device=device)
    glob = torch.randn(batch, 5, model.cond_channels, generator=g).to(device)
    if name == "ss":
        r = model.resolution
        x = torch.randn(batch, model.in_channels, r, r, r, generator=g).to(device)
        proj = torch.randn(batch, r ** 3, model.proj_in_channels, generator=g).to(device)
        return (x, t, {"global": glob, "proj": proj}), {}
    grid = 64 if tokens <= 12000 else 96
    xyz = sphere_shell(tokens, grid, device)
    coords = torch.cat([torch.cat([torch.full((tokens, 1), b, device=device, dtype=torch.int32), xyz], 1)
                        for b in range(batch)])
    x = SparseTensor(torch.randn(len(coords), 32, generator=g).to(device), coords)
    proj = torch.randn(len(coords), model.proj_in_channels, generator=g).to(device)
    kwargs = {}
    if model.in_channels > 32:
        kwargs["concat_cond"] = x.replace(torch.randn(len(coords), model.in_channels - 32, generator=g).to(device))
    return (x, t, {"global": glob, "proj": proj}), kwargs


def _feats(y):
    return y.feats if hasattr(y, "feats") else y


@torch.no_grad()
def time_forward(model, inputs, kwargs, repeats: int, device) -> float:
    for _ in range(2):
        model(*inputs, **kwargs)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            model(*inputs, **kwargs)
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            model(*inputs, **kwargs)
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


@torch.no_grad()
def count_syncs(model, inputs, kwargs, device) -> int:
    """Synchronising CUDA calls made by one forward (:func:`pixal3d.utils.cuda_sync.count_cuda_syncs`); -1 off CUDA."""
    from pixal3d.utils.cuda_sync import count_cuda_syncs
    return -1 if device.type != "cuda" else count_cuda_syncs(lambda: model(*inputs, **kwargs))


@contextmanager
def varlen_meta_mode(mode: str):
    """``on``: cached per-forward ``VarLenMeta`` (default); ``off``: ``cu_seqlens`` tensors per attention call."""
    from pixal3d.modules.attention.sparse_modules import META_CACHE_ENV
    prev = os.environ.get(META_CACHE_ENV)
    os.environ[META_CACHE_ENV] = "1" if mode == "on" else "0"
    try:
        yield
    finally:
        if prev is None:
            os.environ.pop(META_CACHE_ENV, None)
        else:
            os.environ[META_CACHE_ENV] = prev


@contextmanager
def fused_mode(mode: str):
    """``on``: ``PIXAL3D_FUSED_KERNELS=auto`` (fused Triton kernels where they apply); ``off``: ``torch``."""
    prev = os.environ.get("PIXAL3D_FUSED_KERNELS")
    os.environ["PIXAL3D_FUSED_KERNELS"] = "auto" if mode == "on" else "torch"
    try:
        yield
    finally:
        if prev is None:
            os.environ.pop("PIXAL3D_FUSED_KERNELS", None)
        else:
            os.environ["PIXAL3D_FUSED_KERNELS"] = prev


@torch.no_grad()
def bf16_error(name: str, device) -> float:
    """‖bf16 − fp32‖/‖fp32‖ of the full-size model on a small input (same weights, TF32 off)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    ref = build(name, device, dtype="float32")
    low = build(name, device, dtype="bfloat16")
    low.load_state_dict(ref.state_dict())
    inputs, kwargs = make_inputs(name, ref, 512, 1, device)
    a = _feats(ref(*inputs, **kwargs)).double()
    b = _feats(low(*inputs, **kwargs)).double()
    del ref, low
    return ((a - b).norm() / a.norm()).item()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--models", default="ss,shape,tex")
    ap.add_argument("--tokens", default="2200,9600,24000")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--no_parity", action="store_true")
    ap.add_argument("--varlen_meta", default="on", choices=["on", "off", "both"],
                    help="SLat flows: cached per-forward varlen metadata (on), per-call cu_seqlens (off), or both")
    ap.add_argument("--fused", default="on", choices=["on", "off", "both"],
                    help="fused Triton inference kernels (PIXAL3D_FUSED_KERNELS=auto), the torch path, or both")
    ap.add_argument("--cuda_graph", default="off", choices=["off", "on", "both"],
                    help="time the forward replayed from a CUDA graph (on), eagerly (off), or both")
    ap.add_argument("--json", default=None, help="write the results to this JSON file")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    modes = ["off", "on"] if args.varlen_meta == "both" else [args.varlen_meta]
    fused_modes = ["off", "on"] if args.fused == "both" else [args.fused]
    graph_modes = ["off", "on"] if args.cuda_graph == "both" else [args.cuda_graph]
    rows, parity = [], {}
    for name in args.models.split(","):
        model = build(name, device)
        sizes = [model.resolution ** 3] if name == "ss" else [int(t) for t in args.tokens.split(",")]
        for n in sizes:
            inputs, kwargs = make_inputs(name, model, n, args.batch, device)
            for mode in (modes if name != "ss" else ["-"]):
                for fmode in fused_modes:
                    for gmode in graph_modes:
                        with varlen_meta_mode(mode if mode != "-" else "on"), fused_mode(fmode):
                            fwd = model
                            if gmode == "on":
                                from pixal3d.pipelines.samplers.cuda_graph import GraphedForward
                                fwd = GraphedForward(model)
                            ms = time_forward(fwd, inputs, kwargs, args.repeats, device)
                            syncs = count_syncs(fwd, inputs, kwargs, device)
                            del fwd
                        ref = REFERENCE_MS.get((name, n))
                        rows.append(dict(model=name, tokens=n, varlen_meta=mode, fused=fmode, cuda_graph=gmode, ms=ms,
                                         tokens_per_s=args.batch * n / ms * 1e3, reference_ms=ref,
                                         ratio=ms / ref if ref else None, syncs_per_forward=syncs))
                        print(f"{name:6s} tokens/sample={n:6d} varlen_meta={mode:3s} fused={fmode:3s} graph={gmode:3s} "
                              f"{ms:9.1f} ms  ref {ref or float('nan'):7.1f} ms  "
                              f"ratio {ms / ref if ref else float('nan'):.2f}  syncs/forward {syncs}", flush=True)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if not args.no_parity:
            parity[name] = bf16_error(name, device)
            print(f"{name:6s} bf16 vs fp32 rel. error: {parity[name]:.2e}", flush=True)
    print("\n| model | tokens/sample | varlen meta | fused | CUDA graph | ms/forward | tokens/s | syncs/forward | "
          "reference ms | ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = f"{r['ratio']:.2f}" if r["ratio"] else "-"
        print(f"| {r['model']} | {r['tokens']} | {r['varlen_meta']} | {r['fused']} | {r['cuda_graph']} | {r['ms']:.1f} | "
              f"{r['tokens_per_s']:,.0f} | "
              f"{r['syncs_per_forward']} | {r['reference_ms'] or '-'} | {ratio} |")
    peak = None
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**30
        print(f"peak memory {peak:.1f} GiB on {torch.cuda.get_device_name()}")
    if args.json:
        out = dict(bench="flow_dit", device=str(device), batch=args.batch, repeats=args.repeats,
                   gpu=torch.cuda.get_device_name() if device.type == "cuda" else None, torch=torch.__version__,
                   peak_gib=peak, rows=rows, bf16_rel_error=parity)
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
