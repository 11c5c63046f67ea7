"""Dense multi-head attention layer with the released parameterisation (TRELLIS2_SPEC §1.7)."""
from typing import Optional, Tuple

import torch
import torch.nn as nn

from .functional import scaled_dot_product_attention
from .fused_qk import self_attention_qk, use_triton
from .rms_norm import MultiHeadRMSNorm
from .rope import apply_rope

__all__ = ["MultiHeadAttention", "check_attention_args", "self_attention_norm_rope"]


def check_attention_args(channels: int, num_heads: int, type: str, attn_mode: str, use_rope: bool,
                         modes: Tuple[str, ...]) -> None:
    """Validates the shared constructor arguments of the dense and sparse attention layers.

    Raises:
        ValueError: channels not divisible by heads, unknown type/mode, cross attention that is not ``full`` or
            uses RoPE.
    """
    if num_heads <= 0 or channels % num_heads:
        raise ValueError(f"channels ({channels}) must be a positive multiple of num_heads ({num_heads})")
    if type not in ("self", "cross"):
        raise ValueError(f"attention type must be 'self' or 'cross', got {type!r}")
    if attn_mode not in modes:
        raise ValueError(f"attn_mode must be one of {modes}, got {attn_mode!r}")
    if type == "cross" and attn_mode != "full":
        raise ValueError("cross attention only supports attn_mode='full'")
    if type == "cross" and use_rope:
        raise ValueError("rotary embeddings are only defined for self attention (use_rope=False for cross)")


def self_attention_norm_rope(layer: nn.Module, qkv: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                             phases: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    """The per-head RMS norm (if ``layer.qk_rms_norm``) then RoPE (if ``phases`` is given) of a self-attention layer.

    Args:
        layer: a dense or sparse attention layer (``q_rms_norm``/``k_rms_norm`` when ``qk_rms_norm``).
        qkv: the ``to_qkv`` output ``[N, 3, H, D]`` or ``[B, L, 3, H, D]``; q, k: its slots 0 and 1 (views).
        phases: complex64 ``[N or L, D/2]`` or None.

    Returns:
        ``(q, k)`` of ``q``'s shape and dtype. The fused Triton kernel (:mod:`.fused_qk`) computes both in one pass
        when :func:`.fused_qk.use_triton` allows it; otherwise the reference modules do (``MultiHeadRMSNorm`` then
        ``apply_rope``).
    """
    norms = (layer.q_rms_norm, layer.k_rms_norm) if layer.qk_rms_norm else (None, None)
    if not layer.qk_rms_norm and phases is None:
        return q, k
    if (phases is None or phases.dtype == torch.complex64) \
            and use_triton(qkv, *(n.gamma for n in norms if n is not None)):
        return self_attention_qk(qkv, *norms, phases)
    if layer.qk_rms_norm:
        q, k = norms[0](q), norms[1](k)
    if phases is not None:
        q, k = apply_rope(q, phases), apply_rope(k, phases)
    return q, k


class MultiHeadAttention(nn.Module):
    """Dense self/cross attention: ``to_qkv`` or ``to_q``+``to_kv``, optional per-head q/k RMS norm, RoPE, ``to_out``.

    Submodules (exact checkpoint names): self → ``to_qkv`` Linear ``[3C, C]`` whose output splits as
    ``[..., 3, H, D]``; cross → ``to_q`` ``[C, C]`` and ``to_kv`` ``[2C, C_ctx]`` split as ``[..., 2, H, D]``;
    ``q_rms_norm.gamma``/``k_rms_norm.gamma`` ``[H, D]`` when ``qk_rms_norm``; ``to_out`` ``[C, C]`` (always biased).
    RMS norm is applied before RoPE. Only ``attn_mode='full'`` exists for dense attention (as in the reference).

    Args:
        channels: C; num_heads: H (``D = C / H``); ctx_channels: context width for cross attention (default C).
        type: ``'self'`` or ``'cross'``; qkv_bias: bias of the input projections.
        use_rope: rotate q/k by ``phases`` passed to :meth:`forward` (self attention only).
        rope_freq: stored for reference; the dense phase table is built by the model.
    """

    def __init__(self, channels: int, num_heads: int, ctx_channels: Optional[int] = None, type: str = "self",
                 attn_mode: str = "full", window_size: Optional[int] = None,
                 shift_window: Optional[Tuple[int, int, int]] = None, qkv_bias: bool = True, use_rope: bool = False,
                 rope_freq: Tuple[float, float] = (1.0, 10000.0), qk_rms_norm: bool = False):
        super().__init__()
        check_attention_args(channels, num_heads, type, attn_mode, use_rope, ("full",))
        self.channels, self.num_heads = channels, num_heads
        self.head_dim = channels // num_heads
        self.ctx_channels = ctx_channels if ctx_channels is not None else channels
        self._type, self.attn_mode = type, attn_mode
        self.window_size, self.shift_window = window_size, shift_window
        self.use_rope, self.rope_freq, self.qk_rms_norm = use_rope, tuple(rope_freq), qk_rms_norm
        if type == "self":
            self.to_qkv = nn.Linear(channels, 3 * channels, bias=qkv_bias)
        else:
            self.to_q = nn.Linear(channels, channels, bias=qkv_bias)
            self.to_kv = nn.Linear(self.ctx_channels, 2 * channels, bias=qkv_bias)
        if qk_rms_norm:
            self.q_rms_norm = MultiHeadRMSNorm(self.head_dim, num_heads)
            self.k_rms_norm = MultiHeadRMSNorm(self.head_dim, num_heads)
        self.to_out = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None,
                phases: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Args:
            x: ``[B, L, C]``.
            context: ``[B, L_ctx, C_ctx]`` (cross attention only).
            phases: complex ``[L, D/2]`` RoPE table (self attention with ``use_rope``).

        Returns:
            ``[B, L, C]``.

        Raises:
            ValueError: wrong shapes, a missing context/phase table.
        """
        if x.dim() != 3 or x.shape[-1] != self.channels:
            raise ValueError(f"attention expects x [B, L, {self.channels}], got {tuple(x.shape)}")
        B, L, _ = x.shape
        H = self.num_heads
        if self._type == "self":
            if self.use_rope and phases is None:
                raise ValueError("this attention layer uses RoPE: pass phases [L, head_dim/2]")
            qkv = self.to_qkv(x).reshape(B, L, 3, H, self.head_dim)
            q, k, v = qkv.unbind(dim=2)
            q, k = self_attention_norm_rope(self, qkv, q, k, phases if self.use_rope else None)
        else:
            if context is None or context.dim() != 3 or context.shape[0] != B or context.shape[-1] != self.ctx_channels:
                got = None if context is None else tuple(context.shape)
                raise ValueError(f"cross attention expects context [B={B}, L_ctx, {self.ctx_channels}], got {got}")
            q = self.to_q(x).reshape(B, L, H, self.head_dim)
            k, v = self.to_kv(context).reshape(B, context.shape[1], 2, H, self.head_dim).unbind(dim=2)
            if self.qk_rms_norm:
                q, k = self.q_rms_norm(q), self.k_rms_norm(k)
        h = scaled_dot_product_attention(q, k, v)
        return self.to_out(h.reshape(B, L, self.channels))
