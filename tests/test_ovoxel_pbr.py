"""PBR voxelisation (TRELLIS2_SPEC §3.5): reference fixtures, analytic cases, material conventions, errors."""
import json
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image

from conftest import SHARED_DATA, fixture_path, shared_data_path
from pixal3d.ovoxel.io._morton import morton_encode
from pixal3d.ovoxel.mesh import normalize_scene
from pixal3d.ovoxel.pbr_textures import build_mipmaps, sample_texture, sample_texture_mipmap
from pixal3d.ovoxel.volumetric_attr import textured_mesh_to_volumetric_attr, voxelize_triangle_pairs

BOX = [[-0.5] * 3, [0.5] * 3]
KEYS = ("base_color", "metallic", "roughness", "emissive", "alpha", "normal")
PBR_META = json.loads((Path(__file__).parent / "fixtures" / "ovoxel_pbr.json").read_text())
_SCENES = {}


def _scene(rel):
    """The fixture's loader: trimesh.load(force='scene') + §3.1 normalisation (cached per file)."""
    if rel not in _SCENES:
        _SCENES[rel] = normalize_scene(trimesh.load(str(shared_data_path("assets3d/" + rel)), force="scene"))
    return _SCENES[rel]


@pytest.mark.parametrize("res", [64, 256])
@pytest.mark.parametrize("asset", sorted(PBR_META["assets"]))
def test_matches_reference_fixture(asset, res):
    from safetensors.numpy import load_file
    ref = load_file(str(fixture_path(f"ovoxel_pbr_{asset}")))
    coords, attrs = textured_mesh_to_volumetric_attr(_scene(PBR_META["assets"][asset]["file"]), grid_size=res,
                                                     aabb=BOX)
    ref_coords = ref[f"out.r{res}.coords"].astype(np.int64)
    ours, theirs = morton_encode(coords), morton_encode(ref_coords)
    o1, o2 = np.argsort(ours), np.argsort(theirs)
    assert len(ours) == len(theirs) and np.array_equal(ours[o1], theirs[o2]), "voxel sets differ"
    for k in KEYS:
        d = np.abs(attrs[k][o1].astype(np.int64) - ref[f"out.r{res}.{k}"][o2].astype(np.int64))
        assert d.mean() <= 1.0 and np.percentile(d, 99) <= 4, (k, d.mean(), np.percentile(d, 99))


def _quad_scene(material=None, uv=None, z=0.03):
    """Two triangles covering [-0.4, 0.4]² at height z, UV u = x + 0.5, v = y + 0.5."""
    v = np.array([[-0.4, -0.4, z], [0.4, -0.4, z], [0.4, 0.4, z], [-0.4, 0.4, z]])
    f = np.array([[0, 1, 2], [0, 2, 3]])
    if uv is None:
        uv = v[:, :2] + 0.5
    visual = trimesh.visual.TextureVisuals(uv=uv, material=material) if material is not None else None
    return trimesh.Trimesh(v, f, visual=visual, process=False)


def test_plane_voxel_set_is_the_edge_crossing_layer():
    # Grid lines parallel to z at (m+1)/8 - 0.5 pierce the plane for 0.1 < (m+1)/8 <= 0.9, i.e. m = 0..6; each gives
    # the 4 voxels m, m+1 in x and y. Lines parallel to x or y never cross a z-plane.
    tri = np.array([[[0.1, 0.1, 0.53], [0.9, 0.1, 0.53], [0.9, 0.9, 0.53]],
                    [[0.1, 0.1, 0.53], [0.9, 0.9, 0.53], [0.1, 0.9, 0.53]]], np.float32)
    tid, c = voxelize_triangle_pairs(tri, np.full(3, 1 / 8, np.float32), np.array([8, 8, 8]))
    got = {tuple(r) for r in c.tolist()}
    assert got == {(i, j, 4) for i in range(8) for j in range(8)}
    assert len(c) == len(set(zip(tid.tolist(), map(tuple, c.tolist()))))  # no duplicate pair


def test_small_triangle_inside_a_voxel_creates_nothing():
    tri = np.array([[[0.51, 0.51, 0.51], [0.55, 0.51, 0.52], [0.52, 0.56, 0.53]]], np.float32)
    tid, c = voxelize_triangle_pairs(tri, np.full(3, 1 / 8, np.float32), np.array([8, 8, 8]))
    assert len(c) == 0


def _bilinear_repeat(tex, u, v):
    """float64 reference bilinear sampling with repeat wrap, x = u·W, y = (1 − v)·H."""
    h, w = tex.shape[:2]
    x, y = u * w - 0.5, (1 - v) * h - 0.5
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    t = tex.astype(np.float64)
    g = lambda yy, xx: t[yy % h, xx % w]  # noqa: E731
    return ((1 - fx) * (1 - fy) * g(y0, x0) + fx * (1 - fy) * g(y0, x0 + 1) + (1 - fx) * fy * g(y0 + 1, x0)
            + fx * fy * g(y0 + 1, x0 + 1)) / 255


def test_textured_plane_analytic():
    # A 4x4 texture seen at 8 voxels across the UV unit square: mip level log2(H·vs/|dP/du|) = log2(4/8) < 0, so the
    # base level is read bilinearly at the voxel centre's projection; every pair of the voxel agrees on that UV.
    rng = np.random.default_rng(0)
    tex = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    mat = trimesh.visual.material.PBRMaterial(baseColorTexture=Image.fromarray(tex), metallicFactor=0.25,
                                              roughnessFactor=0.75, baseColorFactor=[255, 128, 255, 255])
    coords, attrs = textured_mesh_to_volumetric_attr(_quad_scene(mat), grid_size=8, aabb=BOX)
    centre = (coords + 0.5) / 8 - 0.5
    expect = _bilinear_repeat(tex, centre[:, 0] + 0.5, centre[:, 1] + 0.5) * [1, 128 / 255, 1]
    assert np.abs(attrs["base_color"].astype(int) - np.floor(expect * 255 + 1e-9)).max() <= 1
    assert np.all(attrs["metallic"] == int(0.25 * 255)) and np.all(attrs["roughness"] == int(0.75 * 255))
    assert np.all(attrs["alpha"] == 255) and np.all(attrs["emissive"] == 0)
    n = attrs["normal"].astype(float) / 255 * 2 - 1  # +z face normal
    assert np.allclose(n, [0, 0, 1], atol=0.01)


def test_metallic_roughness_channels_and_alpha_modes():
    mr = np.zeros((2, 2, 3), np.uint8)
    mr[..., 0], mr[..., 1], mr[..., 2] = 10, 100, 200  # glTF: G = roughness, B = metallic
    rgba = np.full((2, 2, 4), 128, np.uint8)
    out = {}
    for mode, cutoff in (("OPAQUE", None), ("BLEND", None), ("MASK", 0.6), ("MASK", 0.4)):
        mat = trimesh.visual.material.PBRMaterial(baseColorTexture=Image.fromarray(rgba, "RGBA"),
                                                  metallicRoughnessTexture=Image.fromarray(mr), metallicFactor=1.0,
                                                  roughnessFactor=0.5, alphaMode=mode, alphaCutoff=cutoff)
        _, a = textured_mesh_to_volumetric_attr(_quad_scene(mat), grid_size=8, aabb=BOX)
        out[(mode, cutoff)] = a
    a = out[("OPAQUE", None)]
    assert np.all(a["metallic"] == 200) and np.all(a["roughness"] == 50)  # 100 · 0.5
    assert np.all(a["alpha"] == 255)
    assert np.all(out[("BLEND", None)]["alpha"] == 128)
    assert np.all(out[("MASK", 0.6)]["alpha"] == 0)  # 128/255 < 0.6
    assert np.all(out[("MASK", 0.4)]["alpha"] == 255)


def test_normal_map_rotates_by_tbn():
    # A tangent-space normal (1, 0, 0)·0.5 + 0.5 → the tangent direction, which is +x for u = x.
    nm = np.zeros((2, 2, 3), np.uint8)
    nm[..., 0], nm[..., 1], nm[..., 2] = 255, 128, 128
    mat = trimesh.visual.material.PBRMaterial(baseColorFactor=[255, 255, 255, 255], normalTexture=Image.fromarray(nm))
    _, a = textured_mesh_to_volumetric_attr(_quad_scene(mat), grid_size=8, aabb=BOX)
    n = a["normal"].astype(float) / 255 * 2 - 1
    assert np.allclose(n.mean(0), [1, 0, 0], atol=0.02)


def test_default_material_and_simple_material():
    m = _quad_scene()  # no texture visuals
    with pytest.warns(UserWarning, match="default material"):
        _, a = textured_mesh_to_volumetric_attr(m, grid_size=8, aabb=BOX)
    assert np.all(a["base_color"] == 204) and np.all(a["metallic"] == 0) and np.all(a["roughness"] == 127)
    assert np.all(a["alpha"] == 255)
    simple = trimesh.visual.material.SimpleMaterial(diffuse=[255, 0, 0, 255], glossiness=0.0)
    _, a = textured_mesh_to_volumetric_attr(_quad_scene(simple), grid_size=8, aabb=BOX)
    assert np.all(a["base_color"] == [255, 0, 0]) and np.all(a["metallic"] == 0)
    assert np.all(a["roughness"] == 255)  # (2 / (0 + 2))^(1/4) = 1


def test_mipmaps_and_level_selection():
    tex = np.arange(16, dtype=np.uint8).reshape(4, 4, 1) * 16
    mips = build_mipmaps(tex)
    assert [m.shape[0] for m in mips] == [2, 1]
    assert mips[0][0, 0, 0] == (0 + 16 + 64 + 80) // 4 and mips[1][0, 0, 0] == int(mips[0].astype(int).sum() // 4)
    u = np.array([0.3, 0.7]), np.array([0.2, 0.9])
    base = sample_texture(tex, *u)
    # level = log2(mip_length·H): 1/8·4 → negative → base; 1/2·4 → 1 exactly; 4·4 → ≥ number of mips → coarsest
    assert np.allclose(sample_texture_mipmap(tex, mips, *u, np.full(2, 1 / 8)), base)
    assert np.allclose(sample_texture_mipmap(tex, mips, *u, np.full(2, 0.5)), sample_texture(mips[0], *u))
    assert np.allclose(sample_texture_mipmap(tex, mips, *u, np.full(2, 4.0)), mips[1][0, 0, 0] / 255)
    half = sample_texture_mipmap(tex, mips, *u, np.full(2, 2 ** 0.5 / 4))  # level 0.5: blend of 0 and 1
    assert np.allclose(half, 0.5 * base + 0.5 * sample_texture(mips[0], *u), atol=1e-6)
    with pytest.raises(ValueError, match="power-of-two"):
        build_mipmaps(np.zeros((3, 3, 1), np.uint8))


def test_wrap_modes():
    tex = np.arange(4, dtype=np.uint8).reshape(1, 4, 1) * 50
    u = np.array([1.125, -0.125])  # texel centres x = 4.5 → 0 (repeat), 3 (clamp), 3 (mirror)
    v = np.array([0.5, 0.5])
    assert np.allclose(sample_texture(tex, u, v, 0, 0)[:, 0] * 255, [0, 150])
    assert np.allclose(sample_texture(tex, u, v, 0, 1)[:, 0] * 255, [150, 0])
    assert np.allclose(sample_texture(tex, u, v, 0, 2)[:, 0] * 255, [150, 0])


def test_errors():
    with pytest.raises(ValueError, match="grid_size"):
        textured_mesh_to_volumetric_attr(_quad_scene(), aabb=BOX)
    bad = _quad_scene()
    bad.vertices[0, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        textured_mesh_to_volumetric_attr(bad, grid_size=8, aabb=BOX)
    with pytest.raises(ValueError, match="no triangles"):
        textured_mesh_to_volumetric_attr(trimesh.Scene(), grid_size=8, aabb=BOX)
    with pytest.raises(TypeError):
        textured_mesh_to_volumetric_attr(42, grid_size=8)
    with pytest.raises(ValueError, match="aabb"):
        textured_mesh_to_volumetric_attr(_quad_scene(), grid_size=8, aabb=[[0, 0, 0], [0, 1, 1]])


@pytest.mark.parametrize("rel", ["kenney_flag/flag.glb", "quaternius_chair/Chair_2.glb", "kenney_alien/alien.glb",
                                 "sketchfab_low_poly_tree/low-poly-tree.glb"])
def test_vendored_assets_256(rel):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        coords, attrs = textured_mesh_to_volumetric_attr(_scene(rel), grid_size=256, aabb=BOX)
    assert len(coords) > 1000 and coords.min() >= 0 and coords.max() < 256
    assert len(np.unique(morton_encode(coords))) == len(coords)
    for k in KEYS:
        assert attrs[k].dtype == np.uint8 and len(attrs[k]) == len(coords)


@pytest.mark.slow
def test_all_shared_assets_256():
    """Every asset of ../shared/data/assets3d voxelises at 256³; prints the per-asset time."""
    root = SHARED_DATA / "assets3d"
    if not root.is_dir():
        pytest.skip("../shared/data/assets3d is absent")
    failures = []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted([*d.glob("*.glb"), *d.glob("*.gltf"), *d.glob("*.obj")])
        if not files:
            continue
        t = time.time()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                scene = normalize_scene(trimesh.load(str(files[0]), force="scene"))
                coords, _ = textured_mesh_to_volumetric_attr(scene, grid_size=256, aabb=BOX)
            print(f"{d.name}: {len(coords)} voxels, {time.time() - t:.2f} s")
        except Exception as exc:  # collected so one report lists every failing asset
            failures.append(f"{d.name}: {type(exc).__name__}: {exc}")
    assert not failures, "\n".join(failures)
