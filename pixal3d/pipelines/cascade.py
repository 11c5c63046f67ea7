"""Coordinate helpers of the cascaded pipelines (TRELLIS2_SPEC §4.5, PIXAL3D_SPEC §6.3).

The shape decoder's first ``upsample_times`` stages turn low-resolution latent coordinates into fine voxel
coordinates; those are then re-quantised onto the latent grid of the high-resolution model.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F

__all__ = ["occupancy_to_coords", "quantize_hr_coords", "choose_hr_grid"]


def occupancy_to_coords(logits: torch.Tensor, grid: int) -> torch.Tensor:
    """Sparse-structure decoder logits -> occupied latent coordinates.

    Args:
        logits: ``[B, 1, R, R, R]`` occupancy logits (``R`` = 64 for the released decoder).
        grid: the latent grid of the next stage; ``R`` must be a multiple of it (max-pooled when smaller).

    Returns:
        ``[N, 4]`` int32 ``(b, x, y, z)``, lexicographic order (``argwhere``), batches contiguous.

    Raises:
        ValueError: ``R`` not a multiple of ``grid``.
    """
    occ = logits > 0
    res = logits.shape[-1]
    if res % grid:
        raise ValueError(f"occupancy resolution {res} is not a multiple of the latent grid {grid}")
    if res != grid:
        occ = F.max_pool3d(occ.float(), res // grid, res // grid) > 0.5
    return torch.argwhere(occ)[:, [0, 2, 3, 4]].int()


def quantize_hr_coords(fine_coords: torch.Tensor, fine_res: int, grid: int, mode: str) -> torch.Tensor:
    """Re-quantises fine voxel coordinates onto a ``grid³`` latent grid.

    Args:
        fine_coords: ``[M, 4]`` ``(b, x, y, z)`` at resolution ``fine_res`` (e.g. 512).
        fine_res: resolution of ``fine_coords``.
        grid: target latent grid ``G`` (output resolution / 16).
        mode: ``'round'`` (Pixal3D: ``round((c + 0.5)/fine_res · (G − 1))``, consistent with its ``linspace`` grid)
            or ``'floor'`` (TRELLIS.2: ``int((c + 0.5)/fine_res · G)``).

    Returns:
        ``[N, 4]`` int32 unique rows, sorted lexicographically.
    """
    xyz = (fine_coords[:, 1:].double() + 0.5) / fine_res
    if mode == "round":
        q = torch.round(xyz * (grid - 1))
    elif mode == "floor":
        q = torch.floor(xyz * grid)
    else:
        raise ValueError(f"mode must be 'round' or 'floor', got {mode!r}")
    rows = torch.cat([fine_coords[:, :1].long(), q.long()], dim=1)
    return torch.unique(rows, dim=0).int()


def choose_hr_grid(fine_coords: torch.Tensor, fine_res: int, resolution: int, max_num_tokens: int,
                   mode: str, min_resolution: int = 1024, step: int = 128, factor: int = 16) -> Tuple[torch.Tensor, int]:
    """Lowers the requested output ``resolution`` by ``step`` until the token count fits (§4.5 step 3).

    The latent grid is ``resolution // factor`` (``factor`` = the shape decoder's total upsampling, 16 released).
    Stops when ``#tokens < max_num_tokens`` or the resolution reaches ``min_resolution`` (with the released values a
    1024 request never changes; 1536 can fall to 1408, 1280, 1152, 1024).

    Returns:
        ``(coords [N,4] int32, resolution)``.
    """
    res = int(resolution)
    while True:
        coords = quantize_hr_coords(fine_coords, fine_res, res // factor, mode)
        if coords.shape[0] < max_num_tokens or res <= min_resolution:
            return coords, res
        res -= step
