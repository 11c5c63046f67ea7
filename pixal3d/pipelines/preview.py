"""Turntable previews of a generated asset (PIXAL3D_SPEC §6.6) with :mod:`pixal3d.renderers`.

Cameras (:func:`~pixal3d.renderers.orbit_cameras`): frame 0 looks at the origin from ``(0, 0, +d)`` with up +Y and
horizontal FOV ``fov``, i.e. it reproduces the input view of a Pixal3D result (whose voxels live in the view-aligned
frame: +x image right, +y image up, +z towards the camera); frame ``k`` sees the world rotated by ``2πk/n`` about +Y.
TRELLIS.2 results live in the Z-up canonical frame whose front camera sits on −Y; they are first mapped into the same
view frame with ``R_back: (x, y, z) -> (x, z, −y)`` (PIXAL3D_SPEC §2.1), so both families get the same turntable.

Shading is a simple headlight: ``base_colour · (0.35 + 0.65 · n·v)`` (no environment map needed), composited on a
flat background. Output: a PNG grid of the frames, or an MP4 (needs the optional ``imageio-ffmpeg`` package).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch
from PIL import Image

__all__ = ["render_turntable", "frames_to_grid", "write_preview", "check_preview_path", "PREVIEW_SUFFIXES",
           "TRELLIS2_PREVIEW_FOV", "TRELLIS2_PREVIEW_DISTANCE"]

PREVIEW_SUFFIXES = (".png", ".mp4")
#: Camera of the TRELLIS.2 previews (its render utilities use a 40° FOV at radius 2).
TRELLIS2_PREVIEW_FOV = math.radians(40.0)
TRELLIS2_PREVIEW_DISTANCE = 2.0


def check_preview_path(path) -> Path:
    """Validates a preview path before any expensive work.

    Raises:
        ValueError: the suffix is not ``.png`` / ``.mp4``; RuntimeError: ``.mp4`` without ``imageio-ffmpeg``.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in PREVIEW_SUFFIXES:
        raise ValueError(f"the preview must be a .png (grid of frames) or .mp4 (turntable video), got {path.name!r}")
    if suffix == ".mp4":
        try:
            import imageio_ffmpeg  # noqa: F401 - optional dependency
        except ImportError as e:
            raise RuntimeError("an .mp4 preview needs the optional package imageio-ffmpeg "
                               "(`pip install imageio-ffmpeg`); or ask for a .png grid instead") from e
    return path


def render_turntable(mesh, fov: float, distance: float, num_frames: int = 8, resolution: int = 512,
                     frame: str = "pixal3d", background: Sequence[float] = (1.0, 1.0, 1.0), ssaa: int = 1,
                     backend: str = "auto", device: Optional[str] = None) -> List[np.ndarray]:
    """Renders ``num_frames`` views of a decoded asset around +Y.

    Args:
        mesh: a :class:`~pixal3d.ovoxel.mesh.MeshWithVoxel` (or anything :class:`~pixal3d.renderers.MeshRenderer`
            renders).
        fov: horizontal FOV in radians; distance: camera distance ``d`` (for Pixal3D the conditioning camera's).
        frame: ``'pixal3d'`` (view-aligned voxel frame) or ``'trellis2'`` (Z-up canonical frame).
        background: RGB in [0, 1]; ssaa: supersampling factor; backend/device: see ``MeshRenderer``.

    Returns:
        ``num_frames`` uint8 ``[resolution, resolution, 3]`` arrays, frame 0 = the input view.

    Raises:
        ValueError: bad ``frame``, ``num_frames`` or camera values.
    """
    from ..conditioning.camera import R_BACK
    from ..renderers import Camera, MeshRenderer, orbit_cameras

    if frame not in ("pixal3d", "trellis2"):
        raise ValueError(f"frame must be 'pixal3d' or 'trellis2', got {frame!r}")
    if int(num_frames) < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if not 0 < fov < math.pi:
        raise ValueError(f"fov must be in (0, pi) radians, got {fov}")
    renderer = MeshRenderer(resolution=resolution, ssaa=ssaa, backend=backend, device=device)
    bg = torch.tensor(background, dtype=torch.float32)
    to_view = torch.eye(4, dtype=torch.float64)
    if frame == "trellis2":
        to_view[:3, :3] = torch.as_tensor(R_BACK)
    frames = []
    for cam in orbit_cameras(fov, distance, int(num_frames)):
        cam = Camera(cam.extrinsics @ to_view, cam.intrinsics, cam.near, cam.far)
        out = renderer.render(mesh, cam, return_types=("mask", "normal", "base_color"))
        mask = out["mask"].cpu()[..., None]
        facing = (2 * out["normal"].cpu()[..., 2:3] - 1).clamp(0, 1)  # away-from-camera normal · view axis
        rgb = out["base_color"].cpu() * (0.35 + 0.65 * facing)
        img = rgb * mask + bg * (1 - mask)
        frames.append((img.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy())
    return frames


def frames_to_grid(frames: Sequence[np.ndarray], cols: int = 4) -> Image.Image:
    """Tiles equally sized ``[H, W, 3]`` uint8 frames row by row (frame 0 top-left) into one RGB image."""
    if not frames:
        raise ValueError("no frames to tile")
    h, w = frames[0].shape[:2]
    cols = max(1, min(int(cols), len(frames)))
    rows = math.ceil(len(frames) / cols)
    grid = np.zeros((rows * h, cols * w, 3), np.uint8)
    grid[...] = 255
    for i, f in enumerate(frames):
        r, c = divmod(i, cols)
        grid[r * h:(r + 1) * h, c * w:(c + 1) * w] = f
    return Image.fromarray(grid, "RGB")


def write_preview(path, frames: Sequence[np.ndarray], fps: int = 24) -> Path:
    """Writes ``frames`` as a PNG grid (4 per row) or an H.264 MP4 (``imageio-ffmpeg``), chosen by the suffix.

    Raises:
        ValueError / RuntimeError: see :func:`check_preview_path`.
    """
    path = check_preview_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".png":
        frames_to_grid(frames).save(path)
        return path
    import imageio_ffmpeg

    h, w = frames[0].shape[:2]
    writer = imageio_ffmpeg.write_frames(str(path), (w, h), fps=fps, codec="libx264", pix_fmt_out="yuv420p",
                                         macro_block_size=2)
    writer.send(None)
    try:
        for f in frames:
            writer.send(np.ascontiguousarray(f))
    finally:
        writer.close()
    return path
