"""Data toolkit (data_toolkit/, pixal3d.data): end to end on two small assets at 32³ with 2 views, resumability,
failure log, view alignment, plus unit checks of the camera sampling and metadata helpers."""
import csv
import importlib.util
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import shared_data_path

from pixal3d.data import cameras as C
from pixal3d.data.metadata import read_csv, scan_assets

HAVE_BPY = importlib.util.find_spec("bpy") is not None
needs_bpy = pytest.mark.skipif(not HAVE_BPY, reason="bpy (Blender as a Python module) is not installed; "
                               "`pip install bpy==4.5.*` for the render_cond step")
RES = 32
ASSETS = ("kenney_flag", "quaternius_chair")


def _run(step, argv):
    import importlib
    return importlib.import_module(f"data_toolkit.{step}").main(argv)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """Runs steps 1-5 once; returns (root, {step: first-run summary}, {step: argv})."""
    src = tmp_path_factory.mktemp("assets")
    for name in ASSETS:
        folder = shared_data_path(f"assets3d/{name}")
        shutil.copytree(folder, src / name)
    (src / "broken").mkdir()
    (src / "broken" / "broken.glb").write_bytes(b"glTF\x02\x00\x00\x00not really a binary gltf" * 3)
    (src / "broken" / "SOURCE.txt").write_text("asset: broken\nlicense: CC0-1.0 (test)\n")
    root = tmp_path_factory.mktemp("dataset")
    vae = tmp_path_factory.mktemp("vae")
    _write_tiny_vaes(vae)
    _run("build_metadata", ["--input", str(src), "--root", str(root)])
    c = ["--root", str(root), "--no_progress"]
    argv = {
        "dump_mesh": c, "dump_pbr": c, "asset_stats": c,
        "render_cond": c + ["--num_views", "2", "--resolution", "64", "--samples", "2", "--no_denoise"],
        "dual_grid": c + ["--resolution", str(RES)], "voxelize_pbr": c + ["--resolution", str(RES)],
        "dual_grid_view": c + ["--resolution", str(RES)], "voxelize_pbr_view": c + ["--resolution", str(RES)],
        "encode_shape_latent": c + ["--resolution", str(RES), "--view", "--enc_pretrained", str(vae / "shape")],
        "encode_pbr_latent": c + ["--resolution", str(RES), "--view", "--enc_pretrained", str(vae / "tex")],
        "encode_ss_latent": c + ["--resolution", str(RES // 4), "--view", "--enc_pretrained", str(vae / "ss"),
                                 "--shape_latent_dir", str(root / "shape_latents" / f"shape_{RES}_view")],
    }
    if not HAVE_BPY:
        argv = {k: v for k, v in argv.items() if k in ("dump_mesh", "dump_pbr", "asset_stats", "dual_grid",
                                                        "voxelize_pbr")}
    summaries = {step: _run(step, a) for step, a in argv.items()}
    _run("build_metadata", ["--root", str(root), "--finalize"])
    return root, summaries, argv


def _write_tiny_vaes(folder):
    import torch
    from pixal3d.models import get_model_class
    from pixal3d.models.pretrained import save_pretrained
    torch.manual_seed(0)
    blocks = dict(model_channels=[8, 16, 32], latent_channels=4, num_blocks=[1, 1, 1],
                  block_type=["SparseConvNeXtBlock3d"] * 3, down_block_type=["SparseResBlockS2C3d"] * 2,
                  block_args=[{}] * 3)
    save_pretrained(get_model_class("FlexiDualGridVaeEncoder")(**blocks), folder / "shape")
    save_pretrained(get_model_class("SparseUnetVaeEncoder")(in_channels=6, **blocks), folder / "tex")
    save_pretrained(get_model_class("SparseStructureEncoder")(in_channels=1, latent_channels=8, num_res_blocks=1,
                                                              channels=[8, 8]), folder / "ss")


def _good_shas(root):
    _, rows = read_csv(root / "metadata.csv")
    return sorted(s for s, r in rows.items() if r["name"] in ASSETS), rows


# ------------------------------------------------------------------ end to end
def test_metadata_scan_and_licenses(pipeline):
    root, _, _ = pipeline
    good, rows = _good_shas(root)
    assert len(rows) == 3 and len(good) == 2
    for s in good:
        assert rows[s]["license"].startswith("CC0-1.0")
        assert len(s) == 64 and Path(rows[s]["local_path"]).is_file()
    broken = next(r for r in rows.values() if r["name"] == "broken")
    assert broken["license"] == "CC0-1.0 (test)"


def test_steps_counts_and_metadata(pipeline):
    root, summaries, _ = pipeline
    good, rows = _good_shas(root)
    for step in ("dump_mesh", "dump_pbr"):
        s = summaries[step]
        assert (s.done, s.failed, s.skipped) == (2, 1, 0), step
    for step, s in summaries.items():
        if step not in ("dump_mesh", "dump_pbr"):
            assert (s.done, s.failed) == (2, 0), step
    for s in good:
        assert rows[s]["mesh_dumped"] == "True" and rows[s]["pbr_dumped"] == "True"
        assert int(rows[s]["num_faces"]) > 0 and int(rows[s]["num_vertices"]) > 0
    _, dg = read_csv(root / f"dual_grid_{RES}" / "metadata.csv")
    _, pv = read_csv(root / f"pbr_voxels_{RES}" / "metadata.csv")
    assert sorted(dg) == good and sorted(pv) == good
    from pixal3d.ovoxel.io import read_vxz
    for s in good:
        coords, attrs = read_vxz(root / f"dual_grid_{RES}" / f"{s}.vxz")
        assert int(dg[s]["dual_grid_size"]) == len(coords) > 0
        assert coords.max() < RES and attrs["vertices"].dtype == np.uint8 and attrs["intersected"].max() <= 7
        pc, pa = read_vxz(root / f"pbr_voxels_{RES}" / f"{s}.vxz")
        assert list(pa) == ["base_color", "metallic", "roughness", "alpha"]
        # geometry and material voxelisations share one voxel set (TRELLIS2_SPEC 3.5)
        assert set(map(tuple, coords)) == set(map(tuple, pc))


def test_corrupt_asset_in_failure_log(pipeline):
    root, _, _ = pipeline
    _, rows = read_csv(root / "metadata.csv")
    broken = next(s for s, r in rows.items() if r["name"] == "broken")
    with open(root / "logs" / "dump_mesh_failures_rank0.csv", newline="") as f:
        fails = list(csv.DictReader(f))
    assert [r["sha256"] for r in fails] == [broken]
    assert fails[0]["step"] == "dump_mesh" and "broken.glb" in fails[0]["local_path"] and fails[0]["error"]
    assert not (root / "mesh_dumps" / f"{broken}.pickle").exists()


def test_resumable_second_run_skips(pipeline):
    root, first, argv = pipeline
    for step, a in argv.items():
        s = _run(step, a)
        assert s.done == 0 and s.skipped == first[step].done, step
        # the corrupt asset is retried (it is not finished) and fails again
        assert s.failed == first[step].failed, step


def test_sharding_partitions(pipeline):
    root, _, argv = pipeline
    a = _run("asset_stats", argv["asset_stats"] + ["--rank", "0", "--world_size", "2", "--force"])
    b = _run("asset_stats", argv["asset_stats"] + ["--rank", "1", "--world_size", "2", "--force"])
    assert a.total + b.total == 2 and a.done == b.done == 1


# ------------------------------------------------------------------ renders and view alignment
@needs_bpy
def test_render_cond_transforms(pipeline):
    root, _, _ = pipeline
    good, _ = _good_shas(root)
    from PIL import Image
    for s in good:
        meta = json.loads((root / "renders_cond" / s / "transforms.json").read_text())
        assert meta["aabb"] == [[-0.5] * 3, [0.5] * 3] and meta["scale"] > 0 and len(meta["offset"]) == 3
        assert len(meta["frames"]) == 2
        for fr in meta["frames"]:
            m = np.asarray(fr["transform_matrix"])
            r = np.linalg.norm(m[:3, 3])
            assert math.isclose(r, fr["radius"], rel_tol=1e-9)
            assert 0 <= fr["retries"] <= 10
            # each retry scales the radius by 1.1 or 0.9, FOV fixed
            ratios = [1.1 ** a * 0.9 ** (fr["retries"] - a) for a in range(fr["retries"] + 1)]
            assert any(math.isclose(fr["radius"], fr["original_radius"] * q, rel_tol=1e-9) for q in ratios)
            assert math.radians(10) - 1e-9 <= fr["camera_angle_x"] <= math.radians(70) + 1e-9
            # camera looks at the origin: its -Z axis is -position/r
            np.testing.assert_allclose(-m[:3, 2], -m[:3, 3] / r, atol=1e-9)
            im = np.asarray(Image.open(root / "renders_cond" / s / fr["file_path"]))
            assert im.shape == (64, 64, 4) and (im[..., 3] > 0).any() and (im[..., 3] == 0).any()


@needs_bpy
def test_view_alignment_camera_and_projection(pipeline):
    """T_final puts the camera at (0, 0, r); view-frame vertices / total_scale project onto the rendered silhouette."""
    root, _, _ = pipeline
    good, _ = _good_shas(root)
    from PIL import Image
    from pixal3d.conditioning.camera import view_alignment_transform
    from pixal3d.data.dumps import load_dump
    from pixal3d.data.view_align import mesh_vertices_view
    for s in good:
        meta = json.loads((root / "renders_cond" / s / "transforms.json").read_text())
        dump = load_dump(root / "mesh_dumps" / f"{s}.pickle")
        for v, fr in enumerate(meta["frames"]):
            c2w = np.asarray(fr["transform_matrix"])
            r = np.linalg.norm(c2w[:3, 3])
            t = view_alignment_transform(c2w)
            np.testing.assert_allclose(t[:3, :3] @ c2w[:3, 3] + t[:3, 3], [0, 0, r], atol=1e-9)
            scale = json.loads((root / f"dual_grid_view_{RES}" / s / f"view{v:02d}_scale.json").read_text())
            assert set(scale) >= {"total_scale", "sphere_radius", "box_scale"} and scale["view_idx"] == v
            verts, _, info = mesh_vertices_view(dump, c2w)
            assert math.isclose(info["total_scale"], scale["total_scale"], rel_tol=1e-12)
            assert np.abs(verts).max() <= 0.5
            p = verts.astype(np.float64) / scale["total_scale"]
            f_px = 64 / (2 * math.tan(fr["camera_angle_x"] / 2))
            depth = r - p[:, 2]
            u = 32 + f_px * p[:, 0] / depth
            w = 32 - f_px * p[:, 1] / depth
            alpha = np.asarray(Image.open(root / "renders_cond" / s / fr["file_path"]))[..., 3]
            ys, xs = np.nonzero(alpha > 0)
            np.testing.assert_allclose([u.min(), u.max(), w.min(), w.max()],
                                       [xs.min(), xs.max() + 1, ys.min(), ys.max() + 1], atol=1.5)


@needs_bpy
def test_view_voxels_and_latents(pipeline):
    root, _, _ = pipeline
    good, _ = _good_shas(root)
    from pixal3d.ovoxel.io import read_vxz
    _, pm = read_csv(root / f"pbr_voxels_view_fix_{RES}" / "metadata.csv")
    for s in good:
        for v in range(2):
            gc, _ = read_vxz(root / f"dual_grid_view_{RES}" / s / f"view{v:02d}.vxz")
            pc, _ = read_vxz(root / f"pbr_voxels_view_fix_{RES}" / s / f"view{v:02d}.vxz")
            assert set(map(tuple, gc)) == set(map(tuple, pc))
            assert int(pm[s][f"num_pbr_voxels_view_fix{v:02d}_{RES}"]) == len(pc)
            sh = np.load(root / "shape_latents" / f"shape_{RES}_view" / s / f"view{v:02d}.npz")
            tx = np.load(root / "pbr_latents" / f"tex_{RES}_view" / s / f"view{v:02d}.npz")
            assert sh["coords"].dtype == np.uint8 and sh["feats"].dtype == np.float32 and sh["feats"].shape[1] == 4
            np.testing.assert_array_equal(sh["coords"], tx["coords"])
            order = np.lexsort(sh["coords"].T[::-1])
            np.testing.assert_array_equal(order, np.arange(len(order)))
            z = np.load(root / "ss_latents" / f"ss_{RES // 4}_view" / s / f"view{v:02d}.npz")["z"]
            assert z.shape == (8, RES // 8, RES // 8, RES // 8)
            for d in (f"shape_latents/shape_{RES}_view", f"ss_latents/ss_{RES // 4}_view"):
                js = json.loads((root / d / s / f"view{v:02d}_scale.json").read_text())
                assert js["view_idx"] == v and js["total_scale"] > 0


@needs_bpy
def test_view_datasets_read_outputs(pipeline):
    root, _, _ = pipeline
    from pixal3d.datasets import get_dataset_class
    dd = {"t": {"base": str(root), "render_cond": str(root / "renders_cond"),
                "shape_latent": str(root / "shape_latents" / f"shape_{RES}_view"),
                "pbr_latent": str(root / "pbr_latents" / f"tex_{RES}_view")}}
    ds = get_dataset_class("ViewImageConditionedSLatPbrView")(json.dumps(dd), resolution=RES * 4,
                                                             min_aesthetic_score=None, image_size=32, num_views=2)
    assert len(ds) == 2
    item = ds[0]
    assert item["cond"].shape == (3, 32, 32) and item["mesh_scale"] > 0 and item["camera_distance"] > 1


# ------------------------------------------------------------------ units
def test_hammersley_and_fov():
    rng = np.random.default_rng(0)
    views = C.sample_views(16, rng)
    yaws = [v["yaw"] % (2 * math.pi) for v in views]
    assert len(set(np.round(yaws, 6))) == 16
    for v in views:
        assert -math.pi / 2 <= v["pitch"] <= math.pi / 2
        assert math.radians(10) <= v["fov"] <= math.radians(70) + 1e-12
        # the unit cube's bounding sphere exactly fills the FOV
        assert math.isclose(math.sin(v["fov"] / 2) * v["radius"], math.sqrt(3) / 2, rel_tol=1e-12)
        m = np.asarray(v["transform_matrix"])
        assert math.isclose(np.linalg.det(m[:3, :3]), 1.0, rel_tol=1e-9)
        np.testing.assert_allclose(m[:3, 3], C.camera_position(v["yaw"], v["pitch"], v["radius"]))
    # offset 0: pitch of view n follows u = n/N remapped
    yaw, pitch = C.sphere_hammersley(1, 4, (0.0, 0.0))
    assert math.isclose(yaw, math.pi) and math.isclose(pitch, math.acos(1 - 2 * 0.5) - math.pi / 2)
    assert C.radical_inverse_2(3) == 0.75
    with pytest.raises(ValueError):
        C.sphere_hammersley(4, 4, (0, 0))


def test_retry_rule_and_border_distance():
    a = np.zeros((10, 10))
    assert C.border_distance(a) is None
    a[3:5, 4:8] = 1
    assert C.border_distance(a) == 2
    a[0, 5] = 1
    assert C.border_distance(a) == 0
    assert C.retry_radius(2.0, 0, 13) == pytest.approx((2.2, False))
    assert C.retry_radius(2.0, 20, 13) == pytest.approx((1.8, False))
    assert C.retry_radius(2.0, None, 13) == pytest.approx((1.8, False))
    assert C.retry_radius(2.0, 5, 13) == (2.0, True)


def test_point_lights_budget():
    rng = np.random.default_rng(1)
    lights, world = C.sample_point_lights(rng, np.array([0.0, -1.0, 0.0]))
    assert 1 <= len(lights) <= 3 and 0 <= world <= 1.5
    for lt in lights:
        d = np.linalg.norm(lt["location"])
        assert 10 <= d <= 100 and lt["energy"] > 0 and 0.1 <= lt["radius"] <= 0.1 * d


def test_dump_is_z_up_and_normalised():
    import trimesh
    from pixal3d.data.dumps import dump_vertices_faces, pbr_dump_from_asset
    path = shared_data_path("assets3d/sketchfab_low_poly_tree/low-poly-tree.glb")
    raw = trimesh.load(str(path), force="scene")
    ext_raw = raw.extents                       # glTF: Y up
    d = pbr_dump_from_asset(path)
    v, f = dump_vertices_faces(d)
    ext = v.max(0) - v.min(0)
    assert np.argmax(ext_raw) == 1 and np.argmax(ext) == 2   # the tree is tall: Y (glTF) -> Z (Blender)
    assert math.isclose(ext.max(), 0.99999, rel_tol=1e-5)
    np.testing.assert_allclose((v.max(0) + v.min(0)) / 2, 0, atol=1e-6)
    o = d["objects"][0]
    assert o["uvs"].shape == (len(o["faces"]), 3, 2) and o["normals"].shape == (len(o["faces"]), 3, 3)
    m = d["materials"][0]
    assert m["baseColorTexture"]["image"][:8] == b"\x89PNG\r\n\x1a\n"
    assert m["metallicTexture"]["channel"] == 2 and m["roughnessTexture"]["channel"] == 1


def test_scan_assets_manifest_license(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "m.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n")
    (tmp_path / "a" / "tex.png").write_bytes(b"x")
    (tmp_path / "MANIFEST.tsv").write_text("kind\trel_path\tlicense\n3d\ta/m.obj\tCC-BY-4.0 (x)\n")
    (rec,) = scan_assets(tmp_path)
    assert rec["license"] == "CC-BY-4.0 (x)" and rec["file_type"] == "obj" and rec["name"] == "a"
    import hashlib
    assert rec["sha256"] == hashlib.sha256((tmp_path / "a" / "m.obj").read_bytes()).hexdigest()
