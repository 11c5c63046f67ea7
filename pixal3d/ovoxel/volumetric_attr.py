"""Textured mesh → sparse voxels with PBR attributes (TRELLIS2_SPEC §3.5, ``textured_mesh_to_volumetric_attr``).

The voxel set is the edge-crossing 4-neighbourhood of the dual-grid scan line (§3.2 step 1), collected per triangle.
Each (triangle, voxel) pair projects the voxel centre on the triangle's plane, interpolates UVs and vertex normals with
the unclamped barycentrics, samples the material's textures with mip selection, and contributes with weight
``1 − d`` (``d`` the signed distance to the plane). Per voxel the weighted mean is quantised to uint8.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Dict, List, Tuple

import numba
import numpy as np

from .io._morton import morton_encode
from .pbr_textures import VoxelMaterial, build_mipmaps, default_material, material_from_trimesh, \
    sample_texture_mipmap

__all__ = ["textured_mesh_to_volumetric_attr", "voxelize_triangle_pairs", "resolve_grid"]

_PAIR_CHUNK = 1 << 21  # pairs evaluated at once; bounds the float64 temporaries to a few hundred MB


@numba.njit(cache=True, inline="always")
def _lerp(a, b, t, va, vb):
    if a == b:
        return va
    alpha = (t - a) / (b - a)
    return (1.0 - alpha) * va + alpha * vb


@numba.njit(cache=True)
def _clampi(v, lo, hi):
    return lo if v < lo else (hi if v > hi else v)


@numba.njit(cache=True)
def _scan_axis(p, ax2, vs32, vs64, gmax, buf, n):
    """Append the 4-neighbourhoods of the grid lines parallel to ``ax2`` that pierce triangle ``p`` to ``buf``.

    Mirrors the reference's ``scan_line_fill``: rows ``(y_idx+1)·vs`` with ``int(y_lo/vs) ≤ y_idx < int(y_hi/vs)``,
    C-style truncating ``int()``, products ``(idx+1)·vs`` in float32, everything else in float64.
    """
    ax0 = (ax2 + 1) % 3
    ax1 = (ax2 + 2) % 3
    # (x, y, z) = (ax0, ax1, ax2) components, sorted by y
    tx = np.empty(3)
    ty = np.empty(3)
    tz = np.empty(3)
    for i in range(3):
        tx[i] = p[i, ax0]
        ty[i] = p[i, ax1]
        tz[i] = p[i, ax2]
    order = np.argsort(ty)
    sx = tx[order]
    sy = ty[order]
    sz = tz[order]
    start = _clampi(int(sy[0] / vs64[ax1]), 0, gmax[ax1] - 1)
    mid = _clampi(int(sy[1] / vs64[ax1]), 0, gmax[ax1] - 1)
    end = _clampi(int(sy[2] / vs64[ax1]), 0, gmax[ax1] - 1)
    for half in range(2):
        if half == 0:
            r0, r1, i0, i1, i2 = start, mid, 0, 1, 2
        else:
            r0, r1, i0, i1, i2 = mid, end, 2, 1, 0
        for y_idx in range(r0, r1):
            y = np.float64(np.float32(y_idx + 1) * vs32[ax1])
            ax_ = _lerp(sy[i0], sy[i1], y, sx[i0], sx[i1])
            az_ = _lerp(sy[i0], sy[i1], y, sz[i0], sz[i1])
            bx_ = _lerp(sy[i0], sy[i2], y, sx[i0], sx[i2])
            bz_ = _lerp(sy[i0], sy[i2], y, sz[i0], sz[i2])
            if ax_ > bx_:
                ax_, bx_ = bx_, ax_
                az_, bz_ = bz_, az_
            line_start = _clampi(int(ax_ / vs64[ax0]), 0, gmax[ax0] - 1)
            line_end = _clampi(int(bx_ / vs64[ax0]), 0, gmax[ax0] - 1)
            for x_idx in range(line_start, line_end):
                x = np.float64(np.float32(x_idx + 1) * vs32[ax0])
                z = _lerp(ax_, bx_, x, az_, bz_)
                z_idx = int(z / vs64[ax2])
                if z_idx >= 0 and z_idx < gmax[ax2]:
                    if n + 4 > buf.shape[0]:
                        nb = np.empty((buf.shape[0] * 2, 3), np.int64)
                        nb[:n] = buf[:n]
                        buf = nb
                    for dx in range(2):
                        for dy in range(2):
                            buf[n, ax0] = x_idx + dx
                            buf[n, ax1] = y_idx + dy
                            buf[n, ax2] = z_idx
                            n += 1
    return buf, n


@numba.njit(cache=True)
def _scan_triangles(tris, vs32, vs64, gmax):
    """All distinct (triangle, voxel) pairs: int32 ``[P]`` triangle ids and int32 ``[P, 3]`` voxel coords."""
    T = tris.shape[0]
    cap = max(1024, T * 8)
    out_t = np.empty(cap, np.int32)
    out_c = np.empty((cap, 3), np.int32)
    n_out = 0
    buf = np.empty((256, 3), np.int64)
    g1 = np.int64(gmax[1])
    g2 = np.int64(gmax[2])
    for tid in range(T):
        p = tris[tid]
        n = 0
        for ax2 in range(3):
            buf, n = _scan_axis(p, ax2, vs32, vs64, gmax, buf, n)
        if n == 0:
            continue
        keys = (buf[:n, 0] * (g1 + 1) + buf[:n, 1]) * (g2 + 1) + buf[:n, 2]
        keys = np.sort(keys)
        if n_out + n > out_t.shape[0]:
            new_cap = max(out_t.shape[0] * 2, n_out + n)
            nt = np.empty(new_cap, np.int32)
            nc = np.empty((new_cap, 3), np.int32)
            nt[:n_out] = out_t[:n_out]
            nc[:n_out] = out_c[:n_out]
            out_t, out_c = nt, nc
        prev = np.int64(-1)
        for k in keys:
            if k != prev:
                prev = k
                out_t[n_out] = tid
                out_c[n_out, 2] = k % (g2 + 1)
                out_c[n_out, 1] = (k // (g2 + 1)) % (g1 + 1)
                out_c[n_out, 0] = k // ((g2 + 1) * (g1 + 1))
                n_out += 1
    return out_t[:n_out].copy(), out_c[:n_out].copy()


def voxelize_triangle_pairs(triangles: np.ndarray, voxel_size: np.ndarray, grid_size: np.ndarray
                            ) -> Tuple[np.ndarray, np.ndarray]:
    """The edge-crossing voxel set per triangle (§3.2 step 1 / §3.5).

    Args:
        triangles: float32 ``[T, 3, 3]`` in the shifted frame (``v − aabb_min``), world units.
        voxel_size: float32 ``[3]``.
        grid_size: int ``[3]``.
    Returns:
        ``(tri_ids int32 [P], coords int32 [P, 3])``: every distinct (triangle, voxel) pair, where a voxel belongs to
        a triangle when the triangle crosses one of the voxel's 4 grid edges parallel to some axis. Voxels outside
        ``[0, grid_size)`` are dropped (the scan is clamped to the grid as in the reference).
    """
    tris = np.ascontiguousarray(triangles, dtype=np.float32).astype(np.float64)
    vs32 = np.asarray(voxel_size, dtype=np.float32).reshape(3)
    gmax = np.asarray(grid_size, dtype=np.int64).reshape(3)
    if len(tris) == 0:
        return np.zeros(0, np.int32), np.zeros((0, 3), np.int32)
    return _scan_triangles(tris, vs32, vs32.astype(np.float64), gmax)


def resolve_grid(bounds: np.ndarray, voxel_size=None, grid_size=None, aabb=None
                 ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fill in ``(voxel_size float32 [3], grid_size int64 [3], aabb float32 [2, 3])`` like the reference.

    ``bounds`` (``[2, 3]``) is the geometry's bounding box, used only when ``aabb`` is None: the box is then padded
    by half a voxel per side (``grid_size`` given: ``(max − min)/(grid_size − 1)``; ``voxel_size`` given: up to a
    whole number of voxels). Raises ``ValueError`` if neither size is given or shapes are wrong.
    """
    if voxel_size is None and grid_size is None:
        raise ValueError("give voxel_size or grid_size (e.g. grid_size=256)")
    if voxel_size is not None:
        voxel_size = np.broadcast_to(np.asarray(voxel_size, dtype=np.float32), (3,)).copy()
        if not np.all(voxel_size > 0):
            raise ValueError(f"voxel_size must be positive, got {voxel_size}")
    if grid_size is not None:
        grid_size = np.broadcast_to(np.asarray(grid_size, dtype=np.int64), (3,)).copy()
        if not np.all(grid_size > 0):
            raise ValueError(f"grid_size must be positive, got {grid_size}")
    if aabb is None:
        lo, hi = np.asarray(bounds, dtype=np.float32)
        ext = hi - lo
        if voxel_size is not None:
            pad = np.ceil(ext / voxel_size) * voxel_size - ext
        else:
            pad = ext / np.maximum(grid_size - 1, 1).astype(np.float32)
        aabb = np.stack([lo - pad * 0.5, hi + pad * 0.5])
    aabb = np.asarray(aabb, dtype=np.float32)
    if aabb.shape != (2, 3) or not np.all(aabb[1] > aabb[0]):
        raise ValueError(f"aabb must be [[xmin, ymin, zmin], [xmax, ymax, zmax]] with max > min, got {aabb.tolist()}")
    if voxel_size is None:
        voxel_size = ((aabb[1] - aabb[0]) / grid_size.astype(np.float32)).astype(np.float32)
    if grid_size is None:
        grid_size = np.round((aabb[1] - aabb[0]) / voxel_size).astype(np.int64)
    return voxel_size, grid_size, aabb


def _collect_geometry(mesh) -> List[Tuple[np.ndarray, np.ndarray, np.ndarray, VoxelMaterial]]:
    """Per geometry of a scene/mesh: ``(triangles f64 [T,3,3], normals f32 [T,3,3], uvs f32 [T,3,2], material)``."""
    import trimesh
    from .mesh import load_mesh

    if isinstance(mesh, (str, Path)):
        mesh = load_mesh(mesh)
    if isinstance(mesh, trimesh.Scene):
        geoms = mesh.dump()
    elif isinstance(mesh, trimesh.Trimesh):
        geoms = [mesh]
    else:
        raise TypeError(f"expected a trimesh.Scene, trimesh.Trimesh or a path, got {type(mesh).__name__}")
    out = []
    for g in geoms:
        if not isinstance(g, trimesh.Trimesh):
            warnings.warn(f"skipping non-mesh geometry {type(g).__name__} (no triangles)", stacklevel=3)
            continue
        if len(g.faces) == 0:
            continue
        if not np.all(np.isfinite(g.vertices)):
            raise ValueError(f"geometry {g.metadata.get('name', '?')!r} has non-finite vertex coordinates; "
                             "fix or remove the broken vertices before voxelising")
        visual = g.visual
        material = getattr(visual, "material", None) if isinstance(visual, trimesh.visual.TextureVisuals) else None
        uv = getattr(visual, "uv", None) if material is not None else None
        if material is None:
            warnings.warn(f"geometry {g.metadata.get('name', '?')!r} has no texture material; using the default "
                          "material (base colour 0.8, metallic 0, roughness 0.5)", stacklevel=3)
            mat = default_material()
        else:
            mat = material_from_trimesh(material)
        if uv is None or len(uv) != len(g.vertices):
            if material is not None and uv is None:
                warnings.warn(f"geometry {g.metadata.get('name', '?')!r} has a material but no UVs; textures are "
                              "read at uv = (0, 0) as in the reference", stacklevel=3)
            uvs = np.zeros((len(g.faces), 3, 2), np.float32)
        else:
            uvs = np.asarray(uv, dtype=np.float32)[g.faces]
        normals = np.asarray(g.vertex_normals, dtype=np.float32)[g.faces]
        out.append((np.asarray(g.triangles, dtype=np.float64), normals, uvs, mat))
    if not out:
        raise ValueError("the input has no triangles to voxelise (empty scene, or only points/paths)")
    return out


def _triangle_frames(tris: np.ndarray, uvs: np.ndarray, vs: np.ndarray):
    """Per triangle ``(n, t, b, mip_length)`` like the reference's ``compute_TBN`` (float32)."""
    e1 = tris[:, 1] - tris[:, 0]
    e2 = tris[:, 2] - tris[:, 0]
    duv1 = uvs[:, 1] - uvs[:, 0]
    duv2 = uvs[:, 2] - uvs[:, 0]
    n = np.cross(e1, e2)
    nn = np.linalg.norm(n, axis=1, keepdims=True)
    n = np.where(nn > 0, n / np.where(nn > 0, nn, 1), 0).astype(np.float32)
    det = duv1[:, 0] * duv2[:, 1] - duv1[:, 1] * duv2[:, 0]
    flat = np.abs(det) < 1e-6
    with np.errstate(divide="ignore", invalid="ignore"):
        t = duv2[:, 1:2] * e1 - duv1[:, 1:2] * e2
        b = duv1[:, 0:1] * e2 - duv2[:, 0:1] * e1
        tn = np.linalg.norm(t, axis=1)
        bn = np.linalg.norm(b, axis=1)
        t = t / tn[:, None]
        b = b / bn[:, None]
        inv = np.float32(1.0) / det
        ml = (inv * tn) * (inv * bn)
        mip = (np.float32(vs.max()) / np.sqrt(ml)).astype(np.float32)
    t[flat] = (1, 0, 0)
    b[flat] = (0, 1, 0)
    mip[flat] = np.float32(vs.max()) / np.float32(1e6)
    return n, t.astype(np.float32), b.astype(np.float32), mip


def _pair_attributes(tri, nrm, uv, frames, mat_id, materials, mips, tid, coords, vs, mip_level_offset):
    """Weighted per-pair attributes for one chunk: ``(weight [P], values [P, 12])``.

    Columns: base colour 0:3, metallic 3, roughness 4, emissive 5:8, alpha 8, normal 9:12.
    """
    n_tri, t_tri, b_tri, mip_tri = frames
    a = tri[tid, 0].astype(np.float64)
    ab = tri[tid, 1] - a
    ac = tri[tid, 2] - a
    n = n_tri[tid].astype(np.float64)
    p = (coords.astype(np.float64) + 0.5) * vs.astype(np.float64)
    d = np.einsum("ij,ij->i", p - a, n)
    ap = p - d[:, None] * n - a
    d00 = np.einsum("ij,ij->i", ab, ab)
    d01 = np.einsum("ij,ij->i", ab, ac)
    d11 = np.einsum("ij,ij->i", ac, ac)
    d20 = np.einsum("ij,ij->i", ap, ab)
    d21 = np.einsum("ij,ij->i", ap, ac)
    denom = d00 * d11 - d01 * d01
    degenerate = ~(denom > 0)
    safe = np.where(degenerate, 1.0, denom)
    bv = np.where(degenerate, 1 / 3, (d11 * d20 - d01 * d21) / safe)
    bw = np.where(degenerate, 1 / 3, (d00 * d21 - d01 * d20) / safe)
    bary = np.stack([1.0 - bv - bw, bv, bw], axis=1)
    puv = np.einsum("pk,pkc->pc", bary, uv[tid].astype(np.float64))
    pn = np.einsum("pk,pkc->pc", bary, nrm[tid].astype(np.float64))
    weight = 1.0 - d
    mip_len = mip_tri[tid]

    vals = np.empty((len(tid), 12), np.float64)
    mids = mat_id[tid]
    for m in np.unique(mids):
        sel = np.nonzero(mids == m)[0]
        mat: VoxelMaterial = materials[m]
        mm = mips[m]
        u, v, ml = puv[sel, 0], puv[sel, 1], mip_len[sel]

        def tex(name, chain=None):
            t = getattr(mat, name)
            if t is None:
                return None
            return sample_texture_mipmap(t, mm[name] if chain is None else chain, u, v, ml, mip_level_offset,
                                         mat.filter, mat.wrap)

        bc = tex("base_color_texture")
        vals[sel, 0:3] = (1.0 if bc is None else bc) * mat.base_color_factor
        mt = tex("metallic_texture")
        vals[sel, 3] = (1.0 if mt is None else mt[:, 0]) * mat.metallic_factor
        rt = tex("roughness_texture")
        vals[sel, 4] = (1.0 if rt is None else rt[:, 0]) * mat.roughness_factor
        # The reference samples emissive through the roughness mip chain (a bug, §3.5/§7.10): without a roughness
        # texture that means the base level only. With one it reads out of bounds; there we use emissive's own chain.
        em = tex("emissive_texture", chain=None if mat.roughness_texture is not None else [])
        vals[sel, 5:8] = (1.0 if em is None else em) * mat.emissive_factor
        if mat.alpha_mode != 0:
            at = tex("alpha_texture")
            alpha = (1.0 if at is None else at[:, 0]) * mat.alpha_factor
            if mat.alpha_mode == 1:
                alpha = np.where(alpha < mat.alpha_cutoff, 0.0, 1.0)
            vals[sel, 8] = alpha
        else:
            vals[sel, 8] = 1.0
        nt = tex("normal_texture")
        if nt is None:
            vals[sel, 9:12] = pn[sel]
        else:
            ts = nt * 2.0 - 1.0
            tt = t_tri[tid[sel]].astype(np.float64)
            bb = b_tri[tid[sel]].astype(np.float64)
            nn = ts[:, 0:1] * tt + ts[:, 1:2] * bb + ts[:, 2:3] * pn[sel]
            norm = np.linalg.norm(nn, axis=1, keepdims=True)
            vals[sel, 9:12] = np.where(norm > 0, nn / np.where(norm > 0, norm, 1), 0)
    return weight, vals


def _to_u8(x: np.ndarray) -> np.ndarray:
    # torch's clamp(v·255, 0, 255).byte() truncates; NaN becomes 0
    return np.clip(np.nan_to_num(x * 255.0, nan=0.0), 0, 255).astype(np.uint8)


def textured_mesh_to_volumetric_attr(mesh, *, voxel_size=None, grid_size=None, aabb=None,
                                     mip_level_offset: float = 0.0, verbose: bool = False
                                     ) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
    """Voxelise a textured mesh into sparse voxels with PBR attributes (TRELLIS2_SPEC §3.5).

    Args:
        mesh: ``trimesh.Scene`` (node transforms are applied), ``trimesh.Trimesh``, or a path loaded with
            :func:`pixal3d.ovoxel.mesh.load_mesh`. Materials: trimesh ``PBRMaterial`` (glTF/GLB) or
            ``SimpleMaterial`` (OBJ+MTL); geometry without a texture material gets the default material (warning).
        voxel_size: float or ``[3]``; grid_size: int or ``[3]`` (one of the two is required).
        aabb: ``[[xmin, ymin, zmin], [xmax, ymax, zmax]]`` in the mesh's units; ``None`` = the padded scene bounds.
            The fixtures/data toolkit use ``grid_size=R, aabb=[[-.5]*3, [.5]*3]`` on a normalised scene.
        mip_level_offset: added to the texture mip level.
    Returns:
        ``coords`` int32 ``[N, 3]`` voxel indices in ``[0, grid_size)``, rows sorted by z-order code, and a dict of
        uint8 arrays ``base_color [N,3]``, ``metallic [N,1]``, ``roughness [N,1]``, ``emissive [N,3]``,
        ``alpha [N,1]``, ``normal [N,3]`` (``(n·0.5 + 0.5)·255``, world frame), each ``clamp(v·255)`` truncated.
    Raises:
        ValueError: no triangles, non-finite vertices, missing/invalid grid settings.
        TypeError: unsupported input type.
    Deviations from the reference (which fails or is undefined there): non power-of-two textures are resized
    (warning); zero-area triangles use barycentrics (1/3, 1/3, 1/3) instead of NaN; emissive textures of materials
    that also have a roughness texture use their own mip chain.
    """
    geoms = _collect_geometry(mesh)
    bounds = np.stack([np.min([g[0].reshape(-1, 3).min(0) for g in geoms], axis=0),
                       np.max([g[0].reshape(-1, 3).max(0) for g in geoms], axis=0)])
    vs, gs, box = resolve_grid(bounds, voxel_size, grid_size, aabb)
    if verbose:
        print(f"voxelize: voxel_size={vs}, grid_size={gs}, aabb={box.tolist()}")
    if np.any(bounds[0] < box[0] - 1e-6) or np.any(bounds[1] > box[1] + 1e-6):
        warnings.warn(f"geometry bounds {bounds.tolist()} extend outside the aabb {box.tolist()}; the part outside "
                      "is dropped", stacklevel=2)

    # float32 shift as the reference (torch float32 triangles minus float32 aabb_min) so the scan sees equal values
    tris = np.concatenate([g[0].astype(np.float32) for g in geoms]) - box[0]
    nrm = np.concatenate([g[1] for g in geoms])
    uvs = np.concatenate([g[2] for g in geoms])
    materials = [g[3] for g in geoms]
    mat_id = np.concatenate([np.full(len(g[0]), i, np.int32) for i, g in enumerate(geoms)])
    mips = [{k: (build_mipmaps(getattr(m, k)) if getattr(m, k) is not None and m.filter != 0 else None)
             for k in ("base_color_texture", "metallic_texture", "roughness_texture", "emissive_texture",
                       "alpha_texture", "normal_texture")} for m in materials]

    tid, pcoords = voxelize_triangle_pairs(tris, vs, gs)
    if len(tid) == 0:
        return np.zeros((0, 3), np.int32), {k: np.zeros((0, c), np.uint8) for k, c in
                                            (("base_color", 3), ("metallic", 1), ("roughness", 1),
                                             ("emissive", 3), ("alpha", 1), ("normal", 3))}
    codes = morton_encode(pcoords)
    ucodes, first, inverse = np.unique(codes, return_index=True, return_inverse=True)
    coords = pcoords[first].astype(np.int32)
    frames = _triangle_frames(tris, uvs, vs)

    nv = len(ucodes)
    wsum = np.zeros(nv)
    acc = np.zeros((nv, 12))
    for s in range(0, len(tid), _PAIR_CHUNK):
        sl = slice(s, s + _PAIR_CHUNK)
        w, vals = _pair_attributes(tris, nrm, uvs, frames, mat_id, materials, mips, tid[sl], pcoords[sl], vs,
                                   mip_level_offset)
        idx = inverse[sl]
        wsum += np.bincount(idx, weights=w, minlength=nv)
        for c in range(12):
            acc[:, c] += np.bincount(idx, weights=w * vals[:, c], minlength=nv)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = acc / wsum[:, None]
    attrs = {
        "base_color": _to_u8(mean[:, 0:3]),
        "metallic": _to_u8(mean[:, 3:4]),
        "roughness": _to_u8(mean[:, 4:5]),
        "emissive": _to_u8(mean[:, 5:8]),
        "alpha": _to_u8(mean[:, 8:9]),
        "normal": _to_u8(mean[:, 9:12] * 0.5 + 0.5),
    }
    return coords, attrs
