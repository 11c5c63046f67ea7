"""Mesh renderer with TRELLIS.2 ``MeshRenderer`` outputs (TRELLIS2_SPEC §4.8) on a CPU or nvdiffrast backend.

Outputs of :meth:`MeshRenderer.render` (all ``[H, W]`` or ``[H, W, C]`` float32 torch tensors; row 0 = image top;
background pixels are 0 everywhere except ``mask``):

* ``mask``: coverage in [0, 1] (binary without SSAA).
* ``depth``: camera-frame z (distance along the optical axis, world units).
* ``normal``: the **camera-space** (OpenCV camera frame: x right, y down, z forward) face normal, flipped to point
  **away from the camera** (``n · p_cam > 0`` at the face centroid), encoded ``(n + 1)/2``. A plane facing the camera
  therefore renders as ``(0.5, 0.5, 1.0)``.
* ``position``: world-space surface point.
* ``attr``: the mesh's attribute channels — voxel attributes by §1.9 trilinear sparse sampling (``grid_sample_3d``)
  at the surface point (``MeshWithVoxel``-like meshes), else per-vertex attributes.
* ``base_color``: RGB albedo in [0, 1]: UV texture (bilinear, repeat-wrapped; trimesh UV convention, (0, 0) = bottom-
  left texel corner) × base-colour factor, else the ``base_color`` slice of voxel attributes, else vertex colours,
  else the constant ``default_color``. Values are returned as stored — glTF base-colour textures are sRGB-encoded
  and are **not** linearised here (compare renders of GT and prediction in the same encoding).
* ``shaded``: Lambertian image-based lighting from an :class:`~pixal3d.renderers.envmap.EnvironmentMap`
  (``base_color · E(n)/π``, linear radiance; ``n`` = world-space normal facing the camera, smooth vertex normals if
  the mesh has them else face normals). Tone mapping is left to the caller.

SSAA (``ssaa = s``): render at ``s×`` resolution, then average ``s×s`` blocks: ``mask`` by plain averaging, every
other output as the coverage-weighted mean of the covered sub-pixels (so edges are not darkened by background).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .camera import Camera
from .rasterizer import Fragments, get_rasterizer, interpolate

__all__ = ["RenderMesh", "MeshRenderer", "sample_texture"]

ALL_OUTPUTS = ("mask", "depth", "normal", "position", "attr", "base_color", "shaded")


def _tensor(x, dtype):
    if x is None:
        return None
    if isinstance(x, torch.Tensor):
        # no detach: vertex positions that require grad keep it (depth/normal/attributes are differentiable)
        return x.to(device="cpu", dtype=dtype)
    return torch.as_tensor(np.array(x), dtype=dtype)  # copy: trimesh arrays are read-only


@dataclass
class RenderMesh:
    """Geometry and appearance for rendering (world frame; all arrays numpy or torch).

    Attributes:
        vertices: float ``[V, 3]``; faces: int ``[F, 3]``.
        vertex_normals: optional ``[V, 3]`` smooth normals (used only for ``shaded``).
        vertex_attrs: optional ``[V, C]`` per-vertex attributes (``attr`` output; RGB in the first 3 channels is
            also used as base colour when no texture/voxels are given).
        uv: optional ``[V, 2]`` per-vertex UVs; texture: optional ``[Ht, Wt, 3|4]`` in [0, 1] (base colour);
            base_color_factor: RGB(A) multiplier (glTF ``baseColorFactor``).
        voxel_coords / voxel_attrs / aabb / voxel_size / layout: sparse attribute volume (``MeshWithVoxel``):
            coords int ``[L, 3]``, attrs ``[L, C]``, ``aabb`` ``[2, 3]``, ``voxel_size`` ``[3]``; ``layout`` maps
            names (``'base_color'``, ``'metallic'``, …) to channel slices.
    """
    vertices: torch.Tensor
    faces: torch.Tensor
    vertex_normals: Optional[torch.Tensor] = None
    vertex_attrs: Optional[torch.Tensor] = None
    uv: Optional[torch.Tensor] = None
    texture: Optional[torch.Tensor] = None
    base_color_factor: Optional[torch.Tensor] = None
    voxel_coords: Optional[torch.Tensor] = None
    voxel_attrs: Optional[torch.Tensor] = None
    aabb: Optional[torch.Tensor] = None
    voxel_size: Optional[torch.Tensor] = None
    layout: Dict[str, slice] = field(default_factory=dict)

    def __post_init__(self):
        self.vertices = _tensor(self.vertices, torch.float64)
        self.faces = _tensor(self.faces, torch.long)
        if self.vertices.dim() != 2 or self.vertices.shape[1] != 3:
            raise ValueError(f"vertices must be [V, 3], got {tuple(self.vertices.shape)}")
        if self.faces.dim() != 2 or self.faces.shape[1] != 3:
            raise ValueError(f"faces must be [F, 3], got {tuple(self.faces.shape)}")
        if self.faces.numel() and (self.faces.min() < 0 or self.faces.max() >= len(self.vertices)):
            raise ValueError(f"face indices must lie in [0, {len(self.vertices)})")
        V = len(self.vertices)
        for name in ("vertex_normals", "vertex_attrs", "uv"):
            val = _tensor(getattr(self, name), torch.float64)
            if val is not None and (val.dim() != 2 or val.shape[0] != V):
                raise ValueError(f"{name} must be [V={V}, C], got {tuple(val.shape)}")
            setattr(self, name, val)
        self.texture = _tensor(self.texture, torch.float64)
        if self.texture is not None and (self.texture.dim() != 3 or self.texture.shape[2] not in (3, 4)):
            raise ValueError(f"texture must be [Ht, Wt, 3|4], got {tuple(self.texture.shape)}")
        if (self.texture is None) != (self.uv is None) and self.texture is not None:
            raise ValueError("a texture needs per-vertex uv coordinates")
        self.base_color_factor = _tensor(self.base_color_factor, torch.float64)
        if self.voxel_attrs is not None:
            self.voxel_coords = _tensor(self.voxel_coords, torch.long)
            self.voxel_attrs = _tensor(self.voxel_attrs, torch.float64)
            self.aabb = _tensor(self.aabb if self.aabb is not None else [[-0.5] * 3, [0.5] * 3], torch.float64)
            if self.voxel_size is None:
                raise ValueError("voxel attributes need voxel_size")
            self.voxel_size = _tensor(self.voxel_size, torch.float64).reshape(-1).expand(3).clone()
            if self.voxel_coords.dim() != 2 or self.voxel_coords.shape[1] != 3 \
                    or len(self.voxel_coords) != len(self.voxel_attrs):
                raise ValueError("voxel_coords must be [L, 3] matching voxel_attrs [L, C]")

    @classmethod
    def from_mesh_with_voxel(cls, m) -> "RenderMesh":
        """From ``pixal3d.ovoxel.mesh.MeshWithVoxel`` (vertices, faces, coords, attrs, layout, aabb, voxel_size)."""
        return cls(m.vertices, m.faces, voxel_coords=m.coords, voxel_attrs=m.attrs, aabb=m.aabb,
                   voxel_size=m.voxel_size, layout=dict(m.layout))

    @classmethod
    def from_trimesh(cls, mesh) -> "RenderMesh":
        """From a ``trimesh.Trimesh`` (or a Scene, concatenated): vertex normals, UV + base-colour texture and factor
        (PBR or simple material), or vertex colours."""
        import trimesh
        if isinstance(mesh, trimesh.Scene):
            geoms = [g for g in mesh.dump() if isinstance(g, trimesh.Trimesh)]
            if not geoms:
                raise ValueError("scene has no triangle meshes")
            if len(geoms) > 1:
                # textures cannot be merged without re-baking; keep geometry + per-vertex colours
                cols = []
                for g in geoms:
                    try:
                        c = g.visual.to_color().vertex_colors[:, :3] / 255.0
                    except Exception:
                        c = np.full((len(g.vertices), 3), 0.8)
                    cols.append(c)
                m = trimesh.util.concatenate(geoms)
                return cls(m.vertices, m.faces, vertex_normals=m.vertex_normals,
                           vertex_attrs=np.concatenate(cols, 0))
            mesh = geoms[0]
        kw = {}
        vis = mesh.visual
        if getattr(vis, "kind", None) == "texture" and vis.uv is not None:
            mat = vis.material
            img = getattr(mat, "baseColorTexture", None)
            if img is None:
                img = getattr(mat, "image", None)
            factor = getattr(mat, "baseColorFactor", None)
            if factor is None and hasattr(mat, "diffuse"):
                factor = mat.diffuse
            if img is not None:
                kw["texture"] = np.asarray(img.convert("RGBA"), dtype=np.float64) / 255.0
                kw["uv"] = np.asarray(vis.uv, dtype=np.float64)
            if factor is not None:
                f = np.asarray(factor, dtype=np.float64).reshape(-1)
                kw["base_color_factor"] = f / 255.0 if f.max() > 1.0 else f
        elif getattr(vis, "kind", None) == "vertex":
            kw["vertex_attrs"] = np.asarray(vis.vertex_colors[:, :3], dtype=np.float64) / 255.0
        elif getattr(vis, "kind", None) == "face":
            kw["vertex_attrs"] = np.asarray(vis.to_color().vertex_colors[:, :3], dtype=np.float64) / 255.0
        return cls(mesh.vertices, mesh.faces, vertex_normals=np.asarray(mesh.vertex_normals), **kw)


def sample_texture(texture: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """Bilinear texture lookup with repeat wrapping. ``texture`` ``[Ht, Wt, C]``, ``uv`` ``[P, 2]`` (trimesh/OpenGL
    convention: ``u`` left → right, ``v`` bottom → top; texel (r, c) centre at ``u = (c + ½)/Wt``,
    ``v = 1 − (r + ½)/Ht``) → ``[P, C]``."""
    Ht, Wt = texture.shape[:2]
    x = uv[:, 0] * Wt - 0.5
    y = (1 - uv[:, 1]) * Ht - 0.5
    x0, y0 = torch.floor(x), torch.floor(y)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    x0, y0 = x0.long(), y0.long()
    xa, xb, ya, yb = x0 % Wt, (x0 + 1) % Wt, y0 % Ht, (y0 + 1) % Ht
    t = texture
    return (1 - fy) * ((1 - fx) * t[ya, xa] + fx * t[ya, xb]) + fy * ((1 - fx) * t[yb, xa] + fx * t[yb, xb])


def _face_normals(v: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    t = v[f]
    n = torch.linalg.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0])
    return n / n.norm(dim=-1, keepdim=True).clamp_min(1e-20)


class MeshRenderer:
    """Renders a :class:`RenderMesh` (or ``MeshWithVoxel`` / ``trimesh.Trimesh``) from a :class:`Camera`.

    Args:
        resolution: output size ``H = W`` (int) or ``(H, W)``.
        ssaa: supersampling factor (≥ 1).
        backend: ``'auto'`` (nvdiffrast when importable with CUDA, else CPU), ``'cpu'`` or ``'nvdiffrast'``.
        default_color: albedo for meshes without colour information.
    """

    def __init__(self, resolution=512, ssaa: int = 1, backend: str = "auto", device: Optional[str] = None,
                 default_color: Sequence[float] = (0.8, 0.8, 0.8)):
        self.resolution = (int(resolution), int(resolution)) if np.isscalar(resolution) else tuple(
            int(r) for r in resolution)
        if int(ssaa) < 1:
            raise ValueError(f"ssaa must be >= 1, got {ssaa}")
        self.ssaa = int(ssaa)
        self.rasterizer = get_rasterizer(backend, device)
        self.default_color = torch.tensor(default_color, dtype=torch.float64)

    @staticmethod
    def _as_render_mesh(mesh) -> RenderMesh:
        if isinstance(mesh, RenderMesh):
            return mesh
        if hasattr(mesh, "coords") and hasattr(mesh, "attrs") and hasattr(mesh, "voxel_size"):
            return RenderMesh.from_mesh_with_voxel(mesh)
        try:
            import trimesh
            if isinstance(mesh, (trimesh.Trimesh, trimesh.Scene)):
                return RenderMesh.from_trimesh(mesh)
        except ImportError:  # pragma: no cover
            pass
        if isinstance(mesh, (tuple, list)) and len(mesh) == 2:
            return RenderMesh(*mesh)
        raise TypeError(f"cannot render a {type(mesh).__name__}; pass a RenderMesh, MeshWithVoxel, trimesh object "
                        "or (vertices, faces)")

    def render(self, mesh, camera: Camera, return_types: Sequence[str] = ("mask", "depth", "normal"),
               envmap=None) -> Dict[str, torch.Tensor]:
        """Render the requested outputs (module docstring). ``envmap`` is required for ``'shaded'``.

        Raises:
            ValueError: unknown output name, ``'attr'`` for a mesh without attributes, ``'shaded'`` without envmap.
        """
        for r in return_types:
            if r not in ALL_OUTPUTS:
                raise ValueError(f"unknown output {r!r}; choose from {ALL_OUTPUTS}")
        if "shaded" in return_types and envmap is None:
            raise ValueError("'shaded' needs an envmap (pixal3d.renderers.EnvironmentMap)")
        m = self._as_render_mesh(mesh)
        if "attr" in return_types and m.voxel_attrs is None and m.vertex_attrs is None:
            raise ValueError("'attr' needs voxel attributes or vertex_attrs on the mesh")
        H, W = self.resolution[0] * self.ssaa, self.resolution[1] * self.ssaa
        v_cam = camera.world_to_camera(m.vertices)
        frags = self.rasterizer(v_cam, m.faces, camera.intrinsics, (H, W), camera.near, camera.far)
        dev = frags.face_id.device
        mask = frags.face_id >= 0
        fid = frags.face_id.clamp_min(0)
        out = {}
        if "mask" in return_types:
            out["mask"] = mask.to(torch.float64)
        if "depth" in return_types:
            out["depth"] = frags.depth
        need_pos = any(r in return_types for r in ("position", "attr", "base_color", "shaded"))
        pos = interpolate(m.vertices.to(dev), m.faces.to(dev), frags) if need_pos else None
        if "position" in return_types:
            out["position"] = pos
        if "normal" in return_types or "shaded" in return_types:
            fn_cam = _face_normals(v_cam.to(dev), m.faces.to(dev))
            centroid = v_cam.to(dev)[m.faces.to(dev)].mean(1)
            away = torch.where(((fn_cam * centroid).sum(-1, keepdim=True) < 0), -fn_cam, fn_cam)
            if "normal" in return_types:
                out["normal"] = torch.where(mask[..., None], (away[fid] + 1) / 2, torch.zeros(()).to(away))
        if "attr" in return_types:
            out["attr"] = self._attrs(m, pos, frags, mask)
        if "base_color" in return_types or "shaded" in return_types:
            bc = self._base_color(m, pos, frags, mask)
            if "base_color" in return_types:
                out["base_color"] = bc
        if "shaded" in return_types:
            R = camera.extrinsics[:3, :3].to(dev)
            toward_world = -(away @ R)  # camera→world rotation of the flipped (toward-camera) face normals
            n = toward_world[fid]
            if m.vertex_normals is not None:
                sn = interpolate(m.vertex_normals.to(dev), m.faces.to(dev), frags)
                sn = sn / sn.norm(dim=-1, keepdim=True).clamp_min(1e-12)
                # orient the smooth normal to the visible side of the face
                sn = torch.where((sn * n).sum(-1, keepdim=True) < 0, -sn, sn)
                n = torch.where(mask[..., None], sn, n)
            rad = envmap.diffuse(bc[..., :3].cpu(), n.cpu()).to(dev)
            out["shaded"] = torch.where(mask[..., None], rad, torch.zeros(()).to(rad))
        if self.ssaa > 1:
            out = self._downsample(out, mask.to(torch.float64))
        return {k: val.float() for k, val in out.items()}

    def _attrs(self, m: RenderMesh, pos, frags: Fragments, mask) -> torch.Tensor:
        if m.voxel_attrs is not None:
            from pixal3d.sparse import grid_sample_3d
            H, W = mask.shape
            out = torch.zeros(H, W, m.voxel_attrs.shape[1], dtype=torch.float64, device=pos.device)
            if mask.any():
                q = (pos[mask] - m.aabb[0].to(pos)) / m.voxel_size.to(pos)
                coords = torch.cat([torch.zeros_like(m.voxel_coords[:, :1]), m.voxel_coords], 1).to(pos.device)
                R = int(torch.round((m.aabb[1] - m.aabb[0]).max() / m.voxel_size.min()))
                dims = [max(R, int(m.voxel_coords[:, i].max()) + 1) for i in range(3)]
                vals = grid_sample_3d(m.voxel_attrs.to(pos), coords, [1, m.voxel_attrs.shape[1], *dims],
                                      q[None], mode="trilinear")[0]
                out[mask] = vals
            return out
        return interpolate(m.vertex_attrs.to(pos.device if pos is not None else "cpu"), m.faces, frags)

    def _base_color(self, m: RenderMesh, pos, frags: Fragments, mask) -> torch.Tensor:
        H, W = mask.shape
        dev = mask.device
        out = torch.zeros(H, W, 3, dtype=torch.float64, device=dev)
        if not mask.any():
            return out
        if m.texture is not None:
            uv = interpolate(m.uv.to(dev), m.faces.to(dev), frags)[mask]
            col = sample_texture(m.texture.to(dev), uv)[:, :3]
        elif m.voxel_attrs is not None:
            sl = m.layout.get("base_color", slice(0, 3))
            col = self._attrs(m, pos, frags, mask)[mask][:, sl]
        elif m.vertex_attrs is not None and m.vertex_attrs.shape[1] >= 3:
            col = interpolate(m.vertex_attrs[:, :3].to(dev), m.faces.to(dev), frags)[mask]
        else:
            col = self.default_color.to(dev).expand(int(mask.sum()), 3)
        if m.base_color_factor is not None:
            col = col * m.base_color_factor[:3].to(dev)
        out[mask] = col.clamp(0, 1)
        return out

    def _downsample(self, out: Dict[str, torch.Tensor], cov: torch.Tensor) -> Dict[str, torch.Tensor]:
        s = self.ssaa

        def pool(x):
            x3 = x if x.dim() == 3 else x[..., None]
            y = F.avg_pool2d(x3.permute(2, 0, 1)[None], s)[0].permute(1, 2, 0)
            return y if x.dim() == 3 else y[..., 0]

        c = pool(cov)
        res = {}
        for k, v in out.items():
            if k == "mask":
                res[k] = c
            else:
                w = cov if v.dim() == 2 else cov[..., None]
                num = pool(v * w)
                den = c if v.dim() == 2 else c[..., None]
                res[k] = torch.where(den > 0, num / den.clamp_min(1e-12), torch.zeros(()).to(num))
        return res
