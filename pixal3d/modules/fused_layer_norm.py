"""Fused layer norm (+ SiLU) over the feature rows of sparse tensors, for the SC-VAE blocks (TRELLIS2_SPEC §2.5).

The SC-VAE blocks normalise voxel features ``[N, C]`` with ``LayerNorm32`` and often apply SiLU straight after
(``SiLU(norm(x))`` before every resampling conv). Unfused, that is four passes over ``[N, C]`` (upcast, norm, cast
back, SiLU) at up to a million voxels; :func:`layer_norm_act` makes it one read and one write.

Two implementations, chosen per call by the switch the other fused inference kernels use (``PIXAL3D_FUSED_KERNELS``,
see :mod:`pixal3d.modules.fused_adaln`):

* ``torch``: exactly what the blocks computed before: ``layer_norm32`` (float32 statistics, rounded to the input
  dtype), then ``F.silu`` in that dtype. Autograd-capable, any dtype or device.
* ``triton``: ``BLOCK_R`` whole rows per program, statistics and SiLU in float32 registers, one rounding at the
  store. It differs from ``torch`` by rounding only (one rounding instead of two).

``auto`` (default) picks Triton for CUDA fp16/bf16 inputs when no gradient is needed and autocast is off.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .fused_adaln import _use_triton
from .norm import layer_norm32
from ..sparse.conv_triton import HAS_TRITON, tl, triton

__all__ = ["layer_norm_act", "layer_norm_act_torch"]


def layer_norm_act_torch(x: torch.Tensor, weight: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None,
                         eps: float = 1e-5, silu: bool = False,
                         out_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """PyTorch path of :func:`layer_norm_act`: ``layer_norm32`` on ``x`` (cast to ``out_dtype`` first when given),
    then ``F.silu`` in the output dtype."""
    if out_dtype is not None:
        x = x.to(out_dtype)
    y = layer_norm32(x, (x.shape[-1],), weight, bias, eps)
    return F.silu(y) if silu else y


if HAS_TRITON:
    # Flags and sizes are runtime arguments (not constexpr, not specialised): a decoder compiles one kernel per
    # channel width (BLOCK_C) and output dtype, not one per (width, affine, SiLU, row-count parity). A single kernel
    # walking the columns in fixed steps would compile once, but measured 2.3x slower on the texture decoder's norms
    # (3.9 against 1.7 ms per decode on an H100), which costs more than its compiles save.
    @triton.jit(do_not_specialize=["R", "C", "stride_x", "has_w", "has_b", "silu"])
    def _ln_act_kernel(x_ptr, out_ptr, w_ptr, b_ptr, R, C, stride_x, eps, has_w, has_b, silu,
                       BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
        """``BLOCK_R`` whole rows: two-pass statistics (mean, then centred variance) in fp32 registers, optional
        affine and SiLU, one store in the output dtype."""
        rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
        cols = tl.arange(0, BLOCK_C)
        cmask = cols < C
        m = (rows < R)[:, None] & cmask[None, :]
        x = tl.load(x_ptr + rows[:, None] * stride_x + cols[None, :], mask=m, other=0.0).to(tl.float32)
        mean = tl.sum(x, axis=1) / C
        xc = tl.where(m, x - mean[:, None], 0.0)
        var = tl.sum(xc * xc, axis=1) / C
        y = xc * (1.0 / tl.sqrt(var + eps))[:, None]
        if has_w != 0:
            y = y * tl.load(w_ptr + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
        if has_b != 0:
            y = y + tl.load(b_ptr + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
        if silu != 0:
            y = y * tl.sigmoid(y)
        tl.store(out_ptr + rows[:, None] * C + cols[None, :], y.to(out_ptr.dtype.element_ty), mask=m)


def _launch(x2: torch.Tensor, weight, bias, eps: float, silu: bool, out_dtype: torch.dtype) -> torch.Tensor:
    R, C = x2.shape
    out = torch.empty(R, C, dtype=out_dtype, device=x2.device)
    if R == 0:
        return out
    block_c = triton.next_power_of_2(C)
    block_r = max(1, min(64, 4096 // block_c))  # ~4K elements per program: whole rows, several when C is small
    # absent parameters: any fp32 tensor as a pointer (never read), so that it adds no kernel variant
    dummy = weight if weight is not None else bias if bias is not None else out.new_empty(1, dtype=torch.float32)
    w = weight.contiguous() if weight is not None else dummy
    b = bias.contiguous() if bias is not None else dummy
    _ln_act_kernel[(triton.cdiv(R, block_r),)](x2, out, w, b, R, C, x2.stride(0), float(eps),
                                               int(weight is not None), int(bias is not None), int(silu),
                                               BLOCK_R=block_r, BLOCK_C=block_c,
                                               num_warps=8 if block_r * block_c >= 8192 else 4)
    return out


def layer_norm_act(x: torch.Tensor, weight: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None,
                   eps: float = 1e-5, silu: bool = False, out_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """``LN(x)·weight + bias`` over the last dim in float32, then SiLU when ``silu`` (``SiLU(LayerNorm32(x))`` of
    the SC-VAE blocks; TRELLIS2_SPEC §1.5, §2.5).

    Args:
        x: ``[..., C]`` features of any float dtype (voxel rows ``[N, C]`` in the SC-VAEs).
        weight, bias: ``[C]`` affine parameters (any float dtype, used in float32) or ``None``.
        eps: variance epsilon (``LayerNorm32``'s; ``F.layer_norm``'s default is 1e-5).
        silu: apply ``y·sigmoid(y)`` after the norm.
        out_dtype: result dtype (default ``x.dtype``); the torch path casts ``x`` to it before the norm, which is
            exact for an upcast (the SC-VAE decoders' fp16 torso -> fp32 head).

    Returns:
        ``x``'s shape in ``out_dtype``; a new tensor (``x`` is never written).

    Raises:
        ValueError: ``weight``/``bias`` not of shape ``[C]``.
    """
    C = x.shape[-1]
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and tuple(t.shape) != (C,):
            raise ValueError(f"layer_norm_act: {name} must have shape [{C}], got {tuple(t.shape)}")
    out_dtype = x.dtype if out_dtype is None else out_dtype
    if _use_triton(x, (), (weight, bias)) and out_dtype in (x.dtype, torch.float32):
        x2 = x.reshape(-1, C)
        if x2.stride(-1) != 1:
            x2 = x2.contiguous()
        return _launch(x2, weight, bias, eps, silu, out_dtype).reshape(x.shape)
    return layer_norm_act_torch(x, weight, bias, eps, silu, out_dtype if out_dtype != x.dtype else None)
