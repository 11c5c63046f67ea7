"""AdaLN-modulated transformer cross blocks, dense and sparse (TRELLIS2_SPEC §2.1, PIXAL3D_SPEC §4.1).

    h = LN1(x)·(1+scale_msa)+shift_msa ; x = x + gate_msa·SelfAttn(h)     # LN1: no affine, eps 1e-6
    h = LN2(x)                          ; x = x + CrossAttn(h, cond)       # LN2: affine, eps 1e-6, no gate
    h = LN3(x)·(1+scale_mlp)+shift_mlp  ; x = x + gate_mlp·MLP(h)          # LN3: no affine, eps 1e-6

With ``share_mod=True`` (all released models) the block owns ``modulation [6C]`` and adds it to the model-level
``mod [B, 6C]``; otherwise it owns ``adaLN_modulation = Sequential(SiLU, Linear(C, 6C))`` applied to ``t_emb``.
In Pixal3D's ``image_attn_mode='proj'`` the cross attention becomes a :class:`ProjectAttention` (keys
``cross_attn.cross_attn_block.*`` and ``cross_attn.proj_linear.*``).

The norm/modulation lines and the gated residuals go through ``modules/fused_adaln.py``: one-pass Triton kernels for
CUDA half-precision inference, otherwise (CPU, fp32, gradients, autocast, ``PIXAL3D_FUSED_KERNELS=torch``) the same
op sequence as always, bit for bit.
"""
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.utils.checkpoint

from ..attention import MultiHeadAttention, SparseMultiHeadAttention
from ..fused_adaln import gated_residual, modulated_layer_norm
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

    @staticmethod
    def _norm(norm: LayerNorm32, x: torch.Tensor, shift=None, scale=None, batch_index=None) -> torch.Tensor:
        """``norm(x) * (1 + scale) + shift`` (modulation optional) through the fused-kernel dispatcher."""
        return modulated_layer_norm(x, shift, scale, batch_index, norm.weight, norm.bias, norm.eps)

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
        h = self._norm(self.norm1, x, shift_msa, scale_msa)
        x = gated_residual(x, self.self_attn(h, phases=phases), gate_msa)
        x = x + self.cross_attn(self._norm(self.norm2, x), context)
        h = self._norm(self.norm3, x, shift_mlp, scale_mlp)
        return gated_residual(x, self.mlp(h), gate_mlp)


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
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self._chunks(mod)
        # B = 1 modulation broadcasts to every voxel; otherwise rows find their sample through the index (the torch
        # path gathers per use: six [N, C] copies at once would dominate memory for large batches)
        idx = None if mod.shape[0] == 1 else x.batch_boardcast_map
        feats = x.feats
        h = self._norm(self.norm1, feats, shift_msa, scale_msa, idx)
        feats = gated_residual(feats, self.self_attn(x.replace(h)).feats, gate_msa, idx)
        feats = feats + self.cross_attn(x.replace(self._norm(self.norm2, feats)), context).feats
        h = self._norm(self.norm3, feats, shift_mlp, scale_mlp, idx)
        return x.replace(gated_residual(feats, self.mlp(h), gate_mlp, idx))
