"""Evaluation protocols behind ``eval.py``: O-Voxel reconstruction and image-to-3D comparison, with resumable
JSON results, a Markdown table and a per-asset score figure.

**(a) O-Voxel reconstruction** (:func:`ovoxel_roundtrip`, :func:`evaluate_reconstruction`): the GT mesh is
normalised into ``[-0.5, 0.5]³`` (TRELLIS2_SPEC §3.1: bbox centre, ``0.99999 / max extent``), voxelised with
``mesh_to_flexible_dual_grid(grid_size=R, aabb=unit cube)``, optionally quantised like the stored dataset (§3.3: local
dual vertex ``·255`` truncated to uint8, then ``/255``), and meshed again with ``flexible_dual_grid_to_mesh``. The
reconstruction is compared with the normalised GT by :func:`~pixal3d.evaluation.geometry.evaluate_geometry` (Chamfer,
F-score, normal consistency; volume IoU only with ``iou_resolution``, meaningful for closed meshes). This measures
the representation's ceiling, before any VAE.

**(b) Image-to-3D** (:func:`evaluate_image_to_3d_case`): for one case folder

.. code-block:: text

    <case>/camera.json   {"fov": rad, "distance": d, "gt_frame": "canonical" | "view",
                          "c2w": 4x4 Blender camera-to-world (optional; default: the front camera F(d))}
    <case>/gt.(glb|obj|ply|...)   ground-truth mesh (canonical Blender Z-up frame unless gt_frame == "view")
    <case>/image.png              the conditioning image (optional; used for the input-view PSNR/SSIM)
    <pred_dir>/<case>.(glb|obj|ply)  or  <pred_dir>/<case>/pred.*   the prediction in the view-aligned frame

the GT is rotated into the view-aligned frame with ``view_alignment_transform(c2w)`` (PIXAL3D_SPEC §7.2) — no
normalisation of the prediction's pose; both meshes are then scaled by the GT's unit-cube normalisation. Geometry
metrics as in (a) plus volume IoU, and render metrics from matched cameras: the front camera (the input view) and
``num_views − 1`` orbit views (§6.6) — mask IoU, normal-map PSNR / SSIM / mean angular error, and LPIPS of the normal
renders when ``lpips`` is available; base-colour PSNR/SSIM/LPIPS when both meshes carry colour. Volume IoU
assumes closed meshes with the default ``'parity'`` occupancy; use ``iou_method='fill'`` (or skip IoU) for open
or leaky assets. When ``image.png`` has an alpha channel, the prediction's front-view mask is
also compared with it (``input_mask_iou``).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import numpy as np

from . import geometry as G
from . import image as I

__all__ = ["ovoxel_roundtrip", "evaluate_reconstruction", "evaluate_image_to_3d_case", "load_results",
           "save_results", "run_protocol", "results_markdown", "plot_results", "load_mesh_arrays", "find_mesh"]

MESH_EXTS = (".glb", ".gltf", ".obj", ".ply", ".stl", ".off")


def load_mesh_arrays(path) -> tuple:
    """``(vertices float64 [V, 3], faces int64 [F, 3])`` of a mesh file, scene graph transforms applied."""
    import trimesh
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mesh not found: {path}")
    m = trimesh.load(str(path), force="mesh", process=False)
    return G.as_mesh_arrays(vertices=m.vertices, faces=m.faces)


def _load_trimesh(path: Path):
    import trimesh
    if not Path(path).is_file():
        raise FileNotFoundError(f"mesh not found: {path}")
    m = trimesh.load(str(path), force="mesh", process=False)
    if len(m.faces) == 0:
        raise ValueError(f"{path} has no triangles")
    return m


def find_mesh(folder: Path, stem: Optional[str] = None) -> Optional[Path]:
    """First mesh file in ``folder`` (named ``stem.*`` if given), or None."""
    folder = Path(folder)
    for ext in MESH_EXTS:
        if stem is not None:
            p = folder / f"{stem}{ext}"
            if p.is_file():
                return p
        else:
            hits = sorted(folder.glob(f"*{ext}"))
            if hits:
                return hits[0]
    return None


# ----------------------------------------------------------------------------------------------------------------------
# (a) O-Voxel reconstruction
# ----------------------------------------------------------------------------------------------------------------------
def ovoxel_roundtrip(vertices, faces, grid_size: int = 256, quantize: bool = True):
    """Mesh (already inside ``[-0.5, 0.5]³``) → O-Voxel → mesh.

    Returns:
        ``(vertices float64 [V', 3], faces int64 [F', 3], num_voxels)``.
    Raises:
        ImportError: ``pixal3d.ovoxel`` lacks the flexible-dual-grid functions.
        ValueError: from the voxeliser (e.g. vertices outside the unit cube).
    """
    try:
        from pixal3d.ovoxel import flexible_dual_grid_to_mesh, mesh_to_flexible_dual_grid
    except ImportError as exc:  # pragma: no cover - present in this checkout
        raise ImportError(f"pixal3d.ovoxel flexible dual grid functions are unavailable: {exc}") from exc
    import torch
    aabb = [[-0.5] * 3, [0.5] * 3]
    vox, dual, inter = mesh_to_flexible_dual_grid(np.asarray(vertices, np.float32), np.asarray(faces, np.int64),
                                                  grid_size=grid_size, aabb=aabb, face_weight=1.0,
                                                  boundary_weight=0.2, regularization_weight=1e-2)
    local = (dual * grid_size - vox.to(dual.dtype)).clamp(0, 1)
    if quantize:
        local = (local * 255).to(torch.uint8).to(torch.float32) / 255.0
    v, f = flexible_dual_grid_to_mesh(vox, local, inter, None, aabb=aabb, grid_size=grid_size)
    return v.double().numpy(), f.long().numpy(), int(vox.shape[0])


def evaluate_reconstruction(mesh_path, grid_size: int = 256, n_points: int = 100_000,
                            thresholds: Sequence[float] = (0.005, 0.01), iou_resolution: Optional[int] = None,
                            quantize: bool = True, seed: int = 0, iou_method: str = "parity") -> Dict[str, float]:
    """Protocol (a) for one mesh file (module docstring). Returns the metric dict plus ``num_voxels``,
    ``num_faces_gt``, ``num_faces_recon``, ``grid_size``."""
    v, f = load_mesh_arrays(mesh_path)
    v, _, _ = G.normalize_to_unit_cube(v, margin=0.99999)
    rv, rf, n_vox = ovoxel_roundtrip(v, f, grid_size, quantize)
    if len(rf) == 0:
        raise ValueError(f"the O-Voxel round trip of {mesh_path} produced no faces (grid {grid_size})")
    m = G.evaluate_geometry((rv, rf), (v, f), n_points=n_points, thresholds=thresholds, seed=seed,
                            iou_resolution=iou_resolution, iou_method=iou_method)
    m.update(num_voxels=n_vox, num_faces_gt=int(len(f)), num_faces_recon=int(len(rf)), grid_size=int(grid_size))
    return m


# ----------------------------------------------------------------------------------------------------------------------
# (b) image-to-3D
# ----------------------------------------------------------------------------------------------------------------------
def _read_camera(case: Path) -> dict:
    p = case / "camera.json"
    if not p.is_file():
        raise FileNotFoundError(f"{case} has no camera.json (needs 'fov' in radians and 'distance')")
    cam = json.loads(p.read_text())
    for k in ("fov", "distance"):
        if k not in cam:
            raise ValueError(f"{p} lacks '{k}'")
    if not 0 < float(cam["fov"]) < math.pi:
        raise ValueError(f"{p}: fov must be in radians within (0, pi), got {cam['fov']}")
    if cam.get("gt_frame", "canonical") not in ("canonical", "view"):
        raise ValueError(f"{p}: gt_frame must be 'canonical' or 'view', got {cam['gt_frame']!r}")
    return cam


def evaluate_image_to_3d_case(case_dir, pred_path, n_points: int = 100_000,
                              thresholds: Sequence[float] = (0.005, 0.01, 0.02), iou_resolution: int = 64,
                              render_resolution: int = 256, num_views: int = 4, backend: str = "cpu",
                              use_lpips: bool = True, seed: int = 0, iou_method: str = "parity") -> Dict[str, float]:
    """Protocol (b) for one case (module docstring). Returns a flat metric dict (floats).

    When both meshes carry colour (UV texture or vertex colours) the base-colour renders are compared too
    (``color_psnr`` / ``color_ssim`` over the union of both masks / ``color_lpips``)."""
    import torch

    from pixal3d.conditioning.camera import front_camera_matrix, view_alignment_transform
    from pixal3d.renderers import MeshRenderer, RenderMesh, orbit_cameras

    case = Path(case_dir)
    cam = _read_camera(case)
    gt_path = find_mesh(case, "gt")
    if gt_path is None:
        raise FileNotFoundError(f"{case} has no gt.* mesh ({', '.join(MESH_EXTS)})")
    gt_tm, pred_tm = _load_trimesh(gt_path), _load_trimesh(Path(pred_path))
    vg, fg = G.as_mesh_arrays(vertices=gt_tm.vertices, faces=gt_tm.faces)
    vp, fp = G.as_mesh_arrays(vertices=pred_tm.vertices, faces=pred_tm.faces)
    fov, d = float(cam["fov"]), float(cam["distance"])
    if cam.get("gt_frame", "canonical") == "canonical":
        c2w = np.asarray(cam["c2w"], np.float64) if "c2w" in cam else front_camera_matrix(d)
        T = view_alignment_transform(c2w)
        vg = G.align_to_frame(vg, T[:3, :3], T[:3, 3])
    _, c, s = G.normalize_to_unit_cube(vg)
    vg_n, vp_n = (vg - c) * s, (vp - c) * s
    out = G.evaluate_geometry((vp_n, fp), (vg_n, fg), n_points=n_points, thresholds=thresholds, seed=seed,
                              iou_resolution=iou_resolution, iou_method=iou_method)

    # renders from matched cameras, in the un-normalised view frame (the cameras refer to it)
    renderer = MeshRenderer(render_resolution, backend=backend)
    cams = orbit_cameras(fov, d, max(1, int(num_views)))
    rm_p, rm_g = RenderMesh.from_trimesh(pred_tm), RenderMesh.from_trimesh(gt_tm)
    rm_p.vertices, rm_g.vertices = torch.from_numpy(vp), torch.from_numpy(vg)
    rm_p.vertex_normals = rm_g.vertex_normals = None  # frames changed; face normals suffice for these outputs
    colour = all(r.texture is not None or (r.vertex_attrs is not None and r.vertex_attrs.shape[1] >= 3)
                 for r in (rm_p, rm_g))
    kinds = ["mask", "normal"] + (["base_color"] if colour else [])
    mask_iou, n_psnr, n_ssim, n_ang, n_lpips = [], [], [], [], []
    c_psnr, c_ssim, c_lpips = [], [], []
    lpips_ok = use_lpips
    front_pred_mask = None
    for k, camk in enumerate(cams):
        a = renderer.render(rm_p, camk, kinds)
        b = renderer.render(rm_g, camk, kinds)
        ma, mb = a["mask"] > 0.5, b["mask"] > 0.5
        if k == 0:
            front_pred_mask = ma
        union = (ma | mb).sum().item()
        mask_iou.append(1.0 if union == 0 else (ma & mb).sum().item() / union)
        both = (ma | mb).numpy()
        if both.any():
            n_psnr.append(I.normal_psnr(a["normal"].numpy(), b["normal"].numpy(), mask=both))
            n_ang.append(I.normal_angular_error(a["normal"].numpy(), b["normal"].numpy(), mask=(ma & mb).numpy())
                         if (ma & mb).any() else 180.0)
        n_ssim.append(I.ssim(a["normal"].numpy(), b["normal"].numpy()))
        if colour:
            if both.any():
                c_psnr.append(I.psnr(a["base_color"].numpy(), b["base_color"].numpy(), mask=both))
            c_ssim.append(I.ssim(a["base_color"].numpy(), b["base_color"].numpy()))
        if lpips_ok:
            try:
                n_lpips.append(I.lpips_distance(a["normal"].numpy(), b["normal"].numpy()))
                if colour:
                    c_lpips.append(I.lpips_distance(a["base_color"].numpy(), b["base_color"].numpy()))
            except I.LPIPSUnavailable:
                lpips_ok = False
    out["render_mask_iou"] = float(np.mean(mask_iou))
    out["front_mask_iou"] = float(mask_iou[0])
    if n_psnr:
        out["normal_psnr"] = float(np.mean(n_psnr))
        out["normal_angular_error_deg"] = float(np.mean(n_ang))
    out["normal_ssim"] = float(np.mean(n_ssim))
    if n_lpips and lpips_ok:
        out["normal_lpips"] = float(np.mean(n_lpips))
    if c_psnr:
        out["color_psnr"] = float(np.mean(c_psnr))
    if c_ssim:
        out["color_ssim"] = float(np.mean(c_ssim))
    if c_lpips and lpips_ok:
        out["color_lpips"] = float(np.mean(c_lpips))
    img_p = case / "image.png"
    if img_p.is_file():
        from PIL import Image
        im = Image.open(img_p)
        if im.mode in ("RGBA", "LA"):
            alpha = np.asarray(im.getchannel("A").resize((render_resolution, render_resolution),
                                                         Image.BILINEAR)) > 127
            am = torch.from_numpy(alpha)
            union = (am | front_pred_mask).sum().item()
            out["input_mask_iou"] = 1.0 if union == 0 else (am & front_pred_mask).sum().item() / union
    return out


# ----------------------------------------------------------------------------------------------------------------------
# results bookkeeping
# ----------------------------------------------------------------------------------------------------------------------
def load_results(path) -> Dict[str, dict]:
    """``{asset: metrics}`` from a results JSON (``{"protocol": ..., "config": ..., "results": {...}}``), or ``{}``
    if the file does not exist. Raises ``ValueError`` for a corrupt file (it is never silently overwritten)."""
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); move it away to start over") from exc
    return dict(data.get("results", {}))


def save_results(path, results: Dict[str, dict], protocol: str, config: dict) -> None:
    """Atomically write the results JSON (write to ``*.tmp`` then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps({"protocol": protocol, "config": config, "results": results}, indent=2,
                              sort_keys=True, default=float))
    tmp.replace(path)


def run_protocol(items: Dict[str, Callable[[], dict]], results_path, protocol: str, config: dict,
                 progress: bool = True, on_error: str = "record") -> Dict[str, dict]:
    """Evaluate ``items`` (``{asset: thunk}``), skipping assets already in ``results_path`` (resumable), saving after
    each asset. ``on_error='record'`` stores ``{"error": message}`` for a failing asset (and retries it next run);
    ``'raise'`` re-raises."""
    results = load_results(results_path)
    todo = [k for k in items if k not in results or "error" in results[k]]
    try:
        from tqdm import tqdm
        it = tqdm(todo, desc=protocol, disable=not progress)
    except ImportError:  # pragma: no cover - tqdm is a dependency
        it = todo
    for name in it:
        try:
            results[name] = items[name]()
        except Exception as exc:
            if on_error == "raise":
                raise
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
        save_results(results_path, results, protocol, config)
    if not todo:
        save_results(results_path, results, protocol, config)
    return results


def _metric_keys(results: Dict[str, dict]) -> List[str]:
    keys = []
    for r in results.values():
        for k, v in r.items():
            if k != "error" and isinstance(v, (int, float)) and k not in keys:
                keys.append(k)
    return keys


def results_markdown(results: Dict[str, dict], keys: Optional[Iterable[str]] = None, digits: int = 4) -> str:
    """Markdown table: one row per asset, a final ``mean`` row over assets without errors."""
    keys = list(keys) if keys is not None else _metric_keys(results)
    lines = ["| asset | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    ok = {k: v for k, v in results.items() if "error" not in v}
    for name in sorted(results):
        r = results[name]
        if "error" in r:
            lines.append(f"| {name} | " + " | ".join(["error"] * len(keys)) + " |")
            continue
        lines.append(f"| {name} | " + " | ".join(_fmt(r.get(k), digits) for k in keys) + " |")
    if ok:
        means = [_mean([r.get(k) for r in ok.values()]) for k in keys]
        lines.append("| **mean** | " + " | ".join(_fmt(m, digits) for m in means) + " |")
    return "\n".join(lines) + "\n"


def _mean(vals):
    vals = [float(v) for v in vals if v is not None and math.isfinite(float(v))]
    return sum(vals) / len(vals) if vals else None


def _fmt(v, digits):
    if v is None:
        return "–"
    if isinstance(v, int):
        return str(v)
    if math.isinf(v) or math.isnan(v):
        return str(v)
    if abs(v) >= 10 ** digits:
        return f"{v:.1f}"
    return f"{v:.{digits}g}"


def plot_results(results: Dict[str, dict], path, keys: Optional[Sequence[str]] = None) -> Optional[Path]:
    """Bar chart per metric (one panel each, assets on the x axis) saved to ``path`` (PNG). Returns the path, or
    None when there is nothing to plot.

    Raises:
        ImportError: matplotlib is missing (it is a dependency of the package: ``pip install matplotlib``).
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ok = {k: v for k, v in sorted(results.items()) if "error" not in v}
    keys = list(keys) if keys is not None else [k for k in _metric_keys(ok)
                                                 if not k.startswith(("num_", "grid_", "precision@", "recall@"))]
    if not ok or not keys:
        return None
    names = list(ok)
    fig, axes = plt.subplots(len(keys), 1, figsize=(max(6, 0.45 * len(names) + 2), 2.2 * len(keys)), squeeze=False)
    for ax, k in zip(axes[:, 0], keys):
        vals = [ok[n].get(k, float("nan")) for n in names]
        vals = [float("nan") if v is None or (isinstance(v, float) and math.isinf(v)) else v for v in vals]
        ax.bar(range(len(names)), vals, color="tab:blue")
        ax.set_ylabel(k, fontsize=8)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names if ax is axes[-1, 0] else [""] * len(names), rotation=60, ha="right", fontsize=7)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
