"""Equirectangular environment maps and diffuse (Lambertian) image-based lighting.

Direction ↔ pixel convention (``up='z'``, the Blender / TRELLIS.2 canonical world):

* elevation ``β = asin(d_z)`` (−π/2 … π/2) maps to the row: ``row = (½ − β/π)·H`` (row 0 = straight up);
* azimuth ``φ = atan2(d_y, −d_x)`` (−π … π) maps to the column: ``col = (½ + φ/(2π))·W`` — the image centre column
  looks along −x, the left/right edges along +x, a quarter to the right of the centre along +y.

With ``up='y'`` (the Pixal3D view-aligned frame, PIXAL3D_SPEC §2.1) directions are first mapped to the Blender
world by ``(x, y, z) → (x, −z, y)``, so an HDRI lights an asset the same way in both frames. An extra world rotation
``R`` (``[3, 3]``, applied as ``d_env = R^T d``) turns the environment.

Diffuse lighting uses the order-2 spherical-harmonics irradiance approximation (Ramamoorthi & Hanrahan 2001): the
radiance is projected on the 9 real SH basis functions with per-pixel solid-angle weights
``(2π/W)(π/H)·cos β``, and ``E(n) = Σ_l A_l Σ_m L_lm Y_lm(n)`` with ``A_0 = π, A_1 = 2π/3, A_2 = π/4``. This is
exact for radiance of SH degree ≤ 2 and within ~3 % of the true irradiance for typical maps. Outgoing Lambertian
radiance is ``albedo · E(n) / π`` (a white surface under a uniform sky of radiance c looks exactly c).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

__all__ = ["EnvironmentMap", "load_hdr", "sh_basis"]


def load_hdr(path: Union[str, Path]) -> np.ndarray:
    """Read a Radiance ``.hdr`` or OpenEXR ``.exr`` image as linear float32 RGB ``[H, W, 3]``.

    Raises ``FileNotFoundError`` / ``ValueError`` (unsupported extension or unreadable file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"environment map not found: {path}")
    ext = path.suffix.lower()
    if ext not in (".hdr", ".exr"):
        raise ValueError(f"environment maps must be .hdr or .exr, got {path.name}")
    if ext == ".exr":
        os.environ.setdefault("OPENCV_IO_ENABLE_OPENEXR", "1")
    import cv2
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED | cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR)
    if img is None:
        try:
            import imageio.v3 as iio
            img = np.asarray(iio.imread(str(path)))[..., :3][..., ::-1]
        except Exception as exc:
            raise ValueError(f"could not read {path} (OpenCV returned nothing; EXR support needs "
                             f"OPENCV_IO_ENABLE_OPENEXR=1 before cv2 is first imported): {exc}") from exc
    img = np.asarray(img, dtype=np.float32)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, -1)
    img = img[..., :3][..., ::-1]  # BGR -> RGB
    if not np.isfinite(img).all():
        img = np.nan_to_num(img, nan=0.0, posinf=0.0, neginf=0.0)
    return np.ascontiguousarray(np.maximum(img, 0))


def sh_basis(d: torch.Tensor) -> torch.Tensor:
    """Real SH basis (bands 0–2) at unit directions ``[..., 3]`` → ``[..., 9]`` in the order
    ``Y00, Y1-1(y), Y10(z), Y11(x), Y2-2(xy), Y2-1(yz), Y20(3z²-1), Y21(xz), Y22(x²-y²)``."""
    x, y, z = d[..., 0], d[..., 1], d[..., 2]
    return torch.stack([
        torch.full_like(x, 0.282094791773878),
        0.488602511902920 * y, 0.488602511902920 * z, 0.488602511902920 * x,
        1.092548430592079 * x * y, 1.092548430592079 * y * z, 0.315391565252520 * (3 * z * z - 1),
        1.092548430592079 * x * z, 0.546274215296040 * (x * x - y * y),
    ], -1)


_A = torch.tensor([math.pi] + [2 * math.pi / 3] * 3 + [math.pi / 4] * 5, dtype=torch.float64)


class EnvironmentMap:
    """Equirectangular radiance map (module docstring for conventions).

    Args:
        image: float ``[H, W, 3]`` linear radiance (numpy or torch), ``W`` normally ``2H``.
        up: ``'z'`` (Blender/canonical world) or ``'y'`` (Pixal3D view-aligned frame).
        rotation: optional ``[3, 3]`` world rotation of the environment.
        intensity: scale applied to the radiance.
    """

    def __init__(self, image, up: str = "z", rotation=None, intensity: float = 1.0):
        img = torch.as_tensor(np.asarray(image.detach().cpu() if hasattr(image, "detach") else image,
                                         dtype=np.float64))
        if img.dim() != 3 or img.shape[2] != 3 or img.shape[0] < 2 or img.shape[1] < 2:
            raise ValueError(f"environment image must be [H, W, 3] with H, W >= 2, got {tuple(img.shape)}")
        if up not in ("z", "y"):
            raise ValueError(f"up must be 'z' (canonical Blender world) or 'y' (view-aligned frame), got {up!r}")
        self.image = img * float(intensity)
        self.up = up
        self.rotation = None if rotation is None else torch.as_tensor(np.asarray(rotation, dtype=np.float64))
        self._sh = None

    @classmethod
    def from_file(cls, path, up: str = "z", rotation=None, intensity: float = 1.0, max_height: Optional[int] = 256):
        """Load ``.hdr``/``.exr`` (see :func:`load_hdr`), area-downsampled to ``max_height`` rows (None: keep)."""
        img = load_hdr(path)
        if max_height and img.shape[0] > max_height:
            import cv2
            h = int(max_height)
            img = cv2.resize(img, (2 * h if img.shape[1] == 2 * img.shape[0] else
                                   round(img.shape[1] * h / img.shape[0]), h), interpolation=cv2.INTER_AREA)
        return cls(img, up=up, rotation=rotation, intensity=intensity)

    def _to_env(self, d: torch.Tensor) -> torch.Tensor:
        d = d.to(torch.float64)
        if self.rotation is not None:
            d = d @ self.rotation  # R^T d for row vectors
        if self.up == "y":
            d = torch.stack([d[..., 0], -d[..., 2], d[..., 1]], -1)
        return d / d.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    def _pixel_dirs(self) -> torch.Tensor:
        """Unit directions (env/Blender convention) of the pixel centres ``[H, W, 3]`` and the cos β weights."""
        H, W = self.image.shape[:2]
        beta = (0.5 - (torch.arange(H, dtype=torch.float64) + 0.5) / H) * math.pi
        phi = ((torch.arange(W, dtype=torch.float64) + 0.5) / W - 0.5) * 2 * math.pi
        B, P = torch.meshgrid(beta, phi, indexing="ij")
        # phi = atan2(d_y, -d_x): d_x = -cos β cos φ, d_y = cos β sin φ
        d = torch.stack([-torch.cos(B) * torch.cos(P), torch.cos(B) * torch.sin(P), torch.sin(B)], -1)
        return d, torch.cos(B)

    def radiance(self, dirs: torch.Tensor) -> torch.Tensor:
        """Bilinear radiance lookup (horizontal wrap, vertical clamp) along world directions ``[..., 3]`` →
        float64 ``[..., 3]``."""
        d = self._to_env(torch.as_tensor(dirs))
        H, W = self.image.shape[:2]
        beta = torch.asin(d[..., 2].clamp(-1, 1))
        phi = torch.atan2(d[..., 1], -d[..., 0])
        r = (0.5 - beta / math.pi) * H - 0.5
        c = (0.5 + phi / (2 * math.pi)) * W - 0.5
        r0, c0 = torch.floor(r), torch.floor(c)
        fr, fc = (r - r0)[..., None], (c - c0)[..., None]
        r0 = r0.long()
        c0 = c0.long()
        ra, rb = r0.clamp(0, H - 1), (r0 + 1).clamp(0, H - 1)
        ca, cb = c0 % W, (c0 + 1) % W
        img = self.image
        return ((1 - fr) * ((1 - fc) * img[ra, ca] + fc * img[ra, cb])
                + fr * ((1 - fc) * img[rb, ca] + fc * img[rb, cb]))

    def sh_coefficients(self) -> torch.Tensor:
        """Radiance SH coefficients ``[9, 3]`` float64 (env convention directions), cached."""
        if self._sh is None:
            H, W = self.image.shape[:2]
            d, cosb = self._pixel_dirs()
            dw = (2 * math.pi / W) * (math.pi / H) * cosb  # solid angle of each pixel
            Y = sh_basis(d)  # [H, W, 9]
            self._sh = torch.einsum("hwk,hwc,hw->kc", Y, self.image, dw)
        return self._sh

    def irradiance(self, normals: torch.Tensor) -> torch.Tensor:
        """Irradiance ``E(n) = ∫ L(ω) max(0, n·ω) dω`` (SH approximation) at world normals ``[..., 3]`` →
        float64 ``[..., 3]``."""
        n = self._to_env(torch.as_tensor(normals))
        return sh_basis(n) @ (self.sh_coefficients() * _A[:, None])

    def diffuse(self, albedo: torch.Tensor, normals: torch.Tensor) -> torch.Tensor:
        """Lambertian outgoing radiance ``albedo · E(n) / π`` (``albedo`` ``[..., 3]`` in [0, 1])."""
        return torch.as_tensor(albedo).to(torch.float64) * self.irradiance(normals) / math.pi
