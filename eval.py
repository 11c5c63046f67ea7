#!/usr/bin/env python
"""Evaluation CLI (see pixal3d/evaluation/protocols.py for the exact protocols).

  # (a) O-Voxel reconstruction ceiling of every asset folder / mesh file under a root
  python eval.py recon --assets ../shared/data/assets3d --grid-size 256 --out results/recon

  # (b) image-to-3D: case folders (camera.json, gt.*, image.png) vs predicted meshes
  python eval.py image-to-3d --cases data/cases --preds outputs/preds --out results/i23d

  # (c) SC-VAE reconstruction of the data toolkit's O-Voxels (shape + texture VAEs), held-out assets
  python eval.py scvae --data_root /data/pixal3d --resolution 256 --shape_enc ckpts/shape_enc \
      --shape_dec ckpts/shape_dec --tex_enc ckpts/tex_enc --tex_dec ckpts/tex_dec --assets-list heldout.txt \
      --out results/scvae [--view 0]

Each run writes <out>/results.json (resumable: assets already present are skipped; failed ones are retried),
<out>/results.md (Markdown table with a mean row) and <out>/scores.png (per-asset bar charts).
"""
from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path


_SCVAE_HELP = """(c) SC-VAE reconstruction (pixal3d/evaluation/scvae.py has the exact protocol).

Per asset: dual_grid_R/{sha}.vxz -> shape encoder (posterior mean) -> shape decoder (set_resolution(R)) -> mesh and
subdivisions; pbr_voxels_R/{sha}.vxz -> texture encoder -> texture decoder guided by those subdivisions -> PBR voxels
in [0, 1]. Compared, in the O-Voxel frame [-0.5, 0.5]^3, with the mesh dump mapped as the toolkit voxelised it
(no alignment): Chamfer-L1/L2, F-score@thresholds, normal consistency, voxel IoU of the decoded vs GT dual-grid voxels,
and on the voxels common to the decoded and GT PBR voxels (pbr_overlap_gt = their fraction of the GT): base-colour
PSNR (data range 1), metallic/roughness/alpha MAE. gt_ovoxel_* = the GT dual grid's own mesh vs the GT mesh (ceiling).
--view V uses the view-aligned files; the GT mesh is mapped into view V's frame with the camera of
renders_cond/{sha}/transforms.json (checked against viewVV_scale.json), so geometry metrics are exact there too.
"""


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
    c = sub.add_parser("scvae", help="(c) O-Voxel -> SC-VAE encode -> decode vs GT mesh and PBR voxels",
                       description=_SCVAE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("--data_root", "--data-root", type=Path, required=True,
                   help="data toolkit root (dual_grid_R/, pbr_voxels_R/, mesh_dumps/, ...)")
    c.add_argument("--resolution", type=int, required=True, help="voxel resolution R of the O-Voxel files")
    for role in ("shape_enc", "shape_dec", "tex_enc", "tex_dec"):
        c.add_argument(f"--{role}", f"--{role.replace('_', '-')}", required=True,
                       help="checkpoint stem DIR/NAME (NAME.json + NAME.safetensors)")
    c.add_argument("--assets-list", "--assets_list", type=Path, default=None,
                   help="file with one sha256 per line (e.g. a held-out list); default: every asset of dual_grid_R/")
    c.add_argument("--view", type=int, default=None,
                   help="use the view-aligned files of view V (dual_grid_view_R/{sha}/viewVV.vxz, "
                        "pbr_voxels_view_fix_R/...) and the GT mesh mapped into that view frame")
    c.add_argument("--device", default="cpu")
    c.add_argument("--no-ceiling", action="store_true",
                   help="skip the GT dual grid's own mesh vs GT mesh (gt_ovoxel_* columns)")
    for p in (a, b, c):
        p.add_argument("--out", type=Path, required=True)
        p.add_argument("--n-points", type=int, default=100_000)
        p.add_argument("--thresholds", type=float, nargs="+", default=[0.005, 0.01, 0.02])
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--limit", type=int, default=0, help="evaluate only the first N assets")
        p.add_argument("--no-progress", action="store_true")
        p.add_argument("--fail-fast", action="store_true", help="raise on the first failing asset")
    for p in (a, b):
        p.add_argument("--iou-method", default="parity", choices=["parity", "winding", "fill"],
                       help="volume-IoU occupancy (parity: closed meshes; fill: robust to small holes)")
    args = ap.parse_args(argv)

    from pixal3d.evaluation import protocols as P

    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    md_keys = None
    if args.cmd == "scvae":
        from pixal3d.evaluation import scvae as S
        try:
            S.check_data_root(args.data_root, args.resolution, args.view)
            shas = S.list_assets(args.data_root, args.resolution, args.view, args.assets_list, args.limit)
            if not shas:
                raise FileNotFoundError(f"no assets found in {args.data_root} at resolution {args.resolution}")
            models = S.load_scvae_models(args.shape_enc, args.shape_dec, args.tex_enc, args.tex_dec,
                                         args.resolution, device=args.device)
        except (FileNotFoundError, ValueError) as exc:
            ap.error(str(exc))
        items = {s: partial(S.evaluate_scvae_asset, models, args.data_root, s, view=args.view,
                            n_points=args.n_points, thresholds=args.thresholds, seed=args.seed,
                            ceiling=not args.no_ceiling) for s in shas}
        protocol = "scvae_reconstruction" + ("" if args.view is None else f"_view{args.view:02d}")
        md_keys = (["chamfer_l1", "chamfer_l1_floor"] + [f"fscore@{t:g}" for t in args.thresholds]
                   + ["normal_consistency", "voxel_iou", "base_color_psnr", "metallic_mae", "roughness_mae",
                      "alpha_mae", "pbr_overlap_gt"]
                   + ([] if args.no_ceiling else ["gt_ovoxel_chamfer_l1"]
                      + [f"gt_ovoxel_fscore@{t:g}" for t in args.thresholds])
                   + ["num_voxels_gt", "num_voxels_recon"])
    elif args.cmd == "recon":
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
    (out / "results.md").write_text(f"# {protocol}\n\n" + P.results_markdown(results, md_keys))
    fig = P.plot_results(results, out / "scores.png",
                         [k for k in md_keys if not k.startswith("num_")] if md_keys else None)
    n_err = sum("error" in r for r in results.values())
    print(f"{len(results)} assets ({n_err} failed) -> {out / 'results.json'}, {out / 'results.md'}"
          + (f", {fig}" if fig else ""))
    return 1 if n_err else 0


if __name__ == "__main__":
    sys.exit(main())
