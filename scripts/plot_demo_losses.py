"""Plots the demo chain's training losses: one panel per stage from ``WORK/runs/{stage}/metrics.jsonl``.

    python scripts/plot_demo_losses.py WORK [--out docs/figures/demo_loss_curves.png] [--smooth 0.9]

Each panel shows the raw ``loss`` per logged step (thin) and an exponential moving average (``--smooth``); the
y axis is logarithmic when every value is positive. Stages without a run are drawn as an empty panel saying so.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Dict, List, Tuple

__all__ = ["read_losses", "plot_losses", "STAGES"]

STAGES = ("ss_vae", "shape_vae", "tex_vae", "ss_flow", "shape_flow", "tex_flow")


def read_losses(metrics: Path, key: str = "loss") -> Tuple[List[int], List[float]]:
    """``(steps, values)`` of ``key`` in a ``metrics.jsonl`` (lines without it are skipped; a resumed run's repeated
    steps keep the last value).

    Raises:
        FileNotFoundError: no such file.
    """
    by_step: Dict[int, float] = {}
    for line in Path(metrics).read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            if key in row:
                by_step[int(row["step"])] = float(row[key])
    steps = sorted(by_step)
    return steps, [by_step[s] for s in steps]


def _ema(values: List[float], a: float) -> List[float]:
    out, m = [], None
    for v in values:
        m = v if m is None else a * m + (1 - a) * v
        out.append(m)
    return out


def plot_losses(work: Path, out: Path, smooth: float = 0.9) -> Path:
    """Writes the figure to ``out``; returns it.

    Raises:
        FileNotFoundError: no stage of ``work`` has a ``metrics.jsonl``.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    runs = {s: Path(work) / "runs" / s / "metrics.jsonl" for s in STAGES}
    if not any(p.is_file() for p in runs.values()):
        raise FileNotFoundError(f"no {work}/runs/<stage>/metrics.jsonl for any of {STAGES}")
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    for ax, (stage, path) in zip(axes.flat, runs.items()):
        ax.set_title(stage)
        if not path.is_file():
            ax.text(0.5, 0.5, "no run", ha="center", va="center", transform=ax.transAxes)
            continue
        steps, vals = read_losses(path)
        ax.plot(steps, vals, lw=0.5, alpha=0.4, color="C0", label="loss")
        ax.plot(steps, _ema(vals, smooth), lw=1.5, color="C1", label=f"EMA {smooth}")
        if vals and min(vals) > 0:
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"pixal3d demo training losses ({work})")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("work")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "figures" /
                                         "demo_loss_curves.png"))
    ap.add_argument("--smooth", type=float, default=0.9)
    a = ap.parse_args(argv)
    print(plot_losses(Path(a.work), Path(a.out), a.smooth))


if __name__ == "__main__":
    main()
