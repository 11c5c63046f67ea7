"""Pixal3D camera model and frames (PIXAL3D_SPEC §2.1, §2.3, §7.2).

Frames used here:

* **Blender world**: Z up, objects normalised into ``[-0.5, 0.5]^3``; cameras are camera-to-world 4x4 matrices in the
  Blender convention (camera looks along its local -Z, local +Y is up).
* **View-aligned voxel frame** (every Pixal3D latent and output mesh): +x = image right, +y = image up, +z = towards the
  conditioning camera, which sits at ``(0, 0, +d)``. It is obtained from Blender world by ``R_back: (x,y,z) -> (x,z,-y)``.

All matrices are returned as float64 numpy arrays; they are tiny and exactness matters more than speed.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = [
    "DEFAULT_FOV",
    "DEFAULT_DISTANCE",
    "MANUAL_FOV_HINT",
    "R_BACK",
    "R_BLENDER_FROM_VIEW",
    "front_camera_matrix",
    "distance_from_fov",
    "fov_from_normalized_intrinsics",
    "view_alignment_transform",
]

#: Horizontal FOV (radians) the reference feature extractors fall back to when called without a camera:
#: ``2*atan(16/35)`` (a 35 mm lens on Blender's 32 mm sensor) as the float32-rounded literal the reference uses
#: (PIXAL3D_SPEC §2.3, last table row).
DEFAULT_FOV: float = 0.8575560450553894
#: Camera distance paired with :data:`DEFAULT_FOV` in those same fallbacks (PIXAL3D_SPEC §2.3).
DEFAULT_DISTANCE: float = 2.0
#: FOV (radians) the official web UI suggests when the automatic (MoGe-2) estimate distorts the result.
MANUAL_FOV_HINT: float = 0.2

#: Blender world -> view-aligned voxel frame, ``(x, y, z) -> (x, z, -y)`` (PIXAL3D_SPEC §2.1).
R_BACK = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])
#: View-aligned voxel frame -> Blender world, ``(x, y, z) -> (x, -z, y)``; the rotation inside ``ProjGrid``.
R_BLENDER_FROM_VIEW = R_BACK.T.copy()


def _check_fov(fov) -> float:
    fov = float(fov)
    if not math.isfinite(fov) or not 0.0 < fov < math.pi:
        raise ValueError(f"fov must be a horizontal field of view in radians within (0, pi); got {fov!r} "
                         "(did you pass degrees? use math.radians)")
    return fov


def front_camera_matrix(distance: float) -> np.ndarray:
    """The canonical front camera ``F(d)`` as a camera-to-world matrix in Blender world (PIXAL3D_SPEC §2.1).

    The camera sits at world ``(0, -d, 0)``, looks along +Y and has +Z as its up axis.

    Args:
        distance: ``d`` > 0, in the same units as the world (unit-cube normalised objects).

    Returns:
        ``[4, 4]`` float64 array ``[[1,0,0,0],[0,0,-1,-d],[0,1,0,0],[0,0,0,1]]``.

    Raises:
        ValueError: ``distance`` is not a finite positive number.
    """
    d = float(distance)
    if not math.isfinite(d) or d <= 0:
        raise ValueError(f"distance must be finite and > 0, got {distance!r}")
    return np.array([[1.0, 0.0, 0.0, 0.0],
                     [0.0, 0.0, -1.0, -d],
                     [0.0, 1.0, 0.0, 0.0],
                     [0.0, 0.0, 0.0, 1.0]])


def distance_from_fov(fov: float, mesh_scale: float = 1.0, extend_pixel: float = 0,
                      image_resolution: int = 512) -> float:
    """Camera distance at which the cube's mid-plane spans the image width (PIXAL3D_SPEC §2.3, inference rows).

    The grid point ``(-1, 0, 0)`` of the view frame (world ``x_w = -0.5/mesh_scale``, depth offset ``y_w = 0``) is put
    on pixel column ``x_t = -extend_pixel`` of an ``S = image_resolution`` image with pinhole focal length
    ``f = S / (2 tan(fov/2))``: ``d = f * x_w / (x_t - S/2) - y_w``. With the defaults this is ``1 / (2 tan(fov/2))``.

    Args:
        fov: horizontal field of view in radians, in (0, pi).
        mesh_scale: the ``mesh_scale`` later given to ``ProjGrid`` (> 0).
        extend_pixel: pixels of margin beyond the left image border (>= 0 shrinks the object in the image).
        image_resolution: ``S`` in pixels.

    Returns:
        The distance as a Python float (float64 maths; the reference does this in float32).

    Raises:
        ValueError: non-positive/infinite ``fov``, ``mesh_scale`` or ``image_resolution``, or a target pixel that
            lands on the image centre (``extend_pixel == -S/2``).
    """
    fov = _check_fov(fov)
    if not mesh_scale > 0 or not math.isfinite(mesh_scale):
        raise ValueError(f"mesh_scale must be finite and > 0, got {mesh_scale!r}")
    if int(image_resolution) <= 0:
        raise ValueError(f"image_resolution must be a positive pixel count, got {image_resolution!r}")
    s = float(image_resolution)
    f_px = s / (2.0 * math.tan(fov / 2.0))
    x_w, y_w = -0.5 / mesh_scale, 0.0
    x_t = 0.0 - float(extend_pixel)
    if x_t - s / 2.0 == 0.0:
        raise ValueError("extend_pixel puts the target on the image centre; the distance is undefined")
    return f_px * x_w / (x_t - s / 2.0) - y_w


def fov_from_normalized_intrinsics(k_norm) -> float:
    """Horizontal FOV from a normalised intrinsics matrix (MoGe-2 ``intrinsics`` output; PIXAL3D_SPEC §2.3).

    ``fov = 2 atan(1 / (2 K[0,0]))`` where ``K[0,0] = fx / W``.

    Args:
        k_norm: ``[3, 3]`` array-like (numpy or torch) normalised by image width/height.

    Raises:
        ValueError: the shape is wrong or ``K[0,0]`` is not positive.
    """
    k = np.asarray(k_norm.detach().cpu() if hasattr(k_norm, "detach") else k_norm, dtype=np.float64)
    if k.shape[-2:] != (3, 3):
        raise ValueError(f"normalised intrinsics must be [3, 3], got shape {k.shape}")
    fx = float(k.reshape(-1, 3, 3)[0, 0, 0])
    if not fx > 0:
        raise ValueError(f"normalised focal length K[0,0] must be > 0, got {fx}")
    return 2.0 * math.atan(1.0 / (2.0 * fx))


def view_alignment_transform(c2w) -> np.ndarray:
    """Rotation taking a Blender-world object into the view-aligned frame of one render (PIXAL3D_SPEC §7.2).

    ``T_final = R_back · F(r) · inv(C)`` with ``r = ||C[:3, 3]||``. For a render camera that looks at the origin this is
    a pure rotation (det +1, zero translation) that maps the camera centre to ``(0, 0, r)``, the camera's right axis to
    +x and its up axis to +y. Apply it to vertices as ``v' = T[:3,:3] v + T[:3,3]`` and to normals with ``T[:3,:3]``.

    Args:
        c2w: ``[4, 4]`` camera-to-world matrix (Blender convention; ``transforms.json`` ``transform_matrix``),
            numpy array, nested list or torch tensor.

    Returns:
        ``[4, 4]`` float64 array.

    Raises:
        ValueError: wrong shape, non-finite values, a camera at the origin, or a rotation block that is not
            orthonormal with det +1 (not a rigid camera pose).
    """
    c = np.asarray(c2w.detach().cpu() if hasattr(c2w, "detach") else c2w, dtype=np.float64)
    if c.shape != (4, 4):
        raise ValueError(f"c2w must be a [4, 4] camera-to-world matrix, got shape {c.shape}")
    if not np.isfinite(c).all():
        raise ValueError("c2w contains non-finite values")
    rot = c[:3, :3]
    if not np.allclose(rot.T @ rot, np.eye(3), atol=1e-5) or np.linalg.det(rot) < 0:
        raise ValueError("c2w[:3, :3] is not a rotation (orthonormal, det +1); pass a rigid camera-to-world pose "
                         "without scale")
    r = float(np.linalg.norm(c[:3, 3]))
    if r <= 0:
        raise ValueError("the camera sits at the origin; its distance r = ||c2w[:3, 3]|| must be > 0")
    r_back = np.eye(4)
    r_back[:3, :3] = R_BACK
    return r_back @ front_camera_matrix(r) @ np.linalg.inv(c)
