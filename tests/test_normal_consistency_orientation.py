"""Normal consistency vs face orientation (pixal3d.evaluation.geometry), on analytic meshes.

Pins down what a score near 0.5 means: the default (unoriented, ``|cos|``) metric ignores face winding, so flipped or
inconsistently wound meshes still score ≈ 1; 0.5 is the chance level of *uncorrelated* normal directions
(``E|cos θ| = 1/2`` for independent isotropic unit vectors). Also checks that the O-Voxel → mesh path
(``flexible_dual_grid_to_mesh``, arbitrary winding by design) scores ≈ 1 against its source, and that ``to_glb``
makes that mesh consistently outward.
"""
import numpy as np
import pytest
import trimesh

from pixal3d.evaluation import geometry as G

UNIT = [[-0.5] * 3, [0.5] * 3]


def _sphere(radius=0.4, sub=4):
    s = trimesh.creation.icosphere(subdivisions=sub, radius=radius)
    return np.asarray(s.vertices, np.float64), np.asarray(s.faces, np.int64)


def _nc(pred, gt, oriented=False, n=20000):
    return G.evaluate_geometry(pred, gt, n_points=n, iou_resolution=None, oriented_normals=oriented,
                               report_floor=False)["normal_consistency"]


def _outward_area_fraction(v, f):
    _, area, n = G._face_geometry(v, f)
    out = ((v[f].mean(1) - v.mean(0)) * n).sum(1) > 0
    return float((area * out).sum() / area.sum())


def test_sphere_same_flipped_scaled_random_winding():
    v, f = _sphere()
    assert _nc((v, f), (v, f)) > 0.999
    assert _nc((v, f), (v, f), oriented=True) > 0.999
    flipped = f[:, ::-1]
    assert _nc((v, flipped), (v, f)) > 0.999                    # unoriented: winding does not matter
    assert _nc((v, flipped), (v, f), oriented=True) < -0.999    # oriented: exactly reversed
    assert _nc((v * 1.02, f), (v, f)) > 0.999                   # concentric: same normals
    rng = np.random.default_rng(0)
    mixed = f.copy()
    m = rng.random(len(f)) < 0.5
    mixed[m] = mixed[m][:, ::-1]
    assert _nc((v, mixed), (v, f)) > 0.999                      # random per-face winding: still ≈ 1 unoriented
    assert abs(_nc((v, mixed), (v, f), oriented=True)) < 0.05   # ... and ≈ 0 (not 0.5) oriented


def test_chance_level_is_one_half():
    """0.5 = normals uncorrelated with the nearest neighbour's, not flipped ones."""
    v, f = _sphere()
    p, n, _ = G.sample_surface(v, f, 40000, seed=0)
    r = np.random.default_rng(1).normal(size=n.shape)
    r /= np.linalg.norm(r, axis=1, keepdims=True)
    assert G.normal_consistency(p, n, p, r) == pytest.approx(0.5, abs=0.01)
    # a soup of small randomly oriented triangles spread over the sphere's bbox scores the same
    rng = np.random.default_rng(2)
    c = rng.uniform(-0.4, 0.4, size=(4000, 1, 3))
    soup = (c + rng.normal(scale=0.02, size=(4000, 3, 3))).reshape(-1, 3)
    assert _nc((soup, np.arange(len(soup)).reshape(-1, 3)), (v, f)) == pytest.approx(0.5, abs=0.03)


def test_ovoxel_extraction_any_winding_but_consistent_after_to_glb():
    from pixal3d.ovoxel import flexible_dual_grid_to_mesh, mesh_to_flexible_dual_grid, to_glb
    from pixal3d.ovoxel.postprocess import ZUP_TO_YUP

    v, f = _sphere(0.35, sub=3)
    R = 32
    coords, dual, inter = mesh_to_flexible_dual_grid(v, f, grid_size=R, aabb=UNIT)
    mv, mf = flexible_dual_grid_to_mesh(coords, dual * R - coords.float(), inter, None, aabb=UNIT, grid_size=R)
    mv, mf = mv.double().numpy(), mf.numpy()
    used = np.unique(mf)
    remap = np.full(len(mv), -1, np.int64)
    remap[used] = np.arange(len(used))
    mv, mf = mv[used], remap[mf]
    # the dual-quad extraction has no inside/outside information: its winding is arbitrary (≈ half outward) ...
    assert 0.3 < _outward_area_fraction(mv, mf) < 0.7
    # ... which the unoriented metric ignores
    assert _nc((mv, mf), (v, f)) > 0.98
    out = to_glb(mv, mf, np.full((len(coords), 3), 0.5, np.float32), coords.numpy(),
                 {"base_color": slice(0, 3)}, aabb=UNIT, grid_size=R, decimation_target=4000, texture_size=16)
    gv, gf = np.asarray(out.vertices) @ ZUP_TO_YUP, np.asarray(out.faces)   # back to the Z-up voxel frame
    welded = trimesh.Trimesh(gv, gf, process=True)
    assert welded.is_winding_consistent and welded.volume > 0
    assert _outward_area_fraction(gv, gf) > 0.99
    assert _nc((gv, gf), (v, f), oriented=True) > 0.98
