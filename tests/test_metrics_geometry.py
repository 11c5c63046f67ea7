"""Geometry metrics on analytic cases (pixal3d.evaluation.geometry)."""
import math

import numpy as np
import pytest
import trimesh

from pixal3d.evaluation import geometry as G


def _plane(size=1.0, z=0.0, n=1):
    """Square [0,size]² at height z split in 2n² triangles (upward normals)."""
    xs = np.linspace(0, size, n + 1)
    X, Y = np.meshgrid(xs, xs, indexing="ij")
    v = np.stack([X.ravel(), Y.ravel(), np.full(X.size, z)], 1)
    f = []
    for i in range(n):
        for j in range(n):
            a, b, c, d = i * (n + 1) + j, (i + 1) * (n + 1) + j, (i + 1) * (n + 1) + j + 1, i * (n + 1) + j + 1
            f += [[a, b, c], [a, c, d]]
    return v, np.array(f)


def _sphere_points(n, r, seed):
    x = np.random.default_rng(seed).normal(size=(n, 3))
    return r * x / np.linalg.norm(x, axis=1, keepdims=True)


def test_sample_surface_seeded_on_faces_and_area_weighted():
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [10, 0, 0], [13, 0, 0], [10, 2, 0]], float)
    f = np.array([[0, 1, 2], [3, 4, 5]])  # areas 0.5 and 3 -> probabilities 1/7, 6/7
    p1, n1, i1 = G.sample_surface(v, f, 20000, seed=3)
    p2, _, _ = G.sample_surface(v, f, 20000, seed=3)
    p3, _, _ = G.sample_surface(v, f, 20000, seed=4)
    assert np.array_equal(p1, p2) and not np.array_equal(p1, p3)
    frac = (i1 == 0).mean()
    assert abs(frac - 1 / 7) < 4 * math.sqrt((1 / 7) * (6 / 7) / 20000)
    assert np.allclose(n1, [0, 0, 1])
    a = p1[i1 == 0]
    assert (a[:, :2] >= -1e-12).all() and (a[:, 0] + a[:, 1] <= 1 + 1e-12).all()
    # uniform inside the triangle: mean = centroid
    assert np.allclose(a.mean(0), [1 / 3, 1 / 3, 0], atol=0.02)
    with pytest.raises(ValueError):
        G.sample_surface(v, f, 0)


def test_chamfer_concentric_spheres_equals_radius_difference():
    p = _sphere_points(20000, 0.5, 0)
    q = _sphere_points(20000, 0.4, 1)
    # nearest neighbour on a dense sphere sample is ~radially below: CD-L1 = 0.1, CD-L2 = 0.01
    assert G.chamfer_distance(p, q, "l1") == pytest.approx(0.1, abs=1.5e-3)
    assert G.chamfer_distance(p, q, "l2") == pytest.approx(0.01, abs=3e-4)
    assert G.chamfer_distance(p, q, "l1", "sum") == pytest.approx(2 * G.chamfer_distance(p, q, "l1"))
    # lower bound holds exactly: no point can be closer than the radius difference
    d, _ = G.nearest_distances(p, q)
    assert d.min() >= 0.1 - 1e-12
    with pytest.raises(ValueError):
        G.chamfer_distance(p, q, "l3")


def test_chamfer_mesh_spheres_scaled():
    s = trimesh.creation.icosphere(subdivisions=4, radius=0.5)
    t = trimesh.creation.icosphere(subdivisions=4, radius=0.4)
    m = G.evaluate_geometry((s.vertices, s.faces), (t.vertices, t.faces), n_points=30000,
                            thresholds=(0.05, 0.2), iou_resolution=None)
    assert m["chamfer_l1"] == pytest.approx(0.1, abs=3e-3)
    assert m["fscore@0.05"] == 0.0 and m["fscore@0.2"] == 1.0
    assert m["normal_consistency"] > 0.99


def test_identical_meshes_perfect_scores():
    box = trimesh.creation.box(extents=(0.8, 0.6, 0.4))
    m = G.evaluate_geometry(box, box, n_points=20000, thresholds=(0.01, 0.02), iou_resolution=24)
    assert m["chamfer_l1"] < 8e-3  # only the two independent samplings differ
    assert m["fscore@0.02"] == 1.0
    assert m["normal_consistency"] > 0.97  # samples near box edges match the adjacent face
    assert m["volume_iou"] == 1.0


def test_known_translation_offset_planes_and_fscore_brackets():
    v, f = _plane(1.0, 0.0, n=4)
    t = 0.03
    v2 = v + [0, 0, t]  # parallel plane: every point is exactly t from the other plane
    p, _, _ = G.sample_surface(v, f, 60000, seed=0)
    q, _, _ = G.sample_surface(v2, f, 60000, seed=1)
    d1, _ = G.nearest_distances(p, q)
    d2, _ = G.nearest_distances(q, p)
    assert d1.min() >= t - 1e-12 and d2.min() >= t - 1e-12
    assert G.chamfer_distance(p, q, "l1") == pytest.approx(t, abs=2e-3)
    fs = G.f_score(d1, d2, [0.9 * t, 1.5 * t])
    assert fs[0.9 * t]["fscore"] == 0.0
    assert fs[1.5 * t]["fscore"] == 1.0 and fs[1.5 * t]["precision"] == 1.0


def test_fscore_values_by_hand():
    r = G.f_score([0.0, 0.1, 0.3, 0.5], [0.05, 0.4], [0.2])[0.2]
    assert r["precision"] == 0.5 and r["recall"] == 0.5 and r["fscore"] == 0.5
    r = G.f_score([0.0, 0.0, 0.0, 1.0], [1.0, 1.0], [0.2])[0.2]
    assert r["precision"] == 0.75 and r["recall"] == 0.0 and r["fscore"] == 0.0
    with pytest.raises(ValueError):
        G.f_score([0.1], [0.1], [0.0])


def test_normal_consistency_tilted_plane():
    v, f = _plane(1.0, 0.0, n=2)
    p, n_p, _ = G.sample_surface(v, f, 5000, seed=0)
    a = math.radians(30)
    R = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    q = p @ R.T
    n_q = n_p @ R.T
    assert G.normal_consistency(p, n_p, q, n_q) == pytest.approx(math.cos(a), abs=1e-12)
    assert G.normal_consistency(p, n_p, p, -n_p) == pytest.approx(1.0)
    assert G.normal_consistency(p, n_p, p, -n_p, oriented=True) == pytest.approx(-1.0)


def test_winding_number_cube_exact():
    box = trimesh.creation.box(extents=(1, 1, 1))
    pts = np.array([[0, 0, 0], [0.4, -0.3, 0.2], [0.6, 0, 0], [2, 2, 2], [0, 0, -0.51]])
    w = np.abs(G.winding_number(box.vertices, box.faces, pts))
    assert np.allclose(w, [1, 1, 0, 0, 0], atol=1e-9)


@pytest.mark.parametrize("method,tol,res", [("parity", 1e-9, 40), ("winding", 1e-9, 8), ("fill", 0.08, 40)])
def test_volume_iou_translated_cube(method, tol, res):
    a = trimesh.creation.box(extents=(1, 1, 1))
    b = a.copy()
    t = 0.25
    b.apply_translation([t, 0, 0])
    # grid aligned with the box faces (voxel size 2/res divides 0.25): the sampled IoU is exact
    iou = G.volume_iou(a, b, resolution=res, method=method, bounds=[[-0.75] * 3, [1.25] * 3])
    assert iou == pytest.approx((1 - t) / (1 + t), abs=tol)


def test_volume_iou_nested_spheres_matches_volume_ratio():
    s = trimesh.creation.icosphere(subdivisions=3, radius=0.5)
    t = trimesh.creation.icosphere(subdivisions=3, radius=0.35)
    iou = G.volume_iou(s, t, resolution=40, bounds=[[-0.55] * 3, [0.55] * 3])
    assert iou == pytest.approx(t.volume / s.volume, abs=0.03)
    assert t.volume / s.volume == pytest.approx(0.35 ** 3 / 0.5 ** 3, rel=1e-9)


def test_frames_rotation_and_normalisation():
    from pixal3d.conditioning.camera import R_BACK
    box = trimesh.creation.box(extents=(0.8, 0.4, 0.2))
    v_view = G.align_to_frame(box.vertices, R_BACK)  # canonical -> view frame
    assert np.allclose(v_view.max(0), [0.4, 0.1, 0.2])
    m = G.evaluate_geometry((v_view, box.faces), box, n_points=5000, pred_rotation=R_BACK.T,
                            iou_resolution=16, thresholds=(0.05,))
    assert m["fscore@0.05"] == 1.0 and m["chamfer_l1"] < 0.01 and m["volume_iou"] == 1.0
    # without the rotation the shapes disagree
    m2 = G.evaluate_geometry((v_view, box.faces), box, n_points=5000, iou_resolution=None, thresholds=(0.05,))
    assert m2["chamfer_l1"] > 0.05
    with pytest.raises(ValueError):
        G.align_to_frame(box.vertices, np.diag([1.0, 1.0, -1.0]))
    vn, c, s = G.normalize_to_unit_cube(box.vertices * 3 + 7)
    assert np.allclose(vn.max(0) - vn.min(0), [1, 0.5, 0.25]) and np.allclose(c, 7)
    # 'each' normalisation removes a global scale+shift error; 'gt' keeps it measurable
    big = (box.vertices * 2 + 1, box.faces)
    assert G.evaluate_geometry(big, box, 5000, normalize="each", iou_resolution=None)["chamfer_l1"] < 0.01
    assert G.evaluate_geometry(big, box, 5000, normalize="gt", iou_resolution=None)["chamfer_l1"] > 0.5


def test_bad_inputs():
    with pytest.raises(ValueError):
        G.as_mesh_arrays(vertices=np.zeros((3, 2)), faces=[[0, 1, 2]])
    with pytest.raises(ValueError):
        G.as_mesh_arrays(vertices=np.zeros((3, 3)), faces=[[0, 1, 3]])
    with pytest.raises(ValueError):
        G.occupancy(np.eye(3), [[0, 1, 2]], [[0, 0, 0], [0, 1, 1]])
    with pytest.raises(ValueError):
        G.occupancy(np.eye(3), [[0, 1, 2]], [[0, 0, 0], [1, 1, 1]], method="rays")


def test_chamfer_floor_reported_and_shrinks_with_samples():
    box = trimesh.creation.box(extents=(1, 1, 1))
    a = G.evaluate_geometry(box, box, n_points=2000, iou_resolution=None)["chamfer_l1_floor"]
    b = G.evaluate_geometry(box, box, n_points=32000, iou_resolution=None)["chamfer_l1_floor"]
    # nearest-neighbour spacing scales as n^-1/2: 16x the samples -> ~1/4 of the floor
    assert 0.15 < b / a < 0.35
    m = G.evaluate_geometry(box, box, n_points=2000, iou_resolution=None)
    assert m["chamfer_l1"] == pytest.approx(a, rel=0.15)  # identical meshes score at the floor
