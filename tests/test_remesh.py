"""Narrow-band dual-contouring remesh (TRELLIS2_SPEC §3.7 step 2) and ``to_glb(remesh=True)``."""

import numpy as np
import pytest
import trimesh

from gltf_check import validate_glb

from pixal3d.ovoxel.postprocess import export_glb, to_glb
from pixal3d.ovoxel.remesh import closest_points, remesh_narrow_band_dc

RADIUS = 0.35


def _edge_use(faces: np.ndarray):
    """(undirected edge counts, directed edge counts) of a triangle list."""
    d = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    _, und = np.unique(np.sort(d, 1), axis=0, return_counts=True)
    _, dire = np.unique(d, axis=0, return_counts=True)
    return und, dire


def _assert_closed_oriented(v, f):
    und, dire = _edge_use(f)
    assert np.all(und == 2), f"{np.sum(und != 2)} edges not shared by exactly 2 faces"
    assert np.all(dire == 1), "inconsistent orientation: a directed edge is used twice"
    tri = v[f]
    signed_volume = np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum() / 6
    assert signed_volume > 0
    return signed_volume


@pytest.fixture(scope="module")
def sphere():
    return trimesh.creation.icosphere(subdivisions=4, radius=RADIUS)


def _segment_distance(p, a, b):
    ab = b - a
    s = np.clip(((p - a) @ ab) / max(ab @ ab, 1e-300), 0, 1)
    return np.linalg.norm(a + s[:, None] * ab - p, axis=1)


def test_closest_points_match_brute_force():
    rng = np.random.default_rng(0)
    v = rng.uniform(-1, 1, (30, 3))
    f = rng.integers(0, 30, (20, 3))
    f[0] = [0, 1, 1]                               # a degenerate (segment) triangle
    v[5] = v[4] * 0.5 + v[3] * 0.5
    f[1] = [3, 4, 5]                               # and a collinear one
    p = rng.uniform(-1.2, 1.2, (400, 3))
    c, d, found = closest_points(p, v, f, max_distance=0.6)
    best = np.full(len(p), np.inf)
    for t in v[f]:
        if np.linalg.norm(np.cross(t[1] - t[0], t[2] - t[0])) > 1e-12:
            q = trimesh.triangles.closest_point(np.repeat(t[None], len(p), 0), p)
            dd = np.linalg.norm(q - p, axis=1)
        else:
            dd = np.min([_segment_distance(p, t[i], t[(i + 1) % 3]) for i in range(3)], axis=0)
        best = np.minimum(best, dd)
    near = best < 0.6 - 1e-9
    assert np.array_equal(found, near)
    assert np.allclose(d[near], best[near], atol=1e-9)
    assert np.allclose(np.linalg.norm(c - p, axis=1)[near], best[near], atol=1e-9)
    assert np.allclose(c[~near], p[~near])


def test_sphere_offset_surface(sphere):
    R = 64
    h = 1.0 / R
    v, f = remesh_narrow_band_dc(sphere.vertices, sphere.faces[:, ::-1], center=[0.01, -0.02, 0.005], scale=1.0,
                                 resolution=R, band=1.0)
    vol = _assert_closed_oriented(v, f)
    r = np.linalg.norm(v, axis=1)
    outer, inner = r > RADIUS, r < RADIUS
    assert outer.sum() > 0 and inner.sum() > 0      # a closed input has an outer and an inner (facing-in) shell
    assert np.abs(r[outer] - (RADIUS + h)).max() < 0.1 * h
    # the inner shell follows the flat facets (sagitta < 1e-3 for this icosphere)
    assert np.abs(r[inner] - (RADIUS - h)).max() < 0.1 * h + 1e-3
    expect = 4 / 3 * np.pi * ((RADIUS + h) ** 3 - (RADIUS - h) ** 3)
    assert abs(vol - expect) < 0.03 * expect
    # outward orientation of each shell: away from the input surface
    n = trimesh.Trimesh(v, f, process=False).face_normals
    c = v[f].mean(1)
    radial = np.einsum("ij,ij->i", n, c / np.linalg.norm(c, axis=1, keepdims=True))
    rc = np.linalg.norm(c, axis=1)
    assert np.all(radial[rc > RADIUS] > 0.5) and np.all(radial[rc < RADIUS] < -0.5)


@pytest.mark.parametrize("base", [4, 16])
def test_coarse_to_fine_pruning_is_exact(sphere, monkeypatch, base):
    """Refinement only drops cells that cannot hold the isosurface: refining from a 4³ or 16³ base gives exactly
    the mesh of a single-level evaluation of every cell of the 64³ grid."""
    from pixal3d.ovoxel import remesh as rm
    kw = dict(center=[0.003, 0.0, -0.01], scale=1.0, resolution=64)
    monkeypatch.setattr(rm, "_BASE_MAX", 64)
    dense = rm.remesh_narrow_band_dc(sphere.vertices, sphere.faces, **kw)
    monkeypatch.setattr(rm, "_BASE_MAX", base)
    tree = rm.remesh_narrow_band_dc(sphere.vertices, sphere.faces, **kw)
    assert np.array_equal(dense[1], tree[1]) and np.array_equal(dense[0], tree[0])


def test_resolution_not_a_power_of_two(sphere):
    h = 1.0 / 100
    v, f = remesh_narrow_band_dc(sphere.vertices, sphere.faces, center=np.zeros(3), scale=1.0, resolution=100)
    _assert_closed_oriented(v, f)
    r = np.linalg.norm(v, axis=1)
    assert np.abs(r[r > RADIUS] - (RADIUS + h)).max() < 0.1 * h


def test_open_square_becomes_closed_thin_shell():
    sq = np.array([[-0.3, -0.25, 0.013], [0.3, -0.25, 0.013], [0.3, 0.25, 0.013], [-0.3, 0.25, 0.013]])
    R = 64
    eps = 1.5 / R
    v, f = remesh_narrow_band_dc(sq, np.array([[0, 1, 2], [0, 2, 3]]), center=np.zeros(3), scale=1.0,
                                 resolution=R, band=1.5)
    vol = _assert_closed_oriented(v, f)
    assert len(trimesh.Trimesh(v, f, process=False).split(only_watertight=False)) == 1
    # every vertex lies eps away from the square: tightly over the faces, within a third of a cell on the rounded
    # rim (radius eps = 1.5 cells; the mean of the edge crossings cuts the corner of a strongly curved patch)
    q = np.stack([np.clip(v[:, 0], -0.3, 0.3), np.clip(v[:, 1], -0.25, 0.25), np.full(len(v), 0.013)], 1)
    err = np.abs(np.linalg.norm(v - q, axis=1) - eps)
    flat = (np.abs(v[:, 0]) < 0.3 - 2 / R) & (np.abs(v[:, 1]) < 0.25 - 2 / R)
    assert flat.sum() > len(v) / 2
    assert err[flat].max() < 1e-9 and err.max() < 0.3 / R
    # slab of thickness 2·eps + half cylinders on the rim + ball corners
    expect = 0.6 * 0.5 * 2 * eps + 2 * (0.6 + 0.5) * np.pi * eps ** 2 / 2 + 4 / 3 * np.pi * eps ** 3
    assert abs(vol - expect) < 0.03 * expect
    assert v[:, 2].max() > 0.013 + 0.9 * eps and v[:, 2].min() < 0.013 - 0.9 * eps


def _brute_distance(mesh, p):
    """Exact distance of each point to the mesh by checking every triangle (independent of the remesh code)."""
    tri = np.repeat(mesh.triangles[None], len(p), 0).reshape(-1, 3, 3)
    q = trimesh.triangles.closest_point(tri, np.repeat(p, len(mesh.faces), 0))
    return np.linalg.norm(q - np.repeat(p, len(mesh.faces), 0), axis=1).reshape(len(p), -1).min(1)


def test_project_back_pulls_onto_the_input(sphere):
    R = 64
    kw = dict(center=np.zeros(3), scale=1.0, resolution=R)
    v0, f0 = remesh_narrow_band_dc(sphere.vertices, sphere.faces, **kw)
    v1, f1 = remesh_narrow_band_dc(sphere.vertices, sphere.faces, project_back=1.0, **kw)
    vh, _ = remesh_narrow_band_dc(sphere.vertices, sphere.faces, project_back=0.5, **kw)
    assert np.array_equal(f0, f1)
    d0, d1 = _brute_distance(sphere, v0[::97]), _brute_distance(sphere, v1[::97])
    assert np.all(np.abs(d0 - 1 / R) < 0.1 / R)
    assert d1.max() < 1e-6
    assert np.allclose(vh, (v0 + v1) / 2, atol=1e-12)


def test_bad_arguments(sphere):
    with pytest.raises(ValueError, match="band"):
        remesh_narrow_band_dc(sphere.vertices, sphere.faces, np.zeros(3), 1.0, 32, band=0)
    with pytest.raises(ValueError, match="project_back"):
        remesh_narrow_band_dc(sphere.vertices, sphere.faces, np.zeros(3), 1.0, 32, project_back=1.5)
    with pytest.raises(ValueError, match="resolution"):
        remesh_narrow_band_dc(sphere.vertices, sphere.faces, np.zeros(3), 1.0, 1)
    with pytest.raises(ValueError, match="empty|domain"):
        remesh_narrow_band_dc(sphere.vertices + 5.0, sphere.faces, np.zeros(3), 1.0, 32)


def test_to_glb_remesh(tmp_path, sphere):
    from test_glb_export import BOX, LAYOUT, R, _linear_volume, _texel
    coords, feats = _linear_volume()
    out = to_glb(sphere.vertices, sphere.faces, feats, coords, LAYOUT, BOX, grid_size=R, decimation_target=4000,
                 texture_size=256, remesh=True)
    assert len(out.faces) <= 4000
    path = export_glb(out, tmp_path / "remeshed.glb")
    validate_glb(path)
    g = list(trimesh.load(str(path), force="scene").geometry.values())[0]
    mat = g.visual.material
    assert not mat.doubleSided
    welded = trimesh.Trimesh(g.vertices, g.faces, process=True)
    assert welded.is_watertight and welded.is_winding_consistent and welded.volume > 0
    v_zup = g.vertices @ np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0]], float)
    r = np.linalg.norm(v_zup, axis=1)
    h = (R + 3) / R / R                              # remesh cell: (res + 3·band)/res·side / res
    assert np.abs(r[r > RADIUS] - (RADIUS + h)).max() < 0.25 * h
    # textures are sampled on the decoded surface (snapped back), so they reproduce the linear volume there
    tri = v_zup[g.faces]
    centroid = tri.mean(1)
    snapped = centroid / np.linalg.norm(centroid, axis=1, keepdims=True) * RADIUS
    got = _texel(np.asarray(mat.baseColorTexture.convert("RGBA")), g.visual.uv[g.faces].mean(1))
    err = np.abs(got[:, :3] - (snapped + 0.5))
    assert np.median(err) < 4 / 255 and np.percentile(err, 95) < 10 / 255, (np.median(err), err.max())
    mr = _texel(np.asarray(mat.metallicRoughnessTexture.convert("RGB")), g.visual.uv[g.faces].mean(1))
    for ch, want in ((1, 0.6), (2, 0.3)):        # a rare chart-border texel may catch inpainted neighbours
        assert np.mean(np.abs(mr[:, ch] - want) < 1.5 / 255) > 0.99 and np.abs(mr[:, ch] - want).max() < 4 / 255
