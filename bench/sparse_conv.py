"""Throughput of ``pixal3d.sparse.SparseConv3d`` (K=3) on surface-like inputs (a one-voxel sphere shell).

Prints one row per (resolution, channels, dtype): active voxels, the first call (which builds the neighbour map) and
the steady-state time per call, in voxels/s. Defaults finish in well under a minute on a 2-core CPU; ``--full``
adds the 256^3 x C=256 case on CPU.

    python bench/sparse_conv.py [--device cpu|cuda] [--channels 64 256] [--res 64 256] [--repeats 3] [--full]
"""
import argparse
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


def bench_case(res, channels, dtype, device, repeats):
    coords = sphere_shell(res, device)
    n = coords.shape[0]
    feats = torch.randn(n, channels, device=device, dtype=dtype)
    conv = SparseConv3d(channels, channels, 3).to(device=device, dtype=dtype)
    with torch.no_grad():
        x = SparseTensor(feats, coords)
        _sync(device)
        t0 = time.perf_counter()
        conv(x)  # builds and caches the neighbour map
        _sync(device)
        first = time.perf_counter() - t0
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            conv(x)
            _sync(device)
            times.append(time.perf_counter() - t0)
    steady = min(times)
    return n, first, steady


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--channels", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--res", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--full", action="store_true", help="include 256^3 with C=256 on CPU")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda requested but CUDA is not available")
    if args.threads:
        torch.set_num_threads(args.threads)
    dtypes = [torch.float32] if device.type == "cpu" else [torch.float32, torch.float16]
    print(f"SparseConv3d K=3 on {device} ({torch.get_num_threads()} threads), sphere shell inputs")
    print(f"{'res':>5} {'C':>5} {'dtype':>8} {'voxels':>9} {'first [s]':>10} {'steady [s]':>11} {'Mvox/s':>9}")
    for res in args.res:
        for c in args.channels:
            if device.type == "cpu" and res >= 256 and c >= 256 and not args.full:
                print(f"{res:>5} {c:>5} {'float32':>8}  skipped on CPU (pass --full)")
                continue
            for dt in dtypes:
                n, first, steady = bench_case(res, c, dt, device, args.repeats)
                print(f"{res:>5} {c:>5} {str(dt).split('.')[-1]:>8} {n:>9} {first:>10.3f} {steady:>11.4f} "
                      f"{n / steady / 1e6:>9.3f}")


if __name__ == "__main__":
    main()
