"""Camera model and frames (PIXAL3D_SPEC §2.1, §2.3, §7.2)."""
import math

import numpy as np
import pytest
import torch

from pixal3d.conditioning.camera import (DEFAULT_FOV, R_BACK, distance_from_fov, fov_from_normalized_intrinsics,
                                         front_camera_matrix, view_alignment_transform)


def _look_at_c2w(eye, up=(0.0, 0.0, 1.0)):
    """Blender-convention camera-to-world looking at the origin (local -Z forward, +Y up)."""
    eye = np.asarray(eye, float)
    fwd = -eye / np.linalg.norm(eye)
    right = np.cross(fwd, up)
    right /= np.linalg.norm(right)
    cam_up = np.cross(right, fwd)
    c = np.eye(4)
    c[:3, 0], c[:3, 1], c[:3, 2], c[:3, 3] = right, cam_up, -fwd, eye
    return c


def test_front_camera_position_and_axes():
    f = front_camera_matrix(2.5)
    np.testing.assert_array_equal(f, [[1, 0, 0, 0], [0, 0, -1, -2.5], [0, 1, 0, 0], [0, 0, 0, 1]])
    np.testing.assert_array_equal(f[:3, 3], [0, -2.5, 0])        # camera at (0, -d, 0)
    np.testing.assert_array_equal(-f[:3, 2], [0, 1, 0])          # looks along +Y
    np.testing.assert_array_equal(f[:3, 1], [0, 0, 1])           # up is +Z
    with pytest.raises(ValueError):
        front_camera_matrix(0.0)


def test_r_back_maps_blender_to_view_frame():
    np.testing.assert_array_equal(R_BACK @ [1, 2, 3], [1, 3, -2])
    # the front camera's centre lands on +z of the view frame
    np.testing.assert_array_equal(R_BACK @ front_camera_matrix(2.0)[:3, 3], [0, 0, 2])


def test_distance_from_fov():
    for fov in (0.2, 0.5, DEFAULT_FOV, 1.2):
        assert distance_from_fov(fov) == pytest.approx(1 / (2 * math.tan(fov / 2)), rel=1e-12)
    # the grid point (-1, 0, 0) (world x = -0.5/ms) must project onto pixel column -extend_pixel
    fov, ms, ext, s = 0.6, 0.8, 10, 512
    d = distance_from_fov(fov, mesh_scale=ms, extend_pixel=ext, image_resolution=s)
    f_px = s / (2 * math.tan(fov / 2))
    assert f_px * (-0.5 / ms) / d + s / 2 == pytest.approx(-ext, abs=1e-9)
    assert DEFAULT_FOV == pytest.approx(2 * math.atan(16 / 35), abs=1e-7)  # float32-rounded reference literal
    with pytest.raises(ValueError, match="radians"):
        distance_from_fov(40.0)
    with pytest.raises(ValueError):
        distance_from_fov(0.5, mesh_scale=0.0)


def test_fov_from_normalized_intrinsics():
    fov = 0.7
    k = np.array([[1 / (2 * math.tan(fov / 2)), 0, 0.5], [0, 1.0, 0.5], [0, 0, 1]])
    assert fov_from_normalized_intrinsics(k) == pytest.approx(fov, abs=1e-12)
    assert fov_from_normalized_intrinsics(torch.tensor(k)) == pytest.approx(fov, abs=1e-12)
    with pytest.raises(ValueError):
        fov_from_normalized_intrinsics(np.eye(2))


@pytest.mark.parametrize("eye", [(1.2, -2.0, 0.7), (-0.3, 0.4, -2.2), (0.0, -3.0, 0.0), (2.0, 1.0, 1.5)])
def test_view_alignment_transform_properties(eye):
    c = _look_at_c2w(eye)
    t = view_alignment_transform(c)
    r = np.linalg.norm(eye)
    rot = t[:3, :3]
    np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(rot) == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(t[:3, 3], 0, atol=1e-12)             # pure rotation about the origin
    np.testing.assert_allclose(t @ np.append(eye, 1), [0, 0, r, 1], atol=1e-12)
    np.testing.assert_allclose(rot @ c[:3, 0], [1, 0, 0], atol=1e-12)  # camera right -> +x
    np.testing.assert_allclose(rot @ c[:3, 1], [0, 1, 0], atol=1e-12)  # camera up -> +y
    np.testing.assert_allclose(t[3], [0, 0, 0, 1], atol=0)


def test_view_alignment_identity_for_front_camera_and_errors():
    # The canonical front camera itself needs no rotation beyond R_back
    t = view_alignment_transform(front_camera_matrix(3.0))
    np.testing.assert_allclose(t[:3, :3], R_BACK, atol=1e-12)
    with pytest.raises(ValueError, match="rotation"):
        view_alignment_transform(np.diag([2.0, 1, 1, 1]) @ _look_at_c2w((1, -2, 0.5)))
    with pytest.raises(ValueError):
        view_alignment_transform(np.eye(3))
