"""Open-addressing hash map voxel key -> row index, for the numba mesh -> O-Voxel kernels.

Keys are non-negative int64 (linearised voxel coordinates); ``-1`` marks an empty slot. Capacity is a power of
two and is kept at most half full by ``hash_insert``'s caller via ``hash_grow``.
"""
from __future__ import annotations

import numpy as np
from numba import njit

_MUL = np.int64(-7046029254386353131)     # 0x9E3779B97F4A7C15, Fibonacci hashing


@njit(cache=True)
def _slot(key, mask, shift):
    return ((key * _MUL) >> shift) & mask


@njit(cache=True)
def _shift(cap):
    bits = 0
    c = cap
    while c > 1:
        c >>= 1
        bits += 1
    return 64 - bits


def hash_new(capacity: int):
    """Empty table with room for ``capacity`` keys at load <= 1/2: ``(keys int64 [C], vals int64 [C])``."""
    cap = 16
    while cap < 2 * capacity:
        cap *= 2
    return np.full(cap, -1, np.int64), np.zeros(cap, np.int64)


@njit(cache=True)
def hash_find(keys, vals, key):
    """Row index stored for ``key``, or -1."""
    mask = keys.shape[0] - 1
    h = _slot(key, mask, _shift(keys.shape[0]))
    while True:
        k = keys[h]
        if k == key:
            return vals[h]
        if k == -1:
            return -1
        h = (h + 1) & mask


@njit(cache=True)
def hash_insert(keys, vals, key, val):
    """Inserts ``key -> val`` if absent; returns the stored value (the old one if present)."""
    mask = keys.shape[0] - 1
    h = _slot(key, mask, _shift(keys.shape[0]))
    while True:
        k = keys[h]
        if k == key:
            return vals[h]
        if k == -1:
            keys[h] = key
            vals[h] = val
            return val
        h = (h + 1) & mask


@njit(cache=True)
def hash_grow(keys, vals):
    """The same map in a table of twice the capacity."""
    cap = keys.shape[0] * 2
    nk = np.full(cap, -1, np.int64)
    nv = np.zeros(cap, np.int64)
    for i in range(keys.shape[0]):
        if keys[i] != -1:
            hash_insert(nk, nv, keys[i], vals[i])
    return nk, nv
