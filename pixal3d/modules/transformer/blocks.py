"""Feed-forward net shared by the dense and sparse transformer blocks (TRELLIS2_SPEC §2.1)."""
import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["FeedForwardNet"]


def _gelu_epilogue_ok(x: torch.Tensor, fc: nn.Linear) -> bool:
    """Whether the first layer may run as one cuBLASLt GEMM with a bias + tanh-GELU epilogue: CUDA half-precision
    inference, the ``PIXAL3D_FUSED_KERNELS`` switch not ``torch`` (the same gate as the Triton kernels)."""
    from ..fused_adaln import fused_mode
    return (x.is_cuda and x.dtype in (torch.float16, torch.bfloat16) and fc.weight.dtype == x.dtype
            and fc.bias is not None and not (torch.is_grad_enabled() and (x.requires_grad or fc.weight.requires_grad))
            and not torch.is_autocast_enabled("cuda") and fused_mode() != "torch")


class FeedForwardNet(nn.Module):
    """``Linear(C, int(C·mlp_ratio)) → GELU(tanh) → Linear(·, C)``; keys ``mlp.0``, ``mlp.2``.

    Works on any ``[..., C]`` tensor; sparse blocks apply it to ``SparseTensor.feats`` (same keys as the reference
    ``SparseFeedForwardNet``). For CUDA fp16/bf16 inference the bias and GELU of the first layer are applied in the
    GEMM's epilogue (``torch._addmm_activation``, the tanh approximation on CUDA), which saves a pass over the
    ``C·mlp_ratio``-wide hidden tensor; the result differs from the separate ops only by where it is rounded.
    """

    def __init__(self, channels: int, mlp_ratio: float = 4.0):
        super().__init__()
        hidden = int(channels * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fc1, fc2 = self.mlp[0], self.mlp[2]
        if not _gelu_epilogue_ok(x, fc1):
            return self.mlp(x)
        h = torch._addmm_activation(fc1.bias, x.reshape(-1, x.shape[-1]), fc1.weight.t(), use_gelu=True)
        return F.linear(h, fc2.weight, fc2.bias).reshape(*x.shape[:-1], fc2.out_features)
