"""AdaLN-modulated transformer cross blocks, dense and sparse (TRELLIS2_SPEC §2.1, PIXAL3D_SPEC §4.1).

    h = LN1(x)·(1+scale_msa)+shift_msa ; x = x + gate_msa·SelfAttn(h)     # LN1: no affine, eps 1e-6
    h = LN2(x)                          ; x = x + CrossAttn(h, cond)       # LN2: affine, eps 1e-6, no gate
    h = LN3(x)·(1+scale_mlp)+shift_mlp  ; x = x + gate_mlp·MLP(h)          # LN3: no affine, eps 1e-6

With ``share_mod=True`` (all released models) the block owns ``modulation [6C]`` and adds it to the model-level
``mod [B, 6C]``; otherwise it owns ``adaLN_modulation = Sequential(SiLU, Linear(C, 6C))`` applied to ``t_emb``.
In Pixal3D's ``image_attn_mode='proj'`` the cross attention becomes a :class:`ProjectAttention` (keys
``cross_attn.cross_attn_block.*`` and ``cross_attn.proj_linear.*``).
"""
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.utils.checkpoint

from ..attention import MultiHeadAttention, SparseMultiHeadAttention
from ..norm import LayerNorm32
from .blocks import FeedForwardNet
from .proj_attention import GatedProjectAttention, ProjectAttention

__all__ = ["ModulatedTransformerCrossBlock", "ModulatedSparseTransformerCrossBlock", "IMAGE_ATTN_MODES"]

IMAGE_ATTN_MODES = ("cross", "proj", "gated_proj")


class _ModulatedCrossBlockBase(nn.Module):
    _sparse = False

    def __init__(self, channels: int, ctx_channels: int, num_heads: int, mlp_ratio: float = 4.0,
                 attn_mode: str = "full", window_size: Optional[int] = None,
                 shift_window: Optional[Tuple[int, int, int]] = None, use_checkpoint: bool = False,
                 use_rope: bool = False, rope_freq: Tuple[float, float] = (1.0, 10000.0), qk_rms_norm: bool = False,
                 qk_rms_norm_cross: bool = False, qkv_bias: bool = True, share_mod: bool = False,
                 image_attn_mode: str = "cross", proj_in_channels: Optional[int] = None,
                 vae_in_channels: Optional[int] = None):
        super().__init__()
        if image_attn_mode not in IMAGE_ATTN_MODES:
            raise ValueError(f"image_attn_mode must be one of {IMAGE_ATTN_MODES}, got {image_attn_mode!r}")
        attn_cls = SparseMultiHeadAttention if self._sparse else MultiHeadAttention
        self.use_checkpoint, self.share_mod, self.image_attn_mode = use_checkpoint, share_mod, image_attn_mode
        self.norm1 = LayerNorm32(channels, elementwise_affine=False, eps=1e-6)
        self.norm2 = LayerNorm32(channels, elementwise_affine=True, eps=1e-6)
        self.norm3 = LayerNorm32(channels, elementwise_affine=False, eps=1e-6)
        self.self_attn = attn_cls(channels, num_heads=num_heads, type="self", attn_mode=attn_mode,
                                  window_size=window_size, shift_window=shift_window, qkv_bias=qkv_bias,
                                  use_rope=use_rope, rope_freq=rope_freq, qk_rms_norm=qk_rms_norm)
        cross = attn_cls(channels, ctx_channels=ctx_channels, num_heads=num_heads, type="cross", attn_mode="full",
                         qkv_bias=qkv_bias, qk_rms_norm=qk_rms_norm_cross)
        if image_attn_mode == "cross":
            self.cross_attn = cross
        elif image_attn_mode == "proj":
            self.cross_attn = ProjectAttention(cross, channels, proj_in_channels or ctx_channels, sparse=self._sparse)
        else:
            self.cross_attn = GatedProjectAttention(cross, channels, proj_in_channels or ctx_channels,
                                                    vae_in_channels or 16, sparse=self._sparse)
        self.mlp = FeedForwardNet(channels, mlp_ratio=mlp_ratio)
        if share_mod:
            self.modulation = nn.Parameter(torch.randn(6 * channels) / channels ** 0.5)
        else:
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(channels, 6 * channels, bias=True))

    @property
    def cross_attn_out(self) -> nn.Linear:
        """The cross-attention output projection (inside the proj wrapper in Pixal3D mode)."""
        inner = self.cross_attn.cross_attn_block if self.image_attn_mode != "cross" else self.cross_attn
        return inner.to_out

    def _chunks(self, mod: torch.Tensor):
        if mod.dim() != 2 or mod.shape[1] != 6 * self.norm2.normalized_shape[0]:
            raise ValueError(f"modulation input must be [B, {6 * self.norm2.normalized_shape[0]}], got {tuple(mod.shape)}")
        if self.share_mod:
            return (self.modulation + mod).type(mod.dtype).chunk(6, dim=1)
        return self.adaLN_modulation(mod).chunk(6, dim=1)

    def forward(self, x, mod: torch.Tensor, context, *extra):
        if self.use_checkpoint and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(self._forward, x, mod, context, *extra, use_reentrant=False)
        return self._forward(x, mod, context, *extra)


class ModulatedTransformerCrossBlock(_ModulatedCrossBlockBase):
    """Dense modulated cross block. Constructor args as the reference plus Pixal3D's ``image_attn_mode``,
    ``proj_in_channels`` (default ``ctx_channels``) and ``vae_in_channels`` (default 16).

    ``forward(x [B, L, C], mod [B, 6C], context, phases=None)``: ``context`` is ``[B, L_ctx, C_ctx]`` in ``cross``
    mode, ``{'global': [B, L_g, C_ctx], 'proj': [B, L, Cp]}`` (or a tuple) in ``proj`` mode; ``phases`` is the
    RoPE table ``[L, D/2]``. Returns ``[B, L, C]``.
    """

    def _forward(self, x: torch.Tensor, mod: torch.Tensor, context, phases: Optional[torch.Tensor] = None):
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self._chunks(mod)
        h = self.norm1(x) * (1 + scale_msa.unsqueeze(1)) + shift_msa.unsqueeze(1)
        x = x + gate_msa.unsqueeze(1) * self.self_attn(h, phases=phases)
        x = x + self.cross_attn(self.norm2(x), context)
        h = self.norm3(x) * (1 + scale_mlp.unsqueeze(1)) + shift_mlp.unsqueeze(1)
        return x + gate_mlp.unsqueeze(1) * self.mlp(h)


def _per_token(v: torch.Tensor, x) -> torch.Tensor:
    """Broadcasts per-sample values ``[B, C]`` to the voxels of ``x`` (``[N, C]``, or ``[1, C]`` when B = 1)."""
    if v.shape[0] == 1:
        return v
    return v[x.batch_boardcast_map.long()]


class ModulatedSparseTransformerCrossBlock(_ModulatedCrossBlockBase):
    """Sparse modulated cross block; same parameters and keys as the dense one.

    ``forward(x: SparseTensor [N, C], mod [B, 6C], context)``: ``context`` is ``[B, L_ctx, C_ctx]`` or a
    ``VarLenTensor`` in ``cross`` mode, ``{'global': ..., 'proj': SparseTensor | [N, Cp]}`` (or a tuple) in ``proj``
    mode. Returns a ``SparseTensor`` with the same coords.
    """
    _sparse = True

    def _forward(self, x, mod: torch.Tensor, context):
        if mod.shape[0] != 1 and mod.shape[0] != len(x.layout):
            raise ValueError(f"modulation batch {mod.shape[0]} does not match the sparse batch size {len(x.layout)}")
        # gathered per use: six [N, C] copies at once would dominate memory for large batches
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self._chunks(mod)
        feats = x.feats
        h = self.norm1(feats) * (1 + _per_token(scale_msa, x)) + _per_token(shift_msa, x)
        feats = feats + _per_token(gate_msa, x) * self.self_attn(x.replace(h)).feats
        feats = feats + self.cross_attn(x.replace(self.norm2(feats)), context).feats
        h = self.norm3(feats) * (1 + _per_token(scale_mlp, x)) + _per_token(shift_mlp, x)
        return x.replace(feats + _per_token(gate_mlp, x) * self.mlp(h))
