"""``ProjGrid``: back-projection of an image feature map onto a regular voxel grid (PIXAL3D_SPEC §2.2).

Every grid point is projected through the canonical front camera (§2.1) and the feature map is sampled there with one
bilinear tap (``grid_sample``, ``align_corners=False``, border padding). No occlusion or validity masking is applied:
the released models were trained exactly like this.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ProjGrid", "gather_grid_features", "bilinear_taps"]

# View frame -> Blender world, (x, y, z) -> (x, -z, y), applied to row vectors as p @ R^T.
_ROT_VIEW_TO_WORLD = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])


def _as_batch_vector(value, batch: int, name: str, device) -> torch.Tensor:
    t = torch.as_tensor(value, dtype=torch.float32, device=device).reshape(-1)
    if t.numel() == 1 and batch != 1:
        t = t.expand(batch)
    if t.numel() != batch:
        raise ValueError(f"{name} must hold one value per batch item ({batch}), got {t.numel()} values")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains non-finite values")
    return t


class ProjGrid(nn.Module):
    """Projects the ``R^3`` grid of the view-aligned frame into a feature map (PIXAL3D_SPEC §2.2).

    Grid point ``k = (i*R + j)*R + kz`` sits at view-frame ``(l(i), l(j), l(kz))`` with ``l = linspace(-1, 1, R)``,
    i.e. the same x-major ``ij`` order as the flow models' tokens. Buffers (deterministic, not in any checkpoint):

    * ``grid_points`` ``[R^3, 3]`` float32: the grid mapped to Blender world axes, ``(x, y, z) -> (x, -z, y)``;
    * ``front_view_transform_matrix`` ``[4, 4]`` float32: ``F(2)``; its ``[1, 3]`` entry is replaced by ``-distance``.

    Args:
        grid_resolution: ``R`` >= 2.
        image_resolution: ``S``, the pixel size the camera intrinsics refer to (the extractor's ``image_size``).
    """

    def __init__(self, grid_resolution: int = 16, image_resolution: int = 518):
        super().__init__()
        if int(grid_resolution) < 2:
            raise ValueError(f"grid_resolution must be >= 2 (linspace(-1, 1, R)), got {grid_resolution!r}")
        if int(image_resolution) <= 0:
            raise ValueError(f"image_resolution must be positive, got {image_resolution!r}")
        self.grid_resolution = int(grid_resolution)
        self.image_resolution = int(image_resolution)
        lin = torch.linspace(-1.0, 1.0, self.grid_resolution)
        gx, gy, gz = torch.meshgrid(lin, lin, lin, indexing="ij")
        pts = torch.stack([gx, gy, gz], dim=-1).reshape(-1, 3) @ _ROT_VIEW_TO_WORLD.T
        self.register_buffer("grid_points", pts)
        front = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, -1.0, -2.0],
                              [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
        self.register_buffer("front_view_transform_matrix", front)

    def extra_repr(self) -> str:
        return f"grid_resolution={self.grid_resolution}, image_resolution={self.image_resolution}"

    def _normalized_pixel_coords(self, points: torch.Tensor, camera_angle_x: torch.Tensor, distance: torch.Tensor,
                                 mesh_scale: torch.Tensor) -> torch.Tensor:
        """``points`` ``[B, K, 3]`` Blender-world grid points -> ``[B, K, 2]`` grid_sample coordinates (u, v)."""
        b = points.shape[0]
        p_world = points / mesh_scale.view(b, 1, 1) / 2
        transform = self.front_view_transform_matrix.float().unsqueeze(0).repeat(b, 1, 1)
        transform[:, 1, 3] = -distance
        # fp32 inverse as in the released code (bf16/half inverses are not supported and would drift)
        world_to_cam = torch.linalg.inv(transform.float())
        p_h = torch.cat([p_world, torch.ones_like(p_world[..., :1])], dim=-1)
        p_cam = torch.bmm(p_h, world_to_cam.transpose(1, 2))
        x, y, z = p_cam[..., 0], p_cam[..., 1], p_cam[..., 2]
        s = float(self.image_resolution)
        focal_mm = 16.0 / torch.tan(camera_angle_x / 2)
        f_px = (focal_mm * s / 32.0).view(b, 1)
        u = f_px * x / (-z + 1e-8) + s / 2
        v = -f_px * y / (-z + 1e-8) + s / 2
        # The continuous projection is treated as a pixel index: +0.5 before normalising (a half-pixel shift the
        # released weights were trained with).
        gu = (u + 0.5) / s * 2 - 1
        gv = (v + 0.5) / s * 2 - 1
        return torch.stack([gu, gv], dim=-1)

    @staticmethod
    def _to_bchw(features_map: torch.Tensor, bhwc: bool) -> torch.Tensor:
        if not torch.is_tensor(features_map) or features_map.dim() != 4:
            raise ValueError("features_map must be a 4-D tensor ([B, H, W, C] with BHWC=True, else [B, C, H, W]), "
                             f"got {getattr(features_map, 'shape', type(features_map))}")
        return features_map.permute(0, 3, 1, 2) if bhwc else features_map

    def _camera(self, batch, camera_angle_x, distance, mesh_scale, device):
        fov = _as_batch_vector(camera_angle_x, batch, "camera_angle_x", device)
        if not ((fov > 0) & (fov < torch.pi)).all():
            raise ValueError("camera_angle_x must be in radians within (0, pi)")
        dist = _as_batch_vector(distance, batch, "distance", device)
        ms = _as_batch_vector(mesh_scale, batch, "mesh_scale", device)
        if not (ms > 0).all():
            raise ValueError("mesh_scale must be > 0")
        return fov, dist, ms

    def forward(self, features_map: torch.Tensor, camera_angle_x, distance, mesh_scale=1.0,
                transform_matrix=None, BHWC: bool = True) -> torch.Tensor:  # noqa: N803 (reference keyword)
        """Samples one feature per grid point.

        Args:
            features_map: ``[B, H, W, C]`` (``BHWC=True``) or ``[B, C, H, W]``; any float dtype.
            camera_angle_x: horizontal FOV in radians, ``[B]`` or scalar.
            distance: camera distance ``d``, ``[B]`` or scalar.
            mesh_scale: voxel-frame scale (``total_scale``), ``[B]`` or scalar.
            transform_matrix: must be ``None`` (the single-view reference asserts this).
            BHWC: layout of ``features_map``.

        Returns:
            ``[B, R^3, C]`` in the dtype of ``features_map``.

        Raises:
            ValueError: bad shapes, a camera that is not one value per batch item, or a ``transform_matrix``.
        """
        if transform_matrix is not None:
            raise ValueError("ProjGrid only supports the canonical front camera; transform_matrix must be None "
                             "(rotate the object into the view frame instead, PIXAL3D_SPEC §7.2)")
        fmap = self._to_bchw(features_map, BHWC)
        b = fmap.shape[0]
        fov, dist, ms = self._camera(b, camera_angle_x, distance, mesh_scale, fmap.device)
        pts = self.grid_points.float().unsqueeze(0).expand(b, -1, -1)
        grid = self._normalized_pixel_coords(pts, fov, dist, ms)
        out = F.grid_sample(fmap, grid.to(fmap.dtype).unsqueeze(2), mode="bilinear", padding_mode="border",
                            align_corners=False)
        return out.squeeze(-1).permute(0, 2, 1)

    def project_coords(self, features_map: torch.Tensor, coords: torch.Tensor, camera_angle_x, distance,
                       mesh_scale=1.0, BHWC: bool = True) -> torch.Tensor:  # noqa: N803
        """Like :meth:`forward` but only for the grid cells listed in ``coords`` (sparse latents, §3.2).

        Mathematically identical to ``forward(...)[b, (x*R + y)*R + z]`` per row, without building the ``R^3`` volume.

        Args:
            features_map: ``[B, H, W, C]`` or ``[B, C, H, W]``.
            coords: ``[N, 4]`` integer rows ``(batch, x, y, z)`` with ``0 <= x, y, z < R``.
            camera_angle_x, distance, mesh_scale: as in :meth:`forward`.

        Returns:
            ``[N, C]`` features in the row order of ``coords``.

        Raises:
            ValueError: ``coords`` is not ``[N, 4]`` integer, or indexes outside the grid / the batch.
        """
        fmap = self._to_bchw(features_map, BHWC)
        b, c = fmap.shape[0], fmap.shape[1]
        grid, batch_idx, per_batch = self._coords_grid(coords, b, camera_angle_x, distance, mesh_scale, fmap.device)
        out = fmap.new_empty((grid.shape[0], c))
        for bi, rows in per_batch:
            sampled = F.grid_sample(fmap[bi:bi + 1], grid[rows].to(fmap.dtype).view(1, -1, 1, 2), mode="bilinear",
                                    padding_mode="border", align_corners=False)
            out[rows] = sampled[0, :, :, 0].T
        return out

    def _coords_grid(self, coords, batch: int, camera_angle_x, distance, mesh_scale, device):
        """``(grid [N, 2] float32 grid_sample coordinates, batch index [N] long, [(b, rows of b)])`` of ``coords``."""
        idx = _flat_indices(coords, self.grid_resolution, batch).to(device)
        fov, dist, ms = self._camera(batch, camera_angle_x, distance, mesh_scale, device)
        batch_idx = coords[:, 0].to(device=device, dtype=torch.long)
        grid = torch.empty((idx.shape[0], 2), dtype=torch.float32, device=device)
        per_batch = []
        for bi in range(batch):
            rows = (batch_idx == bi).nonzero(as_tuple=True)[0]
            if rows.numel():
                pts = self.grid_points.float()[idx[rows]].unsqueeze(0)
                grid[rows] = self._normalized_pixel_coords(pts, fov[bi:bi + 1], dist[bi:bi + 1], ms[bi:bi + 1])[0]
                per_batch.append((bi, rows))
        return grid, batch_idx, per_batch


    def project_coords_at(self, sample_pixels, coords: torch.Tensor, camera_angle_x, distance, mesh_scale,
                          batch: int, map_size, dtype: torch.dtype, device) -> torch.Tensor:
        """:meth:`project_coords` on a feature map that is never built: ``sample_pixels`` computes its rows.

        The bilinear taps of every voxel are found as ``grid_sample`` would find them (same grid rounding to
        ``dtype``, border clamping, ``align_corners=False``); each distinct tap pixel is computed once.

        Args:
            sample_pixels: callable ``[U, 3]`` long ``(batch, row, col)`` -> ``[U, C]`` features of those pixels.
            coords, camera_angle_x, distance, mesh_scale: as in :meth:`project_coords`.
            batch: number of images (feature maps) the batch column of ``coords`` indexes.
            map_size: ``(H, W)`` of the virtual feature map.
            dtype: the feature map's dtype (it sets the grid rounding and the output dtype).

        Returns:
            ``[N, C]`` in the row order of ``coords``; equal to ``project_coords`` on the full map up to the
            summation order of the four taps.
        """
        h, w = (int(v) for v in map_size)
        grid, batch_idx, _ = self._coords_grid(coords, int(batch), camera_angle_x, distance, mesh_scale, device)
        pix, wts = bilinear_taps(grid.to(dtype), h, w)                   # [N, 4, 2] (row, col), [N, 4]
        keys = (batch_idx[:, None] * h + pix[..., 0]) * w + pix[..., 1]   # [N, 4]
        uniq, inverse = torch.unique(keys.reshape(-1), return_inverse=True)
        upix = torch.stack([uniq // (h * w), uniq // w % h, uniq % w], dim=1)
        vals = sample_pixels(upix)
        acc = torch.promote_types(dtype, torch.float32)
        out = (vals.to(acc)[inverse.view(-1, 4)] * wts.to(acc)[..., None]).sum(1)
        return out.to(dtype)


def bilinear_taps(grid: torch.Tensor, height: int, width: int):
    """The four taps of ``F.grid_sample(mode='bilinear', padding_mode='border', align_corners=False)``.

    Args:
        grid: ``[N, 2]`` normalised ``(x, y)`` in the feature map's dtype (x indexes columns, y rows).
        height, width: map size.

    Returns:
        ``(pixels [N, 4, 2] long (row, col), weights [N, 4])`` with weights in ``float32`` (``float64`` for a
        float64 grid), as grid_sample computes them; a tap past the border gets weight 0 and a clamped index.
    """
    g = grid.to(torch.promote_types(grid.dtype, torch.float32))
    ix = (((g[:, 0] + 1) * width - 1) / 2).clamp(0, width - 1)
    iy = (((g[:, 1] + 1) * height - 1) / 2).clamp(0, height - 1)
    x0, y0 = ix.floor(), iy.floor()
    x1, y1 = x0 + 1, y0 + 1
    w_nw, w_ne = (x1 - ix) * (y1 - iy), (ix - x0) * (y1 - iy)
    w_sw, w_se = (x1 - ix) * (iy - y0), (ix - x0) * (iy - y0)
    cols = torch.stack([x0, x1, x0, x1], dim=1)
    rows = torch.stack([y0, y0, y1, y1], dim=1)
    wts = torch.stack([w_nw, w_ne, w_sw, w_se], dim=1)
    inside = (cols <= width - 1) & (rows <= height - 1)
    wts = torch.where(inside, wts, torch.zeros_like(wts))
    pix = torch.stack([rows.clamp(max=height - 1), cols.clamp(max=width - 1)], dim=-1).long()
    return pix, wts


def _flat_indices(coords: torch.Tensor, resolution: int, batch: int) -> torch.Tensor:
    if not torch.is_tensor(coords) or coords.dim() != 2 or coords.shape[1] != 4:
        raise ValueError(f"coords must be an [N, 4] tensor of (batch, x, y, z), got "
                         f"{getattr(coords, 'shape', type(coords))}")
    if coords.dtype.is_floating_point or coords.dtype == torch.bool:
        raise ValueError(f"coords must be integer, got {coords.dtype}")
    c = coords.long()
    if c.numel() and (c[:, 1:].min() < 0 or c[:, 1:].max() >= resolution):
        raise ValueError(f"coords x/y/z must lie in [0, {resolution}) for a {resolution}^3 grid")
    if c.numel() and (c[:, 0].min() < 0 or c[:, 0].max() >= batch):
        raise ValueError(f"coords batch index must lie in [0, {batch}) (one feature map per batch item)")
    return (c[:, 1] * resolution + c[:, 2]) * resolution + c[:, 3]


def gather_grid_features(grid_features: torch.Tensor, coords: torch.Tensor, resolution: int) -> torch.Tensor:
    """Picks the per-voxel rows of a dense ``[B, R^3, C]`` projection at sparse ``coords`` (PIXAL3D_SPEC §3.2).

    Args:
        grid_features: ``[B, R^3, C]`` as returned by :meth:`ProjGrid.forward`.
        coords: ``[N, 4]`` integer ``(batch, x, y, z)``.
        resolution: ``R``.

    Returns:
        ``[N, C]`` in the row order of ``coords`` (use the latent's own coords so rows line up with its tokens).

    Raises:
        ValueError: shape mismatch or out-of-range coords.
    """
    if grid_features.dim() != 3 or grid_features.shape[1] != resolution ** 3:
        raise ValueError(f"grid_features must be [B, R^3={resolution ** 3}, C], got {tuple(grid_features.shape)}")
    idx = _flat_indices(coords, resolution, grid_features.shape[0]).to(grid_features.device)
    return grid_features[coords[:, 0].long().to(grid_features.device), idx]
