"""Fused inference kernels for the adaLN-modulated DiT blocks (TRELLIS2_SPEC §2.1).

The blocks spend most of their non-matmul time in elementwise passes over ``[N, C]``: the fp32 upcast of the
layer norm, the cast back, ``* (1 + scale)``, ``+ shift``, the per-token gathers of the ``[B, C]`` modulation
vectors, ``gate * y`` and the residual add. Two functions cover them, each one read of every input row and one write:

* :func:`modulated_layer_norm` -- ``LN(x)·w + b`` then ``·(1 + scale[b]) + shift[b]`` (each part optional);
* :func:`gated_residual` -- ``x + gate[b] · y``.

Each picks one of two implementations per call:

* ``torch``: the exact op sequence the blocks always ran (``LayerNorm32`` semantics, per-token gathers, one rounding
  to the working dtype after every op), so outputs are bit-identical to the pre-fusion code;
* ``triton``: one program per row; all maths in fp32 registers and a single rounding to ``x.dtype`` at the store. It
  therefore differs from ``torch`` by rounding only (a few bf16/fp16 ulps), never by formula.

``PIXAL3D_FUSED_KERNELS`` (read per call) selects: ``auto`` (default) uses Triton for CUDA fp16/bf16 tensors when
the call needs no gradient (grad mode off or no input requiring grad), autocast is off, all activation/modulation
tensors share ``x``'s dtype (the torch path would type-promote otherwise) and ``C <= 8192`` (a row must fit in
registers); ``torch`` forces the old path (A/B benchmarks); ``triton`` also takes fp32 tensors and CPU tensors under
the interpreter (``TRITON_INTERPRET=1``) and warns once when it has to fall back. Triton is optional at import time.
"""
from __future__ import annotations

import os
import warnings
from typing import Optional, Sequence

import torch

# the one optional Triton import of the package (triton/tl are None without it)
from ..sparse.conv_triton import HAS_TRITON, interpreting, tl, triton
from .norm import layer_norm32


__all__ = ["HAS_TRITON", "FUSED_KERNELS_ENV", "VALID_MODES", "fused_mode", "interpreting", "modulated_layer_norm",
           "gated_residual", "modulated_layer_norm_torch", "gated_residual_torch"]

#: the switch shared by every fused inference kernel (adaLN here, q/k RMS norm + RoPE in ``attention/fused_qk``)
FUSED_KERNELS_ENV = "PIXAL3D_FUSED_KERNELS"
VALID_MODES = ("auto", "triton", "torch")
MAX_C = 8192
_WARNED = set()


def fused_mode() -> str:
    """The requested implementation, from ``PIXAL3D_FUSED_KERNELS`` at call time (default ``auto``).

    Raises:
        ValueError: an unknown value.
    """
    name = os.environ.get(FUSED_KERNELS_ENV, "auto").strip().lower() or "auto"
    if name not in VALID_MODES:
        raise ValueError(f"{FUSED_KERNELS_ENV}={name!r} is not valid; use one of {', '.join(VALID_MODES)} "
                         "(unset it for the default 'auto')")
    return name


def _blocker(mode: str, x: torch.Tensor, acts: Sequence[torch.Tensor], params: Sequence[torch.Tensor]):
    """Why the Triton kernel must not run this call (``None`` when it may). ``acts`` must match x's dtype and
    device; ``params`` (LN weight/bias, batch index) only their device. All count for the gradient check."""
    if not HAS_TRITON:
        return "triton is not installed"
    half = (torch.float16, torch.bfloat16)
    if x.dtype not in (half if mode == "auto" else half + (torch.float32,)):
        return f"dtype {x.dtype}"
    if x.device.type != "cuda" and not (mode == "triton" and x.device.type == "cpu" and interpreting()):
        return f"device {x.device.type}"
    if any(t.dtype != x.dtype or t.device != x.device for t in acts):
        return "mixed dtypes or devices"
    if any(t.device != x.device for t in params):
        return "parameters on another device"
    if torch.is_grad_enabled() and (x.requires_grad or any(t.requires_grad for t in (*acts, *params))):
        return "gradients are needed (the kernels have no backward)"
    if torch.is_autocast_enabled(x.device.type):
        return "autocast is on"
    if x.shape[-1] > MAX_C:
        return f"rows wider than {MAX_C}"
    return None


def _use_triton(x: torch.Tensor, acts, params) -> bool:
    mode = fused_mode()
    if mode == "torch":
        return False
    reason = _blocker(mode, x, [t for t in acts if t is not None], [t for t in params if t is not None])
    if reason is not None and mode == "triton" and reason not in _WARNED:
        _WARNED.add(reason)
        warnings.warn(f"PIXAL3D_FUSED_KERNELS=triton: using the torch path ({reason})", stacklevel=3)
    return reason is None


def _check(x: torch.Tensor, batch_index: Optional[torch.Tensor], *per_sample: Optional[torch.Tensor]) -> None:
    """Shape rules shared by both paths, so that they accept and reject the same calls."""
    if x.dim() not in (2, 3):
        raise ValueError(f"x must be [N, C] or [B, L, C], got {tuple(x.shape)}")
    C = x.shape[-1]
    if batch_index is not None and (x.dim() != 2 or batch_index.shape != (x.shape[0],)):
        raise ValueError(f"batch_index must be [N] for x [N, C], got {tuple(batch_index.shape)} for {tuple(x.shape)}")
    for v in per_sample:
        if v is None:
            continue
        if v.dim() != 2 or v.shape[1] != C:
            raise ValueError(f"per-sample vectors must be [B, {C}], got {tuple(v.shape)}")
        if batch_index is None and v.shape[0] != 1 and (x.dim() != 3 or v.shape[0] != x.shape[0]):
            raise ValueError(f"per-sample vectors [B={v.shape[0]}, C] need x [B, L, C] or a batch_index "
                             f"(x is {tuple(x.shape)})")


def _per_row(v: torch.Tensor, x: torch.Tensor, batch_index: Optional[torch.Tensor]) -> torch.Tensor:
    """``[B, C]`` broadcast against x: gathered to ``[N, C]`` through the index, ``[B, 1, C]`` for dense x."""
    if batch_index is not None:
        return v[batch_index.long()]
    return v.unsqueeze(1) if x.dim() == 3 else v


# ---------------------------------------------------------------- reference (torch) implementations

def modulated_layer_norm_torch(x: torch.Tensor, shift: Optional[torch.Tensor] = None,
                               scale: Optional[torch.Tensor] = None, batch_index: Optional[torch.Tensor] = None,
                               weight: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None,
                               eps: float = 1e-6) -> torch.Tensor:
    """PyTorch path of :func:`modulated_layer_norm`: ``LayerNorm32`` then ``* (1 + scale) + shift`` in the working
    dtype, op for op what the modulated blocks compute without fusion (autograd-capable, any dtype/device)."""
    y = layer_norm32(x, (x.shape[-1],), weight, bias, eps)
    if scale is not None:
        y = y * (1 + _per_row(scale, x, batch_index))
    if shift is not None:
        y = y + _per_row(shift, x, batch_index)
    return y


def gated_residual_torch(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor,
                         batch_index: Optional[torch.Tensor] = None) -> torch.Tensor:
    """PyTorch path of :func:`gated_residual`: ``x + gate · y`` with the block's broadcasting and dtype promotion."""
    return x + _per_row(gate, x, batch_index) * y


# ---------------------------------------------------------------- Triton kernels

if HAS_TRITON:
    @triton.jit
    def _sample_of(row, idx_ptr, rows_per_sample, HAS_INDEX: tl.constexpr):
        """Sample of a row: the batch index entry (sparse) or ``row // L`` (dense; per-sample strides of B = 1
        vectors are 0, so any value works there)."""
        if HAS_INDEX:
            return tl.load(idx_ptr + row).to(tl.int64)
        return row // rows_per_sample

    @triton.jit
    def _modln_kernel(x_ptr, out_ptr, shift_ptr, scale_ptr, w_ptr, b_ptr, idx_ptr,
                      C, stride_x, stride_shift, stride_scale, rows_per_sample, eps,
                      HAS_SHIFT: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
                      HAS_INDEX: tl.constexpr, BLOCK_C: tl.constexpr):
        """One row: two-pass (mean, then centred variance) statistics in fp32 over the registers, one store."""
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK_C)
        mask = cols < C
        x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
        mean = tl.sum(x, axis=0) / C
        xc = tl.where(mask, x - mean, 0.0)
        var = tl.sum(xc * xc, axis=0) / C
        y = xc * (1.0 / tl.sqrt(var + eps))
        if HAS_W:
            y = y * tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        if HAS_B:
            y = y + tl.load(b_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        s = _sample_of(row, idx_ptr, rows_per_sample, HAS_INDEX)
        if HAS_SCALE:
            y = y * (1.0 + tl.load(scale_ptr + s * stride_scale + cols, mask=mask, other=0.0).to(tl.float32))
        if HAS_SHIFT:
            y = y + tl.load(shift_ptr + s * stride_shift + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(out_ptr + row * C + cols, y.to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _gated_residual_kernel(x_ptr, y_ptr, g_ptr, out_ptr, idx_ptr, C, stride_x, stride_y, stride_g,
                               rows_per_sample, HAS_INDEX: tl.constexpr, BLOCK_C: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK_C)
        mask = cols < C
        s = _sample_of(row, idx_ptr, rows_per_sample, HAS_INDEX)
        x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
        y = tl.load(y_ptr + row * stride_y + cols, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + s * stride_g + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(out_ptr + row * C + cols, (x + g * y).to(out_ptr.dtype.element_ty), mask=mask)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """``[..., C]`` as a ``[R, C]`` view (a copy only if no such view exists) with unit column stride."""
    t2 = t.reshape(-1, t.shape[-1])
    return t2 if t2.stride(1) == 1 else t2.contiguous()


def _vec(v: Optional[torch.Tensor], like: torch.Tensor):
    """(pointer tensor, row stride) of a per-sample ``[B, C]`` vector; stride 0 broadcasts a B = 1 vector."""
    if v is None:
        return like, 0
    if v.stride(1) != 1:
        v = v.contiguous()
    return v, 0 if v.shape[0] == 1 else v.stride(0)


def _launch_cfg(x: torch.Tensor, batch_index: Optional[torch.Tensor]):
    C = x.shape[-1]
    block = triton.next_power_of_2(C)
    rows_per_sample = x.shape[1] if x.dim() == 3 else 1
    idx = batch_index if batch_index is not None else x  # dummy pointer without an index
    return dict(BLOCK_C=block, num_warps=min(max(block // 256, 1), 8)), rows_per_sample, idx


def _modln_triton(x, shift, scale, batch_index, weight, bias, eps, out=None):
    """Launches the kernel; writes every element of ``out`` (contiguous, x's shape and dtype) when given."""
    x2 = _rows(x)
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device) if out is None else out
    if x2.shape[0] == 0:
        return out
    cfg, rps, idx = _launch_cfg(x, batch_index)
    sh, sh_stride = _vec(shift, x2)
    sc, sc_stride = _vec(scale, x2)
    w = weight.contiguous() if weight is not None else x2
    b = bias.contiguous() if bias is not None else x2
    _modln_kernel[(x2.shape[0],)](x2, out, sh, sc, w, b, idx, x2.shape[1], x2.stride(0), sh_stride, sc_stride,
                                  rps, float(eps), HAS_SHIFT=shift is not None, HAS_SCALE=scale is not None,
                                  HAS_W=weight is not None, HAS_B=bias is not None,
                                  HAS_INDEX=batch_index is not None, **cfg)
    return out


def _gated_residual_triton(x, y, gate, batch_index, out=None):
    x2, y2 = _rows(x), _rows(y)
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device) if out is None else out
    if x2.shape[0] == 0:
        return out
    cfg, rps, idx = _launch_cfg(x, batch_index)
    g, g_stride = _vec(gate, x2)
    _gated_residual_kernel[(x2.shape[0],)](x2, y2, g, out, idx, x2.shape[1], x2.stride(0), y2.stride(0), g_stride,
                                           rps, HAS_INDEX=batch_index is not None, **cfg)
    return out


# ---------------------------------------------------------------- public entry points

def modulated_layer_norm(x: torch.Tensor, shift: Optional[torch.Tensor] = None, scale: Optional[torch.Tensor] = None,
                         batch_index: Optional[torch.Tensor] = None, weight: Optional[torch.Tensor] = None,
                         bias: Optional[torch.Tensor] = None, eps: float = 1e-6) -> torch.Tensor:
    """``LN(x)·weight + bias`` over the last dim, then ``·(1 + scale[s]) + shift[s]`` with ``s`` the row's sample
    (TRELLIS2_SPEC §2.1 adaLN; every part optional: norm2 is ``LN·w + b`` without modulation).

    Args:
        x: ``[N, C]`` (sparse tokens, or any rows when B = 1) or ``[B, L, C]`` (dense; row ``r`` is sample
            ``r // L``); any float dtype.
        shift, scale: ``[B, C]`` or ``[1, C]`` (broadcast to all rows), or ``None``.
        batch_index: int32/int64 ``[N]`` sample of each row of a 2-D ``x`` (``SparseTensor.batch_boardcast_map``);
            needed when B > 1 and ``x`` is 2-D. Values must lie in ``[0, B)`` (not checked: it would synchronise).
        weight, bias: ``[C]`` affine parameters of the norm (any float dtype, upcast to fp32) or ``None``.
        eps: variance epsilon.

    Returns:
        x's shape and dtype (the torch path type-promotes like the unfused ops when the dtypes differ).

    Raises:
        ValueError: shapes that do not follow the rules above.
    """
    _check(x, batch_index, shift, scale)
    if _use_triton(x, (shift, scale), (weight, bias, batch_index)):
        return _modln_triton(x, shift, scale, batch_index, weight, bias, eps)
    return modulated_layer_norm_torch(x, shift, scale, batch_index, weight, bias, eps)


def gated_residual(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor,
                   batch_index: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Gated residual ``x + gate[s] · y`` of the modulated blocks (TRELLIS2_SPEC §2.1), ``s`` the row's sample.

    Args:
        x, y: same shape, ``[N, C]`` or ``[B, L, C]`` (sample rules as :func:`modulated_layer_norm`).
        gate: ``[B, C]`` or ``[1, C]``.
        batch_index: int32/int64 ``[N]`` sample of each row of a 2-D ``x``, or ``None``.

    Returns:
        A new tensor (inputs are never written) of x's shape and dtype.

    Raises:
        ValueError: shapes that do not follow the rules.
    """
    if y.shape != x.shape:
        raise ValueError(f"x and y must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    _check(x, batch_index, gate)
    if _use_triton(x, (y, gate), (batch_index,)):
        return _gated_residual_triton(x, y, gate, batch_index)
    return gated_residual_torch(x, y, gate, batch_index)
