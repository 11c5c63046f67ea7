"""scripts/make_i23d_cases.py on a tiny synthetic data-toolkit root (box mesh dump + hand-written transforms.json)."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

trimesh = pytest.importorskip("trimesh")
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHA = "ab" * 32


def _script():
    spec = importlib.util.spec_from_file_location("make_i23d_cases", REPO / "scripts" / "make_i23d_cases.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _root(tmp_path: Path) -> Path:
    from pixal3d.data.dumps import save_dump
    root = tmp_path / "data"
    box = trimesh.creation.box(extents=(0.8, 0.4, 0.2))  # long along world X, shortest along world Z (up)
    save_dump({"objects": [{"vertices": np.asarray(box.vertices, np.float32),
                            "faces": np.asarray(box.faces, np.int32)}], "scale": 1.0, "offset": np.zeros(3)},
              root / "mesh_dumps" / f"{SHA}.pickle")
    # Blender camera on +X at distance 2 looking at the origin, up +Z: right = +Y, up = +Z, back (local +z) = +X
    c2w = np.eye(4)
    c2w[:3, :3] = np.array([[0.0, 0, 1], [1, 0, 0], [0, 1, 0]])
    c2w[:3, 3] = [2.0, 0, 0]
    d = root / "renders_cond" / SHA
    d.mkdir(parents=True)
    frames = [{"file_path": "000.png", "camera_angle_x": 0.7, "transform_matrix": c2w.tolist()}]
    (d / "transforms.json").write_text(json.dumps({"frames": frames}))
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[4:12, 4:12] = [200, 100, 50, 255]
    Image.fromarray(rgba, "RGBA").save(d / "000.png")
    (root / "metadata.csv").write_text(f"sha256,name\n{SHA},tiny_box\n")
    (tmp_path / "shas.txt").write_text(SHA + "\n")
    return root


def test_cases_camera_and_view_frame(tmp_path):
    from pixal3d.data.dumps import load_dump
    from pixal3d.data.view_align import mesh_vertices_view
    mod = _script()
    root = _root(tmp_path)
    assert mod.main(["cases", "--data-root", str(root), "--shas", str(tmp_path / "shas.txt"), "--view", "0",
                     "--out", str(tmp_path / "cases")]) == 0
    case = tmp_path / "cases" / "tiny_box"
    assert (case / "image.png").read_bytes() == (root / "renders_cond" / SHA / "000.png").read_bytes()
    assert Image.open(case / "image.png").mode == "RGBA"
    cam = json.loads((case / "camera.json").read_text())
    v_ref, f_ref, info = mesh_vertices_view(load_dump(root / "mesh_dumps" / f"{SHA}.pickle"),
                                            json.loads((root / "renders_cond" / SHA / "transforms.json").read_text())
                                            ["frames"][0]["transform_matrix"])
    assert cam["gt_frame"] == "view" and cam["fov"] == pytest.approx(0.7)
    assert cam["render_distance"] == pytest.approx(2.0)
    assert cam["distance"] == pytest.approx(2.0 * info["total_scale"])
    gt = trimesh.load(case / "gt.ply", process=False)
    np.testing.assert_allclose(gt.vertices, v_ref, atol=1e-6)
    np.testing.assert_array_equal(gt.faces, f_ref)
    # independent check of the frame: world Y (camera right) -> +x, world Z (up) -> +y, world X (to camera) -> +z
    ext = gt.vertices.max(0) - gt.vertices.min(0)
    np.testing.assert_allclose(ext / ext.max(), [0.4 / 0.8, 0.2 / 0.8, 1.0], atol=1e-5)
    s = info["total_scale"]
    src = np.array([[0.4, 0.2, 0.1]])  # a box corner in the dump (world) frame
    np.testing.assert_allclose(src[:, [1, 2, 0]] * s, gt.vertices[np.argmax(gt.vertices.sum(1))][None], atol=1e-5)
    # the evaluator reads the case: GT against itself is perfect, and its front render matches the image framing
    from pixal3d.evaluation.protocols import evaluate_image_to_3d_case
    m = evaluate_image_to_3d_case(case, case / "gt.ply", n_points=2000, iou_resolution=None, render_resolution=32,
                                  num_views=1, use_lpips=False)
    assert m["chamfer_l1"] < 0.03 and m["front_mask_iou"] == 1.0  # chamfer of two independent point samples


def test_unrotate_inverts_export(tmp_path):
    mod = _script()
    np.testing.assert_allclose(mod.export_transform(), np.diag([-1.0, 1.0, -1.0, 1.0]), atol=0)
    box = trimesh.creation.box(extents=(0.8, 0.4, 0.2))
    box.apply_translation([0.05, 0.1, 0.2])
    exported = box.copy()
    exported.apply_transform(mod.export_transform())
    exported.export(tmp_path / "a.glb")
    mod.main(["unrotate", str(tmp_path / "a.glb"), str(tmp_path / "out")])
    back = trimesh.load(tmp_path / "out" / "a.glb", force="mesh", process=False)
    np.testing.assert_allclose(np.sort(back.vertices, 0), np.sort(box.vertices, 0), atol=1e-6)


def test_cases_colour_gt_from_pbr_voxels(tmp_path):
    """With view-aligned PBR voxels present, gt.ply carries their base colour per vertex on the same surface."""
    from pixal3d.data.dumps import load_dump
    from pixal3d.data.view_align import mesh_vertices_view
    from pixal3d.ovoxel.io.vxz import write_vxz
    mod = _script()
    root = _root(tmp_path)
    R = 16
    g = np.stack(np.meshgrid(*[np.arange(R)] * 3, indexing="ij"), -1).reshape(-1, 3).astype(np.int32)
    left = (g[:, 0] + 0.5) / R - 0.5 < 0  # view-frame x < 0: red, else blue
    colour = np.where(left[:, None], [[255, 0, 0]], [[0, 0, 255]]).astype(np.uint8)
    d = root / f"pbr_voxels_view_fix_{R}" / SHA
    d.mkdir(parents=True)
    write_vxz(d / "view00.vxz", g, {"base_color": colour})
    assert mod.main(["cases", "--data-root", str(root), "--shas", str(tmp_path / "shas.txt"), "--out",
                     str(tmp_path / "cases")]) == 0
    gt = trimesh.load(tmp_path / "cases" / "tiny_box" / "gt.ply", process=False)
    v_ref, f_ref, _ = mesh_vertices_view(load_dump(root / "mesh_dumps" / f"{SHA}.pickle"),
                                         json.loads((root / "renders_cond" / SHA / "transforms.json").read_text())
                                         ["frames"][0]["transform_matrix"])
    edges = gt.vertices[gt.edges_unique]
    assert len(gt.faces) > len(f_ref) and np.linalg.norm(edges[:, 0] - edges[:, 1], axis=1).max() <= 1 / R + 1e-9
    np.testing.assert_allclose(gt.area, trimesh.Trimesh(v_ref, f_ref).area, rtol=1e-9)  # same surface
    np.testing.assert_allclose(gt.bounds, np.stack([v_ref.min(0), v_ref.max(0)]), atol=1e-9)
    col = gt.visual.vertex_colors[:, :3]
    x = gt.vertices[:, 0]
    assert (col[x < -0.5 / R] == [255, 0, 0]).all() and (col[x > 0.5 / R] == [0, 0, 255]).all()
    # the evaluator compares base colour when both meshes are coloured: the GT against itself is exact
    from pixal3d.evaluation.protocols import evaluate_image_to_3d_case
    m = evaluate_image_to_3d_case(tmp_path / "cases" / "tiny_box", tmp_path / "cases" / "tiny_box" / "gt.ply",
                                  n_points=2000, iou_resolution=None, render_resolution=32, num_views=1,
                                  use_lpips=False)
    assert m["color_ssim"] == pytest.approx(1.0)
