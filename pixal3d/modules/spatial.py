"""Dense 3D pixel shuffle used by the TRELLIS v1 sparse-structure decoder (TRELLIS2_SPEC §1.6, §2.4).

The packing here is channel-major with the x offset as the most significant bit of the sub-position: input channel
``c·f³ + a·f² + b·f + d`` lands at output position ``(f·x + a, f·y + b, f·z + d)`` in output channel ``c``. This is
NOT the packing of the sparse ``SparseChannel2Spatial`` (child-major, x the least significant bit); the released SS
decoder weights only work with this one.
"""
import torch

__all__ = ["pixel_shuffle_3d", "pixel_unshuffle_3d"]


def _check(x: torch.Tensor, scale_factor: int) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 5:
        raise ValueError(f"expected a dense tensor [B, C, X, Y, Z], got {getattr(x, 'shape', type(x))}")
    if not isinstance(scale_factor, int) or scale_factor < 1:
        raise ValueError(f"scale_factor must be a positive int, got {scale_factor!r}")


def pixel_shuffle_3d(x: torch.Tensor, scale_factor: int) -> torch.Tensor:
    """Moves channel groups to space: ``[B, C·f³, X, Y, Z] -> [B, C, f·X, f·Y, f·Z]`` (TRELLIS2_SPEC §1.6).

    Args:
        x: dense channel-first tensor, any dtype; ``C·f³`` channels.
        scale_factor: ``f``, the upsampling factor per axis.

    Returns:
        Tensor of the input dtype where ``out[:, c, f·x+a, f·y+b, f·z+d] = x[:, c·f³ + a·f² + b·f + d, x, y, z]``.

    Raises:
        ValueError: ``x`` is not 5-D, ``f`` is not a positive int, or the channel count is not divisible by ``f³``.
    """
    _check(x, scale_factor)
    f = scale_factor
    B, C, X, Y, Z = x.shape
    if C % f**3 != 0:
        raise ValueError(f"pixel_shuffle_3d needs channels divisible by {f}^3 = {f**3}, got {C}")
    c = C // f**3
    # [B, c, a, b, d, X, Y, Z] -> [B, c, X, a, Y, b, Z, d]: the sub-position offsets become the fast index per axis
    y = x.reshape(B, c, f, f, f, X, Y, Z).permute(0, 1, 5, 2, 6, 3, 7, 4)
    return y.reshape(B, c, X * f, Y * f, Z * f)


def pixel_unshuffle_3d(x: torch.Tensor, scale_factor: int) -> torch.Tensor:
    """Inverse of :func:`pixel_shuffle_3d`: ``[B, C, f·X, f·Y, f·Z] -> [B, C·f³, X, Y, Z]``.

    Raises:
        ValueError: ``x`` is not 5-D, ``f`` is not a positive int, or a spatial size is not divisible by ``f``.
    """
    _check(x, scale_factor)
    f = scale_factor
    B, C, X, Y, Z = x.shape
    if X % f or Y % f or Z % f:
        raise ValueError(f"pixel_unshuffle_3d needs spatial sizes divisible by {f}, got {(X, Y, Z)}")
    y = x.reshape(B, C, X // f, f, Y // f, f, Z // f, f).permute(0, 1, 3, 5, 7, 2, 4, 6)
    return y.reshape(B, C * f**3, X // f, Y // f, Z // f)
