"""Train every tiny config for a few hundred steps and report loss and throughput (one or more GPUs, or CPU).

    python bench/train_tiny.py --data .bench_data/train_data [--device cuda] [--num_gpus 1] [--steps 200]

The data folder is made on a CPU machine (the voxel datasets need numba for mesh -> O-Voxel):
    python bench/train_tiny.py --make_data .bench_data/train_data
Prints, per config: first/last logged loss (mean of the first/last 10 logged steps), samples/s and peak memory.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere
CONFIGS = {  # config -> which dataset it reads
    "ss_flow_tiny_cpu": "lat", "slat_shape_flow_tiny_cpu": "lat",
    "ss_vae_tiny_cpu": "vox", "shape_vae_tiny_cpu": "vox", "tex_vae_tiny_cpu": "vox",
}


def make_data(root: Path) -> None:
    from pixal3d.datasets.synthetic import write_synthetic_dataset
    from pixal3d.datasets.synthetic_voxels import write_synthetic_voxel_dataset
    dirs = {"lat": write_synthetic_dataset(root / "lat", num_instances=16),
            "vox": write_synthetic_voxel_dataset(root / "vox", num_instances=12, resolution=16)}
    rel = {k: {s: {r: str(Path(p).resolve().relative_to(root.resolve())) for r, p in v.items()}
               for s, v in d.items()} for k, d in dirs.items()}
    (root / "data_dirs.json").write_text(json.dumps(rel, indent=1))


def _data_dir(root: Path, kind: str) -> str:
    rel = json.loads((root / "data_dirs.json").read_text())[kind]
    return json.dumps({s: {r: str(root / p) for r, p in v.items()} for s, v in rel.items()})


def run(name: str, root: Path, args) -> dict:
    cfg = json.loads((REPO / "configs" / "train" / "tiny" / f"{name}.json").read_text())
    cfg["trainer"]["args"].update(max_steps=args.steps, i_save=args.steps, i_log=1, i_print=max(args.steps // 4, 1))
    if args.render_loss is not None and name == "shape_vae_tiny_cpu":
        cfg["trainer"]["args"]["render_loss"] = args.render_loss
    with tempfile.TemporaryDirectory() as tmp:
        cfg_path = Path(tmp) / f"{name}.json"
        cfg_path.write_text(json.dumps(cfg))
        out = Path(args.out) / f"{name}_{args.device}_{args.num_gpus}gpu"
        cmd = [sys.executable, str(REPO / "train.py"), "--config", str(cfg_path), "--output_dir", str(out),
               "--data_dir", _data_dir(root, CONFIGS[name]), "--device", args.device, "--num_gpus",
               str(args.num_gpus), "--ckpt", "none"]
        t = time.time()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.time() - t
    if proc.returncode != 0:
        return {"name": name, "error": proc.stderr[-2000:]}
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    losses = [r["loss"] for r in rows if "loss" in r]
    perf = [r for r in rows if "perf/samples_per_s" in r]
    sps = sorted(r["perf/samples_per_s"] for r in perf[len(perf) // 2:]) or [float("nan")]
    mem = max((r.get("perf/peak_mem_gb", 0.0) for r in perf), default=float("nan"))
    k = min(10, max(len(losses) // 4, 1))
    # rendered terms (shape VAE with render losses): first/last means, to show they are live and fall
    render = {}
    for key in ("render/mask", "render/depth", "render/normal"):
        v = [r[key] for r in rows if key in r]
        if v:
            kk = min(10, max(len(v) // 4, 1))
            render[key] = (sum(v[:kk]) / kk, sum(v[-kk:]) / kk)
    log = (out / "log.txt").read_text() if (out / "log.txt").is_file() else ""
    render_line = next((line for line in log.splitlines() if "render losses" in line), "")
    return {"name": name, "steps": len(losses), "loss_first": sum(losses[:k]) / k, "loss_last": sum(losses[-k:]) / k,
            "samples_per_s": sps[len(sps) // 2], "peak_mem_gb": mem, "wall_s": wall, "render": render,
            "render_status": render_line}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--make_data", default=None)
    ap.add_argument("--data", default=str(REPO / ".bench_data" / "train_data"))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--num_gpus", type=int, default=1)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--out", default=tempfile.gettempdir() + "/pixal3d_train_tiny")
    ap.add_argument("--render_loss", choices=["auto", "on", "off"], default=None,
                    help="shape VAE: rendered mask/depth/normal terms ('on' fails without a differentiable renderer)")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    if args.make_data:
        make_data(Path(args.make_data))
        return
    root = Path(args.data).resolve()
    print("| config | device x procs | steps | loss first → last | samples/s (median, 2nd half) | peak GB | wall s |")
    print("|---|---|---|---|---|---|---|")
    failed, results = False, []
    for name in args.configs.split(","):
        r = run(name, root, args)
        results.append(r)
        if "error" in r:
            failed = True
            print(f"| {name} | {args.device} x{args.num_gpus} | FAILED | {r['error'][-300:]!r} |", flush=True)
            continue
        print(f"| {name} | {args.device} x{args.num_gpus} | {r['steps']} | {r['loss_first']:.3f} → {r['loss_last']:.3f} "
              f"| {r['samples_per_s']:.1f} | {r['peak_mem_gb']:.2f} | {r['wall_s']:.0f} |", flush=True)
        for key, (a, b) in r["render"].items():
            print(f"|   {key} | | | {a:.4f} → {b:.4f} | | | |", flush=True)
        if r["render_status"]:
            print(f"  ({name}: {r['render_status'].strip()})", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
