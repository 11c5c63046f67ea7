"""Resolution changes of sparse tensors: pooling, nearest upsampling, space<->channel packing (TRELLIS2_SPEC.md §1.6).

Child convention for factor f (f = 2 everywhere in TRELLIS.2): a fine voxel's parent is ``coord // f`` and its
sub-index is ``s = (x % f) + f*(y % f) + f^2*(z % f)`` (x least significant). Coarse voxels are the unique parent
codes ``((b*X' + x')*Y' + y')*Z' + z'`` (``X' = ceil(X/f)``...) sorted by code, i.e. lexicographic (b, x, y, z).

Structure caches (§1.3) make the decoder side reproduce the encoder side exactly:
``downsample_f``/``spatial2channel_f`` are stored at the fine level, ``upsample_f``/``channel2spatial_f`` (+ ``shape``,
and ``subdivision`` in training mode) at the coarse level, all in the dict shared by the input and output tensors.
"""
from typing import List, Sequence, Tuple

import torch
import torch.nn as nn

from .basic import SparseTensor

__all__ = ["SparseDownsample", "SparseUpsample", "SparseSpatial2Channel", "SparseChannel2Spatial",
           "coarse_structure", "children_from_subdivision", "plan_channel2spatial"]


def _check_factor(factor) -> int:
    if not isinstance(factor, int) or isinstance(factor, bool) or factor < 1:
        raise ValueError(f"factor must be a positive int, got {factor!r}")
    return factor


def _check_input(x, name: str) -> None:
    if not isinstance(x, SparseTensor):
        raise TypeError(f"{name} expects a SparseTensor, got {type(x).__name__}")


def coarse_structure(x: SparseTensor, f: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Size]:
    """Parent voxels of ``x`` for factor ``f``.

    Returns:
        new_coords: int32 ``[M, 4]`` unique parents sorted by (b, x, y, z);
        idx: long ``[N]`` parent row of every fine voxel;
        subidx: long ``[N]`` child index ``(x%f) + f*(y%f) + f^2*(z%f)``;
        coarse_shape: ``ceil(spatial_shape / f)``.
    """
    c = x.coords.long()
    X, Y, Z = ((int(s) + f - 1) // f for s in x.spatial_shape)
    p = c[:, 1:] // f
    code = ((c[:, 0] * X + p[:, 0]) * Y + p[:, 1]) * Z + p[:, 2]
    ucode, idx = torch.unique(code, sorted=True, return_inverse=True)
    new_coords = torch.stack([ucode // (X * Y * Z), ucode // (Y * Z) % X, ucode // Z % Y, ucode % Z], 1)
    r = c[:, 1:] % f
    subidx = r[:, 0] + f * r[:, 1] + f * f * r[:, 2]
    return new_coords.to(torch.int32), idx, subidx, torch.Size((X, Y, Z))


def _subdivision_mask(n_coarse: int, idx: torch.Tensor, subidx: torch.Tensor, f: int) -> torch.Tensor:
    mask = torch.zeros((n_coarse, f ** 3), dtype=torch.bool, device=idx.device)
    mask[idx, subidx] = True
    return mask


def children_from_subdivision(x: SparseTensor, subdivision, f: int) -> Tuple[torch.Tensor, torch.Tensor,
                                                                             torch.Tensor]:
    """Fine structure from a child-occupancy mask.

    Args:
        x: coarse tensor with N voxels.
        subdivision: bool ``[N, f^3]`` (a tensor or a SparseTensor whose feats are that), bit s = child s exists.

    Returns:
        ``(new_coords int32 [M, 4], idx long [M] parent row, subidx long [M])``, children grouped by parent in parent
        order, increasing s within a parent.

    Raises:
        TypeError: the mask is not bool (threshold logits first: ``logits > 0``).
        ValueError: wrong mask shape.
    """
    sub = subdivision.feats if isinstance(subdivision, SparseTensor) else subdivision
    if not isinstance(sub, torch.Tensor):
        raise TypeError(f"subdivision must be a bool tensor [N, {f ** 3}] or a SparseTensor of one, "
                        f"got {type(subdivision).__name__}")
    if sub.dtype != torch.bool:
        raise TypeError(f"subdivision must be bool (child exists), got {sub.dtype}; pass e.g. `logits.feats > 0`")
    if tuple(sub.shape) != (x.coords.shape[0], f ** 3):
        raise ValueError(f"subdivision must have shape [{x.coords.shape[0]}, {f ** 3}] (one bit per child of "
                         f"each voxel), got {tuple(sub.shape)}")
    nz = torch.nonzero(sub)
    idx, subidx = nz[:, 0], nz[:, 1]
    base = x.coords.long()[idx]
    offs = torch.stack([subidx % f, subidx // f % f, subidx // (f * f) % f], 1)
    new_coords = torch.cat([base[:, :1], base[:, 1:] * f + offs], 1).to(torch.int32)
    return new_coords, idx, subidx


def _children_once(x: SparseTensor, subdivision, f: int):
    """:func:`children_from_subdivision`, computed once per ``(x's coords, subdivision)`` pair, plus the spatial cache
    dict its outputs share.

    Why: a residual upsampling block sends both its branches (the conv path ``h = conv1(x)`` and the skip ``x``, same
    coords object) through C2S with the same subdivision object. Each call used to redo ``nonzero`` (a device-to-host
    sync) and the child-coordinate arithmetic, and gave each output its own empty cache, so anything derived from the
    fine coordinates could be built twice. The result is memoised on the subdivision ``SparseTensor`` (a per-forward
    object), keyed by the identity of the coords and mask tensors, so a changed mask or a different parent set
    recomputes; a plain bool tensor is not memoised. Both outputs then share one fresh cache dict: their coordinates
    are the same tensor, so any cached structure is valid for both.

    Returns:
        ``((new_coords, idx, subidx), spatial_cache dict)``.
    """
    memo_ok = isinstance(subdivision, SparseTensor)
    mask = subdivision.feats if memo_ok else subdivision
    memo = getattr(subdivision, "_children_memo", None) if memo_ok else None
    if memo is not None and memo[0] is x.coords and memo[1] is mask and memo[2] == f:
        return memo[3], memo[4]
    children = children_from_subdivision(x, subdivision, f)
    cache = {}
    if memo_ok:
        subdivision._children_memo = (x.coords, mask, f, children, cache)
    return children, cache


def plan_channel2spatial(x: SparseTensor, subdivisions: Sequence[SparseTensor], f: int = 2) -> List[torch.Tensor]:
    """Structure of a chain of C2S upsamplings, worked out before any feature work is queued (TRELLIS2_SPEC §1.6).

    Why: each C2S needs its child count on the host (``nonzero``) and each new level's convolutions need its grid
    extent (``spatial_shape``); inside a decoder's forward every such read stalls the host until the GPU has caught
    up, and the GPU then idles while the host queues the next level. When the subdivisions are known in advance
    (a guided decoder), this walks the chain once, up front: level ``i+1``'s voxels are the children of level ``i``
    under ``subdivisions[i]``, memoised on that SparseTensor exactly as :class:`SparseChannel2Spatial` memoises them
    (so the forward reuses them), and each level's ``spatial_shape`` and ``x``'s batch size are stored where the
    forward's tensors will look. The forward then runs without host synchronisation.

    Args:
        x: level-0 SparseTensor, the very object (or a ``replace`` of it) whose coordinates the first C2S will see.
        subdivisions: one SparseTensor per level with **bool** feats ``[N_i, f^3]`` on level ``i``'s voxels, row for
            row (logits must be thresholded first: pass ``s.replace(s.feats > 0)``), each passed unchanged to the
            matching C2S afterwards.
        f: the factor of every level.

    Returns:
        The coords of every level, ``[x.coords, level 1, ..., level len(subdivisions)]`` (int32 ``[N_i, 4]``).

    Raises:
        TypeError / ValueError: a subdivision that is not a bool ``[N_i, f^3]`` SparseTensor on its level.
    """
    f = _check_factor(f)
    batch = x.shape[0]
    x.spatial_shape  # noqa: B018 - cached for level 0 (shared with x's replace() copies)
    coords, scale, levels = x.coords, x._scale, [x.coords]
    for i, sub in enumerate(subdivisions):
        if not isinstance(sub, SparseTensor):
            raise TypeError(f"subdivisions[{i}] must be a SparseTensor, got {type(sub).__name__}")
        if sub.feats.shape[0] != coords.shape[0]:
            raise ValueError(f"subdivisions[{i}] has {sub.feats.shape[0]} rows but level {i} has {coords.shape[0]} "
                             "voxels: it does not lie on that level's voxels")
        proxy = SparseTensor(x.feats.new_empty(coords.shape[0], 0), coords, torch.Size([batch, 0]), scale=scale,
                             check=False)
        (coords, _, _), cache = _children_once(proxy, sub, f)
        scale = _scaled(scale, div=f)
        fine = SparseTensor(x.feats.new_empty(coords.shape[0], 0), coords, torch.Size([batch, 0]), scale=scale,
                            spatial_cache=cache, check=False)
        fine.spatial_shape  # noqa: B018 - cached in the dict the forward's fine tensors will share
        levels.append(coords)
    return levels


def _on(device, *tensors):
    """Cached index tensors follow the tensor to its device (a cache built on CPU, reused after ``.cuda()``)."""
    return tuple(t if t.device == device else t.to(device) for t in tensors)


def _scaled(scale, mul=None, div=None):
    return tuple(s * mul for s in scale) if mul is not None else tuple(s / div for s in scale)


class SparseDownsample(nn.Module):
    """Pools children into their parent (``mean`` or ``max`` over the existing children only).

    Forward: ``x`` feats ``[N, C]`` -> feats ``[M, C]`` at coords ``coarse_structure``; scale multiplied by f; the
    spatial cache is shared. Caches ``downsample_f`` on the input level and ``upsample_f``, ``shape`` (and
    ``subdivision`` when ``self.training``) on the output level.

    Raises:
        ValueError: bad factor or mode. TypeError: non-SparseTensor input.
    """

    def __init__(self, factor: int, mode: str = "mean"):
        super().__init__()
        self.factor = _check_factor(factor)
        if mode not in ("mean", "max"):
            raise ValueError(f"SparseDownsample mode must be 'mean' or 'max', got {mode!r}")
        self.mode = mode

    def forward(self, x: SparseTensor) -> SparseTensor:
        _check_input(x, "SparseDownsample")
        f = self.factor
        cache = x.get_spatial_cache(f"downsample_{f}")
        if cache is None:
            new_coords, idx, subidx, cshape = coarse_structure(x, f)
        else:
            new_coords, idx = _on(x.device, *cache)
        feats = x.feats.reshape(x.feats.shape[0], -1)
        new_feats = feats.new_zeros((new_coords.shape[0], feats.shape[1])).scatter_reduce(
            0, idx.unsqueeze(1).expand_as(feats), feats, reduce="amax" if self.mode == "max" else "mean",
            include_self=False)
        new_feats = new_feats.reshape(new_coords.shape[0], *x.feats.shape[1:])
        out = SparseTensor(new_feats, new_coords, torch.Size([x.shape[0], *new_feats.shape[1:]]),
                           scale=_scaled(x._scale, mul=f), spatial_cache=x._spatial_cache, check=False)
        if cache is None:
            x.register_spatial_cache(f"downsample_{f}", (new_coords, idx))
            out.register_spatial_cache(f"upsample_{f}", (x.coords, idx))
            out.register_spatial_cache("shape", cshape)
            if self.training:
                out.register_spatial_cache("subdivision", _subdivision_mask(new_coords.shape[0], idx, subidx, f))
        return out

    def extra_repr(self) -> str:
        return f"factor={self.factor}, mode={self.mode!r}"


class SparseUpsample(nn.Module):
    """Nearest-neighbour upsampling: every child copies its parent's features.

    Forward ``(x, subdivision=None)``: the children come from the cached ``upsample_f`` (paired downsample; the
    output then keeps the shared cache and returns to the fine level's voxel order), else from ``subdivision``
    (bool ``[N, f^3]``; a fresh cache, shared with other outputs made from the same coords and subdivision object).
    Scale divided by f.

    Raises:
        ValueError: no cache and no subdivision given. TypeError/ValueError: bad subdivision (see
        :func:`children_from_subdivision`).
    """

    def __init__(self, factor: int):
        super().__init__()
        self.factor = _check_factor(factor)

    def forward(self, x: SparseTensor, subdivision=None) -> SparseTensor:
        _check_input(x, "SparseUpsample")
        f = self.factor
        cache = x.get_spatial_cache(f"upsample_{f}")
        if cache is None:
            if subdivision is None:
                raise ValueError("SparseUpsample: no 'upsample' structure cached at this level; pass a subdivision "
                                 f"mask [N, {f ** 3}] or pair it with a SparseDownsample")
            (new_coords, idx, _), out_cache = _children_once(x, subdivision, f)
        else:
            new_coords, idx = _on(x.device, *cache)
            out_cache = x._spatial_cache
        new_feats = x.feats[idx]
        return SparseTensor(new_feats, new_coords, torch.Size([x.shape[0], *new_feats.shape[1:]]),
                            scale=_scaled(x._scale, div=f), spatial_cache=out_cache, check=False)

    def extra_repr(self) -> str:
        return f"factor={self.factor}"


class SparseSpatial2Channel(nn.Module):
    """Pixel-unshuffle: packs the f^3 children of each parent into channels (S2C).

    Forward: feats ``[N, C]`` -> ``[M, f^3*C]`` with channel ``s*C + c`` = child s, channel c (missing children are
    zero); coords from :func:`coarse_structure`; scale multiplied by f; shared spatial cache. Caches
    ``spatial2channel_f = (coarse_coords, idx, subidx)`` on the fine level and ``channel2spatial_f = (fine_coords,
    idx, subidx)``, ``shape`` (and ``subdivision`` in training mode) on the coarse level.
    """

    def __init__(self, factor: int = 2):
        super().__init__()
        self.factor = _check_factor(factor)

    def forward(self, x: SparseTensor) -> SparseTensor:
        _check_input(x, "SparseSpatial2Channel")
        f = self.factor
        f3 = f ** 3
        cache = x.get_spatial_cache(f"spatial2channel_{f}")
        if cache is None:
            new_coords, idx, subidx, cshape = coarse_structure(x, f)
        else:
            new_coords, idx, subidx = _on(x.device, *cache)
        m = new_coords.shape[0]
        packed = x.feats.new_zeros((m * f3, *x.feats.shape[1:]))
        packed[idx * f3 + subidx] = x.feats
        new_feats = packed.reshape(m, -1)
        out = SparseTensor(new_feats, new_coords, torch.Size([x.shape[0], new_feats.shape[1]]),
                           scale=_scaled(x._scale, mul=f), spatial_cache=x._spatial_cache, check=False)
        if cache is None:
            x.register_spatial_cache(f"spatial2channel_{f}", (new_coords, idx, subidx))
            out.register_spatial_cache(f"channel2spatial_{f}", (x.coords, idx, subidx))
            out.register_spatial_cache("shape", cshape)
            if self.training:
                out.register_spatial_cache("subdivision", _subdivision_mask(m, idx, subidx, f))
        return out

    def extra_repr(self) -> str:
        return f"factor={self.factor}"


class SparseChannel2Spatial(nn.Module):
    """Pixel-shuffle (C2S): child s of voxel n receives channels ``[s*C', (s+1)*C')`` of ``feats [N, f^3*C']``.

    Forward ``(x, subdivision=None)``: the child set comes from the cached ``channel2spatial_f`` when present
    (teacher forcing / encoder reuse: output coords are the cached fine coords in their original order and the
    shared cache is kept), else from ``subdivision`` (bool ``[N, f^3]`` tensor or SparseTensor; children grouped by
    parent, increasing s; a fresh cache, shared with other outputs made from the same coords and subdivision
    object). Scale divided by f.

    Raises:
        ValueError: channel count not divisible by f^3, or neither cache nor subdivision available.
        TypeError: non-bool subdivision.
    """

    def __init__(self, factor: int = 2):
        super().__init__()
        self.factor = _check_factor(factor)

    def forward(self, x: SparseTensor, subdivision=None) -> SparseTensor:
        _check_input(x, "SparseChannel2Spatial")
        f = self.factor
        f3 = f ** 3
        if x.feats.dim() != 2 or x.feats.shape[1] % f3:
            raise ValueError(f"SparseChannel2Spatial expects feats [N, {f3}*C'], got {tuple(x.feats.shape)}")
        cache = x.get_spatial_cache(f"channel2spatial_{f}")
        if cache is None:
            if subdivision is None:
                raise ValueError("SparseChannel2Spatial: no 'channel2spatial' structure cached at this level; pass "
                                 f"a subdivision mask [N, {f3}] or pair it with a SparseSpatial2Channel")
            (new_coords, idx, subidx), out_cache = _children_once(x, subdivision, f)
        else:
            new_coords, idx, subidx = _on(x.device, *cache)
            out_cache = x._spatial_cache
        flat = x.feats.reshape(x.feats.shape[0] * f3, -1)
        new_feats = flat[idx * f3 + subidx]
        return SparseTensor(new_feats, new_coords, torch.Size([x.shape[0], new_feats.shape[1]]),
                            scale=_scaled(x._scale, div=f), spatial_cache=out_cache, check=False)

    def extra_repr(self) -> str:
        return f"factor={self.factor}"
