"""Throughput of ``pixal3d.sparse.SparseConv3d`` (K=3) on surface-like inputs (a one-voxel sphere shell).

Prints one row per (resolution, channels, dtype, backend): active voxels, the first call (which builds the neighbour
map, and for ``triton`` compiles the kernel if this configuration is new), the steady-state time per call (median;
CUDA-event timed on GPU) and voxels/s; with several backends, the speed-up of each over the first one. Defaults finish
in well under a minute on a 2-core CPU; ``--full`` adds the 256^3 x C=256 case on CPU.

    python bench/sparse_conv.py [--device cpu|cuda] [--channels 64 256] [--res 64 256] [--repeats 3] [--full]
                                [--backend torch triton] [--chunks 4 -1]

``--backend`` sets ``SPARSE_CONV_BACKEND`` per row (``auto`` = the default resolution); ``--chunks`` sweeps the
Triton processing-order chunk (``SPARSE_CONV_TRITON_CHUNK``; -1 = plain lexicographic order).
"""
import argparse
import os
import statistics
import time

import torch

from pixal3d.sparse import SparseConv3d, SparseTensor


def sphere_shell(res: int, device) -> torch.Tensor:
    """int32 ``[N, 4]`` coords of the voxels a sphere of radius 0.4*res crosses (batch 0), like an O-Voxel surface."""
    r = 0.4 * res
    ax = torch.arange(res, dtype=torch.float32) + 0.5 - res / 2
    out = []
    for x0 in range(0, res, 32):  # slabs keep the dense distance field small at 256^3
        xs = ax[x0:x0 + 32]
        d = torch.sqrt(xs.view(-1, 1, 1) ** 2 + ax.view(1, -1, 1) ** 2 + ax.view(1, 1, -1) ** 2)
        idx = torch.nonzero((d - r).abs() <= 0.87)  # half the voxel diagonal: voxels the surface passes through
        idx[:, 0] += x0
        out.append(idx)
    xyz = torch.cat(out)
    coords = torch.cat([torch.zeros_like(xyz[:, :1]), xyz], 1)
    return coords.to(torch.int32).to(device)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_case(res, channels, dtype, device, repeats, coords=None):
    """(voxels, first-call seconds, median steady seconds) of one K=3 conv C -> C under the current backend env."""
    coords = sphere_shell(res, device) if coords is None else coords
    n = coords.shape[0]
    torch.manual_seed(0)
    feats = torch.randn(n, channels, device=device, dtype=dtype)
    conv = SparseConv3d(channels, channels, 3).to(device=device, dtype=dtype)
    with torch.no_grad():
        x = SparseTensor(feats, coords)
        _sync(device)
        t0 = time.perf_counter()
        conv(x)  # builds and caches the neighbour map (and compiles a new triton configuration)
        _sync(device)
        first = time.perf_counter() - t0
        times = []
        for _ in range(repeats):
            if device.type == "cuda":
                e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                e0.record()
                conv(x)
                e1.record()
                e1.synchronize()
                times.append(e0.elapsed_time(e1) / 1e3)
            else:
                t0 = time.perf_counter()
                conv(x)
                times.append(time.perf_counter() - t0)
    return n, first, statistics.median(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--channels", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--res", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--full", action="store_true", help="include 256^3 with C=256 on CPU")
    ap.add_argument("--backend", nargs="+", default=["torch"], help="SPARSE_CONV_BACKEND values to compare")
    ap.add_argument("--chunks", type=int, nargs="+", default=[None],
                    help="SPARSE_CONV_TRITON_CHUNK values for the triton rows (default: the built-in one)")
    ap.add_argument("--dtypes", nargs="+", default=None, help="float32/float16/bfloat16 (default: fp32, +fp16 on GPU)")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda requested but CUDA is not available")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.dtypes:
        dtypes = [getattr(torch, d) for d in args.dtypes]
    else:
        dtypes = [torch.float32] if device.type == "cpu" else [torch.float32, torch.float16]
    variants = []
    for b in args.backend:
        for ch in (args.chunks if b != "torch" else [None]):
            variants.append((b, ch))
    print(f"SparseConv3d K=3 on {device} ({torch.get_num_threads()} threads), sphere shell inputs")
    print(f"{'res':>5} {'C':>5} {'dtype':>8} {'backend':>10} {'voxels':>9} {'first [s]':>10} {'steady [ms]':>12} "
          f"{'Mvox/s':>9} {'speed-up':>9}")
    for res in args.res:
        coords = sphere_shell(res, device)
        for c in args.channels:
            if device.type == "cpu" and res >= 256 and c >= 256 and not args.full:
                print(f"{res:>5} {c:>5} {'float32':>8}  skipped on CPU (pass --full)")
                continue
            for dt in dtypes:
                base = None
                for b, ch in variants:
                    os.environ["SPARSE_CONV_BACKEND"] = b
                    if ch is None:
                        os.environ.pop("SPARSE_CONV_TRITON_CHUNK", None)
                    else:
                        os.environ["SPARSE_CONV_TRITON_CHUNK"] = str(ch)
                    n, first, steady = bench_case(res, c, dt, device, args.repeats, coords)
                    base = steady if base is None else base
                    name = b if ch is None else f"{b}:{ch}"
                    print(f"{res:>5} {c:>5} {str(dt).split('.')[-1]:>8} {name:>10} {n:>9} {first:>10.3f} "
                          f"{steady * 1e3:>12.3f} {n / steady / 1e6:>9.2f} {base / steady:>8.2f}x", flush=True)


if __name__ == "__main__":
    main()
