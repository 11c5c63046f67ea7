"""Z-order (Morton) codes for non-negative integer voxel coordinates (TRELLIS2_SPEC §1.8).

The reference packs ``x, y, z`` bit by bit with x the most significant bit of every 3-bit group and the coarsest level
first: ``code = expand(x)·4 + expand(y)·2 + expand(z)``. The reference stores 10 bits per axis in an int32; here the
codes are int64 with up to 21 bits per axis, which gives the same ordering (and the same values below 1024).
``pixal3d.sparse.encode_seq`` is the public 30-bit version; this private copy keeps ``pixal3d.ovoxel.io`` usable
without the sparse package.
"""
import numpy as np

MAX_BITS = 21


def _expand_bits(v: np.ndarray) -> np.ndarray:
    """Insert two zero bits after each of the low 21 bits of ``v`` (uint64)."""
    v = v.astype(np.uint64) & np.uint64(0x1FFFFF)
    v = (v | (v << np.uint64(32))) & np.uint64(0x1F00000000FFFF)
    v = (v | (v << np.uint64(16))) & np.uint64(0x1F0000FF0000FF)
    v = (v | (v << np.uint64(8))) & np.uint64(0x100F00F00F00F00F)
    v = (v | (v << np.uint64(4))) & np.uint64(0x10C30C30C30C30C3)
    v = (v | (v << np.uint64(2))) & np.uint64(0x1249249249249249)
    return v


def _compact_bits(v: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_expand_bits`."""
    v = v.astype(np.uint64) & np.uint64(0x1249249249249249)
    v = (v | (v >> np.uint64(2))) & np.uint64(0x10C30C30C30C30C3)
    v = (v | (v >> np.uint64(4))) & np.uint64(0x100F00F00F00F00F)
    v = (v | (v >> np.uint64(8))) & np.uint64(0x1F0000FF0000FF)
    v = (v | (v >> np.uint64(16))) & np.uint64(0x1F00000000FFFF)
    v = (v | (v >> np.uint64(32))) & np.uint64(0x1FFFFF)
    return v


def morton_encode(coords: np.ndarray) -> np.ndarray:
    """Z-order codes of ``coords`` (int ``[N, 3]``, each in ``[0, 2**21)``) → int64 ``[N]``.

    Raises ``ValueError`` for a wrong shape or coordinates outside that range.
    """
    coords = np.asarray(coords)
    if coords.ndim != 2 or coords.shape[1] != 3:
        raise ValueError(f"coords must have shape [N, 3], got {coords.shape}")
    if coords.size and (coords.min() < 0 or coords.max() >= (1 << MAX_BITS)):
        raise ValueError(f"Morton coordinates must lie in [0, 2**{MAX_BITS}); got range "
                         f"[{coords.min()}, {coords.max()}]")
    code = (_expand_bits(coords[:, 0]) << np.uint64(2)) | (_expand_bits(coords[:, 1]) << np.uint64(1)) \
        | _expand_bits(coords[:, 2])
    return code.astype(np.int64)


def morton_decode(codes: np.ndarray) -> np.ndarray:
    """Inverse of :func:`morton_encode`: int64 ``[N]`` → int64 ``[N, 3]`` (x, y, z)."""
    c = np.asarray(codes).astype(np.uint64)
    return np.stack([_compact_bits(c >> np.uint64(2)), _compact_bits(c >> np.uint64(1)), _compact_bits(c)],
                    axis=1).astype(np.int64)
