"""Evaluation protocols and the eval.py CLI on small synthetic cases (pixal3d.evaluation.protocols)."""
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import trimesh

from pixal3d.evaluation import protocols as P

REPO = Path(__file__).resolve().parents[1]


def test_ovoxel_roundtrip_box_is_within_a_voxel():
    box = trimesh.creation.box(extents=(0.8, 0.6, 0.5))
    R = 32
    v, f, n = P.ovoxel_roundtrip(box.vertices, box.faces, grid_size=R, quantize=True)
    assert n > 0 and len(f) > 0
    from pixal3d.evaluation.geometry import evaluate_geometry
    m = evaluate_geometry((v, f), box, n_points=20000, thresholds=(1.0 / R,), iou_resolution=None)
    assert m["fscore@0.03125"] > 0.99
    assert m["chamfer_l1"] < 0.5 / R


def _write_case(root: Path, name: str, gt: trimesh.Trimesh, pred_view: trimesh.Trimesh, fov=0.6, d=2.0):
    case = root / "cases" / name
    case.mkdir(parents=True)
    gt.export(case / "gt.ply")
    (case / "camera.json").write_text(json.dumps({"fov": fov, "distance": d}))
    (root / "preds").mkdir(exist_ok=True)
    pred_view.export(root / "preds" / f"{name}.ply")
    return case


def test_image_to_3d_case_perfect_and_shifted(tmp_path):
    from pixal3d.conditioning.camera import R_BACK
    gt = trimesh.creation.box(extents=(0.6, 0.4, 0.8))  # canonical (Blender Z-up) frame
    view = gt.copy()
    T = np.eye(4)
    T[:3, :3] = R_BACK
    view.apply_transform(T)  # the same object in the view-aligned frame
    case = _write_case(tmp_path, "same", gt, view)
    m = P.evaluate_image_to_3d_case(case, tmp_path / "preds" / "same.ply", n_points=20000, iou_resolution=24,
                                    render_resolution=48, num_views=2, use_lpips=False, thresholds=(0.02, 0.05))
    assert m["volume_iou"] == pytest.approx(1.0)
    assert m["fscore@0.05"] == 1.0 and m["chamfer_l1"] < 0.01
    assert m["render_mask_iou"] == 1.0 and math.isinf(m["normal_psnr"]) and m["normal_ssim"] == pytest.approx(1.0)
    assert "color_psnr" not in m  # no colours on these meshes
    # same geometry, base colour off by exactly 51/255 = 0.2 on every channel -> PSNR = 10 log10(1 / 0.04)
    gt_c, pred_c = gt.copy(), view.copy()
    gt_c.visual.vertex_colors = np.tile([100, 150, 200, 255], (len(gt_c.vertices), 1)).astype(np.uint8)
    pred_c.visual.vertex_colors = np.tile([151, 201, 251, 255], (len(pred_c.vertices), 1)).astype(np.uint8)
    case_c = _write_case(tmp_path, "recolour", gt_c, pred_c)
    mc = P.evaluate_image_to_3d_case(case_c, tmp_path / "preds" / "recolour.ply", n_points=5000, iou_resolution=None,
                                     render_resolution=32, num_views=2, use_lpips=False)
    assert mc["color_psnr"] == pytest.approx(10 * math.log10(25), abs=1e-4)
    assert math.isinf(mc["normal_psnr"])
    shifted = view.copy()
    shifted.apply_translation([0.1, 0, 0])
    case2 = _write_case(tmp_path, "shift", gt, shifted)
    m2 = P.evaluate_image_to_3d_case(case2, tmp_path / "preds" / "shift.ply", n_points=20000, iou_resolution=24,
                                     render_resolution=48, num_views=2, use_lpips=False, thresholds=(0.02, 0.05))
    # the GT is normalised to its largest side (0.8) -> the 0.1 shift becomes 0.125
    assert 0.4 < m2["volume_iou"] < 0.9
    assert m2["fscore@0.02"] < 0.9 and m2["render_mask_iou"] < 0.95 and m2["normal_psnr"] < 40


def test_run_protocol_is_resumable_and_records_errors(tmp_path):
    calls = []

    def ok(name, val):
        def f():
            calls.append(name)
            return {"score": val}
        return f

    def bad():
        calls.append("bad")
        raise RuntimeError("boom")

    out = tmp_path / "r.json"
    res = P.run_protocol({"a": ok("a", 1.0), "b": ok("b", 3.0), "c": bad}, out, "t", {}, progress=False)
    assert calls == ["a", "b", "bad"] and res["c"]["error"].startswith("RuntimeError")
    res = P.run_protocol({"a": ok("a", 1.0), "b": ok("b", 3.0), "c": ok("c", 5.0)}, out, "t", {}, progress=False)
    assert calls == ["a", "b", "bad", "c"]  # a, b skipped; failed c retried
    assert P.load_results(out) == {"a": {"score": 1.0}, "b": {"score": 3.0}, "c": {"score": 5.0}}
    md = P.results_markdown(res)
    assert "| **mean** | 3 |" in md and md.count("\n") == 6
    png = P.plot_results(res, tmp_path / "s.png")
    assert png is not None and png.stat().st_size > 1000
    out.write_text("{broken")
    with pytest.raises(ValueError):
        P.load_results(out)
    with pytest.raises(RuntimeError):
        P.run_protocol({"x": bad}, tmp_path / "r2.json", "t", {}, progress=False, on_error="raise")


def test_eval_cli_recon(tmp_path, monkeypatch):
    root = tmp_path / "assets"
    (root / "boxy").mkdir(parents=True)
    trimesh.creation.box(extents=(1, 0.5, 0.5)).export(root / "boxy" / "model.obj")
    sys.path.insert(0, str(REPO))
    import eval as eval_cli
    out = tmp_path / "out"
    args = ["recon", "--assets", str(root), "--grid-size", "16", "--n-points", "4000", "--out", str(out),
            "--no-progress", "--iou-resolution", "16"]
    assert eval_cli.main(args) == 0
    res = json.loads((out / "results.json").read_text())["results"]
    assert set(res) == {"boxy"} and res["boxy"]["volume_iou"] > 0.9 and res["boxy"]["grid_size"] == 16
    assert "boxy" in (out / "results.md").read_text() and (out / "scores.png").is_file()
    def must_not_run(*a, **k):
        raise AssertionError("a finished asset was evaluated again")
    monkeypatch.setattr(P, "evaluate_reconstruction", must_not_run)
    assert eval_cli.main(args) == 0  # resumed: nothing recomputed, same results
    assert json.loads((out / "results.json").read_text())["results"] == res
