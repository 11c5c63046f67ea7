"""Image-to-3D evaluation cases (``eval.py image-to-3d``) from a data-toolkit root, and Pixal3D GLBs put back into
the frame those cases use.

    python scripts/make_i23d_cases.py cases --data-root ROOT --shas LIST.txt --view 0 --out CASES
    python scripts/make_i23d_cases.py unrotate PRED_GLB_DIR OUT_DIR      # inference.py GLBs -> view-aligned frame

``cases`` writes, for every sha256 of ``LIST.txt`` (one a line; ``#`` comments allowed), ``CASES/{name}/`` with

* ``image.png``: ``ROOT/renders_cond/{sha}/{frame file}`` of view V, copied byte for byte (RGBA as rendered);
* ``gt.ply``: ``ROOT/mesh_dumps/{sha}.pickle`` mapped by :func:`pixal3d.data.view_align.mesh_vertices_view` with
  that view's ``transform_matrix`` -- exactly the map the toolkit used for the per-view O-Voxels
  (``dual_grid_view_R`` / ``pbr_voxels_view_fix_R``), so the GT lies in the frame the Pixal3D decoder outputs.
  When that view's PBR voxels exist (``pbr_voxels_view_fix_R/{sha}/view{VV}.vxz``, the largest R found, or
  ``--pbr-resolution``), the mesh is subdivided to edges of at most one voxel and every vertex gets the base colour
  of its nearest voxel (sRGB vertex colours), so ``eval.py image-to-3d`` also compares base-colour renders
  (``color_psnr`` / ``color_ssim``). Subdividing keeps the surface exactly, so the geometry metrics do not change;
* ``camera.json``: ``{"fov": camera_angle_x, "distance": d, "gt_frame": "view", ...}`` plus bookkeeping keys
  (``sha256``, ``view``, ``render_distance`` r = ||transform_matrix[:3, 3]||, ``total_scale``, ``render_c2w``; the latter is not read by eval.py).

``name`` is the ``name`` column of ``ROOT/metadata.csv`` (or ``--metadata``), else the sha256.

Frames:

* dump / Blender world: Z up, object inside [-0.5, 0.5]^3, render camera C = ``transform_matrix`` at distance r.
* view-aligned voxel frame (``gt_frame: "view"`` of ``evaluate_image_to_3d_case``): ``v_view = total_scale ·
  view_alignment_transform(C)[:3, :3] · v_dump`` (+x image right, +y image up, camera on +z), i.e. what
  ``mesh_vertices_view`` returns. ``evaluate_image_to_3d_case`` renders GT and prediction from ``orbit_cameras(fov,
  distance)`` in this frame (view 0 = camera at (0, 0, +distance)). Because the GT is *scaled* by ``total_scale``,
  the camera that reproduces ``image.png`` sits at ``distance = r · total_scale`` (default, ``--distance scaled``);
  ``--distance raw`` writes r instead (then the renders no longer match the input image's framing, which only
  matters for ``input_mask_iou``; geometry metrics do not use the distance).
* ``inference.py`` GLB: ``mesh_to_glb`` applies ``to_glb``'s Z-up -> Y-up swap ``(x, y, z) -> (x, z, -y)`` and then
  ``PIXAL3D_EXPORT_ROTATION``; the net map from the voxel frame is a 180° turn about +y, ``(x, y, z) -> (-x, y, -z)``
  (the input view looks from -Z). ``unrotate`` applies the inverse to every ``*.glb`` of a folder (as a scene-graph
  root transform, so geometry, UVs and PBR textures are kept untouched) and writes ``OUT_DIR/{stem}.glb``; evaluate
  those, not the raw GLBs.
"""
from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: ``to_glb``'s axis swap (Z-up voxels -> glTF Y-up): ``y' = z, z' = -y``.
ZUP_TO_YUP = np.array([[1.0, 0, 0, 0], [0, 0, 1, 0], [0, -1, 0, 0], [0, 0, 0, 1]])


def export_transform() -> np.ndarray:
    """Net ``[4, 4]`` map voxel frame -> ``inference.py`` GLB frame (``PIXAL3D_EXPORT_ROTATION · ZUP_TO_YUP``)."""
    from pixal3d.pipelines.export import PIXAL3D_EXPORT_ROTATION
    return np.asarray(PIXAL3D_EXPORT_ROTATION, np.float64) @ ZUP_TO_YUP


def read_names(metadata: Optional[Path]) -> Dict[str, str]:
    if metadata is None or not Path(metadata).is_file():
        return {}
    with open(metadata, newline="") as fh:
        return {r["sha256"]: r["name"] for r in csv.DictReader(fh) if r.get("sha256") and r.get("name")}


def read_shas(path: Path) -> List[str]:
    out = []
    for line in Path(path).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            out.append(line)
    return out


def find_pbr_voxels(data_root: Path, sha: str, view: int, resolution: Optional[int] = None) -> Optional[Path]:
    """``ROOT/pbr_voxels_view_fix_R/{sha}/view{VV}.vxz`` for ``resolution`` R, or for the largest R present; None if
    there is none."""
    if resolution is not None:
        folders = [Path(data_root) / f"pbr_voxels_view_fix_{int(resolution)}"]
    else:
        found = [d for d in Path(data_root).glob("pbr_voxels_view_fix_*") if d.name.rsplit("_", 1)[-1].isdigit()]
        folders = sorted(found, key=lambda d: -int(d.name.rsplit("_", 1)[-1]))
    for d in folders:
        f = d / sha / f"view{view:02d}.vxz"
        if f.is_file():
            return f
    return None


def color_from_voxels(vertices: np.ndarray, faces: np.ndarray, vxz: Path, max_faces: int = 300_000):
    """GT mesh ``[V, 3]`` / ``[F, 3]`` (view frame, in [-0.5, 0.5]³) coloured from view-aligned PBR voxels.

    The mesh is refined step by step until no edge is longer than k voxels (k / R for k = 32, 16, ..., 1), stopping
    before a step would exceed ``max_faces`` faces (long thin triangles make 4-way subdivision grow fast; if even
    k = 32 does, the mesh is coloured as it is). Each vertex then takes the ``base_color`` (uint8 sRGB) of the voxel
    whose centre ``(c + 0.5) / R − 0.5`` is nearest.

    Returns:
        ``(vertices, faces, colors)``: float64 ``[V', 3]``, int64 ``[F', 3]``, uint8 ``[V', 3]``.

    Raises:
        ValueError: the file has no ``base_color`` or no voxel.
    """
    import trimesh
    from scipy.spatial import cKDTree

    from pixal3d.ovoxel.io.vxz import read_vxz
    coords, attrs = read_vxz(vxz)
    if "base_color" not in attrs or len(coords) == 0:
        raise ValueError(f"{vxz}: no base_color voxels")
    res = int(Path(vxz).parent.parent.name.rsplit("_", 1)[-1])  # pbr_voxels_view_fix_R/{sha}/viewVV.vxz
    v, f = np.asarray(vertices, np.float64), np.asarray(faces, np.int64)
    for k in (32, 16, 8, 4, 2, 1):  # each step refines the previous result, so no work is repeated
        vk, fk = trimesh.remesh.subdivide_to_size(v, f, max_edge=k / res, max_iter=12)
        if len(fk) > max_faces:
            break
        v, f = vk, fk
    centres = (coords.astype(np.float64) + 0.5) / res - 0.5
    _, nearest = cKDTree(centres).query(v)
    return v, f, np.asarray(attrs["base_color"])[nearest, :3].astype(np.uint8)


def make_case(data_root: Path, sha: str, view: int, out_dir: Path, distance: str = "scaled",
              pbr_resolution: Optional[int] = None) -> Path:
    """Writes one case folder ``out_dir`` (module docstring) and returns it."""
    import trimesh

    from pixal3d.data.dumps import load_dump
    from pixal3d.data.view_align import mesh_vertices_view

    data_root = Path(data_root)
    tf = json.loads((data_root / "renders_cond" / sha / "transforms.json").read_text())
    frames = tf["frames"]
    if not 0 <= view < len(frames):
        raise IndexError(f"{sha}: view {view} out of range ({len(frames)} frames)")
    fr = frames[view]
    c2w = np.asarray(fr["transform_matrix"], np.float64)
    fov = float(fr.get("camera_angle_x", tf.get("camera_angle_x")))
    r = float(np.linalg.norm(c2w[:3, 3]))
    img = data_root / "renders_cond" / sha / fr.get("file_path", f"{view:03d}.png")
    if img.suffix == "":
        img = img.with_suffix(".png")
    v, f, info = mesh_vertices_view(load_dump(data_root / "mesh_dumps" / f"{sha}.pickle"), c2w)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(img, out_dir / "image.png")
    vxz = find_pbr_voxels(data_root, sha, view, pbr_resolution)
    if vxz is None:
        trimesh.Trimesh(np.asarray(v, np.float64), np.asarray(f, np.int64), process=False).export(out_dir / "gt.ply")
    else:
        vc, fc, col = color_from_voxels(v, f, vxz)
        trimesh.Trimesh(vc, fc, vertex_colors=col, process=False).export(out_dir / "gt.ply")
    d = r * float(info["total_scale"]) if distance == "scaled" else r
    cam = {"fov": fov, "distance": d, "gt_frame": "view", "sha256": sha, "view": int(view),
           "render_distance": r, "total_scale": float(info["total_scale"]), "distance_mode": distance,
           "render_c2w": c2w.tolist()}
    (out_dir / "camera.json").write_text(json.dumps(cam, indent=2) + "\n")
    return out_dir


def unrotate_glb(src: Path, dst: Path) -> Path:
    """Writes ``src`` (an ``inference.py`` GLB) with the export rotation undone (module docstring)."""
    import trimesh
    scene = trimesh.load(str(src), force="scene", process=False)
    scene.apply_transform(np.linalg.inv(export_transform()))
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    scene.export(str(dst))
    return dst


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("cases", help="write case folders")
    c.add_argument("--data-root", "--data_root", type=Path, required=True)
    c.add_argument("--shas", type=Path, required=True, help="file with one sha256 per line")
    c.add_argument("--view", type=int, default=0)
    c.add_argument("--out", type=Path, required=True)
    c.add_argument("--metadata", type=Path, default=None, help="CSV with sha256,name (default DATA_ROOT/metadata.csv)")
    c.add_argument("--distance", choices=["scaled", "raw"], default="scaled")
    c.add_argument("--pbr-resolution", "--pbr_resolution", type=int, default=None,
                   help="colour the GT from pbr_voxels_view_fix_R (default: the largest R present; none: no colour)")
    u = sub.add_parser("unrotate", help="inference.py GLBs -> view-aligned frame")
    u.add_argument("src", type=Path, help="a .glb or a folder of .glb")
    u.add_argument("dst", type=Path, help="output folder")
    args = ap.parse_args(argv)
    if args.cmd == "cases":
        names = read_names(args.metadata or args.data_root / "metadata.csv")
        for sha in read_shas(args.shas):
            p = make_case(args.data_root, sha, args.view, args.out / names.get(sha, sha), args.distance,
                          args.pbr_resolution)
            print(p)
    else:
        srcs = [args.src] if args.src.is_file() else sorted(args.src.glob("*.glb"))
        for s in srcs:
            print(unrotate_glb(s, args.dst / s.name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
