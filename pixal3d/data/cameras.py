"""Conditioning-render cameras and lights (TRELLIS2_SPEC §5.7 "Conditioning renders", PIXAL3D_SPEC §7.1).

Frame: Blender world (Z up), object inside ``[-0.5, 0.5]³``. Cameras are camera-to-world ``[4, 4]`` float64 matrices
in the Blender convention (camera looks along its local −Z, local +Y up), placed at
``r·(cos yaw cos pitch, sin yaw cos pitch, sin pitch)`` and aimed at the origin with world +Z as the up hint
(Blender's TRACK_TO constraint with up axis Y). Angles in radians, distances in world units.
"""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import numpy as np

__all__ = ["radical_inverse_2", "sphere_hammersley", "sample_view_fov", "camera_position", "look_at_c2w",
           "R_MIN", "R_MAX", "border_distance", "retry_radius", "sample_point_lights", "sample_views"]

_HALF_DIAG = math.sqrt(3.0) / 2.0
#: radius at which the unit cube's bounding sphere fills a 70° FOV, and a 10° FOV.
R_MIN = _HALF_DIAG / math.sin(math.radians(35.0))
R_MAX = _HALF_DIAG / math.sin(math.radians(5.0))


def radical_inverse_2(n: int) -> float:
    """Van der Corput radical inverse of ``n >= 0`` in base 2 (bit-reversed fraction)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    inv, f = 0.0, 0.5
    while n:
        if n & 1:
            inv += f
        n >>= 1
        f *= 0.5
    return inv


def sphere_hammersley(n: int, num: int, offset: Tuple[float, float]) -> Tuple[float, float]:
    """View ``n`` of ``num`` on the Hammersley sphere with a random ``offset`` ∈ [0, 1)² → ``(yaw, pitch)`` radians.

    ``u = n/N + o₀/N``, ``v = radical_inverse₂(n) + o₁``; ``u ← 2u`` if ``u < 0.25`` else ``2u/3 + 1/3``;
    ``pitch = acos(1 − 2u) − π/2`` (∈ [−π/2, π/2]), ``yaw = 2πv``.

    Raises:
        ValueError: ``n`` outside ``[0, num)``.
    """
    if not 0 <= n < num:
        raise ValueError(f"view index {n} outside [0, {num})")
    u = n / num + offset[0] / num
    v = radical_inverse_2(n) + offset[1]
    u = 2 * u if u < 0.25 else 2 * u / 3 + 1 / 3
    pitch = math.acos(max(-1.0, min(1.0, 1 - 2 * u))) - math.pi / 2
    return 2 * math.pi * v, pitch


def sample_view_fov(rng: np.random.Generator, r_min: float = R_MIN, r_max: float = R_MAX) -> Tuple[float, float]:
    """``k ~ U(1/r_max², 1/r_min²)``, ``r = 1/√k``, ``fov = 2·asin((√3/2)/r)`` → ``(fov radians, radius)``: the
    bounding sphere of the unit cube exactly fills the horizontal FOV (∈ [10°, 70°] by default)."""
    k = rng.uniform(1.0 / r_max ** 2, 1.0 / r_min ** 2)
    r = 1.0 / math.sqrt(k)
    return 2.0 * math.asin(_HALF_DIAG / r), r


def camera_position(yaw: float, pitch: float, radius: float) -> np.ndarray:
    """``radius·(cos yaw cos pitch, sin yaw cos pitch, sin pitch)`` as float64 ``[3]``."""
    return radius * np.array([math.cos(yaw) * math.cos(pitch), math.sin(yaw) * math.cos(pitch), math.sin(pitch)])


def look_at_c2w(position, target=(0.0, 0.0, 0.0)) -> np.ndarray:
    """Blender camera-to-world ``[4, 4]`` at ``position`` looking at ``target``: local −Z towards the target, local +Y
    as close to world +Z as possible (world +Y is the hint when looking straight up/down).

    Raises:
        ValueError: ``position == target``.
    """
    pos = np.asarray(position, np.float64)
    fwd = np.asarray(target, np.float64) - pos
    n = np.linalg.norm(fwd)
    if n == 0:
        raise ValueError("camera position equals its target")
    fwd /= n
    up_hint = np.array([0.0, 0.0, 1.0])
    right = np.cross(fwd, up_hint)
    if np.linalg.norm(right) < 1e-9:
        right = np.cross(fwd, np.array([0.0, 1.0, 0.0]))
    right /= np.linalg.norm(right)
    up = np.cross(right, fwd)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = right, up, -fwd, pos
    return m


def border_distance(alpha: np.ndarray) -> Optional[int]:
    """Smallest distance in pixels from an ``alpha > 0`` pixel to the image border (0 = touches it).

    Args:
        alpha: ``[H, W]`` array. Returns ``None`` for an empty mask.
    """
    a = np.asarray(alpha)
    ys, xs = np.nonzero(a > 0)
    if ys.size == 0:
        return None
    h, w = a.shape
    return int(min(ys.min(), xs.min(), h - 1 - ys.max(), w - 1 - xs.max()))


def retry_radius(radius: float, distance: Optional[int], max_distance: float) -> Tuple[float, bool]:
    """One step of the Pixal3D retry loop (PIXAL3D_SPEC §7.1) → ``(radius, accepted)``.

    Touching the border (``distance == 0``) → ``radius·1.1``; ``distance > max_distance`` pixels (130 at 1024²) or
    an empty render → ``radius·0.9``; otherwise accepted unchanged.
    """
    if distance is None or distance > max_distance:
        return radius * 0.9, False
    if distance <= 0:
        return radius * 1.1, False
    return radius, True


def sample_point_lights(rng: np.random.Generator, cam_dir: np.ndarray, total: float = 1.5
                        ) -> Tuple[List[dict], float]:
    """The reference's random point-light rig for one view → ``(lights, world_strength)``.

    1–3 white point lights, each at distance ``1/U(1/100, 1/10)`` in direction ``normalize(randn(3) + (0,0,0.6))``;
    with ``c = cam_dir·light_dir``: ``s = √U(0.01, 1)·total/(0.45c + 0.55)``, ``total −= s·max(0.5c + 0.5, 0)``;
    Blender energy ``s·distance²·31.4`` W, soft radius ``U(0.1, 0.1·distance)``. The world background is white with
    the remaining ``total`` as strength (clamped at 0).

    Returns:
        lights: dicts ``{'location': [3], 'energy': W, 'radius': m}``; world_strength: float.
    """
    d_cam = np.asarray(cam_dir, np.float64) / np.linalg.norm(cam_dir)
    lights = []
    for _ in range(int(rng.integers(1, 4))):
        dist = 1.0 / rng.uniform(1.0 / 100.0, 1.0 / 10.0)
        d = rng.standard_normal(3) + np.array([0.0, 0.0, 0.6])
        d /= np.linalg.norm(d)
        c = float(d_cam @ d)
        s = math.sqrt(rng.uniform(0.01, 1.0)) * total / (0.45 * c + 0.55)
        total -= s * max(0.5 * c + 0.5, 0.0)
        lights.append({"location": (d * dist).tolist(), "energy": s * dist ** 2 * 31.4,
                       "radius": float(rng.uniform(0.1, 0.1 * dist))})
    return lights, max(total, 0.0)


def sample_views(num_views: int, rng: np.random.Generator, fov_range_deg: Tuple[float, float] = (10.0, 70.0)
                 ) -> List[dict]:
    """Initial cameras of one asset: Hammersley yaw/pitch with one random offset, a random FOV per view.

    Returns:
        ``num_views`` dicts ``{'yaw', 'pitch', 'fov', 'radius', 'transform_matrix' ([4, 4] list)}``.
    """
    if num_views < 1:
        raise ValueError(f"num_views must be >= 1, got {num_views}")
    lo, hi = fov_range_deg
    if not 0 < lo <= hi < 180:
        raise ValueError(f"fov range must satisfy 0 < lo <= hi < 180 degrees, got {fov_range_deg}")
    r_min = _HALF_DIAG / math.sin(math.radians(hi) / 2)
    r_max = _HALF_DIAG / math.sin(math.radians(lo) / 2)
    offset = (float(rng.uniform()), float(rng.uniform()))
    out = []
    for n in range(num_views):
        yaw, pitch = sphere_hammersley(n, num_views, offset)
        fov, r = sample_view_fov(rng, r_min, r_max)
        out.append({"yaw": yaw, "pitch": pitch, "fov": fov, "radius": r,
                    "transform_matrix": look_at_c2w(camera_position(yaw, pitch, r)).tolist()})
    return out
