"""Input image preprocessing for the image-to-3D pipelines (PIXAL3D_SPEC §6.2, TRELLIS2_SPEC §4.3).

Steps: load -> (max side <= 1024, LANCZOS) -> alpha from the image if it has real transparency, else from the
background-removal callable (or a classical GrabCut fallback, with a warning) -> bbox of ``alpha > 0.8*255`` ->
square crop of ``int(crop_scale * max(bbox w, h))`` around the bbox centre (PIL pads with transparent black) ->
composite on ``bg_color``. Pixal3D uses ``crop_scale=1.1``, TRELLIS.2 ``1.0``; both composite on black.
``crop_scale=None`` skips the crop: for renders whose own camera is known (a crop would change that camera).
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = ["load_image", "preprocess_image", "grabcut_foreground", "PIXAL3D_CROP_SCALE", "TRELLIS2_CROP_SCALE"]

PIXAL3D_CROP_SCALE = 1.1
TRELLIS2_CROP_SCALE = 1.0
_MAX_SIDE = 1024

ImageLike = Union[str, os.PathLike, Image.Image]


def _to_8bit(img: Image.Image) -> Image.Image:
    """Normalises exotic modes to RGB/RGBA (16-bit and float grey are rescaled, not clipped)."""
    mode = img.mode
    if mode in ("RGB", "RGBA"):
        return img
    if mode.startswith("I") or mode == "F":
        arr = np.asarray(img).astype(np.float64)
        if mode == "F" and arr.size and arr.max() <= 1.0:
            arr = arr * 255.0
        elif arr.size and arr.max() > 255:
            arr = arr / 257.0  # 16-bit range 0..65535 -> 0..255
        return Image.fromarray(np.clip(np.round(arr), 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode in ("LA", "La", "PA", "RGBa") or (mode == "P" and "transparency" in img.info):
        return img.convert("RGBA")
    return img.convert("RGB")


def load_image(image: ImageLike) -> Image.Image:
    """Opens a path (PNG/JPEG/WebP/...) or takes a PIL image, returning an RGB or RGBA PIL image.

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: the path is a directory, an empty file, or not a readable image (corrupt/truncated/not an image).
        TypeError: ``image`` is neither a path nor a PIL image.
    """
    if isinstance(image, Image.Image):
        img = image
        img.load()
    elif isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.exists():
            raise FileNotFoundError(f"image file not found: {path}")
        if path.is_dir():
            raise ValueError(f"{path} is a directory, not an image file")
        if path.stat().st_size == 0:
            raise ValueError(f"image file {path} is empty (0 bytes)")
        try:
            with Image.open(path) as opened:
                opened.load()
                img = opened.copy()
        except UnidentifiedImageError as e:
            raise ValueError(f"{path} is not a readable image (supported: PNG, JPEG, WebP, ...)") from e
        except (OSError, SyntaxError) as e:
            raise ValueError(f"{path} is a corrupt or truncated image: {e}") from e
    else:
        raise TypeError(f"image must be a file path or a PIL.Image, got {type(image).__name__}")
    if img.width == 0 or img.height == 0:
        raise ValueError(f"image has zero size {img.size}")
    return _to_8bit(img)


def grabcut_foreground(image: Image.Image, border: float = 0.03, iterations: int = 5,
                       work_side: int = 320) -> Image.Image:
    """Classical background removal: OpenCV GrabCut seeded with the image border as definite background.

    A stand-in for the learned remover (BiRefNet / RMBG-2.0) when none is configured: fine for objects on plain or
    studio backgrounds, poor on cluttered photos. Runs on a copy downscaled to ``work_side`` for speed.

    Args:
        image: RGB PIL image.
        border: width of the background seed band as a fraction of the shorter side.

    Returns:
        RGBA PIL image of the input with the estimated alpha (0 or 255, lightly smoothed at edges).
    """
    import cv2

    rgb = np.asarray(image.convert("RGB"))
    h, w = rgb.shape[:2]
    s = min(1.0, work_side / max(h, w))
    small = cv2.resize(rgb, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA) \
        if s < 1 else rgb
    sh, sw = small.shape[:2]
    band = max(1, int(round(border * min(sh, sw))))
    mask = np.full((sh, sw), cv2.GC_PR_FGD, np.uint8)
    mask[:band], mask[-band:], mask[:, :band], mask[:, -band:] = (cv2.GC_BGD,) * 4
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.grabCut(np.ascontiguousarray(small[..., ::-1]), mask, None, bgd, fgd, iterations, cv2.GC_INIT_WITH_MASK)
    fg = np.where((mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD), 255, 0).astype(np.uint8)
    if s < 1:
        fg = cv2.resize(fg, (w, h), interpolation=cv2.INTER_LINEAR)
    out = image.convert("RGB").copy()
    out.putalpha(Image.fromarray(fg, "L"))
    return out


def _apply_rembg(rembg: Callable, rgb: Image.Image) -> Image.Image:
    result = rembg(rgb)
    if isinstance(result, Image.Image):
        if result.size != rgb.size:
            raise ValueError(f"background remover returned size {result.size}, expected {rgb.size}")
        if result.mode == "RGBA":
            return result
        if result.mode == "L":
            out = rgb.copy()
            out.putalpha(result)
            return out
    raise TypeError("the background remover must return an RGBA image (or an 'L' mask) of the input's size, got "
                    f"{type(result).__name__} {getattr(result, 'mode', '')}")


def _bg_array(bg_color: Sequence) -> np.ndarray:
    if len(bg_color) != 3:
        raise ValueError(f"bg_color must have 3 components, got {bg_color!r}")
    if all(isinstance(c, (int, np.integer)) for c in bg_color):
        if not all(0 <= c <= 255 for c in bg_color):
            raise ValueError(f"integer bg_color components must be in 0..255, got {bg_color!r}")
        return np.asarray(bg_color, np.float32) / 255.0
    arr = np.asarray(bg_color, np.float32)
    if not ((arr >= 0) & (arr <= 1)).all():
        raise ValueError(f"float bg_color components must be in [0, 1], got {bg_color!r}")
    return arr


def preprocess_image(image: ImageLike, bg_color: Sequence = (0, 0, 0), crop_scale: Optional[float] = PIXAL3D_CROP_SCALE,
                     rembg: Optional[Callable[[Image.Image], Image.Image]] = None) -> Image.Image:
    """Cuts out, crops and composites one input image (PIXAL3D_SPEC §6.2; TRELLIS2_SPEC §4.3 with crop_scale=1.0).

    Args:
        image: path (PNG/JPEG/WebP...) or PIL image in any common mode (RGB, RGBA, L, LA, P, I;16, ...).
        bg_color: background, 3 ints in 0..255 or 3 floats in [0, 1]; black like the reference by default.
        crop_scale: square side = ``int(crop_scale * max(bbox w, bbox h))`` (Pixal3D 1.1, TRELLIS.2 1.0). ``None``
            keeps the whole image and its framing (only the cut-out and the composite run), which is what a known
            camera (``camera_angle_x``, ``distance``, ``mesh_scale`` of the render) needs.
        rembg: callable ``RGB PIL -> RGBA PIL`` (e.g. a BiRefNet wrapper) used when the image has no transparency;
            without it GrabCut (:func:`grabcut_foreground`) is used and a warning is issued.

    Returns:
        RGB PIL image, square when cropped (not resized; the extractors resize to 512/1024). Uncropped images keep
        their size (at most 1024 on the long side).

    Raises:
        FileNotFoundError/ValueError/TypeError: see :func:`load_image`; ValueError if no pixel has
        ``alpha > 0.8*255`` (nothing to reconstruct), on a bad ``crop_scale``/``bg_color``, or a non-square image
        with ``crop_scale=None``.
    """
    if crop_scale is not None and not crop_scale > 0:
        raise ValueError(f"crop_scale must be > 0 (or None for no crop), got {crop_scale!r}")
    bg = _bg_array(bg_color)
    img = load_image(image)
    has_alpha = img.mode == "RGBA" and np.asarray(img.getchannel("A")).min() < 255
    if max(img.size) > _MAX_SIDE:
        scale = _MAX_SIDE / max(img.size)
        img = img.resize((int(img.width * scale), int(img.height * scale)), Image.LANCZOS)
    if has_alpha:
        rgba = img
    elif rembg is not None:
        rgba = _apply_rembg(rembg, img.convert("RGB"))
    else:
        warnings.warn("no background remover configured (rembg=None) and the image has no transparency: using the "
                      "classical GrabCut fallback, which can fail on cluttered backgrounds; pass an RGBA cut-out or a "
                      "rembg callable (BiRefNet / RMBG-2.0) for reference-quality masks", RuntimeWarning, stacklevel=2)
        rgba = grabcut_foreground(img.convert("RGB"))
    alpha = np.asarray(rgba.getchannel("A"))
    ys, xs = np.nonzero(alpha > 0.8 * 255)
    if ys.size == 0:
        raise ValueError("no foreground found: no pixel has alpha > 0.8 (the image is fully transparent or the "
                         "background remover found no object)")
    if crop_scale is None:
        if rgba.width != rgba.height:
            # the projection assumes a square image whose centre is the principal point
            raise ValueError(f"an uncropped input (known camera) must be square, got {rgba.width}x{rgba.height}; "
                             "pad it symmetrically to a square (and widen camera_angle_x to match) or let the "
                             "pipeline crop it (no known camera)")
        arr = np.asarray(rgba.convert("RGBA"), dtype=np.float32) / 255.0
        a = arr[..., 3:4]
        return Image.fromarray(np.round((arr[..., :3] * a + bg * (1 - a)) * 255).astype(np.uint8), "RGB")
    x0, y0, x1, y1 = xs.min(), ys.min(), xs.max(), ys.max()
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    size = int(max(x1 - x0, y1 - y0) * crop_scale)
    # float box like the reference; PIL rounds it and pads outside the image with transparent black
    crop = rgba.crop((cx - size // 2, cy - size // 2, cx + size // 2, cy + size // 2))
    arr = np.asarray(crop, dtype=np.float32) / 255.0
    a = arr[..., 3:4]
    out = arr[..., :3] * a + bg * (1 - a)
    return Image.fromarray((out * 255).astype(np.uint8), "RGB")
