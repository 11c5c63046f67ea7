"""Sampling sparse voxel features at continuous points (TRELLIS2_SPEC.md §1.9; FlexGEMM ``grid_sample_3d``).

Points are in voxel units: voxel i covers ``[i, i+1)`` with centre ``i + 0.5``. Trilinear mode blends the 8 voxels
around the point (``base = floor(q - 0.5)``) with weights ``prod(1 - |q - (v + 0.5)|)``, keeping only ACTIVE voxels
inside the grid and renormalising by ``max(sum w, 1e-12)`` -- so a point near the surface is not darkened by empty
space. Nearest mode reads voxel ``floor(q)`` (zero if inactive or outside the grid).
"""
from typing import Sequence

import torch

__all__ = ["grid_sample_3d"]


def _lookup(sorted_keys, perm, b, v, dims):
    """Row of voxel ``(b, v)`` (``v`` long ``[..., 3]``) or -1 when inactive / outside ``[0, dims)``."""
    X, Y, Z = dims
    inside = (v >= 0).all(-1) & (v[..., 0] < X) & (v[..., 1] < Y) & (v[..., 2] < Z)
    key = ((b * X + v[..., 0]) * Y + v[..., 1]) * Z + v[..., 2]
    if sorted_keys.numel() == 0:
        return torch.full_like(key, -1)
    pos = torch.searchsorted(sorted_keys, key.reshape(-1)).reshape(key.shape).clamp_(max=sorted_keys.numel() - 1)
    found = inside & (sorted_keys[pos] == key)
    return torch.where(found, perm[pos], torch.full_like(pos, -1))


def grid_sample_3d(feats: torch.Tensor, coords: torch.Tensor, shape: Sequence[int], grid: torch.Tensor,
                   mode: str = "trilinear") -> torch.Tensor:
    """Samples sparse features at query points.

    Args:
        feats: ``[N, C]`` features of the active voxels.
        coords: ``[N, 4]`` integer ``(batch, x, y, z)``.
        shape: a size whose last four entries are ``(C, X, Y, Z)`` (e.g. ``[B, C, X, Y, Z]``); X, Y, Z bound the grid.
        grid: float ``[B, L, 3]`` query points in voxel units; query batch b reads voxels of batch b.
        mode: ``'trilinear'`` or ``'nearest'``.

    Returns:
        ``[B, L, C]`` in ``feats.dtype``; differentiable w.r.t. ``feats`` (and ``grid`` in trilinear mode).

    Raises:
        ValueError: bad shapes or mode. TypeError: non-float grid.
    """
    if mode not in ("trilinear", "nearest"):
        raise ValueError(f"grid_sample_3d mode must be 'trilinear' or 'nearest', got {mode!r}")
    if feats.dim() != 2:
        raise ValueError(f"feats must be [N, C], got {tuple(feats.shape)}")
    if coords.dim() != 2 or coords.shape[1] != 4 or coords.shape[0] != feats.shape[0]:
        raise ValueError(f"coords must be [N, 4] with N = {feats.shape[0]}, got {tuple(coords.shape)}")
    if grid.dim() != 3 or grid.shape[2] != 3:
        raise ValueError(f"grid must be [B, L, 3] query points, got {tuple(grid.shape)}")
    if not grid.is_floating_point():
        raise TypeError(f"grid must be a float tensor of voxel-unit positions, got {grid.dtype}")
    if len(shape) < 4:
        raise ValueError(f"shape must end with (C, X, Y, Z), got {tuple(shape)}")
    dims = tuple(int(s) for s in shape[-3:])
    X, Y, Z = dims
    B, L = grid.shape[:2]
    c = coords.long()
    keys = ((c[:, 0] * X + c[:, 1]) * Y + c[:, 2]) * Z + c[:, 3]
    sorted_keys, perm = torch.sort(keys)
    b = torch.arange(B, device=grid.device).view(B, 1)
    zero_row = feats.new_zeros((1, feats.shape[1]))
    table = torch.cat([feats, zero_row], 0)  # row N is the zero for missing voxels

    if mode == "nearest":
        idx = _lookup(sorted_keys, perm, b, torch.floor(grid).long(), dims)
        idx = torch.where(idx < 0, torch.full_like(idx, feats.shape[0]), idx)
        return table[idx]

    q = grid - 0.5
    base = torch.floor(q)
    frac = q - base  # distance to the lower voxel centre, in [0, 1)
    base = base.long()
    out = feats.new_zeros((B, L, feats.shape[1]))
    wsum = torch.zeros((B, L), dtype=grid.dtype, device=grid.device)
    for corner in range(8):
        off = torch.tensor([corner & 1, (corner >> 1) & 1, (corner >> 2) & 1], device=grid.device)
        w = torch.where(off.bool(), frac, 1 - frac).prod(-1)
        idx = _lookup(sorted_keys, perm, b, base + off, dims)
        active = idx >= 0
        w = w * active
        idx = torch.where(active, idx, torch.full_like(idx, feats.shape[0]))
        out = out + w.unsqueeze(-1).to(feats.dtype) * table[idx]
        wsum = wsum + w
    return out / wsum.clamp_min(1e-12).unsqueeze(-1).to(feats.dtype)
