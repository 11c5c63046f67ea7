"""Timestep and absolute position embedders of the DiTs (TRELLIS2_SPEC §2.1, §2.2)."""
import math

import torch
import torch.nn as nn

__all__ = ["TimestepEmbedder", "AbsolutePositionEmbedder", "timestep_embedding"]


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding ``[cos(t·f_k), sin(t·f_k)]`` (cos first), ``f_k = exp(-ln(max_period)·k/half)``.

    Args:
        t: ``[B]`` timesteps, already scaled to [0, 1000] by the caller (samplers/trainers multiply by 1000).
        dim: embedding width (an odd width gets one zero column).

    Returns:
        float32 ``[B, dim]``.

    Raises:
        ValueError: ``t`` is not one-dimensional.
    """
    if t.dim() != 1:
        raise ValueError(f"timesteps must be a 1-D tensor [B], got shape {tuple(t.shape)}")
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimestepEmbedder(nn.Module):
    """``mlp(timestep_embedding(t, 256))`` with ``mlp = Linear(256, C) → SiLU → Linear(C, C)``.

    Keys: ``mlp.0.{weight [C, 256], bias}``, ``mlp.2.{weight [C, C], bias}``. Input ``t [B]`` (×1000 scale),
    output ``[B, C]`` in the MLP's dtype (float32 in the released models).
    """

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(nn.Linear(frequency_embedding_size, hidden_size), nn.SiLU(),
                                 nn.Linear(hidden_size, hidden_size))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        emb = timestep_embedding(t, self.frequency_embedding_size)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


class AbsolutePositionEmbedder(nn.Module):
    """Fixed sinusoidal embedding of integer positions (the ``pe_mode='ape'`` option; unused by released models).

    ``freq_dim = C // in_channels // 2``, ``f_j = 1 / 10000^(j / freq_dim)``; per axis ``[sin(p·f), cos(p·f)]``,
    axes concatenated and zero-padded to C. ``forward(x [N, in_channels])`` → float32 ``[N, C]``.
    """

    def __init__(self, channels: int, in_channels: int = 3):
        super().__init__()
        self.channels, self.in_channels = channels, in_channels
        self.freq_dim = channels // in_channels // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.in_channels:
            raise ValueError(f"AbsolutePositionEmbedder expects positions [N, {self.in_channels}], got {tuple(x.shape)}")
        freqs = 1.0 / (10000 ** (torch.arange(self.freq_dim, dtype=torch.float32, device=x.device) / self.freq_dim))
        out = x.reshape(-1, 1).float() * freqs[None]
        emb = torch.cat([torch.sin(out), torch.cos(out)], dim=-1).reshape(x.shape[0], -1)
        if emb.shape[1] < self.channels:
            emb = torch.cat([emb, emb.new_zeros(x.shape[0], self.channels - emb.shape[1])], dim=-1)
        return emb
