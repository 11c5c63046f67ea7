#!/usr/bin/env python
"""Evaluation CLI (see pixal3d/evaluation/protocols.py for the exact protocols).

  # (a) O-Voxel reconstruction ceiling of every asset folder / mesh file under a root
  python eval.py recon --assets ../shared/data/assets3d --grid-size 256 --out results/recon

  # (b) image-to-3D: case folders (camera.json, gt.*, image.png) vs predicted meshes
  python eval.py image-to-3d --cases data/cases --preds outputs/preds --out results/i23d

Each run writes <out>/results.json (resumable: assets already present are skipped; failed ones are retried),
<out>/results.md (Markdown table with a mean row) and <out>/scores.png (per-asset bar charts).
"""
from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path


def _asset_meshes(root: Path, limit=None):
    from pixal3d.evaluation.protocols import MESH_EXTS, find_mesh
    items = {}
    if root.is_file():
        return {root.stem: root}
    for p in sorted(root.iterdir()):
        if p.is_dir():
            m = find_mesh(p)
            if m is not None:
                items[p.name] = m
        elif p.suffix.lower() in MESH_EXTS:
            items[p.stem] = p
    if limit:
        items = dict(list(items.items())[:limit])
    return items


def _pred_for(preds: Path, name: str):
    from pixal3d.evaluation.protocols import find_mesh
    return find_mesh(preds, name) or (find_mesh(preds / name, "pred") if (preds / name).is_dir() else None)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("recon", help="(a) mesh -> O-Voxel -> mesh vs GT")
    a.add_argument("--assets", type=Path, required=True, help="folder of asset folders / mesh files, or one mesh")
    a.add_argument("--grid-size", type=int, default=256)
    a.add_argument("--no-quantize", action="store_true", help="skip the uint8 storage quantisation (§3.3)")
    a.add_argument("--iou-resolution", type=int, default=0, help="volume IoU grid (0 = skip; closed meshes only)")
    b = sub.add_parser("image-to-3d", help="(b) predicted meshes vs GT from matched cameras")
    b.add_argument("--cases", type=Path, required=True, help="folder of case folders (camera.json, gt.*, image.png)")
    b.add_argument("--preds", type=Path, required=True, help="<preds>/<case>.* or <preds>/<case>/pred.*")
    b.add_argument("--iou-resolution", type=int, default=64)
    b.add_argument("--render-resolution", type=int, default=256)
    b.add_argument("--num-views", type=int, default=4, help="front view + orbit views (PIXAL3D_SPEC §6.6)")
    b.add_argument("--backend", default="auto", choices=["auto", "cpu", "nvdiffrast"])
    b.add_argument("--no-lpips", action="store_true")
    for p in (a, b):
        p.add_argument("--out", type=Path, required=True)
        p.add_argument("--n-points", type=int, default=100_000)
        p.add_argument("--thresholds", type=float, nargs="+", default=[0.005, 0.01, 0.02])
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--limit", type=int, default=0, help="evaluate only the first N assets")
        p.add_argument("--no-progress", action="store_true")
        p.add_argument("--fail-fast", action="store_true", help="raise on the first failing asset")
        p.add_argument("--iou-method", default="parity", choices=["parity", "winding", "fill"],
                       help="volume-IoU occupancy (parity: closed meshes; fill: robust to small holes)")
    args = ap.parse_args(argv)

    from pixal3d.evaluation import protocols as P

    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    if args.cmd == "recon":
        assets = _asset_meshes(args.assets, args.limit)
        if not assets:
            ap.error(f"no meshes found under {args.assets}")
        items = {n: partial(P.evaluate_reconstruction, p, grid_size=args.grid_size, n_points=args.n_points,
                            thresholds=args.thresholds, iou_resolution=args.iou_resolution or None,
                            quantize=not args.no_quantize, seed=args.seed, iou_method=args.iou_method)
                 for n, p in assets.items()}
        protocol = "ovoxel_reconstruction"
    else:
        cases = sorted(p for p in args.cases.iterdir() if p.is_dir() and (p / "camera.json").is_file())
        if args.limit:
            cases = cases[:args.limit]
        if not cases:
            ap.error(f"no case folders with camera.json under {args.cases}")
        items = {}
        for c in cases:
            pred = _pred_for(args.preds, c.name)
            if pred is None:
                print(f"warning: no prediction for {c.name} in {args.preds}; skipped", file=sys.stderr)
                continue
            items[c.name] = partial(P.evaluate_image_to_3d_case, c, pred, n_points=args.n_points,
                                    thresholds=args.thresholds, iou_resolution=args.iou_resolution,
                                    render_resolution=args.render_resolution, num_views=args.num_views,
                                    backend=args.backend, use_lpips=not args.no_lpips, seed=args.seed,
                                    iou_method=args.iou_method)
        protocol = "image_to_3d"
    out = args.out
    results = P.run_protocol(items, out / "results.json", protocol, config, progress=not args.no_progress,
                             on_error="raise" if args.fail_fast else "record")
    (out / "results.md").write_text(f"# {protocol}\n\n" + P.results_markdown(results))
    fig = P.plot_results(results, out / "scores.png")
    n_err = sum("error" in r for r in results.values())
    print(f"{len(results)} assets ({n_err} failed) -> {out / 'results.json'}, {out / 'results.md'}"
          + (f", {fig}" if fig else ""))
    return 1 if n_err else 0


if __name__ == "__main__":
    sys.exit(main())
