"""Cameras for the renderers (TRELLIS2_SPEC §4.8; PIXAL3D_SPEC §2.1, §6.6).

Conventions (the utils3d ones TRELLIS.2 uses):

* **Extrinsics** ``E`` ``[4, 4]``: world → camera, **OpenCV camera frame** (x right, y down, z forward = viewing
  direction). A world point ``p`` has camera coordinates ``E @ [p, 1]``; its depth is the camera z.
* **Intrinsics** ``K`` ``[3, 3]``: **normalised** by the image size — ``[[fx, 0, cx], [0, fy, cy], [0, 0, 1]]`` with
  ``u = fx·x/z + cx`` in [0, 1] across the width (left → right) and ``v = fy·y/z + cy`` in [0, 1] down the height
  (top → bottom). Pixel (row i, column j) has its centre at ``u = (j + ½)/W``, ``v = (i + ½)/H``.
* **GL projection** (:func:`intrinsics_to_projection`, §4.8):
  ``[[2fx, 0, 2cx−1, 0], [0, 2fy, −2cy+1, 0], [0, 0, (f+n)/(f−n), 2nf/(n−f)], [0, 0, 1, 0]]`` applied to OpenCV
  camera coordinates: clip ``w = z``; NDC x = 2u − 1, NDC y = 2fy·y/z + 1 − 2cy, NDC z = −1 at z = near, +1 at
  z = far. For a centred principal point (cy = ½) NDC y = 2v − 1, i.e. the image top is NDC y = −1 = row 0 of an
  OpenGL/nvdiffrast raster, so rasterised images come out top row first without flipping. For cy ≠ ½ the formula (as
  in the reference) mirrors the principal point vertically; the nvdiffrast backend here therefore builds its own
  matrix with ``+2cy − 1`` so that it agrees with the CPU rasteriser for any intrinsics.

All functions take/return float64 torch tensors (inputs may be numpy, lists or tensors).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional

import numpy as np
import torch

__all__ = ["Camera", "extrinsics_look_at", "intrinsics_from_fov", "intrinsics_to_projection", "front_camera",
           "orbit_cameras", "blender_c2w_to_extrinsics"]


def _vec(x, n, name) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x.detach().cpu() if hasattr(x, "detach") else x, dtype=np.float64))
    if t.shape != (n,):
        raise ValueError(f"{name} must have {n} components, got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} must be finite, got {t.tolist()}")
    return t


def extrinsics_look_at(eye, target, up) -> torch.Tensor:
    """World → OpenCV-camera extrinsics of a camera at ``eye`` looking at ``target`` with ``up`` pointing up in the
    image (``[4, 4]`` float64).

    Camera axes in world coordinates: ``z = normalize(target − eye)``, ``x = normalize(z × up)`` (image right),
    ``y = z × x`` (image down, i.e. opposite to ``up``'s projection).

    Raises:
        ValueError: ``eye == target`` or ``up`` parallel to the viewing direction.
    """
    eye, target, up = _vec(eye, 3, "eye"), _vec(target, 3, "target"), _vec(up, 3, "up")
    z = target - eye
    if z.norm() < 1e-12:
        raise ValueError("eye and target coincide; the viewing direction is undefined")
    z = z / z.norm()
    x = torch.linalg.cross(z, up)
    if x.norm() < 1e-9 * max(float(up.norm()), 1e-300):
        raise ValueError(f"up {up.tolist()} is parallel to the viewing direction {z.tolist()}")
    x = x / x.norm()
    y = torch.linalg.cross(z, x)
    R = torch.stack([x, y, z])  # rows = camera axes in world coordinates
    E = torch.eye(4, dtype=torch.float64)
    E[:3, :3] = R
    E[:3, 3] = -R @ eye
    return E


def intrinsics_from_fov(fov_x: float, fov_y: Optional[float] = None) -> torch.Tensor:
    """Normalised intrinsics with the principal point at the image centre: ``fx = 0.5/tan(fov_x/2)``,
    ``fy = 0.5/tan(fov_y/2)``, ``cx = cy = 0.5``. ``fov_y`` defaults to ``fov_x`` (square pixels on a square image).

    Raises ``ValueError`` unless every FOV is in (0, π) radians.
    """
    fov_y = fov_x if fov_y is None else fov_y
    for name, f in (("fov_x", fov_x), ("fov_y", fov_y)):
        if not (math.isfinite(float(f)) and 0 < float(f) < math.pi):
            raise ValueError(f"{name} must be in (0, pi) radians, got {f!r} (degrees? use math.radians)")
    K = torch.eye(3, dtype=torch.float64)
    K[0, 0] = 0.5 / math.tan(float(fov_x) / 2)
    K[1, 1] = 0.5 / math.tan(float(fov_y) / 2)
    K[0, 2] = K[1, 2] = 0.5
    return K


def intrinsics_to_projection(intrinsics, near: float, far: float) -> torch.Tensor:
    """OpenCV normalised intrinsics → GL projection matrix ``[4, 4]`` float64 (formula in the module docstring).

    Raises ``ValueError`` unless ``0 < near < far`` and ``intrinsics`` is ``[3, 3]``.
    """
    K = torch.as_tensor(np.asarray(intrinsics.detach().cpu() if hasattr(intrinsics, "detach") else intrinsics,
                                   dtype=np.float64))
    if K.shape != (3, 3):
        raise ValueError(f"intrinsics must be [3, 3], got {tuple(K.shape)}")
    if not (0 < near < far):
        raise ValueError(f"need 0 < near < far, got near={near}, far={far}")
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    P = torch.zeros(4, 4, dtype=torch.float64)
    P[0, 0] = 2 * fx
    P[0, 2] = 2 * cx - 1
    P[1, 1] = 2 * fy
    P[1, 2] = -2 * cy + 1
    P[2, 2] = (far + near) / (far - near)
    P[2, 3] = 2 * near * far / (near - far)
    P[3, 2] = 1.0
    return P


@dataclass
class Camera:
    """A pinhole camera: ``extrinsics`` ``[4, 4]`` world→OpenCV camera, ``intrinsics`` ``[3, 3]`` normalised,
    ``near``/``far`` clip distances along camera z (world units)."""
    extrinsics: torch.Tensor
    intrinsics: torch.Tensor
    near: float = 0.1
    far: float = 100.0

    def __post_init__(self):
        self.extrinsics = torch.as_tensor(np.asarray(self.extrinsics, dtype=np.float64)
                                          if not isinstance(self.extrinsics, torch.Tensor)
                                          else self.extrinsics.detach().cpu().double())
        self.intrinsics = torch.as_tensor(np.asarray(self.intrinsics, dtype=np.float64)
                                          if not isinstance(self.intrinsics, torch.Tensor)
                                          else self.intrinsics.detach().cpu().double())
        if self.extrinsics.shape != (4, 4) or self.intrinsics.shape != (3, 3):
            raise ValueError(f"extrinsics must be [4, 4] and intrinsics [3, 3], got {tuple(self.extrinsics.shape)}"
                             f" and {tuple(self.intrinsics.shape)}")
        if not (0 < self.near < self.far):
            raise ValueError(f"need 0 < near < far, got near={self.near}, far={self.far}")

    @property
    def position(self) -> torch.Tensor:
        """Camera centre in world coordinates ``[3]``."""
        R, t = self.extrinsics[:3, :3], self.extrinsics[:3, 3]
        return -R.T @ t

    def projection(self) -> torch.Tensor:
        """GL projection of :func:`intrinsics_to_projection`."""
        return intrinsics_to_projection(self.intrinsics, self.near, self.far)

    def world_to_camera(self, points: torch.Tensor) -> torch.Tensor:
        """``[N, 3]`` world points → OpenCV camera coordinates (same dtype as ``points``)."""
        E = self.extrinsics.to(points.dtype)
        return points @ E[:3, :3].T + E[:3, 3]


def front_camera(fov: float, distance: float, near: Optional[float] = None, far: Optional[float] = None) -> Camera:
    """The Pixal3D conditioning camera in the **view-aligned frame** (PIXAL3D_SPEC §2.1, §6.6 frame 0): at
    ``(0, 0, +distance)``, looking at the origin (−z), up +y, ``intrinsics_from_fov(fov, fov)``.
    ``near``/``far`` default to the app's ``max(0.01, d − 2)`` and ``d + 10``."""
    if not distance > 0:
        raise ValueError(f"distance must be > 0, got {distance}")
    E = extrinsics_look_at([0, 0, distance], [0, 0, 0], [0, 1, 0])
    return Camera(E, intrinsics_from_fov(fov, fov),
                  max(0.01, distance - 2) if near is None else near, distance + 10 if far is None else far)


def orbit_cameras(fov: float, distance: float, num_views: int = 8, near: Optional[float] = None,
                  far: Optional[float] = None) -> List[Camera]:
    """§6.6 preview cameras: view k sees the world rotated by ``2πk/num_views`` about +y, i.e. the front camera
    composed with that rotation (``E_k = E_front · Rot_y(2πk/n)``). View 0 is :func:`front_camera`."""
    base = front_camera(fov, distance, near, far)
    cams = []
    for k in range(int(num_views)):
        a = 2 * math.pi * k / num_views
        Ry = torch.tensor([[math.cos(a), 0, math.sin(a), 0], [0, 1, 0, 0], [-math.sin(a), 0, math.cos(a), 0],
                           [0, 0, 0, 1]], dtype=torch.float64)
        cams.append(Camera(base.extrinsics @ Ry, base.intrinsics.clone(), base.near, base.far))
    return cams


def blender_c2w_to_extrinsics(c2w) -> torch.Tensor:
    """Blender camera-to-world (camera looks along local −Z, +Y up; ``transforms.json``) → world→OpenCV-camera
    extrinsics in the same world frame: ``E = inv(c2w · diag(1, −1, −1, 1))``."""
    C = torch.as_tensor(np.asarray(c2w.detach().cpu() if hasattr(c2w, "detach") else c2w, dtype=np.float64))
    if C.shape != (4, 4):
        raise ValueError(f"c2w must be [4, 4], got {tuple(C.shape)}")
    return torch.linalg.inv(C @ torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64)))
