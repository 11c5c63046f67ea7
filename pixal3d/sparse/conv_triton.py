"""Triton implicit-GEMM submanifold convolution (backend ``triton``; maths of TRELLIS2_SPEC.md §1.4).

Layout of the work
------------------
The neighbour map of one resolution level is a dense table ``nbr [N, V]`` (int32, V = Kx*Ky*Kz): ``nbr[p, v]`` is the
input row of voxel p's neighbour at kernel offset v, or -1 when that neighbour is missing or off the grid. Rows of the
table are stored in a *processing order* (``order [N]`` maps a processing position to the voxel's row in ``feats``):

* voxels are grouped into spatial chunks of ``2**chunk_shift`` voxels per side (lexicographic chunk order), so the
  programs running together gather rows from a small neighbourhood and those rows stay in L2;
* inside a chunk they are sorted by their 27-bit neighbour mask, so a tile of BLOCK_N consecutive voxels mostly shares
  the same set of present offsets.

For each tile the kernel receives the compact list of kernel offsets at which *any* voxel of the tile has a neighbour
(``tile_cnt``, ``tile_list``) and loops only over those, times the Ci tiles. Each program owns a tile of BLOCK_N
output voxels x BLOCK_CO output channels: per step it loads the tile's neighbour rows through the table (masked where
missing), the matching ``[BLOCK_K, BLOCK_CO]`` slice of ``W_v`` (read in place from the ``[Co, V, Ci]`` weight), and
accumulates ``tl.dot`` in fp32; bias is added and the tile written once, at the voxels' original rows, so the output
keeps the input's row order and no feature permutation is ever materialised.

Precision: fp16/bf16 operands with fp32 accumulation; fp32 operands use exact fp32 (``ieee``) products unless PyTorch's
float32 matmul precision allows tf32 (``torch.get_float32_matmul_precision() != "highest"``), mirroring what the
``torch`` backend's ``@`` does. float64 and CPU tensors go to the ``torch`` backend (see ``supports``).

Backward: ``grad_input`` runs the same Triton kernel on ``grad_output`` with the mirrored, transposed weight
(``W'[ci, v, co] = W[co, V-1-v, ci]``; valid for odd kernel sizes, where offset V-1-v is the negation of offset v);
``grad_weight`` is a per-offset gather + GEMM in PyTorch over the same table; ``grad_bias`` a column sum. Even kernel
sizes with gradients fall back to the ``torch`` backend.

Neighbour-map build (GPU, no host synchronisation): int64 keys on the grid padded by the kernel's reach, one
``torch.sort``, one batched ``searchsorted`` over all offsets, then the ordering sort and the per-tile offset lists, all
with shapes known on the host.
"""
from __future__ import annotations

import os
import warnings
from typing import Dict, Optional, Sequence, Tuple

import torch

try:  # optional dependency: the package works without it (torch backend)
    import triton
    import triton.language as tl
    HAS_TRITON = True
except Exception:  # pragma: no cover - exercised on machines without triton
    triton = None
    tl = None
    HAS_TRITON = False

__all__ = ["HAS_TRITON", "TritonNeighborMap", "build_triton_map", "get_triton_map", "supports", "interpreting",
           "submanifold_conv3d_triton", "pick_tiles", "preferred_for"]

#: Side of the spatial chunks (as a power of two) inside which voxels are sorted by neighbour mask; -1 disables the
#: mask sort (pure lexicographic processing order). ``SPARSE_CONV_TRITON_CHUNK`` overrides it at map-build time.
DEFAULT_CHUNK_SHIFT = 4


def interpreting() -> bool:
    """True when Triton runs in interpreter mode (``TRITON_INTERPRET=1``): kernels then run on CPU tensors."""
    return os.environ.get("TRITON_INTERPRET", "0").strip() not in ("", "0")


def supports(feats: torch.Tensor, kernel_size: Tuple[int, int, int]) -> bool:
    """Whether the Triton kernel can run this call: triton importable, a CUDA tensor (or CPU under the interpreter),
    fp16/bf16/fp32 features, at most 2**31-1 rows and at most 62 offsets' worth of mask bits not being required."""
    if not HAS_TRITON:
        return False
    if feats.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return False
    if feats.device.type != "cuda" and not (feats.device.type == "cpu" and interpreting()):
        return False
    return feats.shape[0] < 2 ** 31 - 1


def preferred_for(dtype: torch.dtype, ci: int, co: int) -> bool:
    """Whether ``auto`` should pick Triton for this layer (given ``supports``): always for 16-bit operands; for fp32
    only when tf32 is allowed or the layer is narrow (Ci*Co <= 128*128). Exact-fp32 (``ieee``) Triton dots run on
    CUDA cores and measured slower than cuBLAS's fp32 GEMMs of the torch path at C=256 on an H100
    (docs/BENCHMARKS_sparse_conv.md)."""
    if dtype != torch.float32:
        return True
    return _precision(dtype) == "tf32" or ci * co <= 128 * 128


class TritonNeighborMap:
    """Dense neighbour table of one resolution level in processing order, plus per-tile offset lists.

    Attributes:
        n: number of voxels N.
        kernel_size, dilation: 3-tuples.
        nbr: int32 ``[N, V]``, processing order; entry = input row of the neighbour or -1.
        order: int32 ``[N]``, processing position -> row in the features.
        chunk_shift: the chunk side (log2) used to build the order, -1 for lexicographic.
    """

    def __init__(self, n, kernel_size, dilation, nbr, order, chunk_shift):
        self.n = n
        self.kernel_size = kernel_size
        self.dilation = dilation
        self.nbr = nbr
        self.order = order
        self.chunk_shift = chunk_shift
        self._tiles: Dict[int, Tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def volume(self) -> int:
        """Number of kernel offsets V."""
        return self.kernel_size[0] * self.kernel_size[1] * self.kernel_size[2]

    @property
    def device(self) -> torch.device:
        return self.nbr.device

    def tiles(self, block_n: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(tile_cnt int32 [T], tile_list int32 [T, V])`` for tiles of ``block_n`` consecutive processing rows:
        the number of offsets with at least one present neighbour in the tile, and those offsets in increasing order
        first in each row (the rest of the row is padding). Cached per ``block_n``; no host synchronisation."""
        if block_n not in self._tiles:
            V, n = self.volume, self.n
            T = (n + block_n - 1) // block_n
            present = self.nbr >= 0
            if T * block_n != n:
                present = torch.cat([present, present.new_zeros(T * block_n - n, V)])
            active = present.view(T, block_n, V).any(1)
            cnt = active.sum(1, dtype=torch.int32)
            lst = torch.argsort((~active).to(torch.int8), dim=1, stable=True).to(torch.int32).contiguous()
            self._tiles[block_n] = (cnt, lst)
        return self._tiles[block_n]

    def to(self, device) -> "TritonNeighborMap":
        """The same map on ``device`` (tile lists are rebuilt lazily)."""
        return TritonNeighborMap(self.n, self.kernel_size, self.dilation, self.nbr.to(device), self.order.to(device),
                                 self.chunk_shift)


def _offsets(K, D):
    """Kernel offsets in flat order ``v = i*Ky*Kz + j*Kz + k`` (x slowest), as a list of (dx, dy, dz)."""
    return [((i - K[0] // 2) * D[0], (j - K[1] // 2) * D[1], (k - K[2] // 2) * D[2])
            for i in range(K[0]) for j in range(K[1]) for k in range(K[2])]


_OFFSET_TABLES: Dict[Tuple, torch.Tensor] = {}


def _offset_table(K, D, device) -> torch.Tensor:
    """``_offsets`` as an int64 ``[V, 3]`` tensor on ``device``, made once per (K, D, device): a fresh host->device
    copy per map build would be a blocking transfer."""
    key = (K, D, str(device))
    t = _OFFSET_TABLES.get(key)
    if t is None:
        t = torch.tensor(_offsets(K, D), dtype=torch.int64).to(device)
        _OFFSET_TABLES[key] = t
    return t


def _chunk_shift() -> int:
    v = os.environ.get("SPARSE_CONV_TRITON_CHUNK", "").strip()
    return int(v) if v else DEFAULT_CHUNK_SHIFT


#: Upper bound on ``N x offsets`` searched at once while building a map (bounds the int64 temporaries to ~64 MB each).
MAP_GROUP_ELEMS = 1 << 23

#: ``SPARSE_CONV_MAP_SEARCH``: ``auto`` (default) builds maps with the Triton search kernel on CUDA (dilation 1 in z),
#: ``torch`` with batched ``searchsorted`` (any device), ``triton`` also under the interpreter (tests).
MAP_SEARCH_ENV = "SPARSE_CONV_MAP_SEARCH"


def _search_kernel_ok(device: torch.device, D) -> bool:
    mode = os.environ.get(MAP_SEARCH_ENV, "auto").strip().lower() or "auto"
    if mode not in ("auto", "torch", "triton"):
        raise ValueError(f"{MAP_SEARCH_ENV}={mode!r} is not valid; use auto, torch or triton")
    if mode == "torch" or not HAS_TRITON or D[2] != 1:
        return False
    return device.type == "cuda" or (mode == "triton" and device.type == "cpu" and interpreting())


def _search_torch(skeys, perm32, delta, nbr, mask) -> None:
    """Fills ``nbr [N, V]`` (rows in sorted-key order) and ``mask`` (or None) with batched ``searchsorted`` over
    groups of offsets: the portable path of the neighbour search."""
    n, V = nbr.shape
    group = max(1, min(V, MAP_GROUP_ELEMS // n))
    for v0 in range(0, V, group):
        v1 = min(V, v0 + group)
        q = skeys.unsqueeze(0) + delta[v0:v1, None]  # [g, N] neighbour keys of the voxels in sorted order
        pos = torch.searchsorted(skeys, q).clamp_(max=n - 1)
        found = skeys[pos] == q
        nbr[:, v0:v1] = torch.where(found, perm32[pos], -1).t()
        if mask is not None:
            bits = torch.arange(v0, v1, device=nbr.device).unsqueeze(1)
            mask += (found.long() << bits).sum(0)  # distinct bits: the sum is the bitwise or


def build_triton_map(coords: torch.Tensor, spatial_shape: Sequence[int], kernel_size=(3, 3, 3),
                     dilation=(1, 1, 1), chunk_shift: Optional[int] = None) -> TritonNeighborMap:
    """Dense neighbour table for ``coords [N, 4]`` (int, ``(b, x, y, z)``, unique) on the coords' device.

    Same neighbour convention as ``conv.build_neighbor_map`` (offsets ``(i - K//2)*d``, grid bounds from
    ``spatial_shape``, batches isolated). Runs without host synchronisation.

    Keys live on a grid padded by the kernel's reach on every side, ``((b*X' + x+rx)*Y' + y+ry)*Z' + z+rz`` with
    ``X' = X + 2rx``: a neighbour's key is the voxel's key plus a per-offset constant, and a neighbour outside
    ``[0, X)`` (where no voxel lies) can never alias another voxel's key, so no bounds test is needed. The search
    (``SPARSE_CONV_MAP_SEARCH``) is one Triton kernel on CUDA (``_neighbor_search_kernel``: windowed binary searches,
    one per (dx, dy) column), else batched ``searchsorted`` over groups of offsets (at most ``MAP_GROUP_ELEMS``
    queries at once). Either way a level costs a handful of launches instead of ~20 per offset, which had made the
    decoders' upsampling blocks host-bound.
    """
    from .conv import _triple
    K = _triple(kernel_size, "kernel_size")
    D = _triple(dilation, "dilation")
    reach = [(k // 2) * d for k, d in zip(K, D)]
    X, Y, Z = (int(s) + 2 * r for s, r in zip(spatial_shape, reach))
    shift = _chunk_shift() if chunk_shift is None else int(chunk_shift)
    dev = coords.device
    n = coords.shape[0]
    V = K[0] * K[1] * K[2]
    if n == 0:
        return TritonNeighborMap(0, K, D, torch.empty(0, V, dtype=torch.int32, device=dev),
                                 torch.empty(0, dtype=torch.int32, device=dev), shift)
    c = coords.long()
    keys = ((c[:, 0] * X + c[:, 1] + reach[0]) * Y + c[:, 2] + reach[1]) * Z + c[:, 3] + reach[2]
    skeys, perm = torch.sort(keys)
    perm32 = perm.to(torch.int32)
    off = _offset_table(K, D, dev)
    delta = (off[:, 0] * Y + off[:, 1]) * Z + off[:, 2]  # [V]: key(neighbour) - key(voxel)
    use_mask = shift >= 0 and V <= 62
    nbr = torch.empty(n, V, dtype=torch.int32, device=dev)
    if _search_kernel_ok(dev, D):
        mask = torch.empty(n, dtype=torch.int64, device=dev) if use_mask else None  # every row written
        block = 128
        _neighbor_search_kernel[(triton.cdiv(n, block),)](skeys, perm32, delta, nbr, mask if use_mask else skeys, n, V,
                                                          KXY=K[0] * K[1], KZ=K[2], USE_MASK=use_mask, BLOCK=block)
    else:
        mask = torch.zeros(n, dtype=torch.int64, device=dev) if use_mask else None  # accumulated per group
        _search_torch(skeys, perm32, delta, nbr, mask)
    if use_mask:
        cs = c[perm]  # lexicographic order
        b, x, y, z = cs.unbind(1)
        Xs, Ys, Zs = (int(s) for s in spatial_shape)
        chunk = ((b * ((Xs >> shift) + 1) + (x >> shift)) * ((Ys >> shift) + 1) + (y >> shift)) \
            * ((Zs >> shift) + 1) + (z >> shift)
        # lexicographic chunk id, then neighbour mask; both fit in 63 bits for grids up to 2**12 per side and V <= 27
        okey = chunk * (1 << V) + mask if V <= 27 else chunk
        _, proc = torch.sort(okey, stable=True)
        nbr = nbr[proc].contiguous()
        order = perm32[proc].contiguous()
    else:
        order = perm32.contiguous()
    return TritonNeighborMap(n, K, D, nbr, order, shift)


def _cache_key(K, D) -> str:
    from .conv import _neighbor_cache_key
    return _neighbor_cache_key(K, D) + "_triton"


def get_triton_map(x, kernel_size, dilation) -> TritonNeighborMap:
    """The cached Triton neighbour table of ``x``'s level (a ``SparseTensor``), built on first use."""
    from .conv import _triple
    K = _triple(kernel_size, "kernel_size")
    D = _triple(dilation, "dilation")
    key = _cache_key(K, D)
    nmap = x.get_spatial_cache(key)
    if not isinstance(nmap, TritonNeighborMap) or nmap.n != x.coords.shape[0]:
        nmap = build_triton_map(x.coords, x.spatial_shape, K, D)
        x.register_spatial_cache(key, nmap)
    elif nmap.device != x.feats.device:
        nmap = nmap.to(x.feats.device)
        x.register_spatial_cache(key, nmap)
    return nmap


def _next_pow2(v: int) -> int:
    return 1 << max(0, (int(v) - 1).bit_length())


_SM_COUNT: Dict[int, int] = {}


def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 4
    i = device.index if device.index is not None else torch.cuda.current_device()
    if i not in _SM_COUNT:
        _SM_COUNT[i] = torch.cuda.get_device_properties(i).multi_processor_count
    return _SM_COUNT[i]


def pick_tiles(n: int, ci: int, co: int, dtype: torch.dtype, sm_count: int) -> Dict[str, int]:
    """Tile sizes and launch shape chosen from the problem size (no autotuning; a small fixed candidate set).

    BLOCK_K: 64 for 16-bit operands, 32 for fp32 (half the bytes per stage), never above Ci's next power of two and
    at least 16 (``tl.dot``'s minimum). BLOCK_CO: Co's next power of two clipped to [16, 128] (fp32: 64). BLOCK_N: 128,
    or 64 when 128 leaves fewer than three waves of programs (three per SM): smaller tiles then balance the SMs better.
    Warps: 8 for 128x128 accumulators, else 4. Stages: 3, or 4 for 16-bit layers with Ci, Co <= 256, whose few Ci
    tiles per offset leave the loads less time to land.

    These rules come from a sweep of 42 configurations on an H100 over the texture decoder's layers at 1024³
    (docs/BENCHMARKS.md, session 7); each rule's configuration was within 0-10 % of the sweep's best there.
    """
    wide = dtype == torch.float32
    block_k = min(32 if wide else 64, max(16, _next_pow2(ci)))
    block_co = min(64 if wide else 128, max(16, _next_pow2(co)))
    block_n = 128
    n_co = (co + block_co - 1) // block_co
    if ((n + 127) // 128) * n_co < 3 * sm_count:
        block_n = 64
    num_warps = 8 if block_n * block_co >= 128 * 128 else 4
    num_stages = 2 if wide else (4 if ci <= 256 and co <= 256 else 3)
    return dict(BLOCK_N=block_n, BLOCK_CO=block_co, BLOCK_K=block_k, num_warps=num_warps, num_stages=num_stages)


if HAS_TRITON:
    @triton.jit
    def _conv_step(acc, it, x_ptr, w_ptr, nbr_ptr, lst_ptr, pid_n, nbr_rows, pmask, w_rows, comask, offs_k0,
                   Ci, V, kt, PRECISION: tl.constexpr, UPCAST: tl.constexpr, BLOCK_K: tl.constexpr):
        """One (offset, Ci tile) step: gather the tile's neighbour rows, load ``W_v``'s slice, accumulate.
        ``UPCAST`` (interpreter only) multiplies in fp32: exact for bf16 operands, whose interpreted dot is broken."""
        j = it // kt
        kk = (it - j * kt) * BLOCK_K
        v = tl.load(lst_ptr + pid_n * V + j)
        idx = tl.load(nbr_ptr + nbr_rows + v, mask=pmask, other=-1)
        offs_k = kk + offs_k0
        kmask = offs_k < Ci
        a = tl.load(x_ptr + idx.to(tl.int64)[:, None] * Ci + offs_k[None, :],
                    mask=(idx >= 0)[:, None] & kmask[None, :], other=0.0)
        b = tl.load(w_ptr + w_rows[None, :] + v * Ci + offs_k[:, None],
                    mask=kmask[:, None] & comask[None, :], other=0.0)
        if UPCAST:
            return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
        return tl.dot(a, b, acc, input_precision=PRECISION)

    # N and n_co vary per level and call; unspecialised, they do not multiply the compiled variants (first call)
    @triton.jit(do_not_specialize=["N", "n_co"])
    def _subm_conv_kernel(x_ptr, w_ptr, b_ptr, y_ptr, nbr_ptr, order_ptr, cnt_ptr, lst_ptr,
                          N, Ci, Co, V, n_co,
                          HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr, INTERPRET: tl.constexpr,
                          UPCAST: tl.constexpr,
                          BLOCK_N: tl.constexpr, BLOCK_CO: tl.constexpr, BLOCK_K: tl.constexpr):
        """One program: BLOCK_N voxels (processing order) x BLOCK_CO output channels, looping over the tile's active
        offsets and the Ci tiles. ``x [N, Ci]``, ``w [Co, V, Ci]``, ``y [N, Co]`` contiguous. ``INTERPRET`` selects a
        while loop (the interpreter cannot take a loaded trip count in ``range`` with numpy 2)."""
        pid = tl.program_id(0)
        pid_co = pid % n_co
        pid_n = pid // n_co
        offs_p = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        pmask = offs_p < N
        offs_co = pid_co * BLOCK_CO + tl.arange(0, BLOCK_CO)
        comask = offs_co < Co
        offs_k0 = tl.arange(0, BLOCK_K)
        w_rows = offs_co.to(tl.int64) * V * Ci
        nbr_rows = offs_p.to(tl.int64) * V
        acc = tl.zeros((BLOCK_N, BLOCK_CO), dtype=tl.float32)
        kt = tl.cdiv(Ci, BLOCK_K)
        total = tl.load(cnt_ptr + pid_n) * kt
        if INTERPRET:
            it = 0
            while it < total:
                acc = _conv_step(acc, it, x_ptr, w_ptr, nbr_ptr, lst_ptr, pid_n, nbr_rows, pmask, w_rows, comask,
                                 offs_k0, Ci, V, kt, PRECISION, UPCAST, BLOCK_K)
                it += 1
        else:
            for it in range(0, total):
                acc = _conv_step(acc, it, x_ptr, w_ptr, nbr_ptr, lst_ptr, pid_n, nbr_rows, pmask, w_rows, comask,
                                 offs_k0, Ci, V, kt, PRECISION, UPCAST, BLOCK_K)
        if HAS_BIAS:
            acc += tl.load(b_ptr + offs_co, mask=comask, other=0.0).to(tl.float32)[None, :]
        rows = tl.load(order_ptr + offs_p, mask=pmask, other=0)
        tl.store(y_ptr + rows.to(tl.int64)[:, None] * Co + offs_co[None, :], acc.to(y_ptr.dtype.element_ty),
                 mask=pmask[:, None] & comask[None, :])


if HAS_TRITON:
    @triton.jit(do_not_specialize=["n"])
    def _neighbor_search_kernel(skeys_ptr, perm_ptr, delta_ptr, nbr_ptr, mask_ptr, n, V,
                                KXY: tl.constexpr, KZ: tl.constexpr, USE_MASK: tl.constexpr, BLOCK: tl.constexpr):
        """Neighbour rows of BLOCK voxels (positions in the sorted keys): per (dx, dy) column one binary search for
        the lowest-dz neighbour key, bounded by a window (keys are distinct integers, so fewer than |delta| keys lie
        between a voxel's key and its neighbour's), then the column's other dz keys (consecutive: dilation 1 in z)
        from the positions right after it. Writes ``nbr [n, V]`` (rows in sorted order) and the presence masks."""
        r = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        valid = r < n
        key = tl.load(skeys_ptr + r, mask=valid, other=0)
        bits = tl.zeros([BLOCK], dtype=tl.int64)
        for pj in range(0, KXY):
            d = tl.load(delta_ptr + pj * KZ)  # key(neighbour at (dx, dy, dz_min)) - key(voxel)
            q = key + d
            if d > 0:
                lo = r + 1
                hi = tl.minimum(r + d, n)
            else:
                lo = tl.maximum(r + d, 0)
                hi = r
            w = tl.minimum(tl.abs(d), n)
            while w > 0:  # ceil(log2(window + 1)) halvings find lower_bound(q) in [lo, hi]
                mid = (lo + hi) // 2
                active = lo < hi
                km = tl.load(skeys_ptr + mid, mask=valid & active, other=0)
                less = km < q
                lo = tl.where(active & less, mid + 1, lo)
                hi = tl.where(active & (km >= q), mid, hi)
                w = w // 2
            p = lo
            for k in tl.static_range(KZ):
                pc = tl.minimum(p, n - 1)
                found = valid & (p < n) & (tl.load(skeys_ptr + pc, mask=valid, other=-1) == q + k)
                idx = tl.load(perm_ptr + pc, mask=found, other=-1)
                v = pj * KZ + k
                tl.store(nbr_ptr + r * V + v, tl.where(found, idx, -1), mask=valid)
                if USE_MASK:
                    bits = bits | (found.to(tl.int64) << v)
                p = p + found.to(tl.int64)  # lower_bound(q + k + 1): one past q + k when present
        if USE_MASK:
            tl.store(mask_ptr + r, bits, mask=valid)


def _precision(dtype: torch.dtype) -> str:
    if dtype != torch.float32:
        return "ieee"  # ignored for 16-bit operands
    return "ieee" if torch.get_float32_matmul_precision() == "highest" else "tf32"


def _launch(feats: torch.Tensor, nmap: TritonNeighborMap, w3: torch.Tensor, bias: Optional[torch.Tensor],
            out: Optional[torch.Tensor] = None):
    """``feats [N, Ci]`` x ``w3 [Co, V, Ci]`` through ``nmap`` -> ``[N, Co]`` in feats' dtype (written into ``out``,
    a contiguous ``[N, Co]`` tensor, when given: every element is overwritten)."""
    n, ci = feats.shape
    co, V = w3.shape[0], w3.shape[1]
    if out is None:
        out = torch.empty(n, co, dtype=feats.dtype, device=feats.device)
    if n == 0:
        return out
    cfg = pick_tiles(n, ci, co, feats.dtype, _sm_count(feats.device))
    cnt, lst = nmap.tiles(cfg["BLOCK_N"])
    n_co = triton.cdiv(co, cfg["BLOCK_CO"])
    grid = (n_co * cnt.shape[0],)
    b = bias if bias is not None else w3  # dummy pointer when there is no bias
    _subm_conv_kernel[grid](feats, w3, b, out, nmap.nbr, nmap.order, cnt, lst, n, ci, co, V, n_co,
                            HAS_BIAS=bias is not None, PRECISION=_precision(feats.dtype), INTERPRET=interpreting(),
                            UPCAST=interpreting() and feats.dtype == torch.bfloat16,
                            BLOCK_N=cfg["BLOCK_N"], BLOCK_CO=cfg["BLOCK_CO"], BLOCK_K=cfg["BLOCK_K"],
                            num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    return out


def _weight_grad(grad_out: torch.Tensor, feats: torch.Tensor, nmap: TritonNeighborMap) -> torch.Tensor:
    """``dW [Co, V, Ci]`` in fp32: per offset, ``grad_out[rows]^T @ feats[nbr[:, v]]`` (missing rows zero)."""
    V = nmap.volume
    g = grad_out.index_select(0, nmap.order.long())  # processing order
    dw = torch.empty(grad_out.shape[1], V, feats.shape[1], dtype=torch.float32, device=feats.device)
    for v in range(V):
        idx = nmap.nbr[:, v].long()
        a = feats.index_select(0, idx.clamp(min=0)) * (idx >= 0).unsqueeze(1).to(feats.dtype)
        dw[:, v] = (g.t() @ a).float()
    return dw


class _TritonConvFn(torch.autograd.Function):
    """Autograd wrapper: Triton forward and input gradient, PyTorch weight gradient (see module docstring)."""

    @staticmethod
    def forward(ctx, feats, weight, bias, nmap):
        co, ci = weight.shape[0], weight.shape[-1]
        w3 = weight.reshape(co, -1, ci).contiguous()
        ctx.nmap = nmap
        ctx.has_bias = bias is not None
        ctx.save_for_backward(feats, weight)
        return _launch(feats.contiguous(), nmap, w3, bias)

    @staticmethod
    def backward(ctx, grad_out):
        feats, weight = ctx.saved_tensors
        nmap = ctx.nmap
        co, ci = weight.shape[0], weight.shape[-1]
        grad_out = grad_out.contiguous()
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            wt = weight.reshape(co, -1, ci).flip(1).permute(2, 1, 0).contiguous()  # [Ci, V, Co], mirrored offsets
            gx = _launch(grad_out, nmap, wt, None)
        if ctx.needs_input_grad[1]:
            gw = _weight_grad(grad_out, feats, nmap).reshape(weight.shape).to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = grad_out.sum(0, dtype=torch.float32).to(grad_out.dtype)
        return gx, gw, gb, None


def submanifold_conv3d_triton(feats: torch.Tensor, nmap: TritonNeighborMap, weight: torch.Tensor,
                              bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Triton submanifold conv: ``feats [N, Ci]``, ``weight [Co, Kx, Ky, Kz, Ci]``, ``bias [Co]`` -> ``[N, Co]``.

    Differentiable in ``feats``, ``weight`` and ``bias`` for odd kernel sizes (see the module docstring).

    Raises:
        RuntimeError: triton is not importable.
        ValueError: gradients requested for an even kernel size (use the torch backend).
    """
    if not HAS_TRITON:
        raise RuntimeError("the triton sparse-conv backend needs the 'triton' package")
    needs_grad = torch.is_grad_enabled() and (feats.requires_grad or weight.requires_grad
                                              or (bias is not None and bias.requires_grad))
    if not needs_grad:
        co, ci = weight.shape[0], weight.shape[-1]
        return _launch(feats.contiguous(), nmap, weight.reshape(co, -1, ci).contiguous(), bias)
    if any(k % 2 == 0 for k in nmap.kernel_size):
        raise ValueError("triton sparse-conv backward needs odd kernel sizes; use SPARSE_CONV_BACKEND=torch")
    return _TritonConvFn.apply(feats, weight, bias, nmap)


def warn_fallback(reason: str) -> None:
    """One warning per distinct reason when an explicit ``SPARSE_CONV_BACKEND=triton`` request runs on torch."""
    if reason not in _WARNED:
        _WARNED.add(reason)
        warnings.warn(f"SPARSE_CONV_BACKEND=triton: {reason}; using the torch backend (same maths)", stacklevel=3)


_WARNED = set()
