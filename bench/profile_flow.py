"""Kernel-level profile of one flow DiT forward (CUDA): ``torch.profiler`` table sorted by GPU time.

    python bench/profile_flow.py [--model shape] [--tokens 24000,2200] [--out DIR]

Full-size config, random weights, bf16, batch 2 (as ``bench/flow_dit.py``); three warm-up forwards, then one profiled
forward per size. Prints the top 30 rows and writes ``DIR/prof_<tokens>.txt``.
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from flow_dit import build, make_inputs  # noqa: E402


@torch.no_grad()
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="shape", choices=["ss", "shape", "tex"])
    ap.add_argument("--tokens", default="24000,2200")
    ap.add_argument("--out", default=".")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("bench/profile_flow.py needs a CUDA device")
    from torch.profiler import ProfilerActivity, profile
    dev = torch.device("cuda")
    model = build(args.model, dev)
    sizes = [model.resolution ** 3] if args.model == "ss" else [int(t) for t in args.tokens.split(",")]
    for n in sizes:
        inputs, kwargs = make_inputs(args.model, model, n, 2, dev)
        for _ in range(3):
            model(*inputs, **kwargs)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            model(*inputs, **kwargs)
            torch.cuda.synchronize()
        table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=30, max_name_column_width=70)
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / f"prof_{n}.txt").write_text(table)
        print(f"{args.model}, {n} tokens per sample, batch 2\n{table}", flush=True)


if __name__ == "__main__":
    main()
