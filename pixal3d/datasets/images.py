"""Condition images from ``render_cond/{sha256}/transforms.json`` (TRELLIS2_SPEC §5.5, PIXAL3D_SPEC §7.5).

``transforms.json``: ``{"frames": [{"file_path": "000.png", "camera_angle_x": rad, "transform_matrix": 4×4
camera-to-world (Blender)}, ...], "camera_angle_x": rad (fallback)}``; images are RGBA.
"""
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .base import DatasetError

__all__ = ["read_transforms", "load_cond_image_crop", "load_cond_image_view", "frame_camera"]


def read_transforms(folder: Path) -> dict:
    """Parsed ``{folder}/transforms.json``.

    Raises:
        DatasetError: file missing or without ``frames``.
    """
    path = Path(folder) / "transforms.json"
    if not path.is_file():
        raise DatasetError(f"{path} is missing (render the condition views first)")
    meta = json.loads(path.read_text())
    if not meta.get("frames"):
        raise DatasetError(f"{path} has no 'frames'")
    return meta


def _rgba(path: Path) -> Image.Image:
    if not path.is_file():
        raise DatasetError(f"condition image {path} is missing")
    return Image.open(path).convert("RGBA")


def _premultiplied_tensor(img: Image.Image) -> torch.Tensor:
    a = np.asarray(img, dtype=np.float32) / 255.0
    rgb = a[..., :3] * a[..., 3:4]
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))


def load_cond_image_crop(path: Path, image_size: int) -> torch.Tensor:
    """TRELLIS.2 training crop: bbox of ``alpha > 0``, square crop of half-size ``max(w, h)/2`` around the bbox centre
    (int truncation), LANCZOS resize to ``image_size``, RGB·alpha → float ``[3, S, S]`` in [0, 1].

    Raises:
        DatasetError: missing file or an empty alpha channel.
    """
    img = _rgba(Path(path))
    alpha = np.asarray(img)[..., 3]
    ys, xs = np.nonzero(alpha > 0)
    if xs.size == 0:
        raise DatasetError(f"{path} has an empty alpha channel")
    x0, x1, y0, y1 = xs.min(), xs.max(), ys.min(), ys.max()
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    half = max(x1 - x0, y1 - y0) / 2
    box = (int(cx - half), int(cy - half), int(cx + half), int(cy + half))
    img = img.crop(box).resize((image_size, image_size), Image.Resampling.LANCZOS)
    return _premultiplied_tensor(img)


def load_cond_image_view(path: Path, image_size: int) -> torch.Tensor:
    """Pixal3D view image: the whole render resized to ``image_size`` (LANCZOS, RGBA), RGB·alpha (black background)
    → float ``[3, S, S]`` in [0, 1]. No crop, so the camera of ``transforms.json`` stays valid."""
    img = _rgba(Path(path)).resize((image_size, image_size), Image.Resampling.LANCZOS)
    return _premultiplied_tensor(img)


def frame_camera(meta: dict, view: int) -> tuple:
    """``(camera_angle_x, camera_distance)`` of frame ``view``: the frame's FOV (else the top-level one) and
    ``‖transform_matrix[:3, 3]‖`` (PIXAL3D_SPEC §2.3).

    Raises:
        DatasetError: frame index out of range or FOV/matrix missing.
    """
    frames = meta["frames"]
    if not 0 <= view < len(frames):
        raise DatasetError(f"transforms.json has {len(frames)} frames, view {view} requested")
    fr = frames[view]
    fov = fr.get("camera_angle_x", meta.get("camera_angle_x"))
    if fov is None or "transform_matrix" not in fr:
        raise DatasetError(f"transforms.json frame {view} lacks camera_angle_x or transform_matrix")
    m = np.asarray(fr["transform_matrix"], dtype=np.float64)
    return float(fov), float(np.linalg.norm(m[:3, 3]))
