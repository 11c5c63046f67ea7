"""Sparse voxel octree (SVO) coding and the attribute delta filters of the .vxz format (TRELLIS2_SPEC §3.6).

An SVO of depth D codes a set of Morton codes (3·D bits, 3 bits per level, coarsest first) as one byte per internal
node in depth-first pre-order: the byte is the occupancy mask of the node's 8 children, bit
``g = (x_bit << 2) | (y_bit << 1) | z_bit`` of that level's 3-bit group. Nodes of the deepest level carry the leaf
masks. The reference does this in ``src/io/svo.cpp``; the filters are ``src/io/filter_parent.cpp`` and
``src/io/filter_neighbor.cpp``. The encoders here are vectorised per tree level; the pre-order is recovered by
sorting nodes by (index of their first leaf, level).
"""
from __future__ import annotations

import numpy as np

try:  # numba only speeds the two sequential decoding loops up; without it they run as plain Python, same results
    from numba import njit as _njit
    _jit = _njit(cache=True)
except ImportError:  # e.g. a GPU training box without llvmlite: reading .vxz must still work
    def _jit(fn):
        return fn


class VxzFormatError(ValueError):
    """A .vxz file (or one of its streams) is malformed, truncated or inconsistent."""


def _levels(codes: np.ndarray, depth: int):
    """Per level L = 0..depth-1: (parent prefixes, first-leaf index of each parent, child groups per parent)."""
    out = []
    for level in range(depth):
        child = codes >> (3 * (depth - 1 - level))
        uchild, cfirst = np.unique(child, return_index=True)
        parent = uchild >> 3
        starts = np.flatnonzero(np.r_[True, parent[1:] != parent[:-1]])
        out.append((parent[starts], cfirst[starts], uchild, cfirst, starts))
    return out


def encode_svo(codes: np.ndarray, depth: int) -> np.ndarray:
    """Sorted, unique Morton codes (int ``[N]``, each < ``8**depth``) → SVO bytes (uint8 ``[S]``).

    An empty code list gives the single byte ``[0]`` (an empty root), as the reference. Raises ``ValueError`` for
    unsorted or duplicate codes or codes out of range.
    """
    codes = np.asarray(codes, dtype=np.int64)
    if depth < 1:
        raise ValueError(f"SVO depth must be >= 1, got {depth}")
    if len(codes) == 0:
        return np.zeros(1, np.uint8)
    if np.any(np.diff(codes) <= 0):
        raise ValueError("SVO codes must be strictly increasing (sorted, no duplicate voxels)")
    if codes[0] < 0 or codes[-1] >= (1 << (3 * depth)):
        raise ValueError(f"SVO codes must lie in [0, 8**{depth})")
    first, level, byte = [], [], []
    for lv, (_, pfirst, uchild, _, starts) in enumerate(_levels(codes, depth)):
        bits = (np.uint8(1) << (uchild & 7).astype(np.uint8)).astype(np.uint8)
        byte.append(np.bitwise_or.reduceat(bits, starts))
        first.append(pfirst)
        level.append(np.full(len(pfirst), lv))
    first, level, byte = np.concatenate(first), np.concatenate(level), np.concatenate(byte)
    return byte[np.lexsort((level, first))]


@_jit
def _decode_svo(svo, depth):
    codes = np.empty(8 * len(svo), np.int64)
    n = 0
    stack_level = np.empty(8 * depth + 8, np.int64)
    stack_prefix = np.empty(8 * depth + 8, np.int64)
    top = 0
    stack_level[0] = 0
    stack_prefix[0] = 0
    top = 1
    ptr = 0
    while top > 0:
        top -= 1
        level = stack_level[top]
        prefix = stack_prefix[top]
        if ptr >= len(svo):
            return codes[:0], -1
        node = svo[ptr]
        ptr += 1
        if level == depth - 1:
            for i in range(8):
                if node & (1 << i):
                    codes[n] = (prefix << 3) | i
                    n += 1
        else:
            for i in range(7, -1, -1):  # pushed in reverse so children pop in ascending order
                if node & (1 << i):
                    stack_level[top] = level + 1
                    stack_prefix[top] = (prefix << 3) | i
                    top += 1
    if ptr != len(svo):
        return codes[:0], -2
    return codes[:n].copy(), 0


def decode_svo(svo: np.ndarray, depth: int) -> np.ndarray:
    """SVO bytes → sorted Morton codes (int64 ``[N]``). Raises :class:`VxzFormatError` if truncated or too long."""
    svo = np.ascontiguousarray(svo, dtype=np.uint8)
    if len(svo) == 0:
        raise VxzFormatError("empty SVO stream (a chunk needs at least its root byte)")
    codes, status = _decode_svo(svo, depth)
    if status == -1:
        raise VxzFormatError(f"SVO stream of {len(svo)} bytes is truncated (the tree needs more nodes)")
    if status == -2:
        raise VxzFormatError(f"SVO stream of {len(svo)} bytes has trailing bytes after the tree")
    return codes


def _parent_slots(codes: np.ndarray, depth: int):
    """Delta-slot layout of the 'parent' filter.

    Returns per level the tuple ``(slot, child_first, prev_first, group_start, child_first_all)`` where for every
    non-first child ``slot`` is its row in the delta array, and ``child_first`` / ``prev_first`` are the first-leaf
    indices of it and of its previous sibling. Row 0 holds the root value (the first leaf's value); then every
    internal node, in pre-order, owns (children − 1) consecutive rows with ``value(child_i) − value(child_{i−1})``.
    """
    keys_first, keys_level, keys_rank, per_level = [], [], [], []
    for lv, (_, pfirst, _, cfirst, starts) in enumerate(_levels(codes, depth)):
        n_child = len(cfirst)
        group = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, n_child]))
        rank = np.arange(n_child) - starts[group]
        nonfirst = rank > 0
        keys_first.append(pfirst[group][nonfirst])
        keys_level.append(np.full(int(nonfirst.sum()), lv))
        keys_rank.append(rank[nonfirst])
        per_level.append((nonfirst, cfirst, group, starts))
    kf, kl, kr = np.concatenate(keys_first), np.concatenate(keys_level), np.concatenate(keys_rank)
    order = np.lexsort((kr, kl, kf))
    slot_of_entry = np.empty(len(order), np.int64)
    slot_of_entry[order] = np.arange(1, len(order) + 1)
    out, off = [], 0
    for nonfirst, cfirst, group, starts in per_level:
        m = int(nonfirst.sum())
        out.append((slot_of_entry[off:off + m], nonfirst, cfirst, group, starts))
        off += m
    return out


def encode_parent_filter(codes: np.ndarray, depth: int, attr: np.ndarray) -> np.ndarray:
    """'parent' filter: attributes ``uint8 [N, C]`` in Morton order → deltas ``uint8 [N, C]`` (u8 wrap-around).

    A node's value is its first child's (hence its first leaf's) value; each further child stores the difference to
    its previous sibling. ``codes`` are the chunk's sorted Morton codes.
    """
    attr = np.asarray(attr, dtype=np.uint8)
    codes = np.asarray(codes, dtype=np.int64)
    delta = np.zeros_like(attr)
    if len(codes) == 0:
        return delta
    delta[0] = attr[0]
    for slot, nonfirst, cfirst, _, _ in _parent_slots(codes, depth):
        prev_first = np.r_[-1, cfirst[:-1]][nonfirst]
        delta[slot] = attr[cfirst[nonfirst]] - attr[prev_first]
    return delta


def decode_parent_filter(codes: np.ndarray, depth: int, delta: np.ndarray) -> np.ndarray:
    """Inverse of :func:`encode_parent_filter`: deltas ``uint8 [N, C]`` → attributes in Morton order."""
    delta = np.asarray(delta, dtype=np.uint8)
    codes = np.asarray(codes, dtype=np.int64)
    if len(codes) == 0:
        return delta.copy()
    value = delta[0:1].astype(np.int64)  # values of the level-0 node (the root)
    for slot, nonfirst, cfirst, group, starts in _parent_slots(codes, depth):
        inc = np.zeros((len(cfirst), delta.shape[1]), np.int64)
        inc[nonfirst] = delta[slot]
        # within a parent: value(child_i) = value(parent) + Σ_{k ≤ i} increments
        csum = np.cumsum(inc, axis=0)
        base = csum[starts][group]
        value = (value[group] + csum - base) % 256
    return value.astype(np.uint8)


def _neighbor_index(coords: np.ndarray, res: int) -> np.ndarray:
    """Index of the reference neighbour of each voxel (−1 if none).

    Among the active voxels at offsets −x, −y, −z, −xy, −xz, −yz, −xyz (dense ``res³`` chunk grid), the last one in
    that list wins, as in ``filter_neighbor.cpp``.
    """
    c = np.asarray(coords, dtype=np.int64)
    lin = (c[:, 2] * res + c[:, 1]) * res + c[:, 0]
    order = np.argsort(lin)
    slin = lin[order]
    nb = np.full(len(c), -1, np.int64)
    for d in ((1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (1, 0, 1), (0, 1, 1), (1, 1, 1)):
        q = c - np.array(d)
        ok = np.all(q >= 0, axis=1)
        qlin = (q[:, 2] * res + q[:, 1]) * res + q[:, 0]
        pos = np.clip(np.searchsorted(slin, qlin), 0, len(slin) - 1)
        hit = ok & (slin[pos] == qlin)
        nb[hit] = order[pos[hit]]
    return nb, order


def encode_neighbor_filter(coords: np.ndarray, res: int, attr: np.ndarray) -> np.ndarray:
    """'neighbor' filter: ``uint8 [N, C]`` → deltas to the reference neighbour (:func:`_neighbor_index`)."""
    attr = np.asarray(attr, dtype=np.uint8)
    if len(attr) == 0:
        return attr.copy()
    nb, _ = _neighbor_index(coords, res)
    delta = attr.copy()
    has = nb >= 0
    delta[has] = attr[has] - attr[nb[has]]
    return delta


@_jit
def _undo_neighbor(delta, nb, order):
    out = delta.copy()
    for i in order:  # raster order: every neighbour precedes its voxel
        j = nb[i]
        if j >= 0:
            for c in range(out.shape[1]):
                out[i, c] = np.uint8((np.int64(out[i, c]) + np.int64(out[j, c])) & 255)
    return out


def decode_neighbor_filter(coords: np.ndarray, res: int, delta: np.ndarray) -> np.ndarray:
    """Inverse of :func:`encode_neighbor_filter`."""
    delta = np.ascontiguousarray(delta, dtype=np.uint8)
    if len(delta) == 0:
        return delta.copy()
    nb, order = _neighbor_index(coords, res)
    return _undo_neighbor(delta, nb, order)
