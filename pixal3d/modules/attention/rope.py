"""3D rotary position embedding (TRELLIS2_SPEC §1.7 "RoPE").

For head dim ``D`` and 3 axes: ``freq_dim = D // 2 // 3`` and ``freq_j = rope_freq[0] / rope_freq[1] ** (j / freq_dim)``.
A token at integer grid position (x, y, z) gets the ``D/2`` angles
``[x·f_0 .. x·f_{fd-1}, y·f_0 .., z·f_0 ..]`` padded with zeros (unit phases) up to ``D/2``. Queries and keys are read
as complex numbers over *adjacent* channel pairs ``(x[2m], x[2m+1])`` and multiplied by ``exp(i·angle_m)`` in float32,
then cast back. Frequencies and angles are computed in float32 exactly as the reference does, so the phase tables
agree bit for bit with checkpoints that store them.
"""
from typing import Tuple

import torch
import torch.nn as nn

__all__ = ["rope_frequencies", "rope_phases", "apply_rope", "RotaryPositionEmbedder", "sparse_rope_phases"]


def rope_frequencies(head_dim: int, dim: int = 3, rope_freq: Tuple[float, float] = (1.0, 10000.0)) -> torch.Tensor:
    """The ``freq_dim = head_dim // 2 // dim`` float32 frequencies ``rope_freq[0] / rope_freq[1] ** (j / freq_dim)``.

    Raises:
        ValueError: ``head_dim`` is odd or not positive.
    """
    if head_dim <= 0 or head_dim % 2:
        raise ValueError(f"RoPE needs a positive, even head dim, got {head_dim}")
    freq_dim = head_dim // 2 // dim
    j = torch.arange(freq_dim, dtype=torch.float32) / freq_dim if freq_dim else torch.zeros(0)
    return rope_freq[0] / (rope_freq[1] ** j)


def rope_phases(coords: torch.Tensor, head_dim: int, rope_freq: Tuple[float, float] = (1.0, 10000.0)) -> torch.Tensor:
    """Unit complex phases for integer grid positions.

    Args:
        coords: ``[..., dim]`` positions (integer or float), axes in (x, y, z) order.
        head_dim: per-head channel count ``D`` (even).
        rope_freq: ``(base scale, base)``, ``(1.0, 10000.0)`` in all released models.

    Returns:
        complex64 ``[..., D/2]``: ``exp(i·angle)``, angles ordered axis-major, zero-padded at the end.
    """
    dim = coords.shape[-1]
    freqs = rope_frequencies(head_dim, dim, rope_freq).to(coords.device)
    angles = coords.reshape(-1, 1).float() * freqs[None]  # [M*dim, fd], same product as torch.outer
    angles = angles.reshape(*coords.shape[:-1], dim * freqs.shape[0])
    pad = head_dim // 2 - angles.shape[-1]
    if pad:
        angles = torch.cat([angles, angles.new_zeros(*angles.shape[:-1], pad)], dim=-1)
    return torch.polar(torch.ones_like(angles), angles)


def apply_rope(x: torch.Tensor, phases: torch.Tensor) -> torch.Tensor:
    """Rotates adjacent channel pairs of ``x`` by ``phases``.

    Args:
        x: ``[..., N, H, D]`` queries or keys (any float dtype).
        phases: complex ``[N, D/2]`` (broadcast over heads and leading dims).

    Returns:
        ``[..., N, H, D]`` in ``x.dtype`` (computed in float32).

    Raises:
        ValueError: the phase table does not match ``x`` (token count or ``D/2``).
    """
    if phases.shape[-1] * 2 != x.shape[-1] or phases.shape[-2] != x.shape[-3]:
        raise ValueError(f"RoPE phases {tuple(phases.shape)} do not fit tokens {tuple(x.shape)}: expected "
                         f"[{x.shape[-3]}, {x.shape[-1] // 2}]")
    xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(xc * phases.unsqueeze(-2)).reshape(x.shape).to(x.dtype)


class RotaryPositionEmbedder(nn.Module):
    """Computes RoPE phase tables (no parameters); see :func:`rope_phases`. ``forward(coords [..., dim])`` →
    complex64 ``[..., head_dim/2]``."""

    def __init__(self, head_dim: int, dim: int = 3, rope_freq: Tuple[float, float] = (1.0, 10000.0)):
        super().__init__()
        rope_frequencies(head_dim, dim, rope_freq)  # validates head_dim
        self.head_dim, self.dim, self.rope_freq = head_dim, dim, tuple(rope_freq)

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        if coords.shape[-1] != self.dim:
            raise ValueError(f"RoPE expects positions [..., {self.dim}], got {tuple(coords.shape)}")
        return rope_phases(coords, self.head_dim, self.rope_freq)

    apply_rotary_embedding = staticmethod(apply_rope)


def sparse_rope_phases(x, head_dim: int, rope_freq: Tuple[float, float] = (1.0, 10000.0)) -> torch.Tensor:
    """Phases of a ``SparseTensor``'s voxels from ``coords[:, 1:]``, cached in its spatial cache.

    The cache key is the reference's ``rope_phase_3d_freq{a}-{b}_hd{D}`` so every block at a resolution level shares
    one table (TRELLIS2_SPEC §1.3).

    Returns:
        complex64 ``[N, head_dim/2]``.
    """
    key = f"rope_phase_3d_freq{rope_freq[0]}-{rope_freq[1]}_hd{head_dim}"
    phases = x.get_spatial_cache(key)
    if phases is None:
        phases = rope_phases(x.coords[:, 1:], head_dim, rope_freq)
        x.register_spatial_cache(key, phases)
    return phases
