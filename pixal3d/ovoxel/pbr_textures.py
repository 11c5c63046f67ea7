"""PBR material extraction from trimesh and the reference texture sampler (TRELLIS2_SPEC §3.5).

The sampler reproduces ``o-voxel/src/convert/volumetic_attr.cpp``: texel lookup ``x = u·W, y = (1 − v)·H``, NEAREST
(``floor``) or LINEAR (bilinear, texel centres at +0.5), wrap modes 0 repeat / 1 clamp-to-edge / 2 mirrored repeat, and
trilinear mip selection ``level = log2(mip_length·H) + offset`` over a mip chain built by 2×2 box averages with integer
truncation. Texture values are read as stored (no sRGB decoding), exactly as the reference does.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import List, Optional

import numpy as np

FILTER_NEAREST, FILTER_LINEAR = 0, 1
WRAP_REPEAT, WRAP_CLAMP, WRAP_MIRROR = 0, 1, 2
ALPHA_MODES = {"OPAQUE": 0, "MASK": 1, "BLEND": 2}


@dataclass
class VoxelMaterial:
    """One material in the form the voxeliser consumes (§3.5, the reference's per-material buffers).

    Factors are floats in [0, 1] (colour factors ``float64 [3]``). Textures are ``uint8`` arrays ``[H, W, C]`` (C = 3
    for base colour / emissive / normal, 1 for metallic / roughness / alpha) or ``None``; a missing texture reads as 1.
    ``alpha_mode`` is 0 OPAQUE, 1 MASK, 2 BLEND. All textures use LINEAR filtering and REPEAT wrap unless the
    ``*_filter`` / ``*_wrap`` fields say otherwise.
    """
    base_color_factor: np.ndarray
    metallic_factor: float
    roughness_factor: float
    emissive_factor: np.ndarray
    alpha_mode: int
    alpha_cutoff: float
    alpha_factor: float
    base_color_texture: Optional[np.ndarray] = None
    metallic_texture: Optional[np.ndarray] = None
    roughness_texture: Optional[np.ndarray] = None
    emissive_texture: Optional[np.ndarray] = None
    alpha_texture: Optional[np.ndarray] = None
    normal_texture: Optional[np.ndarray] = None
    filter: int = FILTER_LINEAR
    wrap: int = WRAP_REPEAT


def default_material() -> VoxelMaterial:
    """The data toolkit's fallback material: base colour 0.8, metallic 0, roughness 0.5, alpha 1, OPAQUE (§3.5)."""
    return VoxelMaterial(base_color_factor=np.full(3, 0.8), metallic_factor=0.0, roughness_factor=0.5,
                         emissive_factor=np.zeros(3), alpha_mode=0, alpha_cutoff=0.5, alpha_factor=1.0)


def _is_pow2(n: int) -> bool:
    return n > 0 and (n & (n - 1)) == 0


def _nearest_pow2(n: int) -> int:
    lower = 1 << (n.bit_length() - 1)
    return lower if n - lower < 2 * lower - n else 2 * lower


def _image_array(image, mode: str, name: str) -> np.ndarray:
    """PIL image → ``uint8 [H, W, C]`` in ``mode``, resized to a power-of-two square when needed.

    The reference's ``build_mipmaps`` throws for LINEAR textures that are not power-of-two squares; rather than fail
    we resize them with LANCZOS to the nearest power of two, as the reference's Blender-dump path does (§3.5).
    """
    from PIL import Image
    image = image.convert(mode)
    w, h = image.size
    if w != h or not _is_pow2(w):
        side = _nearest_pow2(max(w, h))
        warnings.warn(f"{name} texture is {w}x{h}, not a power-of-two square; resizing to {side}x{side} "
                      "(the reference C++ kernel would reject it)", stacklevel=3)
        image = image.resize((side, side), Image.LANCZOS)
    arr = np.asarray(image, dtype=np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr


def material_from_trimesh(material) -> VoxelMaterial:
    """Convert a trimesh material to a :class:`VoxelMaterial` the way the reference reads it (§3.5).

    * ``PBRMaterial``: ``baseColorFactor/255`` (RGB; its A is the alpha factor), ``metallicFactor`` /
      ``roughnessFactor`` (``None`` → 1.0, as the reference), metallicRoughness texture **B = metallic, G =
      roughness**, emissive factor (``None`` → 0) and texture, alpha mode / cutoff (default OPAQUE / 0.5), the alpha
      texture = A of the base-colour texture (only read for MASK / BLEND), normal texture (tangent space).
    * ``SimpleMaterial`` (OBJ/MTL): converted with trimesh's ``to_pbr()`` (diffuse → base colour, glossiness →
      roughness); its metallic is set to 0 because an MTL diffuse surface is a dielectric (``to_pbr`` leaves it
      ``None``, which the reference would read as 1).
    * ``None`` or anything else: :func:`default_material`, with a warning.
    """
    import trimesh.visual.material as tm

    if isinstance(material, tm.SimpleMaterial):
        pbr = material.to_pbr()
        if pbr.metallicFactor is None:
            pbr.metallicFactor = 0.0
        material = pbr
    elif isinstance(material, tm.MultiMaterial):
        material = material.to_pbr()
    if not isinstance(material, tm.PBRMaterial):
        warnings.warn(f"material {type(material).__name__} is not supported; using the default material "
                      "(base colour 0.8, metallic 0, roughness 0.5)", stacklevel=2)
        return default_material()

    m = material
    bcf = np.asarray(m.baseColorFactor, dtype=np.float64) / 255.0 if m.baseColorFactor is not None else None
    alpha_mode = ALPHA_MODES.get(m.alphaMode, 0) if m.alphaMode is not None else 0
    out = VoxelMaterial(
        base_color_factor=bcf[:3] if bcf is not None else np.ones(3),
        metallic_factor=float(m.metallicFactor) if m.metallicFactor is not None else 1.0,
        roughness_factor=float(m.roughnessFactor) if m.roughnessFactor is not None else 1.0,
        emissive_factor=(np.asarray(m.emissiveFactor, dtype=np.float64)[:3] if m.emissiveFactor is not None
                         else np.zeros(3)),
        alpha_mode=alpha_mode,
        alpha_cutoff=float(m.alphaCutoff) if m.alphaCutoff is not None else 0.5,
        alpha_factor=float(bcf[3]) if bcf is not None and bcf.shape[0] > 3 else 1.0,
    )
    if m.baseColorTexture is not None:
        rgba = _image_array(m.baseColorTexture, "RGBA", "baseColor")
        out.base_color_texture = np.ascontiguousarray(rgba[..., :3])
        if alpha_mode != 0:
            out.alpha_texture = np.ascontiguousarray(rgba[..., 3:4])
    if m.metallicRoughnessTexture is not None:
        mr = _image_array(m.metallicRoughnessTexture, "RGB", "metallicRoughness")
        out.metallic_texture = np.ascontiguousarray(mr[..., 2:3])
        out.roughness_texture = np.ascontiguousarray(mr[..., 1:2])
    if m.emissiveTexture is not None:
        out.emissive_texture = _image_array(m.emissiveTexture, "RGB", "emissive")
    if m.normalTexture is not None:
        out.normal_texture = _image_array(m.normalTexture, "RGB", "normal")
    return out


def build_mipmaps(texture: np.ndarray) -> List[np.ndarray]:
    """Mip levels 1..k of a ``uint8 [S, S, C]`` power-of-two square texture (level 0 is the texture itself).

    Each level is the 2×2 box average of the previous one with integer truncation (``sum // 4``), down to 1×1,
    as the reference's ``build_mipmaps``. Raises ``ValueError`` for a non-square or non-power-of-two texture.
    """
    h, w = texture.shape[:2]
    if h != w or not _is_pow2(h):
        raise ValueError(f"mipmapped textures must be power-of-two squares, got {w}x{h}; resize it first")
    levels = []
    cur = texture
    while cur.shape[0] > 1:
        c = cur.astype(np.uint16)
        s = c[0::2, 0::2] + c[1::2, 0::2] + c[0::2, 1::2] + c[1::2, 1::2]
        cur = (s // 4).astype(np.uint8)
        levels.append(cur)
    return levels


def _wrap(i: np.ndarray, n: int, mode: int) -> np.ndarray:
    if mode == WRAP_CLAMP:
        return np.clip(i, 0, n - 1)
    if mode == WRAP_MIRROR:
        m = np.mod(i, 2 * n)
        return np.where(m < n, m, 2 * n - 1 - m)
    return np.mod(i, n)


def sample_texture(texture: np.ndarray, u: np.ndarray, v: np.ndarray, filter: int = FILTER_LINEAR,
                   wrap: int = WRAP_REPEAT) -> np.ndarray:
    """Sample a ``uint8 [H, W, C]`` texture at UVs ``u, v`` (float ``[M]``) → float64 ``[M, C]`` in [0, 1].

    ``x = u·W``, ``y = (1 − v)·H`` (glTF UV origin at the top-left of the image, v measured upwards as in the
    reference). NEAREST reads texel ``floor(x), floor(y)``; LINEAR blends the 4 texels around ``(x − .5, y − .5)``.
    Non-finite UVs read texel (0, 0).
    """
    h, w = texture.shape[:2]
    u = np.nan_to_num(np.asarray(u, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    v = np.nan_to_num(np.asarray(v, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    # float32 like the reference, so texel boundaries fall at the same places
    x = (u * np.float32(w)).astype(np.float64)
    y = ((np.float32(1.0) - v) * np.float32(h)).astype(np.float64)
    if filter == FILTER_NEAREST:
        xi = _wrap(np.floor(x).astype(np.int64), w, wrap)
        yi = _wrap(np.floor(y).astype(np.int64), h, wrap)
        return texture[yi, xi].astype(np.float64) / 255.0
    x0 = np.floor(x - 0.5).astype(np.int64)
    y0 = np.floor(y - 0.5).astype(np.int64)
    wx = (x - x0 - 0.5)[:, None]
    wy = (y - y0 - 0.5)[:, None]
    xl, xh = _wrap(x0, w, wrap), _wrap(x0 + 1, w, wrap)
    yl, yh = _wrap(y0, h, wrap), _wrap(y0 + 1, h, wrap)
    t = texture
    out = ((1 - wx) * (1 - wy) * t[yl, xl] + wx * (1 - wy) * t[yl, xh]
           + (1 - wx) * wy * t[yh, xl] + wx * wy * t[yh, xh])
    return out / 255.0


def sample_texture_mipmap(texture: np.ndarray, mipmaps: Optional[List[np.ndarray]], u: np.ndarray, v: np.ndarray,
                          mip_length: np.ndarray, mip_level_offset: float = 0.0, filter: int = FILTER_LINEAR,
                          wrap: int = WRAP_REPEAT) -> np.ndarray:
    """Mip-mapped sampling (§3.5): float64 ``[M, C]`` in [0, 1].

    ``mip_length`` (float ``[M]``) is the UV distance covered by one voxel; ``level = log2(mip_length·H) + offset``.
    A non-finite or non-positive level (or no mip chain) samples the base level, a level at or above the number of
    mips the coarsest one, otherwise the two neighbouring levels are blended linearly. NEAREST ignores mips.
    """
    if filter == FILTER_NEAREST or not mipmaps:
        return sample_texture(texture, u, v, filter, wrap)
    h = texture.shape[0]
    with np.errstate(divide="ignore", invalid="ignore"):
        level = (np.log2(np.asarray(mip_length, dtype=np.float32) * np.float32(h))
                 + np.float32(mip_level_offset)).astype(np.float64)
    out = np.empty((len(u), texture.shape[2]), dtype=np.float64)
    base = ~np.isfinite(level) | (level <= 0)
    coarse = ~base & (level >= len(mipmaps))
    mid = ~base & ~coarse
    if base.any():
        out[base] = sample_texture(texture, u[base], v[base], filter, wrap)
    if coarse.any():
        out[coarse] = sample_texture(mipmaps[-1], u[coarse], v[coarse], filter, wrap)
    if mid.any():
        lo = np.floor(level).astype(np.int64)
        chain = [texture] + list(mipmaps)
        for lvl in np.unique(lo[mid]):
            sel = mid & (lo == lvl)
            frac = (level[sel] - lvl)[:, None]
            a = sample_texture(chain[lvl], u[sel], v[sel], filter, wrap)
            b = sample_texture(chain[lvl + 1], u[sel], v[sel], filter, wrap)
            out[sel] = (1 - frac) * a + frac * b
    return out
