"""Per-head RMS norm for queries and keys (TRELLIS2_SPEC §1.7)."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from .fused_qk import rms_norm_heads, use_triton

__all__ = ["MultiHeadRMSNorm"]


class MultiHeadRMSNorm(nn.Module):
    """``y = normalize(x.float(), dim=-1) · gamma · sqrt(D)``, cast back to ``x.dtype``.

    Parameters: ``gamma`` ``[heads, dim]`` (ones at init), kept in float32 by ``convert_to``.
    Input/output: ``[..., heads, dim]``. ``F.normalize`` uses eps 1e-12 like the reference.

    CUDA fp16/bf16 inputs of shape ``[N, H, D]``/``[B, L, H, D]`` without autograd go through the one-pass Triton
    kernel of :mod:`.fused_qk` (same maths up to float32 rounding; ``PIXAL3D_FUSED_KERNELS=torch`` disables it); the
    PyTorch expression below is the reference and the path everywhere else.
    """

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.scale = dim ** 0.5
        self.gamma = nn.Parameter(torch.ones(heads, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != self.gamma.shape:
            raise ValueError(f"MultiHeadRMSNorm expects [..., {self.gamma.shape[0]}, {self.gamma.shape[1]}], "
                             f"got {tuple(x.shape)}")
        if x.dim() in (3, 4) and use_triton(x, self.gamma):
            return rms_norm_heads(x, self.gamma, self.scale)
        return (F.normalize(x.float(), dim=-1) * self.gamma * self.scale).to(x.dtype)
