#!/usr/bin/env python
"""Combine ``eval.py recon`` runs at several grid resolutions into one O-Voxel round-trip fidelity report.

Input: one ``results.json`` per resolution, as written by

  python eval.py recon --assets ../shared/data/assets3d --grid-size R --thresholds 1/R 0.01 --out DIR_R

(mesh normalised to [-0.5, 0.5]³ -> ``mesh_to_flexible_dual_grid`` at R -> uint8 quantisation of the local dual
vertices -> ``flexible_dual_grid_to_mesh`` -> Chamfer-L1 / F-score / normal consistency against the normalised GT,
``n_points`` area-uniform surface samples per mesh; see ``pixal3d/evaluation/protocols.py``).

Output (``--out``): ``roundtrip.json`` (per asset × resolution + aggregates per resolution and per asset category),
``roundtrip.md`` (Markdown tables) and a compact figure (``--figure``): Chamfer-L1 next to its sampling floor, and
F-score@1/R / @0.01 / normal consistency, per resolution (box plots over assets, one dot per asset).

Usage:
  python scripts/ovoxel_roundtrip.py --runs 64=/tmp/r/recon64 256=/tmp/r/recon256 512=/tmp/r/recon512 \\
      --out /tmp/r/roundtrip --figure docs/figures/ovoxel_roundtrip.png
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO.parent / "shared" / "data" / "MANIFEST.tsv"
CATEGORY = {"yes": "full-PBR", "baseColor-only": "baseColor-only", "no-textures": "factor-only"}


def categories(manifest: Path) -> dict:
    """asset folder name -> texture category from MANIFEST.tsv (empty when the file is missing)."""
    out = {}
    if manifest.is_file():
        with manifest.open(newline="") as fh:
            for row in csv.DictReader(fh, delimiter="\t"):
                if row.get("kind") == "3d":
                    parts = Path(row["rel_path"]).parts
                    out[parts[1] if len(parts) > 2 else Path(row["rel_path"]).stem] = CATEGORY.get(
                        row.get("pbr_textures", ""), "?")
    return out


def parse_runs(specs) -> dict:
    runs = {}
    for s in specs:
        if "=" not in s:
            raise SystemExit(f"error: --runs entries must be RES=DIR, got {s!r}")
        r, d = s.split("=", 1)
        p = Path(d) / "results.json"
        if not p.is_file():
            raise SystemExit(f"error: {p} not found (run eval.py recon --out {d} first)")
        data = json.loads(p.read_text())
        runs[int(r)] = data
    return dict(sorted(runs.items()))


def _key(r: dict, prefix: str, tau: float):
    """Value of ``prefix@tau`` in a result row, matching the ``{t:g}`` formatting eval.py uses."""
    k = f"{prefix}@{tau:g}"
    if k in r:
        return r[k]
    for kk, v in r.items():   # tolerate float formatting differences
        if kk.startswith(prefix + "@") and math.isclose(float(kk.split("@")[1]), tau, rel_tol=1e-6):
            return v
    return None


def _stats(vals):
    vals = sorted(v for v in vals if v is not None and math.isfinite(v))
    if not vals:
        return None
    n = len(vals)
    med = vals[n // 2] if n % 2 else 0.5 * (vals[n // 2 - 1] + vals[n // 2])
    return {"n": n, "mean": sum(vals) / n, "median": med, "min": vals[0], "max": vals[-1]}


METRICS = ("chamfer_l1", "chamfer_l1_floor", "f@1/R", "f@0.01", "normal_consistency", "num_voxels",
           "num_faces_recon")


def collect(runs: dict, cats: dict, exclude=()) -> dict:
    """Per-asset rows ``{asset: {R: metrics}}`` and aggregates per R (all assets, and per texture category);
    assets in ``exclude`` stay in ``per_asset`` but are left out of the aggregates (and the figure)."""
    per = {}
    errors = {}
    for res, data in runs.items():
        for name, r in data["results"].items():
            if "error" in r:
                errors.setdefault(res, {})[name] = r["error"]
                continue
            row = {"chamfer_l1": r["chamfer_l1"], "chamfer_l1_floor": r.get("chamfer_l1_floor"),
                   "f@1/R": _key(r, "fscore", 1.0 / res), "f@0.01": _key(r, "fscore", 0.01),
                   "normal_consistency": r["normal_consistency"], "num_voxels": r["num_voxels"],
                   "num_faces_recon": r["num_faces_recon"], "num_faces_gt": r["num_faces_gt"]}
            per.setdefault(name, {})[res] = row
    agg = {}
    for res in runs:
        names = [n for n in per if res in per[n] and n not in exclude]
        agg[res] = {"all": {m: _stats([per[n][res][m] for n in names]) for m in METRICS}}
        for cat in sorted(set(cats.get(n, "?") for n in names)):
            sel = [n for n in names if cats.get(n, "?") == cat]
            agg[res][cat] = {m: _stats([per[n][res][m] for n in sel]) for m in METRICS}
    common = sorted(n for n in per if n not in exclude and all(r in per[n] for r in runs))
    agg_common = {res: {m: _stats([per[n][res][m] for n in common]) for m in METRICS} for res in runs}
    return {"per_asset": per, "aggregate": agg, "common_assets": common, "aggregate_common": agg_common,
            "errors": errors,
            "excluded_from_aggregates": sorted(exclude),
            "config": {res: data.get("config", {}) for res, data in runs.items()}}


def _f(v, d=4):
    if v is None:
        return "–"
    if isinstance(v, int):
        return str(v)
    return f"{v:.{d}g}"


def markdown(rep: dict, cats: dict) -> str:
    res_list = sorted({r for a in rep["per_asset"].values() for r in a})
    excl = set(rep.get("excluded_from_aggregates", []))
    out = ["## Aggregates (mean / median over assets)", "",
           "| R | assets | Chamfer-L1 | floor | F@1/R | F@0.01 | normal cons. | voxels (median) |",
           "|---|---|---|---|---|---|---|---|"]
    for res in res_list:
        a = rep["aggregate"][res]["all"]
        out.append(f"| {res} | {a['chamfer_l1']['n']} | {_f(a['chamfer_l1']['mean'])} / {_f(a['chamfer_l1']['median'])}"
                   f" | {_f(a['chamfer_l1_floor']['mean'])} / {_f(a['chamfer_l1_floor']['median'])}"
                   f" | {_f(a['f@1/R']['mean'])} / {_f(a['f@1/R']['median'])}"
                   f" | {_f(a['f@0.01']['mean'])} / {_f(a['f@0.01']['median'])}"
                   f" | {_f(a['normal_consistency']['mean'])} / {_f(a['normal_consistency']['median'])}"
                   f" | {int(a['num_voxels']['median'])} |")
    common = rep.get("common_assets", [])
    if common and len(res_list) > 1:
        out += ["", f"### The same {len(common)} assets at every R (mean; excess = Chamfer-L1 − floor)", "",
                "| R | Chamfer-L1 | floor | excess over floor | F@1/R | F@0.01 | normal cons. | voxels (mean) |",
                "|---|---|---|---|---|---|---|---|"]
        for res in res_list:
            a = rep["aggregate_common"][res]
            out.append(f"| {res} | {_f(a['chamfer_l1']['mean'])} | {_f(a['chamfer_l1_floor']['mean'])} | "
                       f"{_f(a['chamfer_l1']['mean'] - a['chamfer_l1_floor']['mean'], 2)} | {_f(a['f@1/R']['mean'])} | "
                       f"{_f(a['f@0.01']['mean'])} | {_f(a['normal_consistency']['mean'])} | "
                       f"{int(a['num_voxels']['mean'])} |")
        out += ["", "Assets: " + ", ".join(common)]
    out += ["", "### Per texture category (mean)", "",
            "| R | category | assets | Chamfer-L1 | floor | F@1/R | F@0.01 | normal cons. |", "|---|---|---|---|---|---|---|---|"]
    for res in res_list:
        for cat, a in rep["aggregate"][res].items():
            if cat == "all" or a["chamfer_l1"] is None:
                continue
            out.append(f"| {res} | {cat} | {a['chamfer_l1']['n']} | {_f(a['chamfer_l1']['mean'])} | "
                       f"{_f(a['chamfer_l1_floor']['mean'])} | {_f(a['f@1/R']['mean'])} | {_f(a['f@0.01']['mean'])} | "
                       f"{_f(a['normal_consistency']['mean'])} |")
    out += ["", "## Per asset", "", "Chamfer-L1 / F@1/R / F@0.01 / normal consistency / voxels; floor = Chamfer-L1 of "
            "the GT against an independent resampling of itself (same n_points).", "",
            "| asset | category | GT faces | " + " | ".join(f"R={r}: CD-L1 (floor) / F@1/R / F@.01 / NC / voxels"
                                                       for r in res_list) + " |",
            "|---|---|---|" + "---|" * len(res_list)]
    for name in sorted(rep["per_asset"]):
        a = rep["per_asset"][name]
        gtf = next(iter(a.values()))["num_faces_gt"]
        cells = []
        for r in res_list:
            x = a.get(r)
            cells.append("–" if x is None else
                         f"{_f(x['chamfer_l1'], 3)} ({_f(x['chamfer_l1_floor'], 2)}) / {_f(x['f@1/R'], 3)} / "
                         f"{_f(x['f@0.01'], 3)} / {_f(x['normal_consistency'], 3)} / {x['num_voxels']}")
        mark = " (excluded from aggregates)" if name in excl else ""
        out.append(f"| {name}{mark} | {cats.get(name, '?')} | {gtf} | " + " | ".join(cells) + " |")
    if rep["errors"]:
        out += ["", "Failures:", ""] + [f"- R={r} {n}: {e}" for r, d in rep["errors"].items() for n, e in d.items()]
    return "\n".join(out) + "\n"


def figure(rep: dict, path: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    res_list = sorted({r for a in rep["per_asset"].values() for r in a})
    excl = set(rep.get("excluded_from_aggregates", []))
    per = {n: a for n, a in rep["per_asset"].items() if n not in excl}
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    x = np.arange(len(res_list))
    rng = np.random.default_rng(0)
    # (1) Chamfer-L1 and its floor (log scale)
    ax = axes[0]
    for i, r in enumerate(res_list):
        cd = [per[n][r]["chamfer_l1"] for n in per if r in per[n]]
        fl = [per[n][r]["chamfer_l1_floor"] for n in per if r in per[n]]
        ax.scatter(i - 0.12 + rng.uniform(-0.05, 0.05, len(cd)), cd, s=8, color="tab:blue", alpha=0.6,
                   label="round trip" if i == 0 else None)
        ax.scatter(i + 0.12 + rng.uniform(-0.05, 0.05, len(fl)), fl, s=8, color="tab:gray", alpha=0.6,
                   label="sampling floor" if i == 0 else None)
        ax.plot([i - 0.25, i + 0.0], [np.median(cd)] * 2, color="tab:blue", lw=2)
        ax.plot([i, i + 0.25], [np.median(fl)] * 2, color="tab:gray", lw=2)
    ax.plot(x, [0.25 / r for r in res_list], "k--", lw=0.8, label="¼ voxel")
    ax.set_yscale("log")
    ax.set_xticks(x, [f"{r}³" for r in res_list])
    ax.set_title("Chamfer-L1 (unit cube)", fontsize=9)
    ax.legend(fontsize=7)
    # (2) F-scores
    ax = axes[1]
    for key, col, off in (("f@1/R", "tab:orange", -0.12), ("f@0.01", "tab:green", 0.12)):
        for i, r in enumerate(res_list):
            vals = [per[n][r][key] for n in per if r in per[n] and per[n][r][key] is not None]
            ax.scatter(i + off + rng.uniform(-0.05, 0.05, len(vals)), vals, s=8, color=col, alpha=0.6,
                       label=("F@1/R" if key == "f@1/R" else "F@0.01") if i == 0 else None)
            ax.plot([i + off - 0.1, i + off + 0.1], [np.median(vals)] * 2, color=col, lw=2)
    ax.set_xticks(x, [f"{r}³" for r in res_list])
    ax.set_ylim(min(0.5, ax.get_ylim()[0]), 1.01)
    ax.set_title("F-score", fontsize=9)
    ax.legend(fontsize=7)
    # (3) normal consistency
    ax = axes[2]
    for i, r in enumerate(res_list):
        vals = [per[n][r]["normal_consistency"] for n in per if r in per[n]]
        ax.scatter(i + rng.uniform(-0.08, 0.08, len(vals)), vals, s=8, color="tab:purple", alpha=0.6)
        ax.plot([i - 0.15, i + 0.15], [np.median(vals)] * 2, color="tab:purple", lw=2)
    ax.set_xticks(x, [f"{r}³" for r in res_list])
    ax.set_title("normal consistency (unoriented)", fontsize=9)
    n_by_res = ", ".join(f"{r}³: {sum(r in per[n] for n in per)}" for r in res_list)
    fig.suptitle(f"O-Voxel round trip (mesh → O-Voxel → mesh vs GT); assets per grid {n_by_res}; bars = median",
                 fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", nargs="+", required=True, help="RES=DIR pairs, DIR holding eval.py recon results.json")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--figure", type=Path, default=None, help="PNG path for the summary figure")
    ap.add_argument("--manifest", type=Path, default=MANIFEST)
    ap.add_argument("--exclude", nargs="*", default=[], help="assets listed per asset but left out of the aggregates "
                    "and the figure (e.g. a corrupt GT)")
    args = ap.parse_args(argv)
    cats = categories(args.manifest)
    rep = collect(parse_runs(args.runs), cats, set(args.exclude))
    if not rep["per_asset"]:
        raise SystemExit("error: no successful results in the given runs")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "roundtrip.json").write_text(json.dumps(rep, indent=1, default=float))
    (args.out / "roundtrip.md").write_text(markdown(rep, cats))
    msg = f"-> {args.out / 'roundtrip.json'}, {args.out / 'roundtrip.md'}"
    if args.figure:
        msg += f", {figure(rep, args.figure)}"
    print(msg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
