"""Flow DiT forward under each SDPA backend, eager and replayed from a CUDA graph (CUDA only).

    python bench/flow_variants.py [--models ss,tex,shape] [--tokens 2200,9600,24000] [--repeats 8] [--json out.json]

Same models and inputs as ``bench/flow_dit.py`` (full-size configs, random weights, bf16, batch 2). For each size it
times the forward with SDPA free to choose its kernel (``default``) and restricted to cuDNN, flash or
memory-efficient attention, then captures one forward in a ``torch.cuda.CUDAGraph`` and times its replays (cuDNN and
flash). Each row reports the relative difference of its output from the ``default`` one, so a backend that changes
the numbers shows it. Used to decide where the time goes before writing kernels (docs/BENCHMARKS.md, session 5).
"""
import argparse
import contextlib
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from flow_dit import REFERENCE_MS, _feats, build, make_inputs  # noqa: E402

BACKENDS = ("default", "cudnn", "flash", "efficient")


def _sdpa(name: str):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    pick = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION}
    return contextlib.nullcontext() if name == "default" else sdpa_kernel([pick[name]])


def _time(fn, repeats: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _rel(a, b) -> float:
    a, b = _feats(a).double(), _feats(b).double()
    return ((a - b).norm() / b.norm()).item()


@torch.no_grad()
def _graph(model, inputs, kwargs):
    """Warm-up on a side stream (caches such as the varlen metadata fill there), then capture one forward."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            model(*inputs, **kwargs)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = model(*inputs, **kwargs)
    return graph, out


@torch.no_grad()
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="ss,tex,shape")
    ap.add_argument("--tokens", default="2200,9600,24000")
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("bench/flow_variants.py needs a CUDA device")
    dev, rows = torch.device("cuda"), []
    for name in args.models.split(","):
        model = build(name, dev)
        sizes = [model.resolution ** 3] if name == "ss" else [int(t) for t in args.tokens.split(",")]
        for n in sizes:
            inputs, kwargs = make_inputs(name, model, n, 2, dev)
            ref_ms = REFERENCE_MS.get((name, n))
            base = _feats(model(*inputs, **kwargs)).clone()
            variants = [(f"eager/{b}", b, False) for b in BACKENDS] + [(f"graph/{b}", b, True) for b in ("cudnn", "flash")]
            for label, backend, graphed in variants:
                try:
                    with _sdpa(backend):
                        if graphed:
                            graph, out = _graph(model, inputs, kwargs)
                            ms = _time(graph.replay, args.repeats)
                            del graph
                        else:
                            out = model(*inputs, **kwargs)
                            ms = _time(lambda: model(*inputs, **kwargs), args.repeats)
                    row = dict(model=name, tokens=n, variant=label, ms=ms, ratio=ms / ref_ms if ref_ms else None,
                               rel_vs_default=_rel(out, base))
                except RuntimeError as e:  # a backend that cannot run these shapes says so in the table
                    row = dict(model=name, tokens=n, variant=label, error=str(e).splitlines()[0][:200])
                rows.append(row)
                print(json.dumps(row), flush=True)
            torch.cuda.empty_cache()
        del model
        torch.cuda.empty_cache()
    print("\n| model | tokens | variant | ms | ratio to reference | rel. diff. from default |\n|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['model']} | {r['tokens']} | {r['variant']} | error: {r['error']} | | |")
        else:
            print(f"| {r['model']} | {r['tokens']} | {r['variant']} | {r['ms']:.1f} | "
                  f"{r['ratio'] or float('nan'):.2f} | {r['rel_vs_default']:.1e} |")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__,
                                                   rows=rows), indent=1))


if __name__ == "__main__":
    main()
