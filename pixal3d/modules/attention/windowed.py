"""Windowed sparse self-attention: axis-aligned windows (TRELLIS2_SPEC §1.7) and serialized windows.

Both restrict attention to groups of tokens. A partition is a permutation ``fwd`` that makes each group contiguous,
its inverse ``bwd``, and the group lengths; the grouped tokens then go through :func:`varlen_attention` with the groups
as "samples". Partitions depend only on the coordinates, so they are cached in the tensor's spatial cache.

* **Axis-aligned** (``windowed``): coordinates are shifted by ``shift_window``, integer-divided by ``window_size``,
  and the window of a voxel is ``(batch, wx, wy, wz)`` linearised with
  ``OFFSET = cumprod([1] + NUM_WINDOWS[::-1])[::-1]``, ``NUM_WINDOWS = ceil((spatial_shape + shift + 1) / window)``.
* **Serialized** (not in TRELLIS.2's networks; provided for experiments): voxels are ordered per sample by their
  z-order or Hilbert code (``pixal3d.sparse.encode_seq``) and cut into consecutive runs of ``window_size`` tokens;
  ``shift`` moves the cut points back by ``shift`` tokens (``window_size // 2`` gives the shifted variant).
"""
import math
from typing import Sequence, Tuple, Union

import torch

from .functional import VarLenMeta, varlen_attention

__all__ = ["window_partition", "serialized_partition", "partitioned_self_attention",
           "sparse_windowed_self_attention", "sparse_serialized_self_attention"]


def _triple(v: Union[int, Sequence[int]], name: str) -> Tuple[int, int, int]:
    t = (int(v),) * 3 if isinstance(v, (int,)) else tuple(int(a) for a in v)
    if len(t) != 3:
        raise ValueError(f"{name} must be an int or 3 ints, got {v!r}")
    return t


def _check_coords(coords: torch.Tensor) -> None:
    if not isinstance(coords, torch.Tensor) or coords.dim() != 2 or coords.shape[1] != 4 \
            or coords.dtype.is_floating_point:
        got = tuple(coords.shape) if isinstance(coords, torch.Tensor) else type(coords).__name__
        raise ValueError(f"coords must be an integer tensor [N, 4] of (batch, x, y, z), got {got}")


def _groups_from_ids(ids: torch.Tensor):
    fwd = torch.argsort(ids)
    bwd = torch.empty_like(fwd)
    bwd[fwd] = torch.arange(fwd.shape[0], device=fwd.device)
    _, counts = torch.unique_consecutive(ids[fwd], return_counts=True)
    cu = torch.zeros(counts.shape[0] + 1, dtype=torch.int32, device=ids.device)
    cu[1:] = torch.cumsum(counts, 0)
    return fwd, bwd, cu


def window_partition(coords: torch.Tensor, window_size: Union[int, Sequence[int]],
                     shift_window: Union[int, Sequence[int]] = 0):
    """Axis-aligned window partition of sparse voxels.

    Args:
        coords: int ``[N, 4]`` ``(batch, x, y, z)``, non-negative.
        window_size: window edge (int or per axis), in voxels.
        shift_window: shift added to the coordinates before binning (int or per axis).

    Returns:
        ``(fwd [N] long, bwd [N] long, cu_seqlens int32 [W+1])``: ``coords[fwd]`` lists the voxels window by window
        (windows in increasing linear id), ``bwd`` inverts ``fwd``, ``cu_seqlens`` delimits the non-empty windows.

    Raises:
        ValueError: malformed coords or a non-positive window size.
    """
    _check_coords(coords)
    ws = _triple(window_size, "window_size")
    sh = _triple(shift_window, "shift_window")
    if min(ws) <= 0:
        raise ValueError(f"window_size must be positive, got {window_size!r}")
    c = coords.long()
    spatial_shape = (c[:, 1:].max(0).values + 1).tolist() if c.shape[0] else [0, 0, 0]
    num_windows = [math.ceil((s + h + 1) / w) for s, h, w in zip(spatial_shape, sh, ws)]
    offset = [num_windows[0] * num_windows[1] * num_windows[2], num_windows[1] * num_windows[2], num_windows[2], 1]
    w = (c[:, 1:] + torch.tensor(sh, device=c.device)) // torch.tensor(ws, device=c.device)
    ids = c[:, 0] * offset[0] + w[:, 0] * offset[1] + w[:, 1] * offset[2] + w[:, 2] * offset[3]
    return _groups_from_ids(ids)


def serialized_partition(coords: torch.Tensor, window_size: int, shift: int = 0, mode: str = "z_order"):
    """Serialized window partition: per sample, voxels sorted by space-filling-curve code, cut every ``window_size``.

    Args:
        coords: int ``[N, 4]`` ``(batch, x, y, z)`` with x, y, z in ``[0, 1023]``.
        window_size: tokens per window (> 0). shift: token offset of the cut points (``0 <= shift < window_size``).
        mode: ``'z_order'`` or ``'hilbert'`` (passed to ``pixal3d.sparse.encode_seq``).

    Returns:
        ``(fwd, bwd, cu_seqlens)`` as :func:`window_partition`.

    Raises:
        ValueError: malformed coords or window arguments. ImportError: ``pixal3d.sparse.encode_seq`` is unavailable.
    """
    _check_coords(coords)
    if window_size <= 0 or not 0 <= shift < window_size:
        raise ValueError(f"need window_size > 0 and 0 <= shift < window_size, got {window_size}, {shift}")
    try:
        from pixal3d.sparse import encode_seq
    except ImportError as e:
        raise ImportError("serialized attention needs pixal3d.sparse.encode_seq (z-order/Hilbert codes)") from e
    codes = encode_seq(coords[:, 1:].contiguous(), mode=mode).long()
    key = coords[:, 0].long() * (1 << 30) + codes
    order = torch.argsort(key)
    # rank of each sorted token inside its sample
    b_sorted = coords[order, 0].long()
    first = torch.ones_like(b_sorted, dtype=torch.bool)
    first[1:] = b_sorted[1:] != b_sorted[:-1]
    start = torch.cummax(torch.where(first, torch.arange(len(order), device=order.device), 0), 0).values
    rank = torch.arange(len(order), device=order.device) - start
    ids_sorted = b_sorted * (len(order) + window_size) + (rank + shift) // window_size
    ids = torch.empty_like(ids_sorted)
    ids[order] = ids_sorted
    return _groups_from_ids(ids)


def partitioned_self_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, partition) -> torch.Tensor:
    """Attention restricted to the groups of ``partition = (fwd, bwd, cu_seqlens)``.

    Args: q, k, v ``[N, H, D]`` in the voxel order the partition was computed for; ``cu_seqlens`` may be a tensor
    or a :class:`VarLenMeta`. Returns ``[N, H, D]``.
    """
    fwd, bwd, cu = partition
    out = varlen_attention(q[fwd], k[fwd], v[fwd], cu, cu)
    return out[bwd]


def _cached_partition(x, key: str, build):
    """The partition cached on ``x`` under ``key``, with the window lengths as a :class:`VarLenMeta` (read from the
    device once, when the partition is built, instead of in every attention call that uses it)."""
    part = x.get_spatial_cache(key)
    if part is None:
        part = build()
        x.register_spatial_cache(key, part)
    meta = x.get_spatial_cache(key + "_meta")
    if not isinstance(meta, VarLenMeta) or meta.device != part[2].device:
        meta = VarLenMeta.from_cu_seqlens(part[2])
        x.register_spatial_cache(key + "_meta", meta)
    fwd, bwd, _ = part
    return fwd, bwd, meta


def sparse_windowed_self_attention(x, q, k, v, window_size, shift_window=0) -> torch.Tensor:
    """Axis-aligned windowed self-attention on the voxels of the sparse tensor ``x`` (partition cached on ``x``).

    Args:
        x: ``SparseTensor`` providing ``coords`` and the spatial cache. q, k, v: ``[N, H, D]`` in ``x``'s row order.

    Returns:
        ``[N, H, D]``.
    """
    key = f"windowed_attention_{window_size}_{shift_window}"
    part = _cached_partition(x, key, lambda: window_partition(x.coords, window_size, shift_window))
    return partitioned_self_attention(q, k, v, part)


def sparse_serialized_self_attention(x, q, k, v, window_size: int, shift: int = 0,
                                     mode: str = "z_order") -> torch.Tensor:
    """Serialized-window self-attention on the voxels of ``x`` (partition cached on ``x``). Shapes as above."""
    key = f"serialized_attention_{mode}_{window_size}_{shift}"
    part = _cached_partition(x, key, lambda: serialized_partition(x.coords, window_size, shift, mode))
    return partitioned_self_attention(q, k, v, part)
