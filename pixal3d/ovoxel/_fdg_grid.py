"""Grid-argument normalisation shared by both directions of the flexible dual grid (TRELLIS2_SPEC §3.1-3.4).

The reference accepts ``aabb`` / ``voxel_size`` / ``grid_size`` as Python scalars, lists, numpy arrays or tensors and
derives the missing one in float32; we do the same so that the voxel size is bit-identical to the reference's
(e.g. ``1/64`` computed as ``float32(1.0) / 64``).
"""
from __future__ import annotations

import numbers

import numpy as np
import torch


def as_aabb(aabb, device=None) -> torch.Tensor:
    """``aabb`` as a float32 tensor ``[2, 3]`` (rows min, max); raises ValueError for a bad shape or empty box."""
    if isinstance(aabb, torch.Tensor):
        t = aabb.detach().to(device=device, dtype=torch.float32)
    else:
        try:
            t = torch.as_tensor(np.asarray(aabb, dtype=np.float32), device=device)
        except (TypeError, ValueError) as e:
            raise TypeError(f"aabb must be a [2, 3] list/array/tensor of floats, got {type(aabb).__name__}") from e
    if t.shape != (2, 3):
        raise ValueError(f"aabb must have shape [2, 3] (min row, max row), got {tuple(t.shape)}")
    if not torch.isfinite(t).all() or not (t[1] > t[0]).all():
        raise ValueError(f"aabb must be finite with max > min on every axis, got {t.tolist()}")
    return t


def _as_vec3(value, dtype, name: str, device=None) -> torch.Tensor:
    if isinstance(value, numbers.Number):
        value = [value] * 3
    if isinstance(value, torch.Tensor):
        t = value.detach().to(device=device)
    else:
        t = torch.as_tensor(np.asarray(value), device=device)
    if t.dim() == 0:
        t = t.repeat(3)
    if t.shape != (3,):
        raise ValueError(f"{name} must be a scalar or have 3 elements, got shape {tuple(t.shape)}")
    return t.to(dtype)


def resolve_grid(aabb: torch.Tensor, voxel_size=None, grid_size=None):
    """Returns ``(voxel_size float32 [3], grid_size int32 [3])`` on ``aabb``'s device.

    With ``voxel_size`` given, ``grid_size = round((max - min) / voxel_size)``; otherwise
    ``voxel_size = (max - min) / grid_size`` in float32, as the reference does. Raises ValueError if neither is
    given or a value is not positive.
    """
    if voxel_size is None and grid_size is None:
        raise ValueError("either voxel_size or grid_size must be given (e.g. grid_size=64)")
    dev = aabb.device
    if voxel_size is not None:
        vs = _as_vec3(voxel_size, torch.float32, "voxel_size", dev)
        if not torch.isfinite(vs).all() or not (vs > 0).all():
            raise ValueError(f"voxel_size must be positive and finite, got {vs.tolist()}")
        gs = ((aabb[1] - aabb[0]) / vs).round().to(torch.int32)
        if grid_size is not None and not torch.equal(gs, _as_vec3(grid_size, torch.int32, "grid_size", dev)):
            raise ValueError(f"voxel_size {vs.tolist()} and grid_size {grid_size} disagree for aabb {aabb.tolist()}; "
                             "give only one of them")
    else:
        gs = _as_vec3(grid_size, torch.int32, "grid_size", dev)
        if not (gs > 0).all():
            raise ValueError(f"grid_size must be positive, got {gs.tolist()}")
        vs = (aabb[1] - aabb[0]) / gs
    if not (gs > 0).all():
        raise ValueError(f"voxel_size {vs.tolist()} is larger than the aabb {aabb.tolist()}")
    return vs, gs
