"""Protocol (c) SC-VAE reconstruction (pixal3d.evaluation.scvae, ``eval.py scvae``) on a tiny data-toolkit root built
from real meshes with the toolkit's own voxelisation functions (no Blender: transforms.json is written by hand)."""
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import trimesh

from pixal3d.evaluation import scvae as S

REPO = Path(__file__).resolve().parents[1]
R = 32
SPHERE, BOX = "a" * 64, "b" * 64  # sha256-like asset names
RADIUS = 0.4


def _camera(azimuth: float, elevation: float, distance: float = 2.0) -> np.ndarray:
    """Blender camera-to-world looking at the origin (a stand-in for a render_cond frame)."""
    from pixal3d.conditioning.camera import front_camera_matrix
    c2w = front_camera_matrix(distance)
    ca, sa, ce, se = math.cos(azimuth), math.sin(azimuth), math.cos(elevation), math.sin(elevation)
    rz = np.array([[ca, -sa, 0, 0], [sa, ca, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    rx = np.array([[1, 0, 0, 0], [0, ce, -se, 0], [0, se, ce, 0], [0, 0, 0, 1]])
    return rz @ rx @ c2w


def _pbr_attrs(coords: np.ndarray) -> dict:
    """Smooth PBR attributes on the voxels (uint8, the stored layout)."""
    p = (coords.astype(np.float64) + 0.5) / R
    q = lambda a: (np.clip(a, 0, 1) * 255).round().astype(np.uint8)  # noqa: E731
    return {"base_color": q(0.2 + 0.6 * p), "metallic": q(p[:, :1]), "roughness": q(0.3 + 0.5 * p[:, 2:3]),
            "alpha": q(np.ones((len(p), 1)))}


def _write_root(root: Path) -> Path:
    """``mesh_dumps``, ``dual_grid_R``, ``pbr_voxels_R``, their view-aligned versions (1 view) and
    ``renders_cond/{sha}/transforms.json``, written with the toolkit's own functions."""
    from pixal3d.data.dumps import save_dump
    from pixal3d.data.view_align import dual_grid_arrays, mesh_vertices_canonical, mesh_vertices_view
    from pixal3d.ovoxel.io import write_vxz
    meshes = {SPHERE: trimesh.creation.icosphere(subdivisions=3, radius=RADIUS),
              BOX: trimesh.creation.box(extents=(0.9, 0.5, 0.3))}
    c2w = _camera(0.7, 0.4)
    for sha, m in meshes.items():
        dump = {"objects": [{"name": sha[:4], "vertices": np.asarray(m.vertices, np.float32),
                             "faces": np.asarray(m.faces, np.int64)}]}
        save_dump(dump, root / "mesh_dumps" / f"{sha}.pickle")
        v, f = mesh_vertices_canonical(dump)
        coords, attrs = dual_grid_arrays(v, f, R)
        (root / f"dual_grid_{R}").mkdir(parents=True, exist_ok=True)
        (root / f"pbr_voxels_{R}").mkdir(parents=True, exist_ok=True)
        write_vxz(str(root / f"dual_grid_{R}" / f"{sha}.vxz"), coords, attrs)
        write_vxz(str(root / f"pbr_voxels_{R}" / f"{sha}.vxz"), coords, _pbr_attrs(coords))
        vv, fv, info = mesh_vertices_view(dump, c2w)
        cv, av = dual_grid_arrays(vv, fv, R)
        for folder, a in ((f"dual_grid_view_{R}", av), (f"pbr_voxels_view_fix_{R}", _pbr_attrs(cv))):
            (root / folder / sha).mkdir(parents=True, exist_ok=True)
            write_vxz(str(root / folder / sha / "view00.vxz"), cv, a)
            (root / folder / sha / "view00_scale.json").write_text(json.dumps({"sha256": sha, "view_idx": 0,
                                                                               **info}))
        (root / "renders_cond" / sha).mkdir(parents=True, exist_ok=True)
        (root / "renders_cond" / sha / "transforms.json").write_text(json.dumps(
            {"frames": [{"file_path": "000.png", "transform_matrix": c2w.tolist(), "camera_angle_x": 0.6}]}))
    return root


def _write_tiny_scvaes(folder: Path) -> dict:
    """Random-weight shape/texture SC-VAEs (2 downsamplings: latents on an 8³ grid at R = 32)."""
    import torch
    from pixal3d.models import get_model_class
    from pixal3d.models.pretrained import save_pretrained
    torch.manual_seed(0)
    common = dict(latent_channels=4, block_type=["SparseConvNeXtBlock3d"] * 3, block_args=[{}] * 3)
    enc = dict(model_channels=[8, 16, 32], num_blocks=[0, 1, 1], down_block_type=["SparseResBlockS2C3d"] * 2, **common)
    dec = dict(model_channels=[32, 16, 8], num_blocks=[1, 1, 0], up_block_type=["SparseResBlockC2S3d"] * 2, **common)
    stems = {k: folder / k for k in ("shape_enc", "shape_dec", "tex_enc", "tex_dec")}
    save_pretrained(get_model_class("FlexiDualGridVaeEncoder")(**enc), stems["shape_enc"])
    save_pretrained(get_model_class("FlexiDualGridVaeDecoder")(resolution=R, **dec), stems["shape_dec"])
    save_pretrained(get_model_class("SparseUnetVaeEncoder")(in_channels=6, **enc), stems["tex_enc"])
    save_pretrained(get_model_class("SparseUnetVaeDecoder")(out_channels=6, pred_subdiv=False, **dec),
                    stems["tex_dec"])
    return stems


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = _write_root(tmp_path_factory.mktemp("scvae_root"))
    stems = _write_tiny_scvaes(tmp_path_factory.mktemp("scvae_models"))
    return root, stems


def _eval_main(argv):
    sys.path.insert(0, str(REPO))
    try:
        import eval as ev
    finally:
        sys.path.pop(0)
    return ev.main(argv)


def _model_args(stems):
    return sum(([f"--{k}", str(v)] for k, v in stems.items()), [])


# ------------------------------------------------------------------ metric function, analytic cases
@pytest.mark.parametrize("view", [None, 0])
def test_oracle_gt_vs_gt_and_frames(data, view):
    """Decoder output replaced by the GT O-Voxel: voxel IoU/overlap 1, PSNR inf, MAE 0, F-score 1, Chamfer at the
    sampling floor. The GT dual grid's own mesh lies within a voxel of the GT mesh in both frames (the GT mesh is
    mapped exactly as the toolkit voxelised it; an asymmetric box would be far off with a wrong view mapping)."""
    root, _ = data
    for sha in (SPHERE, BOX):
        gt = S.load_gt(root, R, sha, view)
        ov = S.ovoxel_mesh(gt["shape_coords"], gt["shape_attrs"]["vertices"], gt["shape_attrs"]["intersected"], R)
        m = S.scvae_metrics(ov, gt["shape_coords"], gt["pbr"], ov, gt["shape_coords"], gt["pbr_coords"], gt["pbr"],
                            R, n_points=20000, thresholds=(0.03,))
        assert m["voxel_iou"] == 1.0 and m["pbr_overlap_gt"] == 1.0 and m["pbr_overlap_recon"] == 1.0
        assert math.isinf(m["base_color_psnr"])
        assert m["metallic_mae"] == m["roughness_mae"] == m["alpha_mae"] == 0.0
        assert m["fscore@0.03"] == 1.0
        assert m["chamfer_l1"] == pytest.approx(m["chamfer_l1_floor"], rel=0.05)
        assert m["normal_consistency"] > 0.97
        # the representation's ceiling: O-Voxel mesh vs GT mesh within half a voxel in Chamfer-L1
        c = S.G.evaluate_geometry(ov, gt["mesh"], n_points=20000, thresholds=(1.0 / R,), iou_resolution=None)
        assert c["chamfer_l1"] < 0.5 / R and c[f"fscore@{1.0 / R:g}"] > 0.99
        assert np.abs(gt["mesh"][0]).max() <= 0.5


def test_metrics_analytic_offsets(data):
    """Known errors give known scores: a sphere 10 % larger (Chamfer-L1 = ΔR), base colour off by 0.1 everywhere
    (PSNR = 20 dB), metallic off by 0.25, half of the voxels missing (IoU = overlap = 0.5)."""
    root, _ = data
    gt = S.load_gt(root, R, SPHERE)
    v, f = gt["mesh"]
    half = len(gt["shape_coords"]) // 2
    pred = gt["pbr"].copy()
    pred[:, 0:3] = np.where(pred[:, 0:3] <= 0.9, pred[:, 0:3] + 0.1, pred[:, 0:3] - 0.1)
    pred[:, 3] = np.where(pred[:, 3] <= 0.75, pred[:, 3] + 0.25, pred[:, 3] - 0.25)
    m = S.scvae_metrics((v * 1.1, f), gt["shape_coords"][:half], pred[:half], (v, f), gt["shape_coords"],
                        gt["pbr_coords"], gt["pbr"], R, n_points=20000, thresholds=(0.02, 0.08))
    r = np.linalg.norm(v, axis=1).max()  # the normalised sphere's radius (≈ 0.5)
    assert m["chamfer_l1"] == pytest.approx(0.1 * r, rel=0.05)
    assert m["fscore@0.02"] == 0.0 and m["fscore@0.08"] == 1.0
    assert m["base_color_psnr"] == pytest.approx(20.0, abs=1e-9)
    assert m["metallic_mae"] == pytest.approx(0.25) and m["roughness_mae"] == 0.0
    assert m["voxel_iou"] == pytest.approx(half / len(gt["shape_coords"]))
    assert m["pbr_overlap_gt"] == pytest.approx(half / len(gt["pbr_coords"])) and m["pbr_overlap_recon"] == 1.0


# ------------------------------------------------------------------ end to end through eval.py
@pytest.mark.parametrize("view", [None, 0])
def test_cli_random_scvaes_end_to_end(data, tmp_path, view):
    root, stems = data
    lst = tmp_path / "heldout.txt"
    lst.write_text(f"{SPHERE}\n# a comment\n{BOX}\n")
    out = tmp_path / "out"
    argv = ["scvae", "--data_root", str(root), "--resolution", str(R), *_model_args(stems), "--assets-list",
            str(lst), "--n-points", "5000", "--out", str(out), "--no-progress", "--fail-fast"]
    if view is not None:
        argv += ["--view", str(view)]
    assert _eval_main(argv) == 0
    data_json = json.loads((out / "results.json").read_text())
    assert data_json["protocol"] == ("scvae_reconstruction" if view is None else "scvae_reconstruction_view00")
    res = data_json["results"]
    assert sorted(res) == [SPHERE, BOX]
    for r in res.values():
        for k in ("chamfer_l1", "fscore@0.01", "normal_consistency", "voxel_iou", "base_color_psnr", "metallic_mae",
                  "roughness_mae", "alpha_mae", "pbr_overlap_gt", "gt_ovoxel_chamfer_l1"):
            assert math.isfinite(r[k]), (k, r[k])
        assert r["fscore@0.01"] < 1.0 and r["chamfer_l1"] > r["chamfer_l1_floor"]
        assert 0 < r["pbr_overlap_gt"] <= 1 and 0 <= r["voxel_iou"] < 1
        assert r["gt_ovoxel_chamfer_l1"] < 0.5 / R
    md = (out / "results.md").read_text()
    assert "**mean**" in md and "base_color_psnr" in md and "precision@" not in md
    assert (out / "scores.png").is_file()
    # resumable: a second run recomputes nothing
    before = (out / "results.json").read_text()
    assert _eval_main(argv) == 0
    assert json.loads((out / "results.json").read_text())["results"] == json.loads(before)["results"]


# ------------------------------------------------------------------ clear errors
def test_cli_errors_name_the_missing_thing(data, tmp_path, capsys):
    root, stems = data
    base = ["scvae", "--resolution", str(R), "--out", str(tmp_path / "o"), "--no-progress"]
    bad = dict(stems, tex_dec=tmp_path / "nowhere" / "tex_dec")
    with pytest.raises(SystemExit):
        _eval_main(base + ["--data_root", str(root), *_model_args(bad)])
    assert str(tmp_path / "nowhere" / "tex_dec") in capsys.readouterr().err
    missing_json = dict(stems, shape_enc=tmp_path / "shape_enc")  # folder exists, files do not
    with pytest.raises(SystemExit):
        _eval_main(base + ["--data_root", str(root), *_model_args(missing_json)])
    assert "shape_enc.json does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _eval_main(base + ["--data_root", str(tmp_path / "no_root"), *_model_args(stems)])
    assert str(tmp_path / "no_root") in capsys.readouterr().err
    with pytest.raises(SystemExit):  # wrong resolution: the folder named in the message
        _eval_main(base[:1] + ["--resolution", "64"] + base[3:] + ["--data_root", str(root), *_model_args(stems)])
    assert f"dual_grid_64" in capsys.readouterr().err
    # an asset of the list without files: recorded as an error naming the file, exit code 1
    lst = tmp_path / "l.txt"
    lst.write_text("c" * 64 + "\n")
    assert _eval_main(base + ["--data_root", str(root), *_model_args(stems), "--assets-list", str(lst)]) == 1
    err = json.loads((tmp_path / "o" / "results.json").read_text())["results"]["c" * 64]["error"]
    assert f"dual_grid_{R}/{'c' * 64}.vxz is missing" in err
