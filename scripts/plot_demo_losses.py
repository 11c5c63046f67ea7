"""Plots the demo chain's training losses: one panel per stage from ``WORK/runs/{stage}/metrics.jsonl``.

    python scripts/plot_demo_losses.py WORK [WORK2 ...] [--out docs/figures/demo_loss_curves.png] [--smooth 0.9]

Each panel shows the raw ``loss`` per logged step (thin) and an exponential moving average (``--smooth``); the
y axis is logarithmic when every value is positive. Stages without a run are drawn as an empty panel saying so.
With several WORK folders (a model trained in successive runs, each continuing the previous one's weights), a
stage's runs are joined in the order given, each shifted to start after the previous one's last step, and a dashed
line marks each continuation.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Dict, List, Tuple

__all__ = ["read_losses", "join_runs", "plot_losses", "STAGES"]

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


def join_runs(files: List[Path]) -> Tuple[List[int], List[float], List[int]]:
    """``(steps, values, starts)``: the ``loss`` curves of successive runs joined end to end; run ``k`` is shifted by
    the last step of the runs before it, and ``starts`` holds the shifted first step of every run after the first.
    Missing files are skipped."""
    steps, vals, starts, offset = [], [], [], 0
    for f in files:
        if not Path(f).is_file():
            continue
        s, v = read_losses(f)
        if not s:
            continue
        if steps:
            starts.append(offset + s[0])
        steps += [offset + x for x in s]
        vals += v
        offset = steps[-1]
    return steps, vals, starts


def _ema(values: List[float], a: float) -> List[float]:
    out, m = [], None
    for v in values:
        m = v if m is None else a * m + (1 - a) * v
        out.append(m)
    return out


def plot_losses(work, out: Path, smooth: float = 0.9) -> Path:
    """Writes the figure to ``out``; returns it. ``work``: one WORK folder or a list of successive ones.

    Raises:
        FileNotFoundError: no stage of any ``work`` has a ``metrics.jsonl``.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    works = [Path(w) for w in ([work] if isinstance(work, (str, Path)) else work)]
    runs = {s: [w / "runs" / s / "metrics.jsonl" for w in works] for s in STAGES}
    if not any(p.is_file() for ps in runs.values() for p in ps):
        raise FileNotFoundError(f"no <work>/runs/<stage>/metrics.jsonl for any of {STAGES} in {works}")
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    for ax, (stage, paths) in zip(axes.flat, runs.items()):
        ax.set_title(stage)
        steps, vals, starts = join_runs(paths)
        if not steps:
            ax.text(0.5, 0.5, "no run", ha="center", va="center", transform=ax.transAxes)
            continue
        for x in starts:
            ax.axvline(x, color="grey", ls="--", lw=0.8)
        ax.plot(steps, vals, lw=0.5, alpha=0.4, color="C0", label="loss")
        ax.plot(steps, _ema(vals, smooth), lw=1.5, color="C1", label=f"EMA {smooth}")
        if vals and min(vals) > 0:
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("pixal3d demo training losses" + ("" if len(works) > 1 else f" ({works[0]})"))
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("work", nargs="+", help="WORK folder(s); several = successive runs, joined in this order")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "figures" /
                                         "demo_loss_curves.png"))
    ap.add_argument("--smooth", type=float, default=0.9)
    a = ap.parse_args(argv)
    print(plot_losses([Path(w) for w in a.work], Path(a.out), a.smooth))


if __name__ == "__main__":
    main()
