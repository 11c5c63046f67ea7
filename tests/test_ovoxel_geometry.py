"""O-Voxel geometry: mesh <-> flexible dual grid (TRELLIS2_SPEC §3.1-3.4).

Parity with the reference fixtures (voxel sets and flags identical, dual vertices within 1e-4, meshes as sorted
face lists within 1e-5) plus analytic cases whose crossings, QEF minimisers and quads are derived by hand.
"""
import numpy as np
import pytest
import torch
from conftest import fixture_path, load_fixture

from pixal3d.ovoxel import flexible_dual_grid_to_mesh, mesh_to_flexible_dual_grid

TOOLKIT = dict(face_weight=1.0, boundary_weight=0.2, regularization_weight=1e-2)   # §3.2 data-toolkit call
UNIT = [[-0.5] * 3, [0.5] * 3]
BOX01 = [[0.0] * 3, [1.0] * 3]
FIXTURE_CASES = [("bunny", 64), ("spot", 64), ("beetle", 64), ("beetle", 256), ("hand_closed", 64),
                 ("hand_closed", 256)]


def _key(coords, r):
    c = torch.as_tensor(coords).long()
    return (c[:, 0] * r + c[:, 1]) * r + c[:, 2]


def _sorted_faces(vertices, faces):
    """Faces as their 3 vertex positions (sorted within the face), the list sorted: [F, 9] float64."""
    tri = vertices.detach().double()[faces].numpy()
    order = np.lexsort((tri[:, :, 2], tri[:, :, 1], tri[:, :, 0]), axis=-1)
    tri = np.take_along_axis(tri, order[:, :, None], axis=1).reshape(len(tri), 9)
    return tri[np.lexsort(tri.T[::-1])]


def _edge_use(faces):
    e = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]).sort(dim=1).values
    return torch.unique(e, dim=0, return_counts=True)[1]


def _fixture(name):
    fixture_path(f"ovoxel_{name}")          # skips, saying why, when absent
    return load_fixture(f"ovoxel_{name}")[1]


# ---------------------------------------------------------------------------------------------- reference parity
@pytest.mark.parametrize("name,res", FIXTURE_CASES)
def test_mesh_to_ovoxel_matches_reference(name, res):
    d = _fixture(name)
    if f"out.r{res}.coords" not in d:
        pytest.skip(f"ovoxel_{name} has no {res}^3 output")
    coords, dual, inter = mesh_to_flexible_dual_grid(d["in.vertices"], d["in.faces"], grid_size=res, aabb=UNIT,
                                                     **TOOLKIT)
    assert coords.dtype == torch.int32 and dual.dtype == torch.float32 and inter.dtype == torch.bool
    ref_c, ref_d, ref_i = (d[f"out.r{res}.{k}"] for k in ("coords", "dual_vertices", "intersected"))
    ka, kb = _key(coords, res), _key(ref_c, res)
    oa, ob = torch.argsort(ka), torch.argsort(kb)
    assert torch.equal(ka[oa], kb[ob]), "voxel sets differ"
    assert torch.equal(inter[oa], ref_i[ob]), "intersected flags differ"
    # dual vertices are in the shifted frame p - aabb_min, like the reference's
    err = (dual[oa] - ref_d[ob]).abs().max().item()
    assert err <= 1e-4, err


@pytest.mark.parametrize("name,res", FIXTURE_CASES)
def test_ovoxel_to_mesh_matches_reference(name, res):
    d = _fixture(name)
    if f"out.r{res}.coords" not in d:
        pytest.skip(f"ovoxel_{name} has no {res}^3 output")
    # the fixture passes the (shifted-frame) dual vertices as they come out of the voxeliser
    v, f = flexible_dual_grid_to_mesh(d[f"out.r{res}.coords"], d[f"out.r{res}.dual_vertices"],
                                      d[f"out.r{res}.intersected"], None, UNIT, grid_size=res)
    ref_v, ref_f = d[f"out.r{res}.mesh_vertices"], d[f"out.r{res}.mesh_faces"]
    assert f.dtype == torch.int64 and f.shape == ref_f.shape
    assert v.shape == ref_v.shape                    # one vertex per voxel, no compaction
    assert np.abs(_sorted_faces(v, f) - _sorted_faces(ref_v, ref_f)).max() <= 1e-5


# --------------------------------------------------------------------------------------------- analytic: to O-Voxel
def test_single_triangle_crossings_by_hand():
    # Triangle in the plane z = 0.3 of the unit box, R = 4 (grid lines at 0.25, 0.5, 0.75). Its xy projection
    # has legs on x = 0.1, y = 0.1 and hypotenuse x + y = 1.05, so it contains the z-parallel grid lines
    # (x, y) = (.25,.25) (.25,.5) (.25,.75) (.5,.25) (.5,.5) (.75,.25); no x/y-parallel line meets a z = const
    # plane. Each crossing at line ((i+1)/4, (j+1)/4) creates voxels (i+dx, j+dy, 1) and flags z on (i, j, 1).
    tri = np.array([[0.1, 0.1, 0.3], [0.95, 0.1, 0.3], [0.1, 0.95, 0.3]], np.float32)
    crossings = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (2, 0)]
    coords, dual, inter = mesh_to_flexible_dual_grid(tri, np.array([[0, 1, 2]]), grid_size=4, aabb=BOX01,
                                                     boundary_weight=0.0, regularization_weight=0.1)
    expected = {}
    for i, j in crossings:
        for dx in (0, 1):
            for dy in (0, 1):
                expected.setdefault((i + dx, j + dy, 1), []).append(((i + 1) / 4, (j + 1) / 4))
    got = {tuple(c): k for k, c in enumerate(coords.tolist())}
    assert set(got) == set(expected)
    for c, k in got.items():
        assert inter[k].tolist() == [False, False, (c[0], c[1]) in crossings]
        # one plane (z only) + regularisation: x, y = mean crossing point, z on the plane
        mean = np.mean(expected[c], axis=0)
        np.testing.assert_allclose(dual[k].numpy(), [mean[0], mean[1], 0.3], atol=1e-6)


def test_closed_cube_shell_and_watertight_mesh():
    # Cube [0.2, 0.8]^3 in the unit box at R = 8: each face is pierced by the 5 x 5 grid lines at
    # 0.25 ... 0.75, so the voxels are exactly the shell of [1, 6]^3 (6^3 - 4^3 = 152) with 6 x 25 = 150 flags,
    # and the dual mesh is 150 quads = 300 triangles, every edge shared by exactly 2 of them.
    import trimesh
    cube = trimesh.creation.box(extents=[0.6] * 3)
    cube.apply_translation([0.5] * 3)
    coords, dual, inter = mesh_to_flexible_dual_grid(cube.vertices, cube.faces, grid_size=8, aabb=BOX01,
                                                     regularization_weight=1e-3)
    c = coords.long()
    shell = ((c == 1) | (c == 6)).any(1) & ((c >= 1) & (c <= 6)).all(1)
    assert coords.shape[0] == 152 and bool(shell.all())
    assert int(inter.sum()) == 150
    local = dual * 8 - coords.float()
    v, f = flexible_dual_grid_to_mesh(coords, local, inter, None, BOX01, grid_size=8)
    assert f.shape == (300, 3)
    assert bool((_edge_use(f) == 2).all())
    # voxels on one cube face only (not on a cube edge) keep their dual vertex on that face's plane
    on_face = ((c == 1) | (c == 6)).sum(1) == 1
    for axis in range(3):
        rows = on_face & ((c[:, axis] == 1) | (c[:, axis] == 6))
        plane = torch.where(c[rows, axis] == 1, 0.2, 0.8)
        assert (dual[rows, axis] - plane).abs().max() < 1e-6


def test_open_plane_boundary_term_by_hand():
    # Rectangle z = 0.3, x in [0.05, 0.95], y in [0.05, 0.9] (2 triangles; the diagonal avoids the grid lines,
    # which the half-open scan rules could otherwise miss on both sides), R = 8. Voxel (0, 3, 2) holds the edge
    # x = 0.05 and the crossings (0.125, 0.375, 0.3), (0.125, 0.5, 0.3) (cnt = 2). Its QEF: plane (z - 0.3)^2 from
    # crossings and face term, w_b (x - 0.05)^2 + w_b (z - 0.3)^2 from the boundary line, and w_r cnt |p - mean|^2,
    # so x* = (w_b 0.05 + w_r cnt 0.125) / (w_b + w_r cnt), y* = 0.4375, z* = 0.3.
    v = np.array([[0.05, 0.05, 0.3], [0.95, 0.05, 0.3], [0.95, 0.9, 0.3], [0.05, 0.9, 0.3]], np.float32)
    f = np.array([[0, 1, 2], [0, 2, 3]])
    wb, wr = 1.0, 0.1
    coords, dual, inter = mesh_to_flexible_dual_grid(v, f, grid_size=8, aabb=BOX01, boundary_weight=wb,
                                                     regularization_weight=wr)
    # 7 x 7 z-lines pierce the square -> voxels x, y in 0..7 at z index 2, all flags along z
    assert sorted(map(tuple, coords.tolist())) == [(i, j, 2) for i in range(8) for j in range(8)]
    assert int(inter[:, 2].sum()) == 49 and not bool(inter[:, :2].any())
    k = coords.tolist().index([0, 3, 2])
    x_star = (wb * 0.05 + wr * 2 * 0.125) / (wb + wr * 2)
    np.testing.assert_allclose(dual[k].numpy(), [x_star, 0.4375, 0.3], atol=1e-6)
    # without the boundary term the vertex sits at the mean crossing point
    _, dual0, _ = mesh_to_flexible_dual_grid(v, f, grid_size=8, aabb=BOX01, boundary_weight=0.0,
                                             regularization_weight=wr)
    np.testing.assert_allclose(dual0[k].numpy(), [0.125, 0.4375, 0.3], atol=1e-6)
    # the mesh of an open surface is open: its rim edges are used once
    local = dual * 8 - coords.float()
    mv, mf = flexible_dual_grid_to_mesh(coords, local, inter, None, BOX01, grid_size=8)
    assert mf.shape == (2 * 49, 3) and bool((_edge_use(mf) == 1).any())
    assert (mv[:, 2] - 0.3).abs().max() < 1e-6


def test_non_manifold_edge_is_union_of_triangles():
    # Three triangles sharing the edge (0.3,0.3,0.2)-(0.3,0.3,0.8) like pages of a book. Crossings are per
    # triangle, so the voxel set and flags are the union / OR of the single-triangle results; the shared edge
    # is used by 3 faces and is not a boundary edge.
    v = np.array([[0.3, 0.3, 0.2], [0.3, 0.3, 0.8], [0.9, 0.35, 0.5], [0.05, 0.85, 0.45], [0.35, 0.02, 0.6]],
                 np.float32)
    f = np.array([[0, 1, 2], [0, 1, 3], [0, 1, 4]])
    coords, dual, inter = mesh_to_flexible_dual_grid(v, f, grid_size=16, aabb=BOX01)
    union = {}
    for tri in f:
        c1, _, i1 = mesh_to_flexible_dual_grid(v, tri[None], grid_size=16, aabb=BOX01)
        for c, fl in zip(c1.tolist(), i1.tolist()):
            union[tuple(c)] = [a or b for a, b in zip(union.get(tuple(c), [False] * 3), fl)]
    got = {tuple(c): fl for c, fl in zip(coords.tolist(), inter.tolist())}
    assert got == union
    lo = coords.float() / 16
    assert bool(((dual >= lo) & (dual <= lo + 1 / 16)).all())     # every dual vertex in its voxel


def test_sphere_round_trip_chamfer():
    import trimesh
    from scipy.spatial import cKDTree
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=0.4)
    res = 64
    coords, dual, inter = mesh_to_flexible_dual_grid(sphere.vertices, sphere.faces, grid_size=res, aabb=UNIT,
                                                     **TOOLKIT)
    v, f = flexible_dual_grid_to_mesh(coords, dual * res - coords.float(), inter, None, UNIT, grid_size=res)
    assert bool((_edge_use(f) == 2).all())                     # closed input -> watertight output
    rec = trimesh.Trimesh(v.numpy(), f.numpy(), process=False)
    a, b = sphere.sample(20000), rec.sample(20000)
    # sampled Chamfer (includes ~0.3 voxel of sampling noise at this density) within one voxel
    chamfer = 0.5 * (cKDTree(b).query(a)[0].mean() + cKDTree(a).query(b)[0].mean())
    assert chamfer < 1.0 / res, chamfer
    # exact point-to-sphere distances of the reconstruction: tiny on average, under half a voxel at worst
    assert np.abs(np.linalg.norm(b, axis=1) - 0.4).mean() < 0.05 / res
    assert np.abs(np.linalg.norm(v[f.unique()].numpy(), axis=1) - 0.4).max() < 0.5 / res


def test_numpy_and_torch_inputs_agree_and_auto_aabb():
    import trimesh
    m = trimesh.creation.icosphere(subdivisions=2, radius=0.3)
    a = mesh_to_flexible_dual_grid(m.vertices, m.faces, grid_size=16, aabb=UNIT)
    b = mesh_to_flexible_dual_grid(torch.tensor(m.vertices), torch.tensor(m.faces, dtype=torch.int32),
                                   voxel_size=1 / 16, aabb=UNIT)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    c, _, _ = mesh_to_flexible_dual_grid(m.vertices, m.faces, grid_size=16)        # aabb from the vertices
    assert int(c.min()) >= 0 and int(c.max()) < 16


@pytest.mark.parametrize("vertices,faces,match", [
    (np.zeros((3, 3)), np.zeros((0, 3), int), "no faces"),
    (np.array([[0, 0, 0], [0.1, 0, 0], [np.nan, 0.1, 0]]), np.array([[0, 1, 2]]), "NaN"),
    (np.array([[0, 0, 0], [0.1, 0, 0], [0, 0.1, 0]]), np.array([[0, 1, 3]]), "face indices"),
    (np.array([[0, 0, 0], [0.1, 0, 0], [0.2, 0, 0]]), np.array([[0, 1, 2], [0, 0, 1]]), "degenerate"),
    (np.array([[0, 0, 0], [0.7, 0, 0], [0, 0.1, 0]]), np.array([[0, 1, 2]]), "outside the aabb"),
    (np.zeros((3, 2)), np.array([[0, 1, 2]]), "vertices must be"),
    (np.zeros((3, 3)), np.array([[0.0, 1, 2]]), "faces must be"),
])
def test_invalid_meshes_raise(vertices, faces, match):
    with pytest.raises(ValueError, match=match):
        mesh_to_flexible_dual_grid(vertices, faces, grid_size=8, aabb=UNIT)


def test_invalid_grid_arguments_raise():
    v, f = np.array([[0, 0, 0], [0.1, 0, 0], [0, 0.1, 0]]), np.array([[0, 1, 2]])
    with pytest.raises(ValueError, match="voxel_size or grid_size"):
        mesh_to_flexible_dual_grid(v, f, aabb=UNIT)
    with pytest.raises(ValueError, match="aabb"):
        mesh_to_flexible_dual_grid(v, f, grid_size=8, aabb=[[0.5] * 3, [-0.5] * 3])


# ------------------------------------------------------------------------------------------ analytic: to mesh
# One x-edge quad: voxels (0,0,0), (0,0,1), (0,1,1), (0,1,0) in the §3.4 offset order, flag x on (0,0,0).
QUAD = torch.tensor([[0, 0, 0], [0, 0, 1], [0, 1, 1], [0, 1, 0]], dtype=torch.int32)
QUAD_FLAGS = torch.tensor([[True, False, False]] + [[False] * 3] * 3)


def test_quad_split_by_weights():
    dual = torch.full((4, 3), 0.5)
    for w, tris in (([2.0, 1.0, 2.0, 1.0], {(0, 1, 2), (0, 2, 3)}), ([1.0, 2.0, 1.0, 2.0], {(0, 1, 3), (1, 2, 3)})):
        v, f = flexible_dual_grid_to_mesh(QUAD, dual, QUAD_FLAGS, torch.tensor(w)[:, None], BOX01, grid_size=4)
        assert {tuple(sorted(t)) for t in f.tolist()} == tris
        np.testing.assert_allclose(v.numpy(), (QUAD.float() + 0.5).numpy() / 4)


def test_incomplete_quad_dropped_and_vertices_not_compacted():
    dual = torch.full((4, 3), 0.5)
    v, f = flexible_dual_grid_to_mesh(QUAD[:3], dual[:3], QUAD_FLAGS[:3], None, BOX01, grid_size=4)
    assert f.shape == (0, 3) and v.shape == (3, 3)
    extra = torch.cat([QUAD, torch.tensor([[3, 3, 3]], dtype=torch.int32)])
    v, f = flexible_dual_grid_to_mesh(extra, torch.full((5, 3), 0.5), torch.cat([QUAD_FLAGS, QUAD_FLAGS[:1]]),
                                      None, BOX01, grid_size=4)
    assert v.shape == (5, 3) and f.shape == (2, 3)             # (3,3,3)'s edge has no neighbours


def test_default_split_is_reference_diagonal():
    # The reference's "flatter split" score compares the first triangle with itself (split 0-2) against a
    # zero cross product (split 1-3), so 0-2 wins even when 1-3 would be flatter (the fixtures record this).
    dual = torch.full((4, 3), 0.5)
    dual[0, 0] = dual[2, 0] = 0.9          # fold along 1-3: split 1-3 is planar, 0-2 is not
    v, f = flexible_dual_grid_to_mesh(QUAD, dual, QUAD_FLAGS, None, BOX01, grid_size=4)
    assert {tuple(sorted(t)) for t in f.tolist()} == {(0, 1, 2), (0, 2, 3)}


def test_train_mode_mid_vertex_and_gradcheck():
    torch.manual_seed(0)
    dual = torch.rand(4, 3, dtype=torch.float64)
    w = torch.rand(4, 1, dtype=torch.float64) + 0.5
    v, f = flexible_dual_grid_to_mesh(QUAD, dual, QUAD_FLAGS, w, BOX01, grid_size=4, train=True)
    assert v.shape == (5, 3) and f.tolist() == [[0, 1, 4], [1, 2, 4], [2, 3, 4], [3, 0, 4]]
    p = (QUAD.double() + dual) / 4
    w02, w13 = w[0] * w[2], w[1] * w[3]
    mid = (w02 * (p[0] + p[2]) / 2 + w13 * (p[1] + p[3]) / 2) / (w02 + w13)
    torch.testing.assert_close(v[4], mid)

    def fn(d, s):
        return flexible_dual_grid_to_mesh(QUAD, d, QUAD_FLAGS, s, BOX01, grid_size=4, train=True)[0]
    assert torch.autograd.gradcheck(fn, (dual.requires_grad_(), w.requires_grad_()))


def test_to_mesh_bad_inputs_raise():
    dual = torch.full((4, 3), 0.5)
    with pytest.raises(ValueError, match="split_weight"):
        flexible_dual_grid_to_mesh(QUAD, dual, QUAD_FLAGS, None, BOX01, grid_size=4, train=True)
    with pytest.raises(ValueError, match="coords"):
        flexible_dual_grid_to_mesh(QUAD.float(), dual, QUAD_FLAGS, None, BOX01, grid_size=4)
    with pytest.raises(ValueError, match="intersected_flag"):
        flexible_dual_grid_to_mesh(QUAD, dual, QUAD_FLAGS.float(), None, BOX01, grid_size=4)
    with pytest.raises(ValueError, match="duplicate"):
        flexible_dual_grid_to_mesh(QUAD[[0, 0, 1, 2]], dual, QUAD_FLAGS, None, BOX01, grid_size=4)
    with pytest.raises(ValueError, match="voxel_size or grid_size"):
        flexible_dual_grid_to_mesh(QUAD, dual, QUAD_FLAGS, None, BOX01)
