"""Float32 arithmetic that reproduces the reference's Eigen code operation by operation (TRELLIS2_SPEC §3.2).

The reference computes the QEFs and their solves in float32 with Eigen. Matching its dual vertices to 1e-4 and
its in-box decisions exactly needs the same rounding: every helper here rounds after **each** operation
(``_r``), in Eigen's summation order. A single +, -, *, /, sqrt of float32 values evaluated in float64 and then
rounded is the correctly rounded float32 result, so mixing numba's float64 promotion with ``_r`` is safe.

``cpqr_solve`` is Eigen 3.4's ``ColPivHouseholderQR::compute`` + ``solve`` for a 2x2 or 3x3 matrix (column
pivoting on the largest remaining norm, Householder vectors ``[1; essential]``, LAPACK-style norm downdates,
pivot threshold, column back-substitution).
"""
from __future__ import annotations

import numpy as np
from numba import njit

_EPS32 = np.float32(np.finfo(np.float32).eps)
_TINY32 = np.float32(np.finfo(np.float32).tiny)


@njit(cache=True)
def _r(x):
    return np.float32(x)


@njit(cache=True)
def dot2(a0, a1, b0, b1):
    """Eigen's 2-element dot, rounded per operation: ``a0*b0 + a1*b1``."""
    return _r(_r(a0 * b0) + _r(a1 * b1))


@njit(cache=True)
def dot3(a0, a1, a2, b0, b1, b2):
    """Eigen's fixed-size 3-element float dot. Eigen unrolls small reductions as a binary tree (first half, then
    second half), so the sum is ``a0*b0 + (a1*b1 + a2*b2)``."""
    return _r(_r(a0 * b0) + _r(_r(a1 * b1) + _r(a2 * b2)))


@njit(cache=True)
def dot4_sse(a0, a1, a2, a3, b0, b1, b2, b3):
    """Eigen's SSE-vectorised 4-element dot (``predux``): ``(a0*b0 + a2*b2) + (a1*b1 + a3*b3)``."""
    return _r(_r(_r(a0 * b0) + _r(a2 * b2)) + _r(_r(a1 * b1) + _r(a3 * b3)))


@njit(cache=True)
def _col_sqnorm(qr, r0, n, j):
    # sequential: Eigen's loop for dynamic-size blocks (the column tails)
    s = _r(qr[r0, j] * qr[r0, j])
    for i in range(r0 + 1, n):
        s = _r(s + _r(qr[i, j] * qr[i, j]))
    return s


@njit(cache=True)
def cpqr_solve(qr, n, rhs, out, scratch, ints):
    """Solves ``A x = rhs`` like Eigen's ``A.colPivHouseholderQr().solve(rhs)`` in float32.

    Args:
        qr: float32 [3, 3] work array whose top-left n x n block holds A; overwritten.
        n: 2 or 3.
        rhs: float32 [3] (first n used); overwritten.
        out: float32 [3] receiving x (first n).
        scratch: float32 [3, 3] work array (householder coefficients, two norm tables).
        ints: int64 [2, 3] work array (column transpositions, permutation).
    Rank-deficient systems give Eigen's basic solution (zeros for the trailing pivots).
    """
    hcoef = scratch[0]
    norm_upd = scratch[1]
    norm_dir = scratch[2]
    piv = ints[0]
    pidx = ints[1]

    for k in range(n):
        # full columns are fixed-size: tree order (equal to sequential for n = 2)
        if n == 3:
            sq = dot3(qr[0, k], qr[1, k], qr[2, k], qr[0, k], qr[1, k], qr[2, k])
        else:
            sq = _col_sqnorm(qr, 0, n, k)
        norm_dir[k] = _r(np.sqrt(sq))
        norm_upd[k] = norm_dir[k]
    max_norm = norm_upd[0]
    for k in range(1, n):
        if norm_upd[k] > max_norm:
            max_norm = norm_upd[k]
    t = _r(max_norm * _EPS32)
    threshold_helper = _r(_r(t * t) / np.float32(n))
    downdate_threshold = _r(np.sqrt(_EPS32))
    nonzero = n

    for k in range(n):
        big = k
        big_val = norm_upd[k]
        for j in range(k + 1, n):
            if norm_upd[j] > big_val:          # strict: Eigen's maxCoeff keeps the first maximum
                big_val = norm_upd[j]
                big = j
        if nonzero == n and _r(big_val * big_val) < _r(threshold_helper * np.float32(n - k)):
            nonzero = k
        piv[k] = big
        if big != k:
            for i in range(n):
                tmp = qr[i, k]
                qr[i, k] = qr[i, big]
                qr[i, big] = tmp
            tmp = norm_upd[k]
            norm_upd[k] = norm_upd[big]
            norm_upd[big] = tmp
            tmp = norm_dir[k]
            norm_dir[k] = norm_dir[big]
            norm_dir[big] = tmp

        # makeHouseholderInPlace on qr[k:, k]
        c0 = qr[k, k]
        tail = _r(0.0) if k == n - 1 else _col_sqnorm(qr, k + 1, n, k)
        if tail <= _TINY32:
            tau = _r(0.0)
            beta = c0
            for i in range(k + 1, n):
                qr[i, k] = 0.0
        else:
            beta = _r(np.sqrt(_r(_r(c0 * c0) + tail)))
            if c0 >= 0.0:
                beta = -beta
            denom = _r(c0 - beta)
            for i in range(k + 1, n):
                qr[i, k] = _r(qr[i, k] / denom)
            tau = _r(_r(beta - c0) / beta)
        hcoef[k] = tau
        qr[k, k] = beta

        # applyHouseholderOnTheLeft to the columns right of k
        if tau != 0.0 and k < n - 1:
            for j in range(k + 1, n):
                w = _r(qr[k + 1, k] * qr[k + 1, j])
                for i in range(k + 2, n):
                    w = _r(w + _r(qr[i, k] * qr[i, j]))
                w = _r(w + qr[k, j])
                qr[k, j] = _r(qr[k, j] - _r(tau * w))
                for i in range(k + 1, n):
                    qr[i, j] = _r(qr[i, j] - _r(_r(tau * qr[i, k]) * w))

        # LAPACK xGEQPF-style norm downdate
        for j in range(k + 1, n):
            if norm_upd[j] != 0.0:
                tmp = _r(abs(qr[k, j]) / norm_upd[j])
                tmp = _r(_r(1.0 + tmp) * _r(1.0 - tmp))
                if tmp < 0.0:
                    tmp = _r(0.0)
                ratio = _r(norm_upd[j] / norm_dir[j])
                tmp2 = _r(tmp * _r(ratio * ratio))
                if tmp2 <= downdate_threshold:
                    norm_dir[j] = _r(np.sqrt(_col_sqnorm(qr, k + 1, n, j))) if k + 1 < n else _r(0.0)
                    norm_upd[j] = norm_dir[j]
                else:
                    norm_upd[j] = _r(norm_upd[j] * _r(np.sqrt(tmp)))

    if nonzero == 0:
        for i in range(n):
            out[i] = 0.0
        return

    # c = Q^T rhs, reflectors 0..nonzero-1 in order
    for k in range(nonzero):
        tau = hcoef[k]
        if k == n - 1:
            rhs[k] = _r(rhs[k] * _r(1.0 - tau))
        elif tau != 0.0:
            w = _r(qr[k + 1, k] * rhs[k + 1])
            for i in range(k + 2, n):
                w = _r(w + _r(qr[i, k] * rhs[i]))
            w = _r(w + rhs[k])
            rhs[k] = _r(rhs[k] - _r(tau * w))
            for i in range(k + 1, n):
                rhs[i] = _r(rhs[i] - _r(_r(tau * qr[i, k]) * w))

    # upper-triangular back substitution, column oriented (Eigen's triangular_solve_vector)
    for i in range(nonzero - 1, -1, -1):
        if rhs[i] != 0.0:
            rhs[i] = _r(rhs[i] / qr[i, i])
            for s in range(i):
                rhs[s] = _r(rhs[s] - _r(rhs[i] * qr[s, i]))

    # undo the column permutation: pidx = the transpositions applied to the identity
    for i in range(n):
        pidx[i] = i
    for k in range(n):
        j = piv[k]
        tmp_i = pidx[k]
        pidx[k] = pidx[j]
        pidx[j] = tmp_i
    for i in range(n):
        out[pidx[i]] = rhs[i] if i < nonzero else _r(0.0)
