"""Fused per-head RMS norm + RoPE of queries and keys in one Triton pass (inference; TRELLIS2_SPEC §1.7).

The PyTorch path (:class:`.rms_norm.MultiHeadRMSNorm` then :func:`.rope.apply_rope`) upcasts, normalises, multiplies,
casts back, upcasts again, rotates and casts back: about nine elementwise kernels and two half-precision round trips
through memory per tensor. The kernel here reads q and k once, straight out of the fused ``to_qkv`` output
(``[N, 3, H, D]`` or ``[B, L, 3, H, D]``, a strided view, no ``.contiguous()``), does all the maths in float32 and
writes each once in the input dtype.

Maths (per head row ``x`` of ``D`` channels):

* RMS norm: ``y = x / max(||x||, 1e-12) · gamma · sqrt(D)`` (``F.normalize``'s eps semantics), with an IEEE square root
  and division as in PyTorch;
* RoPE: adjacent pairs ``(y[2m], y[2m+1])`` are rotated by the phase ``exp(i·angle_m)``.

When both are applied the normalised value is rounded to the input dtype before the rotation, as the reference
does between its two modules. The fused output therefore differs from the PyTorch one by rounding only: float32
summation order and FMA contraction can move an fp16/bf16 output by one unit in the last place (under the Triton
interpreter every fp16 output was identical).

Dispatch (:func:`use_triton`) is controlled by ``$PIXAL3D_FUSED_KERNELS`` (read at call time, shared with the fused
adaLN kernels): ``auto`` (default) uses the kernel for CUDA fp16/bf16 tensors when no gradient is needed; ``triton``
also uses it for float32 and, under the Triton interpreter (``TRITON_INTERPRET=1``), for CPU tensors; ``torch``
always takes the PyTorch path (for A/B timing). The PyTorch path is also taken on CPU, for float64, without Triton,
and whenever autograd needs the graph (the kernel has no backward). Triton stays an optional import.
"""
from typing import Optional, Sequence, Tuple

import torch

# the one optional Triton import of the package (triton/tl are None without it)
from ...sparse.conv_triton import HAS_TRITON, interpreting, tl, triton
from ..fused_adaln import FUSED_KERNELS_ENV, fused_mode as fused_kernels_mode


__all__ = ["HAS_TRITON", "FUSED_KERNELS_ENV", "fused_kernels_mode", "interpreting", "use_triton", "rms_norm_rope",
           "self_attention_qk", "rms_norm_heads"]

_EPS = 1e-12  # F.normalize's default


def use_triton(x: torch.Tensor, *params: Optional[torch.Tensor]) -> bool:
    """Whether the fused kernel should process ``x`` (with parameters ``params``, e.g. RMS-norm gammas) now.

    False in ``torch`` mode, without Triton, when autograd would record (grad mode on and ``x`` or a parameter
    requires grad), and for dtypes/devices the mode does not cover (see the module docstring).
    """
    mode = fused_kernels_mode()
    if mode == "torch" or not HAS_TRITON:
        return False
    if torch.is_grad_enabled() and (x.requires_grad or any(p is not None and p.requires_grad for p in params)):
        return False
    if x.device.type == "cuda":
        dtypes = (torch.float16, torch.bfloat16) if mode == "auto" else (torch.float16, torch.bfloat16, torch.float32)
        return x.dtype in dtypes
    return mode == "triton" and x.device.type == "cpu" and interpreting() \
        and x.dtype in (torch.float16, torch.bfloat16, torch.float32)


if HAS_TRITON:
    @triton.jit
    def _rms_norm_rope_kernel(x_ptr, out_ptr, g0_ptr, g1_ptr, ph_ptr, n_rows, L, H, D,
                              sx_b, sx_l, sx_s, sx_h, slot_numel, scale, eps,
                              NORM: tl.constexpr, ROPE: tl.constexpr, ROUND_MID: tl.constexpr,
                              BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
        """One program: BLOCK_R head rows of slot ``program_id(1)`` (0 = q, 1 = k). Row r is (b, l, h) with h
        fastest; int64 offsets, as packed batches can exceed 2**31 elements."""
        s = tl.program_id(1)
        rows = (tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)
        h = rows % H
        l = (rows // H) % L
        b = rows // H // L
        d = tl.arange(0, BLOCK_D)
        mask = (rows < n_rows)[:, None] & (d < D)[None, :]
        src = b * sx_b + l * sx_l + s.to(tl.int64) * sx_s + h * sx_h
        x = tl.load(x_ptr + src[:, None] + d[None, :], mask=mask, other=0.0).to(tl.float32)
        if NORM:
            g_off = h[:, None] * D + d[None, :]
            if s == 0:
                g = tl.load(g0_ptr + g_off, mask=mask, other=0.0).to(tl.float32)
            else:
                g = tl.load(g1_ptr + g_off, mask=mask, other=0.0).to(tl.float32)
            nrm = tl.maximum(tl.sqrt_rn(tl.sum(x * x, axis=1)), eps, propagate_nan=tl.PropagateNan.ALL)
            x = tl.div_rn(x, nrm[:, None]) * g * scale
            if ROUND_MID:  # the reference casts back to the input dtype between RMS norm and RoPE
                x = x.to(out_ptr.dtype.element_ty).to(tl.float32)
        if ROPE:
            # phases as float32 [L, D/2, 2] (cos, sin): channel d of row l reads element l*D + d
            ph = tl.load(ph_ptr + l[:, None] * D + d[None, :], mask=mask, other=0.0)
            xr, xi = tl.split(tl.reshape(x, (BLOCK_R, BLOCK_D // 2, 2)))
            c, sn = tl.split(tl.reshape(ph, (BLOCK_R, BLOCK_D // 2, 2)))
            x = tl.reshape(tl.join(xr * c - xi * sn, xr * sn + xi * c), (BLOCK_R, BLOCK_D))
        dst = s.to(tl.int64) * slot_numel + rows * D
        tl.store(out_ptr + dst[:, None] + d[None, :], x.to(out_ptr.dtype.element_ty), mask=mask)


def rms_norm_rope(x: torch.Tensor, gammas: Optional[Sequence[torch.Tensor]] = None, scale: float = 1.0,
                  phases: Optional[torch.Tensor] = None, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Triton kernel: per-head RMS norm and/or RoPE of ``S`` slots of a strided tensor, one read and one write.

    Args:
        x: ``[B, L, S, H, D]`` fp16/bf16/fp32 (``S`` ∈ {1, 2}), any strides (typically a view of a ``to_qkv``
            output); CUDA, or CPU under the Triton interpreter.
        gammas: ``S`` RMS-norm gains ``[H, D]`` (float32 in the released models), one per slot; None: no norm.
        scale: the norm's ``sqrt(D)`` factor.
        phases: complex64 ``[L, D/2]`` RoPE phases (shared over B and H); None: no rotation.
        out: optional contiguous ``[S, B, L, H, D]`` buffer of ``x.dtype`` to write into (else allocated).

    Returns:
        ``out``, contiguous ``[S, B, L, H, D]`` in ``x.dtype``: ``rope(normalize(x)·gamma·scale)`` in float32
        maths, with the reference's rounding to ``x.dtype`` between the two steps (see the module docstring).

    Raises:
        ValueError: shapes that do not fit, or a parameter of another device.
        RuntimeError: Triton is not installed.
    """
    if not HAS_TRITON:
        raise RuntimeError("rms_norm_rope needs triton; use MultiHeadRMSNorm/apply_rope instead")
    if x.dim() != 5 or x.shape[2] not in (1, 2):
        raise ValueError(f"rms_norm_rope expects x [B, L, S in (1, 2), H, D], got {tuple(x.shape)}")
    B, L, S, H, D = x.shape
    if gammas is not None:
        gammas = [g.contiguous() for g in gammas]
        if len(gammas) != S or any(g.shape != (H, D) or g.device != x.device for g in gammas):
            raise ValueError(f"rms_norm_rope needs {S} gammas [{H}, {D}] on {x.device}, "
                             f"got {[(tuple(g.shape), str(g.device)) for g in gammas]}")
    if phases is not None:
        if phases.dtype != torch.complex64 or phases.shape != (L, D // 2) or D % 2 or phases.device != x.device:
            raise ValueError(f"rms_norm_rope needs complex64 phases [{L}, {D // 2}] on {x.device} (even D), got "
                             f"{phases.dtype} {tuple(phases.shape)} on {phases.device}")
        phases = torch.view_as_real(phases.contiguous())
    if out is None:
        out = torch.empty((S, B, L, H, D), dtype=x.dtype, device=x.device)
    elif out.shape != (S, B, L, H, D) or out.dtype != x.dtype or out.device != x.device or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous {x.dtype} tensor [{S}, {B}, {L}, {H}, {D}] on {x.device}, "
                         f"got {out.dtype} {tuple(out.shape)} on {out.device}")
    n_rows = B * L * H
    if out.numel() == 0:
        return out
    if x.stride(-1) != 1:  # the kernel reads each head row as one contiguous run
        x = x.contiguous()
    block_d = max(2, triton.next_power_of_2(D))
    block_r = max(1, 2048 // block_d)
    g0 = gammas[0] if gammas is not None else x
    g1 = gammas[-1] if gammas is not None else x
    grid = (triton.cdiv(n_rows, block_r), S)
    _rms_norm_rope_kernel[grid](
        x, out, g0, g1, phases if phases is not None else x, n_rows, L, H, D,
        x.stride(0), x.stride(1), x.stride(2), x.stride(3), B * L * H * D, float(scale), _EPS,
        NORM=gammas is not None, ROPE=phases is not None,
        ROUND_MID=gammas is not None and phases is not None and x.dtype != torch.float32,
        BLOCK_R=block_r, BLOCK_D=block_d, num_warps=4)
    return out


def self_attention_qk(qkv: torch.Tensor, q_norm=None, k_norm=None,
                      phases: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Queries and keys of a self-attention layer from its ``to_qkv`` output, normalised and rotated in one launch.

    Args:
        qkv: ``[N, 3, H, D]`` (sparse) or ``[B, L, 3, H, D]`` (dense), q/k/v in slots 0/1/2; read in place.
        q_norm, k_norm: :class:`.rms_norm.MultiHeadRMSNorm` of q and k, both or neither.
        phases: complex64 ``[N or L, D/2]`` or None.

    Returns:
        ``(q, k)``, each contiguous ``[N, H, D]`` / ``[B, L, H, D]`` in ``qkv.dtype``; what
        ``apply_rope(norm(q), phases)`` computes, up to rounding (module docstring).
    """
    x = qkv[..., :2, :, :]
    out = rms_norm_rope(x[None] if x.dim() == 4 else x,
                        (q_norm.gamma, k_norm.gamma) if q_norm is not None else None,
                        q_norm.scale if q_norm is not None else 1.0, phases)
    if qkv.dim() == 4:
        out = out[:, 0]
    return out[0], out[1]


def rms_norm_heads(x: torch.Tensor, gamma: torch.Tensor, scale: float) -> torch.Tensor:
    """Plain per-head RMS norm by the kernel (cross-attention queries and keys).

    Args:
        x: ``[N, H, D]`` or ``[B, L, H, D]``, any strides (e.g. a slot of a ``to_kv`` output).
        gamma: ``[H, D]``; scale: ``sqrt(D)``.

    Returns:
        contiguous tensor of ``x``'s shape and dtype: ``normalize(x)·gamma·scale`` (float32 maths).
    """
    x5 = x.unsqueeze(-3)
    return rms_norm_rope(x5[None] if x5.dim() == 4 else x5, (gamma,), scale)[0].reshape(x.shape)
