"""Protocol (c): SC-VAE reconstruction of O-Voxels (the TRELLIS.2 Toys4K reconstruction table), behind
``eval.py scvae``.

For one asset of a data-toolkit root (``data_toolkit/``, :mod:`pixal3d.data.steps`) at resolution ``R``:

.. code-block:: text

    dual_grid_R/{sha}.vxz      --shape SC-VAE encoder (posterior mean)-->  shape latent  --shape decoder-->  mesh, subs
    pbr_voxels_R/{sha}.vxz     --texture SC-VAE encoder (posterior mean)--> tex latent  --tex decoder(guide_subs=subs)
                                                                                          --> PBR voxels in [0, 1]

The encoders are run exactly as the toolkit's latent steps run them
(:func:`pixal3d.data.steps.encode_sparse_file`); the decoders as the image-to-3D pipeline calls them
(:meth:`pixal3d.pipelines.image_to_3d.Pixal3DPipeline.decode_latent`: ``set_resolution(R)``,
``dec(slat, return_subs=True)``, ``tex_dec(tex_slat, guide_subs=subs) * 0.5 + 0.5``). The texture decoder is guided by
the shape decoder's own subdivisions of the same asset, so the decoded PBR voxels lie on the *decoded* voxels
(not on the GT ones); this needs the shape and texture latents on the same coordinates, which holds for the
toolkit's files (``dual_grid`` and ``voxelize_pbr`` write identical voxel sets).

With ``view=V`` the view-aligned files ``dual_grid_view_R/{sha}/viewVV.vxz`` and
``pbr_voxels_view_fix_R/{sha}/viewVV.vxz`` are used instead (PIXAL3D_SPEC §7.3).

**Frames.** Everything is compared in the O-Voxel frame: the grid box ``[-0.5, 0.5]³``, voxel ``(i, j, k)`` spans
``[-0.5 + i/R, -0.5 + (i+1)/R]`` along x (same for y, z); lengths are in that frame's units (the box side is 1, a
voxel is ``1/R``). The decoded mesh is already in it (``FlexiDualGridVaeDecoder`` extracts with
``aabb = [-0.5, 0.5]³, grid_size = R``). The GT mesh is the mesh dump ``mesh_dumps/{sha}.pickle`` mapped by the very
function the toolkit used to voxelise it: canonical
:func:`pixal3d.data.view_align.mesh_vertices_canonical` (re-centred, ``0.99999 / max extent``); view ``V``
:func:`pixal3d.data.view_align.mesh_vertices_view` with the camera ``renders_cond/{sha}/transforms.json``
``frames[V].transform_matrix`` (the ``total_scale`` recomputed is checked against ``viewVV_scale.json``). No
alignment of the reconstruction is done: it is a reconstruction, any offset is an error.

**Metrics** (:func:`scvae_metrics`):

* geometry, decoded mesh vs GT mesh, by :func:`pixal3d.evaluation.geometry.evaluate_geometry` (``normalize=None``):
  ``chamfer_l1`` (mean Euclidean distance, ½ of both directions), ``chamfer_l2``, ``fscore@τ`` /
  ``precision@τ`` / ``recall@τ``, ``normal_consistency`` (unoriented) and ``chamfer_l1_floor`` (the GT against
  an independent resampling of itself: what a perfect reconstruction scores at this ``n_points``);
* ``voxel_iou``: ``|D ∩ G| / |D ∪ G|`` of the decoded voxel coordinates ``D`` (the decoder's output level, on which
  the mesh is built) and the GT dual-grid coordinates ``G`` — exact, no sampling;
* texture, on ``I = D ∩ P`` (``P`` the GT PBR voxel coordinates): ``base_color_psnr`` = ``10·log10(1 / MSE)`` over
  ``I`` × 3 channels with values in [0, 1] (decoded values clamped to [0, 1], GT = uint8 / 255; ``inf`` when
  identical), ``metallic_mae``, ``roughness_mae``, ``alpha_mae`` (mean absolute error in [0, 1] units),
  ``pbr_overlap_gt = |I| / |P|`` (fraction of GT voxels that were compared) and ``pbr_overlap_recon = |I| / |D|``;
* the representation's ceiling, independent of the VAEs: ``gt_ovoxel_chamfer_l1`` and ``gt_ovoxel_fscore@τ`` of the
  mesh extracted from the GT dual grid itself (quantised dual vertices ``/255``) against the GT mesh;
* counts ``num_voxels_gt``, ``num_voxels_recon``, ``num_faces_gt``, ``num_faces_recon``, ``num_latent_tokens``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import geometry as G

__all__ = ["SCVAEModels", "load_scvae_models", "asset_paths", "list_assets", "check_data_root", "load_gt",
           "ovoxel_mesh", "reconstruct", "scvae_metrics", "evaluate_scvae_asset", "PBR_CHANNELS"]

#: channel slices of the decoded / stored PBR attributes (TRELLIS2_SPEC §3.5): base_color(3), metallic, roughness,
#: alpha.
PBR_CHANNELS = {"base_color": slice(0, 3), "metallic": slice(3, 4), "roughness": slice(4, 5), "alpha": slice(5, 6)}
_AABB = [[-0.5, -0.5, -0.5], [0.5, 0.5, 0.5]]


# ----------------------------------------------------------------------------------------------------------------------
# files
# ----------------------------------------------------------------------------------------------------------------------
def _folders(resolution: int, view: Optional[int]) -> Tuple[str, str]:
    if view is None:
        return f"dual_grid_{resolution}", f"pbr_voxels_{resolution}"
    return f"dual_grid_view_{resolution}", f"pbr_voxels_view_fix_{resolution}"


def asset_paths(data_root, resolution: int, sha: str, view: Optional[int] = None) -> Dict[str, Path]:
    """Input files of one asset: ``{'dual_grid', 'pbr_voxels', 'mesh_dump'}`` and, with ``view``, also
    ``{'scale', 'transforms'}`` (``viewVV_scale.json`` of the dual grid and ``renders_cond/{sha}/transforms.json``).
    Nothing is checked here."""
    root = Path(data_root)
    dg, pbr = _folders(resolution, view)
    out = {"mesh_dump": root / "mesh_dumps" / f"{sha}.pickle"}
    if view is None:
        out.update(dual_grid=root / dg / f"{sha}.vxz", pbr_voxels=root / pbr / f"{sha}.vxz")
    else:
        out.update(dual_grid=root / dg / sha / f"view{view:02d}.vxz",
                   pbr_voxels=root / pbr / sha / f"view{view:02d}.vxz",
                   scale=root / dg / sha / f"view{view:02d}_scale.json",
                   transforms=root / "renders_cond" / sha / "transforms.json")
    return out


def check_data_root(data_root, resolution: int, view: Optional[int] = None) -> None:
    """Raises ``FileNotFoundError`` naming the first missing folder (and the toolkit step that writes it)."""
    root = Path(data_root)
    if not root.is_dir():
        raise FileNotFoundError(f"data root {root} does not exist (the --root of the data toolkit)")
    dg, pbr = _folders(resolution, view)
    steps = {dg: "dual_grid" + ("_view" if view is not None else ""),
             pbr: "voxelize_pbr" + ("_view" if view is not None else ""), "mesh_dumps": "dump_mesh"}
    if view is not None:
        steps["renders_cond"] = "render_cond"
    for name, step in steps.items():
        if not (root / name).is_dir():
            raise FileNotFoundError(f"{root / name} does not exist; run `python -m data_toolkit.{step} --root {root}"
                                    + (f" --resolution {resolution}" if name in (dg, pbr) else "") + "` first"
                                    + (" (or check --resolution)" if name in (dg, pbr) else ""))


def list_assets(data_root, resolution: int, view: Optional[int] = None, assets_list=None,
                limit: int = 0) -> List[str]:
    """sha256s to evaluate: the lines of ``assets_list`` (blank lines and ``#`` comments skipped, order kept), or
    every asset with a dual-grid file (sorted). ``limit > 0`` keeps the first ``limit``.

    Raises:
        FileNotFoundError: ``assets_list`` is given but missing.
    """
    if assets_list is not None:
        p = Path(assets_list)
        if not p.is_file():
            raise FileNotFoundError(f"--assets-list {p} does not exist")
        shas = []
        for line in p.read_text().splitlines():
            s = line.split("#", 1)[0].strip()
            if s and s not in shas:
                shas.append(s)
    else:
        dg = Path(data_root) / _folders(resolution, view)[0]
        if view is None:
            shas = sorted(p.stem for p in dg.glob("*.vxz"))
        else:
            shas = sorted(p.name for p in dg.iterdir() if (p / f"view{view:02d}.vxz").is_file()) if dg.is_dir() else []
    return shas[:limit] if limit else shas


# ----------------------------------------------------------------------------------------------------------------------
# models
# ----------------------------------------------------------------------------------------------------------------------
class SCVAEModels:
    """The four SC-VAE halves (eval mode, on ``device``): ``shape_enc`` (FlexiDualGridVaeEncoder), ``shape_dec``
    (FlexiDualGridVaeDecoder, ``set_resolution(R)`` done), ``tex_enc`` (SparseUnetVaeEncoder), ``tex_dec``
    (SparseUnetVaeDecoder built with ``pred_subdiv=False``)."""

    def __init__(self, shape_enc, shape_dec, tex_enc, tex_dec, resolution: int, device: str = "cpu"):
        self.shape_enc, self.shape_dec, self.tex_enc, self.tex_dec = shape_enc, shape_dec, tex_enc, tex_dec
        self.resolution, self.device = int(resolution), device


def load_scvae_models(shape_enc, shape_dec, tex_enc, tex_dec, resolution: int, device: str = "cpu",
                      dtype: Optional[str] = "float32") -> SCVAEModels:
    """Loads the four checkpoints (``dir/name`` stems of ``name.json`` + ``name.safetensors``) with
    :func:`pixal3d.models.pretrained.from_pretrained` (``dtype`` overrides the stored torso dtype; float32 by default,
    the only sensible choice on CPU).

    Raises:
        FileNotFoundError: a missing checkpoint (the message names the stem and both files).
        ValueError: a model of the wrong class for its role, a texture decoder that predicts its own subdivisions,
            or ``R`` not divisible by the decoders' upsampling factor.
    """
    from pixal3d.models.pretrained import from_pretrained
    want = {"shape_enc": "FlexiDualGridVaeEncoder", "shape_dec": "FlexiDualGridVaeDecoder",
            "tex_enc": "SparseUnetVaeEncoder", "tex_dec": "SparseUnetVaeDecoder"}
    models = {}
    for role, stem in (("shape_enc", shape_enc), ("shape_dec", shape_dec), ("tex_enc", tex_enc), ("tex_dec", tex_dec)):
        stem = str(stem)
        for suffix in (".json", ".safetensors"):
            p = Path(stem + suffix)
            if not p.is_file() and (p.is_absolute() or p.parent.exists() or stem.startswith(".")):
                raise FileNotFoundError(f"--{role} {stem}: {p} does not exist (a checkpoint is name.json + "
                                        "name.safetensors; pass the path without the extension)")
        m = from_pretrained(stem, device=device, dtype=dtype).eval()
        if type(m).__name__ != want[role]:
            raise ValueError(f"--{role} {stem} is a {type(m).__name__}; expected a {want[role]}")
        models[role] = m
    if models["tex_dec"].pred_subdiv:
        raise ValueError(f"--tex_dec {tex_dec} predicts its own subdivisions (pred_subdiv=True); the protocol needs a "
                         "guided texture decoder (pred_subdiv=False), as released")
    for role in ("shape_dec", "tex_dec"):
        f = 2 ** models[role].num_upsamples
        if resolution % f:
            raise ValueError(f"--resolution {resolution} is not divisible by the {role} upsampling factor {f}")
    models["shape_dec"].set_resolution(int(resolution))
    return SCVAEModels(resolution=resolution, device=device, **models)


# ----------------------------------------------------------------------------------------------------------------------
# ground truth
# ----------------------------------------------------------------------------------------------------------------------
def _need(path: Path, what: str) -> Path:
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path} is missing ({what})")
    return Path(path)


def ovoxel_mesh(coords, vertices_u8, intersected_packed, resolution: int) -> Tuple[np.ndarray, np.ndarray]:
    """Mesh of a stored dual grid (``vertices`` uint8 ``[N, 3]`` local dual vertex ·255, ``intersected`` packed uint8
    ``[N, 1]``) with ``flexible_dual_grid_to_mesh`` in the O-Voxel frame: ``(float64 [V, 3], int64 [F, 3])``."""
    import torch
    from pixal3d.ovoxel.flexible_dual_grid import flexible_dual_grid_to_mesh
    from pixal3d.ovoxel.io import unpack_intersected
    v, f = flexible_dual_grid_to_mesh(torch.from_numpy(np.asarray(coords, np.int64)),
                                      torch.from_numpy(np.asarray(vertices_u8, np.float32) / 255.0),
                                      torch.from_numpy(unpack_intersected(intersected_packed)), None, aabb=_AABB,
                                      grid_size=int(resolution))
    return v.double().numpy(), f.long().numpy()


def load_gt(data_root, resolution: int, sha: str, view: Optional[int] = None) -> dict:
    """Ground truth of one asset in the O-Voxel frame (module docstring).

    Returns:
        ``{'mesh': (float64 [V, 3], int64 [F, 3]), 'shape_coords': int64 [N, 3], 'shape_attrs': {'vertices',
        'intersected'} uint8, 'pbr_coords': int64 [P, 3], 'pbr': float64 [P, 6] in [0, 1], 'paths': {...}}``.

    Raises:
        FileNotFoundError: a missing input file (named). ValueError: a malformed file, or (view) a camera whose
        recomputed ``total_scale`` differs from ``viewVV_scale.json`` (the renders were redone after voxelising).
    """
    from pixal3d.data.dumps import load_dump
    from pixal3d.data.view_align import PBR_ATTRS, mesh_vertices_canonical, mesh_vertices_view
    from pixal3d.ovoxel.io import read_vxz
    paths = asset_paths(data_root, resolution, sha, view)
    _need(paths["dual_grid"], "written by the dual_grid" + ("_view" if view is not None else "") + " step")
    _need(paths["pbr_voxels"], "written by the voxelize_pbr" + ("_view" if view is not None else "") + " step")
    dump = load_dump(_need(paths["mesh_dump"], "written by the dump_mesh step"))
    if view is None:
        v, f = mesh_vertices_canonical(dump)
    else:
        tr = json.loads(_need(paths["transforms"], "written by the render_cond step").read_text())
        frames = tr.get("frames") or []
        if view >= len(frames):
            raise ValueError(f"{paths['transforms']} has {len(frames)} frames; no view {view}")
        v, f, info = mesh_vertices_view(dump, np.asarray(frames[view]["transform_matrix"], np.float64))
        stored = json.loads(_need(paths["scale"], "written by the dual_grid_view step").read_text())
        if abs(float(stored["total_scale"]) - info["total_scale"]) > 1e-6 * abs(info["total_scale"]):
            raise ValueError(f"{paths['scale']}: total_scale {stored['total_scale']} but the camera of "
                             f"{paths['transforms']} gives {info['total_scale']}; re-run dual_grid_view")
    sc, sa = read_vxz(str(paths["dual_grid"]))
    for k in ("vertices", "intersected"):
        if k not in sa:
            raise ValueError(f"{paths['dual_grid']} lacks '{k}' (not a dual-grid file)")
    pc, pa = read_vxz(str(paths["pbr_voxels"]))
    missing = [k for k in PBR_ATTRS if k not in pa]
    if missing:
        raise ValueError(f"{paths['pbr_voxels']} lacks {missing} (not a PBR voxel file)")
    pbr = np.concatenate([pa[k] for k in PBR_ATTRS], axis=1).astype(np.float64) / 255.0
    return {"mesh": G.as_mesh_arrays(vertices=v, faces=f), "shape_coords": sc.astype(np.int64), "shape_attrs": sa,
            "pbr_coords": pc.astype(np.int64), "pbr": pbr, "paths": paths}


# ----------------------------------------------------------------------------------------------------------------------
# reconstruction
# ----------------------------------------------------------------------------------------------------------------------
def _latent(enc_out: dict, device):
    import torch
    from pixal3d.sparse import SparseTensor
    c = torch.from_numpy(enc_out["coords"].astype(np.int32))
    coords = torch.cat([torch.zeros(len(c), 1, dtype=torch.int32), c], dim=1).to(device)
    return SparseTensor(torch.from_numpy(enc_out["feats"]).to(device), coords)


def reconstruct(models: SCVAEModels, dual_grid_path, pbr_voxels_path) -> dict:
    """Encode → decode one asset (module docstring).

    Returns:
        ``{'mesh': (float64 [V, 3], int64 [F, 3]) in the O-Voxel frame, 'coords': int64 [M, 3] decoded voxels at
        resolution R, 'pbr': float64 [M, 6] decoded attributes clamped to [0, 1], 'num_latent_tokens': int}``.

    Raises:
        ValueError: shape and texture latents on different coordinates (the dual grid and PBR voxel files do not
            hold the same voxels, so the texture decoder cannot be guided by the shape decoder), an empty decoded
            mesh, or decoded voxels outside the R³ grid (decoder / encoder factors do not match R).
    """
    import torch
    from pixal3d.data.steps import encode_sparse_file
    dev = models.device
    zs = encode_sparse_file(dual_grid_path, "shape", models.shape_enc, dev)
    zt = encode_sparse_file(pbr_voxels_path, "pbr", models.tex_enc, dev)
    if zs["coords"].shape != zt["coords"].shape or not np.array_equal(zs["coords"], zt["coords"]):
        raise ValueError(f"shape latent ({len(zs['coords'])} tokens) and texture latent ({len(zt['coords'])} tokens) "
                         f"lie on different coordinates: {dual_grid_path} and {pbr_voxels_path} do not hold the "
                         "same voxels, so the shape decoder's subdivisions cannot guide the texture decoder")
    with torch.no_grad():
        meshes, subs = models.shape_dec(_latent(zs, dev), return_subs=True)
        vox = models.tex_dec(_latent(zt, dev), guide_subs=subs)
    mesh = meshes[0]
    coords = vox.coords[:, 1:].long().cpu().numpy()
    R = models.resolution
    if coords.size and (coords.min() < 0 or coords.max() >= R):
        raise ValueError(f"decoded voxel coords span [{coords.min()}, {coords.max()}], outside the {R}^3 grid: the "
                         f"decoders' upsampling does not match --resolution {R}")
    if mesh.faces.shape[0] == 0:
        raise ValueError("the shape decoder produced no faces")
    pbr = (vox.feats.float() * 0.5 + 0.5).clamp(0, 1).cpu().double().numpy()
    return {"mesh": G.as_mesh_arrays(vertices=mesh.vertices, faces=mesh.faces), "coords": coords, "pbr": pbr,
            "num_latent_tokens": int(len(zs["coords"]))}


# ----------------------------------------------------------------------------------------------------------------------
# metrics
# ----------------------------------------------------------------------------------------------------------------------
def _keys(coords: np.ndarray, resolution: int) -> np.ndarray:
    c = np.asarray(coords, np.int64).reshape(-1, 3)
    R = int(resolution)
    return (c[:, 0] * R + c[:, 1]) * R + c[:, 2]


def scvae_metrics(pred_mesh, pred_coords, pred_pbr, gt_mesh, gt_shape_coords, gt_pbr_coords, gt_pbr,
                  resolution: int, n_points: int = 100_000, thresholds: Sequence[float] = (0.005, 0.01, 0.02),
                  seed: int = 0) -> Dict[str, float]:
    """Metrics of one reconstruction (module docstring), all in the O-Voxel frame.

    Args:
        pred_mesh / gt_mesh: ``(vertices [V, 3], faces [F, 3])`` in ``[-0.5, 0.5]³`` units.
        pred_coords: int ``[M, 3]`` decoded voxels; pred_pbr: float ``[M, 6]`` in [0, 1] on them.
        gt_shape_coords: int ``[N, 3]`` GT dual-grid voxels; gt_pbr_coords / gt_pbr: ``[P, 3]`` / ``[P, 6]`` in [0, 1].
        resolution: R (coords lie in ``[0, R)``).
    Returns:
        flat dict of floats/ints (see the module docstring for each key). With no common PBR voxel the texture
        errors are ``nan`` (and ``pbr_overlap_gt`` is 0).
    Raises:
        ValueError: row counts of coords/attributes differ, or attributes are not 6 channels.
    """
    pred_pbr, gt_pbr = np.asarray(pred_pbr, np.float64), np.asarray(gt_pbr, np.float64)
    for name, c, a in (("pred", pred_coords, pred_pbr), ("gt", gt_pbr_coords, gt_pbr)):
        if a.ndim != 2 or a.shape[1] != 6 or len(a) != len(c):
            raise ValueError(f"{name} PBR attributes must be [{len(c)}, 6] (one row per voxel), got {a.shape}")
    m = G.evaluate_geometry(pred_mesh, gt_mesh, n_points=n_points, thresholds=thresholds, seed=seed,
                            iou_resolution=None)
    kd, kg = _keys(pred_coords, resolution), _keys(gt_shape_coords, resolution)
    inter = len(np.intersect1d(kd, kg))
    union = len(np.union1d(kd, kg))
    m["voxel_iou"] = 1.0 if union == 0 else inter / union
    kp = _keys(gt_pbr_coords, resolution)
    common, i_d, i_p = np.intersect1d(kd, kp, assume_unique=True, return_indices=True)
    m["pbr_overlap_gt"] = len(common) / max(len(kp), 1)
    m["pbr_overlap_recon"] = len(common) / max(len(kd), 1)
    if len(common):
        a, b = pred_pbr[i_d], gt_pbr[i_p]
        mse = float(((a[:, PBR_CHANNELS["base_color"]] - b[:, PBR_CHANNELS["base_color"]]) ** 2).mean())
        m["base_color_psnr"] = float("inf") if mse == 0 else float(10 * np.log10(1.0 / mse))
        for k in ("metallic", "roughness", "alpha"):
            m[f"{k}_mae"] = float(np.abs(a[:, PBR_CHANNELS[k]] - b[:, PBR_CHANNELS[k]]).mean())
    else:
        m["base_color_psnr"] = m["metallic_mae"] = m["roughness_mae"] = m["alpha_mae"] = float("nan")
    m["num_voxels_gt"] = int(len(kg))
    m["num_voxels_recon"] = int(len(kd))
    m["num_faces_gt"] = int(len(G.as_mesh_arrays(gt_mesh)[1]))
    m["num_faces_recon"] = int(len(G.as_mesh_arrays(pred_mesh)[1]))
    return m


def evaluate_scvae_asset(models: SCVAEModels, data_root, sha: str, view: Optional[int] = None,
                         n_points: int = 100_000, thresholds: Sequence[float] = (0.005, 0.01, 0.02), seed: int = 0,
                         ceiling: bool = True) -> Dict[str, float]:
    """Protocol (c) for one asset: :func:`load_gt`, :func:`reconstruct`, :func:`scvae_metrics`, plus (``ceiling``)
    the GT dual grid's own mesh against the GT mesh (``gt_ovoxel_chamfer_l1``, ``gt_ovoxel_fscore@τ``)."""
    R = models.resolution
    gt = load_gt(data_root, R, sha, view)
    rec = reconstruct(models, gt["paths"]["dual_grid"], gt["paths"]["pbr_voxels"])
    m = scvae_metrics(rec["mesh"], rec["coords"], rec["pbr"], gt["mesh"], gt["shape_coords"], gt["pbr_coords"],
                      gt["pbr"], R, n_points=n_points, thresholds=thresholds, seed=seed)
    m["num_latent_tokens"] = rec["num_latent_tokens"]
    if ceiling:
        ov = ovoxel_mesh(gt["shape_coords"], gt["shape_attrs"]["vertices"], gt["shape_attrs"]["intersected"], R)
        c = G.evaluate_geometry(ov, gt["mesh"], n_points=n_points, thresholds=thresholds, seed=seed,
                                iou_resolution=None, report_floor=False)
        m["gt_ovoxel_chamfer_l1"] = c["chamfer_l1"]
        for t in thresholds:
            m[f"gt_ovoxel_fscore@{float(t):g}"] = c[f"fscore@{float(t):g}"]
    m["resolution"] = int(R)
    return m
