"""Scaled dot-product attention kernels: dense ``[B, L, H, D]`` and packed variable-length ``[T, H, D]``.

TRELLIS2_SPEC §1.7: ``softmax(q·kᵀ/√D)·v`` with the backend's default scale. Dense attention takes batch-first
tensors with heads in dimension 2 (the reference layout). Variable-length ("varlen") attention takes the tokens of
all samples concatenated, with cumulative sequence lengths ``cu_seqlens`` (int32 ``[B+1]``, ``cu[0] = 0``), and
attends only within each sample — the layout of ``SparseTensor``/``VarLenTensor`` features.

With ``sdpa``/``naive`` the varlen path scatters the tokens into a zero-padded ``[B, Lmax, H, D]`` batch and masks
the padded keys, so there is no Python loop over samples; a single sample or equal-length keys need no mask at all.
``flash_attn``/``flash_attn_3`` use ``flash_attn_varlen_func`` with the cumulative lengths directly and ``xformers``
uses a ``BlockDiagonalMask``.
"""
from typing import Optional

import torch
import torch.nn.functional as F

from .backend import GPU_ONLY_BACKENDS, get_attn_backend, get_sparse_attn_backend, import_backend

__all__ = ["scaled_dot_product_attention", "varlen_attention", "naive_attention"]


def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Explicit-softmax attention in the input dtype (the test reference).

    Args:
        q: ``[B, Lq, H, D]``; k, v: ``[B, Lk, H, D]`` (same dtype/device).
        mask: optional bool ``[B, 1, 1, Lk]`` (or broadcastable to ``[B, H, Lq, Lk]``); True = attend.

    Returns:
        ``[B, Lq, H, D]``.
    """
    qh, kh, vh = (t.permute(0, 2, 1, 3) for t in (q, k, v))
    scores = qh @ kh.transpose(-1, -2) / (q.shape[-1] ** 0.5)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return (torch.softmax(scores, dim=-1) @ vh).permute(0, 2, 1, 3)


def _check_gpu_backend(name: str, *tensors: torch.Tensor) -> None:
    for t in tensors:
        if t.device.type != "cuda":
            raise ValueError(f"attention backend {name!r} needs CUDA tensors, got a tensor on {t.device}; "
                             "use ATTN_BACKEND=sdpa (or SPARSE_ATTN_BACKEND=sdpa) on CPU")
        if t.dtype not in (torch.float16, torch.bfloat16):
            raise ValueError(f"attention backend {name!r} needs float16/bfloat16 inputs, got {t.dtype}; "
                             "run the model in half precision or use the 'sdpa' backend")


def _check_qkv(q, k, v, dims: int) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != dims:
            layout = "[B, L, H, D]" if dims == 4 else "[T, H, D]"
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"attention expects {name} of shape {layout}, got {got}")
    if k.shape != v.shape:
        raise ValueError(f"attention expects k and v of the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    if q.shape[-2:] != k.shape[-2:]:
        raise ValueError(f"q and k must have the same heads and head dim, got {tuple(q.shape)} and {tuple(k.shape)}")
    if dims == 4 and q.shape[0] != k.shape[0]:
        raise ValueError(f"q and k must have the same batch size, got {q.shape[0]} and {k.shape[0]}")


def scaled_dot_product_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                 backend: Optional[str] = None) -> torch.Tensor:
    """Dense multi-head attention (TRELLIS2_SPEC §1.7).

    Args:
        q: ``[B, Lq, H, D]``; k, v: ``[B, Lk, H, D]``.
        backend: overrides ``$ATTN_BACKEND`` (see :mod:`.backend`).

    Returns:
        ``[B, Lq, H, D]`` in the input dtype.

    Raises:
        ValueError: wrong shapes, unknown backend, or a GPU backend on CPU/float32 tensors.
        ImportError: a GPU backend whose package is missing.
    """
    _check_qkv(q, k, v, 4)
    return _dense(q, k, v, None, backend or get_attn_backend())


def _dense(q, k, v, mask, backend: str) -> torch.Tensor:
    if backend == "naive":
        return naive_attention(q, k, v, mask)
    if backend == "sdpa":
        out = F.scaled_dot_product_attention(q.permute(0, 2, 1, 3), k.permute(0, 2, 1, 3), v.permute(0, 2, 1, 3),
                                             attn_mask=mask)
        return out.permute(0, 2, 1, 3)
    if mask is not None:  # padded varlen only ever reaches here for sdpa/naive
        raise AssertionError("masks are only used with the sdpa/naive backends")
    _check_gpu_backend(backend, q, k, v)
    mod = import_backend(backend)
    if backend == "xformers":
        return mod.memory_efficient_attention(q, k, v)
    out = mod.flash_attn_func(q, k, v)
    return out[0] if isinstance(out, tuple) else out  # flash-attn 3 may also return the log-sum-exp


def _check_cu(cu: torch.Tensor, name: str) -> None:
    if not isinstance(cu, torch.Tensor) or cu.dim() != 1 or cu.numel() < 2 or cu.dtype.is_floating_point:
        raise ValueError(f"{name} must be an integer tensor [B+1] of cumulative sequence lengths starting at 0")


def _pad(x: torch.Tensor, lens: torch.Tensor, cu: torch.Tensor, lmax: int):
    """Scatters packed ``[T, H, D]`` into zero-padded ``[B, lmax, H, D]``; returns it and the (batch, pos) index."""
    B = lens.shape[0]
    bidx = torch.repeat_interleave(torch.arange(B, device=x.device), lens, output_size=x.shape[0])
    pos = torch.arange(x.shape[0], device=x.device) - cu[bidx]
    out = x.new_zeros(B, lmax, *x.shape[1:])
    out[bidx, pos] = x
    return out, (bidx, pos)


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     cu_seqlens_q: torch.Tensor, cu_seqlens_k: torch.Tensor,
                     max_seqlen_q: Optional[int] = None, max_seqlen_k: Optional[int] = None,
                     backend: Optional[str] = None) -> torch.Tensor:
    """Per-sample attention over packed sequences (TRELLIS2_SPEC §1.7, sparse full attention).

    Query tokens ``cu_seqlens_q[b]:cu_seqlens_q[b+1]`` attend only to key tokens ``cu_seqlens_k[b]:cu_seqlens_k[b+1]``.

    Args:
        q: ``[Tq, H, D]``; k, v: ``[Tk, H, D]``.
        cu_seqlens_q, cu_seqlens_k: integer ``[B+1]`` cumulative lengths (``cu[0] = 0``, ``cu[-1] = T``).
        max_seqlen_q, max_seqlen_k: optional longest sequence lengths (computed when omitted).
        backend: overrides ``$SPARSE_ATTN_BACKEND``/``$ATTN_BACKEND``.

    Returns:
        ``[Tq, H, D]`` in the input dtype.

    Raises:
        ValueError: inconsistent shapes or lengths, a sample with queries but no keys, unknown backend, or a GPU
            backend on CPU/float32 tensors.
        ImportError: a GPU backend whose package is missing.
    """
    _check_qkv(q, k, v, 3)
    _check_cu(cu_seqlens_q, "cu_seqlens_q")
    _check_cu(cu_seqlens_k, "cu_seqlens_k")
    if cu_seqlens_q.shape != cu_seqlens_k.shape:
        raise ValueError(f"cu_seqlens_q and cu_seqlens_k describe different batch sizes "
                         f"({cu_seqlens_q.numel() - 1} vs {cu_seqlens_k.numel() - 1})")
    cu_seqlens_q = cu_seqlens_q.to(q.device, torch.int64)
    cu_seqlens_k = cu_seqlens_k.to(q.device, torch.int64)
    lens_q = cu_seqlens_q[1:] - cu_seqlens_q[:-1]
    lens_k = cu_seqlens_k[1:] - cu_seqlens_k[:-1]
    # all consistency checks in one host round trip (this runs in every block)
    q0, qT, k0, kT, qmin, kmin, mq_, mk_, empty_ctx = torch.stack([
        cu_seqlens_q[0], cu_seqlens_q[-1], cu_seqlens_k[0], cu_seqlens_k[-1], lens_q.min(), lens_k.min(),
        lens_q.max(), lens_k.max(), ((lens_k == 0) & (lens_q > 0)).any().to(lens_q.dtype)]).tolist()
    if q0 != 0 or qT != q.shape[0] or qmin < 0:
        raise ValueError(f"cu_seqlens_q must start at 0, be non-decreasing and end at the query count {q.shape[0]}")
    if k0 != 0 or kT != k.shape[0] or kmin < 0:
        raise ValueError(f"cu_seqlens_k must start at 0, be non-decreasing and end at the key count {k.shape[0]}")
    if empty_ctx:
        raise ValueError("a sample has query tokens but no key tokens; attention over an empty context is undefined")
    backend = backend or get_sparse_attn_backend()
    B = lens_q.shape[0]
    mq = int(max_seqlen_q) if max_seqlen_q is not None else mq_
    mk = int(max_seqlen_k) if max_seqlen_k is not None else mk_

    if backend in GPU_ONLY_BACKENDS:
        _check_gpu_backend(backend, q, k, v)
        mod = import_backend(backend)
        if backend == "xformers":
            bias = mod.fmha.BlockDiagonalMask.from_seqlens(lens_q.tolist(), lens_k.tolist())
            return mod.memory_efficient_attention(q[None], k[None], v[None], attn_bias=bias)[0]
        out = mod.flash_attn_varlen_func(q, k, v, cu_seqlens_q.to(torch.int32), cu_seqlens_k.to(torch.int32), mq, mk)
        return out[0] if isinstance(out, tuple) else out

    if B == 1:  # one sample: plain dense attention, no padding
        return _dense(q[None], k[None], v[None], None, backend)[0]
    mq, mk = mq_, mk_  # padding must use the true lengths
    qp, (qb, qpos) = _pad(q, lens_q, cu_seqlens_q, mq)
    if kmin == mk:  # equal-length keys (e.g. a dense [B, L, C] context): no mask needed
        kp, vp, mask = k.reshape(B, mk, *k.shape[1:]), v.reshape(B, mk, *v.shape[1:]), None
    else:
        kp, _ = _pad(k, lens_k, cu_seqlens_k, mk)
        vp, _ = _pad(v, lens_k, cu_seqlens_k, mk)
        mask = (torch.arange(mk, device=k.device)[None] < lens_k[:, None])[:, None, None, :]
    return _dense(qp, kp, vp, mask, backend)[qb, qpos]
