"""Z-order and Hilbert serialisation of 10-bit voxel coordinates (TRELLIS2_SPEC.md §1.8).

Matches O-Voxel's ``encode_seq``/``decode_seq``: 30-bit codes, 10 bits per axis. Z-order interleaves the bits with
the first (permuted) axis the MOST significant bit of each 3-bit group: ``code = expand(a0)*4 + expand(a1)*2 +
expand(a2)``. Hilbert applies Skilling's transform ("inverse undo excess work", then Gray encoding) to the three
10-bit coordinates and then interleaves the same way. Codes are returned as int64 (values < 2**30).
"""
from typing import Sequence

import torch

__all__ = ["encode_seq", "decode_seq", "BITS"]

BITS = 10
_MODES = ("z_order", "hilbert")


def _expand_bits(v: torch.Tensor) -> torch.Tensor:
    """Inserts two zero bits after each of the 10 low bits of ``v`` (int64): bit i -> bit 3i."""
    out = torch.zeros_like(v)
    for i in range(BITS):
        out |= ((v >> i) & 1) << (3 * i)
    return out


def _extract_bits(v: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`_expand_bits`: collects bits 0, 3, 6, ... of ``v`` into a 10-bit integer."""
    out = torch.zeros_like(v)
    for i in range(BITS):
        out |= ((v >> (3 * i)) & 1) << i
    return out


def _check_permute(permute: Sequence[int]):
    p = [int(a) for a in permute]
    if sorted(p) != [0, 1, 2]:
        raise ValueError(f"permute must be a permutation of (0, 1, 2), got {tuple(permute)!r}")
    return p


def _check_mode(mode: str):
    if mode not in _MODES:
        raise ValueError(f"unknown serialisation mode {mode!r}; use one of {_MODES}")


def _hilbert_axes_to_transpose(p):
    """Skilling's AxesToTranspose on a list of three int64 tensors (modified in place semantics, returned)."""
    p = list(p)
    q = 1 << (BITS - 1)
    while q > 1:
        m = q - 1
        for i in range(3):
            bit = (p[i] & q) != 0
            # bit set: invert the low bits of axis 0; else exchange the low bits of axes 0 and i
            t = (p[0] ^ p[i]) & m
            new0 = torch.where(bit, p[0] ^ m, p[0] ^ t)
            newi = torch.where(bit, p[i], p[i] ^ t)
            if i == 0:
                p[0] = new0
            else:
                p[0], p[i] = new0, newi
        q >>= 1
    for i in range(1, 3):
        p[i] = p[i] ^ p[i - 1]
    t = torch.zeros_like(p[2])
    q = 1 << (BITS - 1)
    while q > 1:
        t = torch.where((p[2] & q) != 0, t ^ (q - 1), t)
        q >>= 1
    return [a ^ t for a in p]


def _hilbert_transpose_to_axes(p):
    """Skilling's TransposeToAxes, the inverse of :func:`_hilbert_axes_to_transpose`."""
    p = list(p)
    t = p[2] >> 1
    for i in (2, 1):
        p[i] = p[i] ^ p[i - 1]
    p[0] = p[0] ^ t
    q = 2
    while q != (1 << BITS):
        m = q - 1
        for i in (2, 1, 0):
            bit = (p[i] & q) != 0
            t = (p[0] ^ p[i]) & m
            new0 = torch.where(bit, p[0] ^ m, p[0] ^ t)
            newi = torch.where(bit, p[i], p[i] ^ t)
            if i == 0:
                p[0] = new0
            else:
                p[0], p[i] = new0, newi
        q <<= 1
    return p


def encode_seq(coords: torch.Tensor, permute: Sequence[int] = (0, 1, 2), mode: str = "z_order") -> torch.Tensor:
    """Serialises voxel coordinates to 30-bit space-filling-curve codes.

    Args:
        coords: integer ``[N, 3]`` (x, y, z) with every value in ``[0, 1024)``.
        permute: axis order; ``coords[:, permute[0]]`` becomes the most significant axis.
        mode: ``'z_order'`` or ``'hilbert'``.

    Returns:
        int64 ``[N]`` codes in ``[0, 2**30)``.

    Raises:
        TypeError: non-integer coords. ValueError: wrong shape, values outside ``[0, 1024)``, bad permute/mode.
    """
    _check_mode(mode)
    p = _check_permute(permute)
    if not isinstance(coords, torch.Tensor) or coords.is_floating_point() or coords.is_complex() \
            or coords.dtype == torch.bool:
        raise TypeError("coords must be an integer tensor [N, 3]")
    if coords.dim() != 2 or coords.shape[1] != 3:
        raise ValueError(f"coords must have shape [N, 3], got {tuple(coords.shape)}")
    c = coords.long()
    bad = (c < 0) | (c >= (1 << BITS))
    if bool(bad.any()):
        rows = torch.nonzero(bad.any(1)).reshape(-1)[:5].tolist()
        raise ValueError(f"coordinates outside [0, {1 << BITS}) in rows {rows}; serialisation codes hold 10 bits "
                         "per axis")
    axes = [c[:, p[0]], c[:, p[1]], c[:, p[2]]]
    if mode == "hilbert":
        axes = _hilbert_axes_to_transpose(axes)
    return _expand_bits(axes[0]) * 4 + _expand_bits(axes[1]) * 2 + _expand_bits(axes[2])


def decode_seq(code: torch.Tensor, permute: Sequence[int] = (0, 1, 2), mode: str = "z_order") -> torch.Tensor:
    """Inverse of :func:`encode_seq`: int ``[N]`` codes -> int64 ``[N, 3]`` coordinates (x, y, z).

    Raises:
        ValueError: wrong shape, codes outside ``[0, 2**30)``, bad permute/mode. TypeError: non-integer codes.
    """
    _check_mode(mode)
    p = _check_permute(permute)
    if not isinstance(code, torch.Tensor) or code.is_floating_point() or code.dtype == torch.bool:
        raise TypeError("code must be an integer tensor [N]")
    if code.dim() != 1:
        raise ValueError(f"code must have shape [N], got {tuple(code.shape)}")
    k = code.long()
    if bool(((k < 0) | (k >= (1 << (3 * BITS)))).any()):
        raise ValueError(f"codes must lie in [0, 2**{3 * BITS})")
    axes = [_extract_bits(k >> 2), _extract_bits(k >> 1), _extract_bits(k)]
    if mode == "hilbert":
        axes = _hilbert_transpose_to_axes(axes)
    out = torch.empty((k.shape[0], 3), dtype=torch.long, device=k.device)
    for i in range(3):
        out[:, p[i]] = axes[i]
    return out
