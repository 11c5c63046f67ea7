"""Feed-forward net shared by the dense and sparse transformer blocks (TRELLIS2_SPEC §2.1)."""
import torch
import torch.nn as nn

__all__ = ["FeedForwardNet"]


class FeedForwardNet(nn.Module):
    """``Linear(C, int(C·mlp_ratio)) → GELU(tanh) → Linear(·, C)``; keys ``mlp.0``, ``mlp.2``.

    Works on any ``[..., C]`` tensor; sparse blocks apply it to ``SparseTensor.feats`` (same keys as the reference
    ``SparseFeedForwardNet``).
    """

    def __init__(self, channels: int, mlp_ratio: float = 4.0):
        super().__init__()
        hidden = int(channels * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)
