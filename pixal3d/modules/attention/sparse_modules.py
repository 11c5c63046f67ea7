"""Sparse multi-head attention layer (TRELLIS2_SPEC §1.7), same parameterisation as the dense one.

Queries are the voxels of a ``SparseTensor`` ``x`` (features ``[N, C]``, coords ``[N, 4]``, samples contiguous).
Self attention is per sample (``full``), per axis-aligned window (``windowed``/``double_windowed``) or per serialized
window (``serialized``). Cross attention takes either a dense context ``[B, L, C_ctx]`` (every sample sees its L
tokens) or a ``VarLenTensor`` context (sample b sees its own ``L_b`` tokens).
"""
import os
from typing import Optional, Tuple

import torch
import torch.nn as nn

from .functional import VarLenMeta, varlen_attention
from .modules import check_attention_args, self_attention_norm_rope
from .rms_norm import MultiHeadRMSNorm
from .rope import sparse_rope_phases
from .windowed import sparse_serialized_self_attention, sparse_windowed_self_attention

__all__ = ["SparseMultiHeadAttention", "context_to_packed", "packed_meta", "META_CACHE_ENV"]

SPARSE_ATTN_MODES = ("full", "windowed", "double_windowed", "serialized")


#: Set to ``0`` to give every attention call ``cu_seqlens`` tensors again (one host read per call, the behaviour before
#: :class:`VarLenMeta`); only for A/B timing (``bench/flow_dit.py --varlen_meta``). Read at call time.
META_CACHE_ENV = "PIXAL3D_VARLEN_META_CACHE"
_META_KEY = "varlen_attention_meta"


def _meta_cache_enabled() -> bool:
    return os.environ.get(META_CACHE_ENV, "1").strip() != "0"


def _cum_seqlen(x) -> torch.Tensor:
    cu = x.cum_seqlen
    return cu if isinstance(cu, torch.Tensor) else torch.tensor(cu, dtype=torch.int32, device=x.feats.device)


def packed_meta(x) -> VarLenMeta:
    """The :class:`VarLenMeta` of a ``VarLenTensor``/``SparseTensor``'s samples, cached on the tensor.

    Built from the host-side ``layout``, so it never reads the GPU. It lives in the tensor's cache (the spatial cache at
    its level for a ``SparseTensor``), which every ``replace`` copy shares: all the blocks of a forward, and the
    sampler's steps, reuse one object and its device tensors. A cached entry for another device or token count is
    rebuilt.
    """
    dev = x.feats.device
    get = getattr(x, "_get", None)
    meta = get(_META_KEY) if get is not None else None
    if not isinstance(meta, VarLenMeta) or meta.device != dev or meta.total != x.feats.shape[0]:
        meta = VarLenMeta.from_layout(x.layout, dev)
        if get is not None:
            x._put(_META_KEY, meta)
    return meta


def _dense_context_meta(x, batch: int, length: int, device) -> VarLenMeta:
    """Metadata of a dense ``[B, L, C]`` context, cached on the query tensor ``x`` (same lifetime as its own meta)."""
    key = f"{_META_KEY}_dense_context_{batch}x{length}"
    meta = x._get(key)
    if not isinstance(meta, VarLenMeta) or meta.device != device:
        meta = VarLenMeta.from_lengths([length] * batch, device)
        x._put(key, meta)
    return meta


def _packed_context(x, context, batch_size: int, ctx_channels: int):
    """:func:`context_to_packed` with a cached :class:`VarLenMeta` instead of a ``cu_seqlens`` tensor."""
    feats, _ = context_to_packed(context, batch_size, ctx_channels, _want_cu=False)
    if isinstance(context, torch.Tensor):
        return feats, _dense_context_meta(x, context.shape[0], context.shape[1], context.device)
    return feats, packed_meta(context)


def context_to_packed(context, batch_size: int, ctx_channels: int, _want_cu: bool = True):
    """Flattens a cross-attention context to packed tokens.

    Args:
        context: dense ``[B, L, C_ctx]`` tensor or a ``VarLenTensor`` with ``feats [T, C_ctx]``.
        batch_size: number of query samples B.

    Returns:
        ``(feats [T, C_ctx], cu_seqlens int32 [B+1])`` (``cu_seqlens`` is None when ``_want_cu`` is False, the
        internal call that uses a cached :class:`VarLenMeta` instead).

    Raises:
        ValueError: wrong type, channel count or batch size.
    """
    if isinstance(context, torch.Tensor):
        if context.dim() != 3 or context.shape[0] != batch_size or context.shape[-1] != ctx_channels:
            raise ValueError(f"cross attention expects a dense context [B={batch_size}, L, {ctx_channels}] "
                             f"(or a VarLenTensor), got {tuple(context.shape)}")
        B, L, C = context.shape
        cu = torch.arange(B + 1, dtype=torch.int32, device=context.device) * L if _want_cu else None
        return context.reshape(B * L, C), cu
    feats = getattr(context, "feats", None)
    if feats is None or not hasattr(context, "layout"):
        raise ValueError(f"cross attention context must be a [B, L, C] tensor or a VarLenTensor, "
                         f"got {type(context).__name__}")
    if feats.dim() != 2 or feats.shape[-1] != ctx_channels or len(context.layout) != batch_size:
        raise ValueError(f"VarLenTensor context must have feats [T, {ctx_channels}] and {batch_size} samples, "
                         f"got feats {tuple(feats.shape)} and {len(context.layout)} samples")
    return feats, (_cum_seqlen(context) if _want_cu else None)


class SparseMultiHeadAttention(nn.Module):
    """Sparse self/cross attention with the checkpoint names of :class:`MultiHeadAttention`.

    Args:
        channels, num_heads, ctx_channels, type, qkv_bias, use_rope, rope_freq, qk_rms_norm: as the dense layer.
        attn_mode: ``'full'`` (released models), ``'windowed'``, ``'double_windowed'`` (half the heads with shift 0,
            half with shift ``window_size // 2``), or ``'serialized'``.
        window_size: window edge in voxels (axis-aligned) or tokens per window (serialized).
        shift_window: shift for ``windowed`` (int or 3 ints) or token shift for ``serialized`` (int).
        serialize_mode: ``'z_order'`` or ``'hilbert'`` for ``serialized``.

    RoPE phases come from ``x.coords[:, 1:]`` and are cached in ``x``'s spatial cache.
    """

    def __init__(self, channels: int, num_heads: int, ctx_channels: Optional[int] = None, type: str = "self",
                 attn_mode: str = "full", window_size: Optional[int] = None, shift_window=None,
                 qkv_bias: bool = True, use_rope: bool = False, rope_freq: Tuple[float, float] = (1.0, 10000.0),
                 qk_rms_norm: bool = False, serialize_mode: str = "z_order"):
        super().__init__()
        check_attention_args(channels, num_heads, type, attn_mode, use_rope, SPARSE_ATTN_MODES)
        if attn_mode != "full" and (window_size is None or int(window_size) <= 0):
            raise ValueError(f"attn_mode={attn_mode!r} needs a positive window_size, got {window_size!r}")
        if attn_mode == "double_windowed" and (window_size % 2 or num_heads % 2):
            raise ValueError("double_windowed attention needs an even window_size and an even number of heads")
        if attn_mode == "serialized" and serialize_mode not in ("z_order", "hilbert"):
            raise ValueError(f"serialize_mode must be 'z_order' or 'hilbert', got {serialize_mode!r}")
        self.channels, self.num_heads = channels, num_heads
        self.head_dim = channels // num_heads
        self.ctx_channels = ctx_channels if ctx_channels is not None else channels
        self._type, self.attn_mode = type, attn_mode
        self.window_size, self.shift_window, self.serialize_mode = window_size, shift_window, serialize_mode
        self.use_rope, self.rope_freq, self.qk_rms_norm = use_rope, tuple(rope_freq), qk_rms_norm
        if use_rope:
            from .rope import rope_frequencies
            rope_frequencies(self.head_dim, 3, self.rope_freq)  # validates the head dim early
        if type == "self":
            self.to_qkv = nn.Linear(channels, 3 * channels, bias=qkv_bias)
        else:
            self.to_q = nn.Linear(channels, channels, bias=qkv_bias)
            self.to_kv = nn.Linear(self.ctx_channels, 2 * channels, bias=qkv_bias)
        if qk_rms_norm:
            self.q_rms_norm = MultiHeadRMSNorm(self.head_dim, num_heads)
            self.k_rms_norm = MultiHeadRMSNorm(self.head_dim, num_heads)
        self.to_out = nn.Linear(channels, channels)

    def _self_attention(self, x, q, k, v) -> torch.Tensor:
        if self.attn_mode == "full":
            meta = packed_meta(x) if _meta_cache_enabled() else _cum_seqlen(x)
            return varlen_attention(q, k, v, meta, meta)
        if self.attn_mode == "windowed":
            return sparse_windowed_self_attention(x, q, k, v, self.window_size, self.shift_window or 0)
        if self.attn_mode == "double_windowed":
            # Reference quirk kept for checkpoint compatibility: the unshifted windows use the second half of the
            # heads, the shifted windows the first half, and the outputs are concatenated in that (swapped) order.
            h2 = self.num_heads // 2
            h0 = sparse_windowed_self_attention(x, q[:, h2:], k[:, h2:], v[:, h2:], self.window_size, (0, 0, 0))
            shift = (self.window_size // 2,) * 3
            h1 = sparse_windowed_self_attention(x, q[:, :h2], k[:, :h2], v[:, :h2], self.window_size, shift)
            return torch.cat([h0, h1], dim=1)
        return sparse_serialized_self_attention(x, q, k, v, self.window_size, int(self.shift_window or 0),
                                                self.serialize_mode)

    def forward(self, x, context=None):
        """Args:
            x: ``SparseTensor`` with ``feats [N, C]``.
            context: cross attention only — dense ``[B, L, C_ctx]`` or ``VarLenTensor`` (``feats [T, C_ctx]``).

        Returns:
            ``x.replace(out)`` with ``out [N, C]`` (same coords, shared spatial cache).

        Raises:
            ValueError: wrong feature width, a missing or mismatched context.
        """
        feats = x.feats
        if feats.dim() != 2 or feats.shape[-1] != self.channels:
            raise ValueError(f"sparse attention expects feats [N, {self.channels}], got {tuple(feats.shape)}")
        N, H, D = feats.shape[0], self.num_heads, self.head_dim
        if self._type == "self":
            qkv = self.to_qkv(feats).reshape(N, 3, H, D)
            q, k, v = qkv.unbind(dim=1)
            phases = sparse_rope_phases(x, self.head_dim, self.rope_freq) if self.use_rope else None
            q, k = self_attention_norm_rope(self, qkv, q, k, phases)
            h = self._self_attention(x, q, k, v)
        else:
            if context is None:
                raise ValueError("cross attention needs a context ([B, L, C_ctx] tensor or VarLenTensor)")
            if _meta_cache_enabled():
                cu_q = packed_meta(x)
                ctx, cu_k = _packed_context(x, context, cu_q.batch_size, self.ctx_channels)
            else:
                cu_q = _cum_seqlen(x)
                ctx, cu_k = context_to_packed(context, cu_q.numel() - 1, self.ctx_channels)
            q = self.to_q(feats).reshape(N, H, D)
            k, v = self.to_kv(ctx).reshape(ctx.shape[0], 2, H, D).unbind(dim=1)
            if self.qk_rms_norm:
                q, k = self.q_rms_norm(q), self.k_rms_norm(k)
            h = varlen_attention(q, k, v, cu_q, cu_k)
        return x.replace(self.to_out(h.reshape(N, self.channels)))
