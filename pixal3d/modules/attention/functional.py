"""Scaled dot-product attention kernels: dense ``[B, L, H, D]`` and packed variable-length ``[T, H, D]``.

TRELLIS2_SPEC §1.7: ``softmax(q·kᵀ/√D)·v`` with the backend's default scale. Dense attention takes batch-first
tensors with heads in dimension 2 (the reference layout). Variable-length ("varlen") attention takes the tokens of
all samples concatenated, with cumulative sequence lengths ``cu_seqlens`` (int32 ``[B+1]``, ``cu[0] = 0``), and
attends only within each sample — the layout of ``SparseTensor``/``VarLenTensor`` features.

With ``sdpa``/``naive`` the varlen path scatters the tokens into a zero-padded ``[B, Lmax, H, D]`` batch and masks
the padded keys, so there is no Python loop over samples; a single sample or equal-length keys need no mask at all,
and equal-length queries (or keys) are a plain reshape of the packed tensor, with no padding at all.
``flash_attn``/``flash_attn_3`` use ``flash_attn_varlen_func`` with the cumulative lengths directly and ``xformers``
uses a ``BlockDiagonalMask``.

The per-sample lengths are needed on the host. Passing a :class:`VarLenMeta` (built once per forward from a tensor's
host-side layout) instead of a ``cu_seqlens`` tensor avoids reading them back from the GPU in every call.
"""
from typing import Optional

import torch
import torch.nn.functional as F

from .backend import GPU_ONLY_BACKENDS, get_attn_backend, get_sparse_attn_backend, import_backend

__all__ = ["scaled_dot_product_attention", "varlen_attention", "naive_attention", "VarLenMeta"]


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


class VarLenMeta:
    """Sequence lengths of a packed batch held on the host, plus the device tensors varlen attention derives from them.

    Why this exists: :func:`varlen_attention` needs the per-sample lengths as Python ints (the padded batch size, the
    consistency checks, flash-attn's ``max_seqlen``, xformers' block-diagonal mask). Reading them back from a CUDA
    ``cu_seqlens`` tensor is a device-to-host copy that blocks the CPU until the GPU queue has drained. A sparse DiT
    did that in every self- and cross-attention call (about 60 per SLat-flow forward), so the CPU could never run ahead
    of the GPU to queue the next kernels. A ``VarLenTensor``/``SparseTensor`` already knows its lengths on the host
    (its ``layout``), so the metadata is built from them once, cached on the tensor (see
    ``sparse_modules.packed_meta``) and reused by every block. The device tensors (``cu_seqlens``, the padding index
    and the key mask of the SDPA path) are built lazily, once per object, from a pinned buffer with a non-blocking
    copy, so building them does not synchronise either.

    The tensors it builds are the ones the per-call code computed, with the same ops, so results are bit-identical.

    Args:
        cu_host: cumulative lengths ``[B+1]`` as Python ints (``cu[0]`` should be 0; :func:`varlen_attention`
            validates).
        device: where the derived tensors live.
        cu_seqlens: optional device tensor holding ``cu_host`` (reused instead of copying the host values again).
    """

    __slots__ = ("cu_host", "lens", "batch_size", "total", "max_len", "min_len", "device", "_cu", "_cu64", "_lens64",
                 "_pad_index", "_key_mask")

    def __init__(self, cu_host, device=None, cu_seqlens: Optional[torch.Tensor] = None):
        cu_host = tuple(int(c) for c in cu_host)
        if len(cu_host) < 2:
            raise ValueError("cumulative sequence lengths need at least two entries (one sample)")
        self.cu_host = cu_host
        self.lens = tuple(b - a for a, b in zip(cu_host[:-1], cu_host[1:]))
        self.batch_size = len(self.lens)
        self.total = cu_host[-1]
        self.max_len = max(self.lens)
        self.min_len = min(self.lens)
        self.device = _canonical_device(device)
        self._cu = cu_seqlens.to(torch.int32) if cu_seqlens is not None and cu_seqlens.device == self.device else None
        self._cu64 = self._lens64 = self._pad_index = self._key_mask = None

    @classmethod
    def from_lengths(cls, lengths, device=None) -> "VarLenMeta":
        """From per-sample lengths (Python ints). Raises ValueError on an empty list or a negative length."""
        lengths = [int(n) for n in lengths]
        if not lengths or min(lengths) < 0:
            raise ValueError(f"sequence lengths must be a non-empty list of non-negative ints, got {lengths}")
        cu = [0]
        for n in lengths:
            cu.append(cu[-1] + n)
        return cls(cu, device)

    @classmethod
    def from_layout(cls, layout, device=None) -> "VarLenMeta":
        """From a ``VarLenTensor``/``SparseTensor`` layout (one contiguous ``slice`` per sample); no device access."""
        return cls.from_lengths([s.stop - s.start for s in layout], device)

    @classmethod
    def from_cu_seqlens(cls, cu_seqlens: torch.Tensor, device=None) -> "VarLenMeta":
        """From a ``cu_seqlens`` tensor: one ``.tolist()``, a host sync when it lives on a GPU (do it once, not per
        call). ``device`` defaults to the tensor's."""
        _check_cu(cu_seqlens, "cu_seqlens")
        return cls(cu_seqlens.tolist(), cu_seqlens.device if device is None else device, cu_seqlens)

    def to(self, device) -> "VarLenMeta":
        """The same lengths with derived tensors on ``device`` (self when already there)."""
        device = _canonical_device(device)
        if device == self.device:
            return self
        return VarLenMeta(self.cu_host, device)

    # ---------------------------------------------------------------- derived device tensors (lazy, cached)
    @property
    def cu_seqlens(self) -> torch.Tensor:
        """int32 ``[B+1]`` on :attr:`device` (flash-attn's format)."""
        if self._cu is None:
            self._cu = _host_to_device(self.cu_host, torch.int32, self.device)
        return self._cu

    def _cu_long(self) -> torch.Tensor:
        if self._cu64 is None:
            self._cu64 = self.cu_seqlens.to(torch.int64)
        return self._cu64

    def _lens_long(self) -> torch.Tensor:
        if self._lens64 is None:
            cu = self._cu_long()
            self._lens64 = cu[1:] - cu[:-1]
        return self._lens64

    def pad_index(self):
        """``(batch, position)`` long ``[T]`` of every packed token in the zero-padded ``[B, max_len]`` batch."""
        if self._pad_index is None:
            B, T, dev = self.batch_size, self.total, self.device
            bidx = torch.repeat_interleave(torch.arange(B, device=dev), self._lens_long(), output_size=T)
            pos = torch.arange(T, device=dev) - self._cu_long()[bidx]
            self._pad_index = (bidx, pos)
        return self._pad_index

    def key_mask(self) -> torch.Tensor:
        """bool ``[B, 1, 1, max_len]``: True at real (non-padding) keys."""
        if self._key_mask is None:
            self._key_mask = (torch.arange(self.max_len, device=self.device)[None]
                              < self._lens_long()[:, None])[:, None, None, :]
        return self._key_mask

    def __repr__(self) -> str:
        return f"VarLenMeta(lens={list(self.lens)}, device={self.device})"


def _canonical_device(device) -> torch.device:
    """``cuda`` -> ``cuda:<current>``, the form tensors report, so a meta made for ``"cuda"`` matches ``q.device``."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def _host_to_device(values, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A small host list on ``device`` without blocking the CPU: a copy from pageable memory waits for the GPU queue
    (a hidden sync), one from pinned memory with ``non_blocking`` does not (the caching host allocator keeps the
    pinned buffer alive until the copy has run)."""
    t = torch.tensor(values, dtype=dtype)
    if device.type == "cuda":
        try:
            return t.pin_memory().to(device, non_blocking=True)
        except RuntimeError:  # pragma: no cover - no pinned memory available: the plain (blocking) copy is still right
            pass
    return t.to(device)


def _check_cu(cu, name: str) -> None:
    if isinstance(cu, VarLenMeta):
        return
    if not isinstance(cu, torch.Tensor) or cu.dim() != 1 or cu.numel() < 2 or cu.dtype.is_floating_point:
        raise ValueError(f"{name} must be an integer tensor [B+1] of cumulative sequence lengths starting at 0")


def _as_metas(cu_q, cu_k, device):
    """``VarLenMeta`` for both sides. Tensors cost one host read for the pair (they are stacked first); metas cost
    nothing."""
    if isinstance(cu_q, torch.Tensor) and isinstance(cu_k, torch.Tensor):
        both = torch.stack([cu_q.to(cu_k.device, torch.int64), cu_k.to(torch.int64)]).tolist()
        return (VarLenMeta(both[0], device, cu_q.to(device)), VarLenMeta(both[1], device, cu_k.to(device)))
    metas = []
    for cu in (cu_q, cu_k):
        metas.append(cu.to(device) if isinstance(cu, VarLenMeta) else VarLenMeta.from_cu_seqlens(cu, device))
    return tuple(metas)


def _pad(x: torch.Tensor, index, batch: int, lmax: int) -> torch.Tensor:
    """Scatters packed ``[T, H, D]`` into zero-padded ``[B, lmax, H, D]`` at ``index = (batch, pos)``."""
    out = x.new_zeros(batch, lmax, *x.shape[1:])
    out[index] = x
    return out


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     cu_seqlens_q, cu_seqlens_k,
                     max_seqlen_q: Optional[int] = None, max_seqlen_k: Optional[int] = None,
                     backend: Optional[str] = None) -> torch.Tensor:
    """Per-sample attention over packed sequences (TRELLIS2_SPEC §1.7, sparse full attention).

    Query tokens ``cu_seqlens_q[b]:cu_seqlens_q[b+1]`` attend only to key tokens ``cu_seqlens_k[b]:cu_seqlens_k[b+1]``.

    Args:
        q: ``[Tq, H, D]``; k, v: ``[Tk, H, D]``.
        cu_seqlens_q, cu_seqlens_k: integer ``[B+1]`` cumulative lengths (``cu[0] = 0``, ``cu[-1] = T``), or
            :class:`VarLenMeta` objects. A tensor costs one device-to-host read per call (for both together); a
            ``VarLenMeta`` built once per forward and passed to every block costs none, which is what the sparse
            attention layers do.
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
    nq = cu_seqlens_q.batch_size + 1 if isinstance(cu_seqlens_q, VarLenMeta) else cu_seqlens_q.numel()
    nk = cu_seqlens_k.batch_size + 1 if isinstance(cu_seqlens_k, VarLenMeta) else cu_seqlens_k.numel()
    if nq != nk:
        raise ValueError(f"cu_seqlens_q and cu_seqlens_k describe different batch sizes ({nq - 1} vs {nk - 1})")
    meta_q, meta_k = _as_metas(cu_seqlens_q, cu_seqlens_k, q.device)
    if meta_q.cu_host[0] != 0 or meta_q.total != q.shape[0] or meta_q.min_len < 0:
        raise ValueError(f"cu_seqlens_q must start at 0, be non-decreasing and end at the query count {q.shape[0]}")
    if meta_k.cu_host[0] != 0 or meta_k.total != k.shape[0] or meta_k.min_len < 0:
        raise ValueError(f"cu_seqlens_k must start at 0, be non-decreasing and end at the key count {k.shape[0]}")
    if any(lk == 0 and lq > 0 for lq, lk in zip(meta_q.lens, meta_k.lens)):
        raise ValueError("a sample has query tokens but no key tokens; attention over an empty context is undefined")
    backend = backend or get_sparse_attn_backend()
    B = meta_q.batch_size
    mq = int(max_seqlen_q) if max_seqlen_q is not None else meta_q.max_len
    mk = int(max_seqlen_k) if max_seqlen_k is not None else meta_k.max_len

    if backend in GPU_ONLY_BACKENDS:
        _check_gpu_backend(backend, q, k, v)
        mod = import_backend(backend)
        if backend == "xformers":
            bias = mod.fmha.BlockDiagonalMask.from_seqlens(list(meta_q.lens), list(meta_k.lens))
            return mod.memory_efficient_attention(q[None], k[None], v[None], attn_bias=bias)[0]
        out = mod.flash_attn_varlen_func(q, k, v, meta_q.cu_seqlens, meta_k.cu_seqlens, mq, mk)
        return out[0] if isinstance(out, tuple) else out

    if B == 1:  # one sample: plain dense attention, no padding
        return _dense(q[None], k[None], v[None], None, backend)[0]
    mq, mk = meta_q.max_len, meta_k.max_len  # padding must use the true lengths
    # Equal lengths (a CFG pair, a dense context) make the padded batch a plain reshape: no scatter, gather or zeros.
    # Every position of the padded batch then holds the same row as the reshape, so results are bit-identical.
    if meta_q.min_len == mq:
        qp, q_index = q.reshape(B, mq, *q.shape[1:]), None
    else:
        q_index = meta_q.pad_index()
        qp = _pad(q, q_index, B, mq)
    if meta_k.min_len == mk:  # equal-length keys (e.g. a dense [B, L, C] context): no mask needed
        kp, vp, mask = k.reshape(B, mk, *k.shape[1:]), v.reshape(B, mk, *v.shape[1:]), None
    else:
        k_index = meta_k.pad_index()
        kp = _pad(k, k_index, B, mk)
        vp = _pad(v, k_index, B, mk)
        mask = meta_k.key_mask()
    out = _dense(qp, kp, vp, mask, backend)
    return out.reshape(q.shape) if q_index is None else out[q_index]
