"""GLB export (TRELLIS2_SPEC §3.7), mesh helpers (§3.1) and clean-up; every GLB goes through the Khronos validator."""

import numpy as np
import pytest
import trimesh

from gltf_check import validate_glb as _validate

from pixal3d.ovoxel.mesh import MeshWithVoxel, load_mesh, normalize_vertices, validate_mesh
from pixal3d.ovoxel.mesh_cleanup import clean_faces, decimate, fill_holes, remove_small_components
from pixal3d.ovoxel.postprocess import export_glb, partition_faces, to_glb, unwrap_uv

LAYOUT = {"base_color": slice(0, 3), "metallic": slice(3, 4), "roughness": slice(4, 5), "alpha": slice(5, 6)}
BOX = np.array([[-0.5] * 3, [0.5] * 3])
R = 32


def _linear_volume():
    """All voxels whose centre is within 0.45 of the origin; base colour = position + 0.5 (linear, so trilinear
    sampling reproduces it exactly wherever the 8 neighbours are active), metallic 0.3, roughness 0.6, alpha 1."""
    g = np.stack(np.meshgrid(*[np.arange(R)] * 3, indexing="ij"), -1).reshape(-1, 3)
    centre = (g + 0.5) / R - 0.5
    keep = np.linalg.norm(centre, axis=1) < 0.45
    g, centre = g[keep], centre[keep]
    feats = np.concatenate([centre + 0.5, np.full((len(g), 1), 0.3), np.full((len(g), 1), 0.6),
                            np.ones((len(g), 1))], axis=1).astype(np.float32)
    return g, feats


@pytest.fixture(scope="module", params=[None, 300], ids=["one_chart_pass", "pieces_of_300"])
def baked(tmp_path_factory, request):
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=0.35)
    coords, feats = _linear_volume()
    out = to_glb(sphere.vertices, sphere.faces[:, ::-1], feats, coords, LAYOUT, BOX, grid_size=R,
                 decimation_target=100_000, texture_size=256, uv_piece_faces=request.param)
    path = export_glb(out, tmp_path_factory.mktemp("glb") / "sphere.glb")
    return out, path


def _texel(img: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Nearest texel of a PIL-ordered image (row 0 = top) at trimesh UVs (v up)."""
    s = img.shape[0]
    x = np.clip((uv[:, 0] * s).astype(int), 0, s - 1)
    y = np.clip(((1 - uv[:, 1]) * s).astype(int), 0, s - 1)
    return img[y, x].astype(np.float64) / 255


def test_baked_textures_reproduce_the_volume(baked):
    _, path = baked
    _validate(path)
    g = list(trimesh.load(str(path), force="scene").geometry.values())[0]
    mat = g.visual.material
    assert mat.alphaMode in (None, "OPAQUE") and mat.doubleSided
    v_zup = g.vertices @ np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0]], float)  # (x, y, z) = (x', −z', y')
    assert np.allclose(np.linalg.norm(v_zup, axis=1), 0.35, atol=0.02)
    tri = v_zup[g.faces]
    centroid = tri.mean(1)
    uv = g.visual.uv[g.faces].mean(1)
    bc = np.asarray(mat.baseColorTexture.convert("RGBA"))
    got = _texel(bc, uv)
    err = np.abs(got[:, :3] - (centroid + 0.5))
    assert np.median(err) < 2.5 / 255 and np.percentile(err, 95) < 6 / 255, (np.median(err), err.max())
    assert np.allclose(got[:, 3], 1.0)
    mr = _texel(np.asarray(mat.metallicRoughnessTexture.convert("RGB")), uv)
    assert np.allclose(mr[:, 0], 0) and np.allclose(mr[:, 1], 0.6, atol=1.5 / 255)
    assert np.allclose(mr[:, 2], 0.3, atol=1.5 / 255)


def test_winding_is_outward_and_normals_follow(baked):
    out, _ = baked
    welded = trimesh.Trimesh(out.vertices, out.faces, process=True)  # UV seams duplicate vertices; weld them
    assert welded.is_watertight and welded.volume > 0  # the input faces were reversed on purpose
    n = out.vertex_normals
    assert np.all(np.einsum("ij,ij->i", n, out.vertices) > 0)


@pytest.mark.parametrize("mode", ["MASK", "BLEND"])
def test_alpha_modes(tmp_path, mode):
    sphere = trimesh.creation.icosphere(subdivisions=1, radius=0.3)
    coords, feats = _linear_volume()
    out = to_glb(sphere.vertices, sphere.faces, feats, coords, LAYOUT, BOX, grid_size=R, texture_size=64,
                 alpha_mode=mode)
    path = export_glb(out, tmp_path / "a.glb")
    _validate(path)
    g = list(trimesh.load(str(path), force="scene").geometry.values())[0]
    assert g.visual.material.alphaMode == mode


def test_decimation_and_real_asset(tmp_path):
    from conftest import shared_data_path
    from pixal3d.ovoxel.mesh import normalize_scene
    from pixal3d.ovoxel.volumetric_attr import textured_mesh_to_volumetric_attr
    scene = normalize_scene(load_mesh(shared_data_path("assets3d/sketchfab_low_poly_tree/low-poly-tree.glb")))
    coords, a = textured_mesh_to_volumetric_attr(scene, grid_size=64, aabb=BOX)
    feats = np.concatenate([a["base_color"], a["metallic"], a["roughness"], a["alpha"]], 1) / 255.0
    m = scene.to_mesh()
    out = to_glb(m.vertices, m.faces, feats, coords, LAYOUT, BOX, grid_size=64, decimation_target=500,
                 texture_size=128)
    assert len(out.faces) <= 600
    _validate(export_glb(out, tmp_path / "tree.glb"))


def test_export_glb_refuses_to_overwrite(baked, tmp_path):
    out, _ = baked
    p = export_glb(out, tmp_path / "x.glb")
    with pytest.raises(FileExistsError, match="overwrite"):
        export_glb(out, p)
    export_glb(out, p, overwrite=True)
    with pytest.raises(ValueError, match=".glb"):
        export_glb(out, tmp_path / "x.gltf")


def test_to_glb_rejects_invalid_meshes():
    coords, feats = _linear_volume()
    v = np.array([[0, 0, 0], [0.1, 0, 0], [0, 0.1, 0]], float)
    args = (feats, coords, LAYOUT, BOX)
    with pytest.raises(ValueError, match="faces"):
        to_glb(v, np.zeros((0, 3), int), *args, grid_size=R)
    with pytest.raises(ValueError, match="NaN"):
        to_glb(v * np.array([[np.nan], [1], [1]]), [[0, 1, 2]], *args, grid_size=R)
    with pytest.raises(ValueError, match="degenerate"):
        to_glb(np.array([[0, 0, 0], [0.1, 0, 0], [0.2, 0, 0]]), [[0, 1, 2], [0, 0, 1]], *args, grid_size=R)
    with pytest.raises(ValueError, match="face indices"):
        to_glb(v, [[0, 1, 5]], *args, grid_size=R)
    with pytest.raises(ValueError, match="remesh_band"):
        to_glb(v, [[0, 1, 2]], *args, grid_size=R, remesh=True, remesh_band=0)
    with pytest.raises(ValueError, match="remesh_project"):
        to_glb(v, [[0, 1, 2]], *args, grid_size=R, remesh=True, remesh_project=2.0)
    with pytest.raises(ValueError, match="alpha_mode"):
        to_glb(v, [[0, 1, 2]], *args, grid_size=R, alpha_mode="ADD")
    with pytest.raises(ValueError, match="voxel_size or grid_size"):
        to_glb(v, [[0, 1, 2]], *args)


def test_fill_holes_and_components():
    sphere = trimesh.creation.icosphere(subdivisions=2, radius=0.1)
    v, f = np.asarray(sphere.vertices), np.asarray(sphere.faces)
    holed = f[~np.any(f == 0, axis=1)]  # remove vertex 0's fan: a hole bounded by a simple 5-vertex loop
    v2, f2 = fill_holes(v, holed, max_perimeter=1.0)
    assert trimesh.Trimesh(v2, f2, process=False).is_watertight and len(f2) > len(holed)
    trimesh_check = trimesh.Trimesh(v2, f2, process=False)
    assert trimesh_check.is_winding_consistent
    v3, f3 = fill_holes(v, holed, max_perimeter=1e-4)  # perimeter above the threshold: left open
    assert len(f3) == len(holed)
    far = trimesh.creation.icosphere(subdivisions=0, radius=1e-3)
    vv = np.concatenate([v, far.vertices + 1])
    ff = np.concatenate([f, far.faces + len(v)])
    v4, f4 = remove_small_components(vv, ff, min_area=1e-4)
    assert len(f4) == len(f) and len(v4) == len(v)


def test_clean_faces_and_decimate():
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 0], [2, 2, 2]], float)
    f = np.array([[0, 1, 2], [2, 1, 3], [0, 0, 1], [1, 2, 0]])  # duplicate (via merged vertex 3), repeated index
    v2, f2 = clean_faces(v, f)
    assert len(f2) == 1 and len(v2) == 3
    s = trimesh.creation.icosphere(subdivisions=4)
    vd, fd = decimate(np.asarray(s.vertices), np.asarray(s.faces), 1000)
    assert 800 <= len(fd) <= 1100


def test_normalize_and_validate():
    v = np.array([[1.0, 2.0, 3.0], [3.0, 3.0, 4.0], [2.0, 2.0, 3.0]])
    out, center, scale = normalize_vertices(v)
    assert np.allclose(center, [2, 2.5, 3.5]) and np.isclose(scale, 0.99999 / 2)
    assert np.allclose(out.max(0) - out.min(0), [0.99999, 0.499995, 0.499995])
    assert np.allclose((out.max(0) + out.min(0)) / 2, 0)
    with pytest.raises(ValueError, match="NaN"):
        normalize_vertices(np.array([[np.nan, 0, 0], [1, 1, 1]]))
    with pytest.raises(ValueError, match="zero extent"):
        normalize_vertices(np.ones((3, 3)))
    with pytest.raises(ValueError, match="no faces"):
        validate_mesh(out, np.zeros((0, 3), int))
    with pytest.raises(ValueError, match="degenerate"):
        validate_mesh(out, np.array([[0, 0, 1]]))
    with pytest.raises(ValueError, match="outside"):
        validate_mesh(v, np.array([[0, 1, 2]]))
    validate_mesh(out, np.array([[0, 1, 2]]))


def test_load_mesh_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_mesh(tmp_path / "nope.glb")
    (tmp_path / "x.fbx").write_bytes(b"fbx")
    with pytest.raises(ValueError, match="unsupported"):
        load_mesh(tmp_path / "x.fbx")
    (tmp_path / "bad.glb").write_bytes(b"glTF\x02\x00\x00\x00garbage")
    with pytest.raises(ValueError, match="corrupt|no triangles"):
        load_mesh(tmp_path / "bad.glb")


def test_mesh_with_voxel_query_is_exact_on_linear_fields():
    coords, feats = _linear_volume()
    m = MeshWithVoxel(np.zeros((3, 3)), np.array([[0, 1, 2]]), coords, feats, LAYOUT, BOX, voxel_size=1 / R)
    p = np.random.default_rng(0).uniform(-0.2, 0.2, (200, 3))  # |p| < 0.35: all 8 neighbours are active
    got = m.query_attrs(p)
    assert np.allclose(got[:, :3], p + 0.5, atol=1e-5) and np.allclose(got[:, 3], 0.3, atol=1e-6)


def test_partition_faces_is_a_compact_partition():
    sphere = trimesh.creation.icosphere(subdivisions=4)
    v, f = np.asarray(sphere.vertices), np.asarray(sphere.faces)
    groups = partition_faces(v, f, 700)
    assert all(0 < len(g) <= 700 for g in groups)
    assert np.array_equal(np.sort(np.concatenate(groups)), np.arange(len(f)))
    assert [g.tolist() for g in partition_faces(v, f, 700)] == [g.tolist() for g in groups]   # deterministic
    # compact: each piece spans a small part of the sphere (a slab would span its whole height)
    cent = v[f].mean(1)
    assert max(np.ptp(cent[g], axis=0).max() for g in groups) < 1.2
    with pytest.raises(ValueError):
        partition_faces(v, f, 0)


def _uv_overlaps(uv: np.ndarray, faces: np.ndarray, n: int = 96) -> int:
    """Grid points of the unit square strictly inside more than one UV triangle."""
    g = (np.stack(np.meshgrid(np.arange(n), np.arange(n), indexing="ij"), -1).reshape(-1, 2) + 0.5) / n
    a, b, c = (uv[faces[:, k]] for k in range(3))
    den = (b[:, 1] - c[:, 1]) * (a[:, 0] - c[:, 0]) + (c[:, 0] - b[:, 0]) * (a[:, 1] - c[:, 1])
    ok = np.abs(den) > 1e-12
    a, b, c, den = a[ok], b[ok], c[ok], den[ok]
    count = np.zeros(len(g), int)
    for s in range(0, len(g), 512):
        p = g[s:s + 512, None, :]
        l1 = ((b[:, 1] - c[:, 1]) * (p[..., 0] - c[:, 0]) + (c[:, 0] - b[:, 0]) * (p[..., 1] - c[:, 1])) / den
        l2 = ((c[:, 1] - a[:, 1]) * (p[..., 0] - c[:, 0]) + (a[:, 0] - c[:, 0]) * (p[..., 1] - c[:, 1])) / den
        inside = (l1 > 1e-6) & (l2 > 1e-6) & (1 - l1 - l2 > 1e-6)
        count[s:s + 512] = inside.sum(1)
    return int((count > 1).sum())


def test_unwrap_in_pieces_keeps_the_surface_and_packs_without_overlap():
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=0.4)
    v, f = np.asarray(sphere.vertices), np.asarray(sphere.faces)
    whole = unwrap_uv(v, f, None)
    for vmap, uf, uv in (whole, unwrap_uv(v, f, 800)):
        assert uf.shape == f.shape and vmap.max() < len(v)
        np.testing.assert_array_equal(v[vmap][uf], v[f])               # same triangles, same order
        assert uv.min() >= 0 and uv.max() <= 1
        assert _uv_overlaps(uv, uf) == 0
    assert len(partition_faces(v, f, 800)) == 8                        # the pieced path really ran (5,120 faces)
