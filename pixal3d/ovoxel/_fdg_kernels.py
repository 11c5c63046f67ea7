"""Numba kernels of mesh -> flexible dual grid (TRELLIS2_SPEC §3.2), in the reference's arithmetic.

All coordinates are in the shifted frame ``v - aabb_min`` (float32, as the reference passes them). The scan-line
rasteriser works in float64 on float32 inputs like the C++ (``Eigen::Vector3d``); QEF accumulation and solves are
float32 with per-operation rounding (``_fdg_f32``). QEFs are symmetric, so each is stored as its 10 upper-triangle
entries in the order ``_QI``; voxels keep creation order (the reference's output order).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from ._fdg_f32 import _r, cpqr_solve, dot2, dot3, dot4_sse
from ._fdg_hash import hash_find, hash_grow, hash_insert

# (row, col) of the 10 stored entries of a symmetric 4x4 QEF
_QI = np.array([[0, 0], [0, 1], [0, 2], [0, 3], [1, 1], [1, 2], [1, 3], [2, 2], [2, 3], [3, 3]], np.int64)
# entry (i, j) of the 4x4 -> slot in the 10-vector
_QSLOT = np.array([[0, 1, 2, 3], [1, 4, 5, 6], [2, 5, 7, 8], [3, 6, 8, 9]], np.int64)


@njit(cache=True)
def voxel_key(x, y, z, gsize):
    return (np.int64(x) * gsize[1] + y) * gsize[2] + z


@njit(cache=True)
def triangle_plane(tri, out):
    """``out[:4] = [n; -n·v0]`` with ``n = normalize((v1-v0) x (v2-v1))`` (float32, Eigen order); zero n if
    the triangle is degenerate."""
    e0x = _r(tri[1, 0] - tri[0, 0]); e0y = _r(tri[1, 1] - tri[0, 1]); e0z = _r(tri[1, 2] - tri[0, 2])
    e1x = _r(tri[2, 0] - tri[1, 0]); e1y = _r(tri[2, 1] - tri[1, 1]); e1z = _r(tri[2, 2] - tri[1, 2])
    nx = _r(_r(e0y * e1z) - _r(e0z * e1y))
    ny = _r(_r(e0z * e1x) - _r(e0x * e1z))
    nz = _r(_r(e0x * e1y) - _r(e0y * e1x))
    sq = dot3(nx, ny, nz, nx, ny, nz)
    if sq > 0.0:
        s = _r(np.sqrt(sq))
        nx = _r(nx / s); ny = _r(ny / s); nz = _r(nz / s)
    out[0] = nx
    out[1] = ny
    out[2] = nz
    out[3] = -dot3(nx, ny, nz, tri[0, 0], tri[0, 1], tri[0, 2])


@njit(cache=True)
def _lerp(a, b, t, va, vb):
    if a == b:
        return va
    alpha = (t - a) / (b - a)
    return (1.0 - alpha) * va + alpha * vb


@njit(cache=True)
def _clampi(v, lo, hi):
    return lo if v < lo else (hi if v > hi else v)


@njit(cache=True)
def _grow_rows(a, cap):
    out = np.zeros((cap,) + a.shape[1:], a.dtype)
    out[:a.shape[0]] = a
    return out


@njit(cache=True)
def intersect_qef(tris, vs, gmin, gmax, hkeys, hvals):
    """Active voxels from the grid-line crossings of every triangle (§3.2 step 1).

    Args: tris float32 [F, 3, 3]; vs float32 [3]; gmin, gmax int64 [3]; an empty hash table.
    Returns ``(n, voxels int32 [C, 3], means float32 [C, 3], cnt float32 [C], flags bool [C, 3],
    qef float32 [C, 10], hkeys, hvals)``; rows ``[:n]`` are valid.
    """
    cap = 1024
    voxels = np.zeros((cap, 3), np.int32)
    means = np.zeros((cap, 3), np.float32)
    cnt = np.zeros(cap, np.float32)
    flags = np.zeros((cap, 3), np.bool_)
    qef = np.zeros((cap, 10), np.float32)
    n = 0
    gsize = gmax - gmin
    plane = np.zeros(4, np.float32)
    qv = np.zeros(10, np.float32)
    t = np.zeros((3, 3), np.float64)
    coord = np.zeros(3, np.int64)
    pt = np.zeros(3, np.float64)
    for f in range(tris.shape[0]):
        tri = tris[f]
        triangle_plane(tri, plane)
        for s in range(10):
            qv[s] = _r(plane[_QI[s, 0]] * plane[_QI[s, 1]])
        for ax2 in range(3):
            ax0 = (ax2 + 1) % 3
            ax1 = (ax2 + 2) % 3
            # canonical (ax0, ax1, ax2) triple per vertex, stably sorted by the ax1 value (libstdc++'s
            # insertion sort for 3 elements is stable)
            for i in range(3):
                t[i, 0] = tri[i, ax0]
                t[i, 1] = tri[i, ax1]
                t[i, 2] = tri[i, ax2]
            for i in range(1, 3):
                j = i
                while j > 0 and t[j, 1] < t[j - 1, 1]:
                    for c in range(3):
                        tmp = t[j, c]
                        t[j, c] = t[j - 1, c]
                        t[j - 1, c] = tmp
                    j -= 1
            v1 = np.float64(vs[ax1])
            v0s = np.float64(vs[ax0])
            v2s = np.float64(vs[ax2])
            start = _clampi(int(t[0, 1] / v1), gmin[ax1], gmax[ax1] - 1)
            mid = _clampi(int(t[1, 1] / v1), gmin[ax1], gmax[ax1] - 1)
            end = _clampi(int(t[2, 1] / v1), gmin[ax1], gmax[ax1] - 1)
            for half in range(2):
                if half == 0:
                    rs, re, ia, ib, ic = start, mid, 0, 1, 2
                else:
                    rs, re, ia, ib, ic = mid, end, 2, 1, 0
                for y_idx in range(rs, re):
                    # int * float in C++ is a float32 product, then widened
                    y = np.float64(_r(np.float32(y_idx + 1) * vs[ax1]))
                    t3x = _lerp(t[ia, 1], t[ib, 1], y, t[ia, 0], t[ib, 0])
                    t3z = _lerp(t[ia, 1], t[ib, 1], y, t[ia, 2], t[ib, 2])
                    t4x = _lerp(t[ia, 1], t[ic, 1], y, t[ia, 0], t[ic, 0])
                    t4z = _lerp(t[ia, 1], t[ic, 1], y, t[ia, 2], t[ic, 2])
                    if t3x > t4x:
                        t3x, t4x = t4x, t3x
                        t3z, t4z = t4z, t3z
                    line_start = _clampi(int(t3x / v0s), gmin[ax0], gmax[ax0] - 1)
                    line_end = _clampi(int(t4x / v0s), gmin[ax0], gmax[ax0] - 1)
                    for x_idx in range(line_start, line_end):
                        x = np.float64(_r(np.float32(x_idx + 1) * vs[ax0]))
                        z = _lerp(t3x, t4x, x, t3z, t4z)
                        z_idx = int(z / v2s)
                        if z_idx < gmin[ax2] or z_idx >= gmax[ax2]:
                            continue
                        pt[ax0] = x
                        pt[ax1] = y
                        pt[ax2] = z
                        px = _r(pt[0]); py = _r(pt[1]); pz = _r(pt[2])
                        for dx in range(2):
                            for dy in range(2):
                                coord[ax0] = x_idx + dx
                                coord[ax1] = y_idx + dy
                                coord[ax2] = z_idx
                                key = voxel_key(coord[0] - gmin[0], coord[1] - gmin[1], coord[2] - gmin[2], gsize)
                                if 2 * (n + 1) > hkeys.shape[0]:
                                    hkeys, hvals = hash_grow(hkeys, hvals)
                                row = hash_insert(hkeys, hvals, key, n)
                                if row == n:
                                    if n == cap:
                                        cap *= 2
                                        voxels = _grow_rows(voxels, cap)
                                        means = _grow_rows(means, cap)
                                        cnt = _grow_rows(cnt, cap)
                                        flags = _grow_rows(flags, cap)
                                        qef = _grow_rows(qef, cap)
                                    voxels[n, 0] = coord[0]
                                    voxels[n, 1] = coord[1]
                                    voxels[n, 2] = coord[2]
                                    means[n, 0] = px
                                    means[n, 1] = py
                                    means[n, 2] = pz
                                    cnt[n] = 1.0
                                    for s in range(10):
                                        qef[n, s] = qv[s]
                                    n += 1
                                else:
                                    means[row, 0] = _r(means[row, 0] + px)
                                    means[row, 1] = _r(means[row, 1] + py)
                                    means[row, 2] = _r(means[row, 2] + pz)
                                    cnt[row] = _r(cnt[row] + 1.0)
                                    for s in range(10):
                                        qef[row, s] = _r(qef[row, s] + qv[s])
                                if dx == 0 and dy == 0:
                                    flags[row, ax2] = True
    return n, voxels, means, cnt, flags, qef, hkeys, hvals


@njit(cache=True)
def face_qef(tris, vs, gmin, gmax, hkeys, hvals, qef):
    """Adds each triangle's plane quadric (weight 1) to every existing voxel its bbox covers and that passes the
    triangle-box overlap test: plane vs. the box's extreme corners, then the XY / YZ / ZX edge functions
    (§3.2 step 2). ``qef`` float32 [C, 10] is updated in place."""
    gsize = gmax - gmin
    plane = np.zeros(4, np.float32)
    qv = np.zeros(10, np.float32)
    vx = vs[0]; vy = vs[1]; vz = vs[2]
    bbmin = np.empty(3, np.int64)
    bbmax = np.empty(3, np.int64)
    for f in range(tris.shape[0]):
        tri = tris[f]
        triangle_plane(tri, plane)
        nx = plane[0]; ny = plane[1]; nz = plane[2]
        for s in range(10):
            qv[s] = _r(plane[_QI[s, 0]] * plane[_QI[s, 1]])
        ax_ = tri[0, 0]; ay_ = tri[0, 1]; az_ = tri[0, 2]
        bx = tri[1, 0]; by = tri[1, 1]; bz = tri[1, 2]
        cx = tri[2, 0]; cy = tri[2, 1]; cz = tri[2, 2]
        e0x = _r(bx - ax_); e0y = _r(by - ay_); e0z = _r(bz - az_)
        e1x = _r(cx - bx); e1y = _r(cy - by); e1z = _r(cz - bz)
        e2x = _r(ax_ - cx); e2y = _r(ay_ - cy); e2z = _r(az_ - cz)

        for a in range(3):
            lo = min(min(tri[0, a], tri[1, a]), tri[2, a])
            hi = max(max(tri[0, a], tri[1, a]), tri[2, a])
            bbmin[a] = max(int(_r(lo / vs[a])), gmin[a])
            bbmax[a] = min(int(_r(_r(hi / vs[a]) + 1.0)), gmax[a])

        # plane-through-box test offsets (critical corner c and its opposite)
        ccx = vx if nx > 0.0 else _r(0.0)
        ccy = vy if ny > 0.0 else _r(0.0)
        ccz = vz if nz > 0.0 else _r(0.0)
        d1 = dot3(nx, ny, nz, _r(ccx - ax_), _r(ccy - ay_), _r(ccz - az_))
        d2 = dot3(nx, ny, nz, _r(_r(vx - ccx) - ax_), _r(_r(vy - ccy) - ay_), _r(_r(vz - ccz) - az_))

        # 2D edge functions; mul flips them with the sign of the projected normal
        mxy = _r(-1.0) if nz < 0.0 else _r(1.0)
        myz = _r(-1.0) if nx < 0.0 else _r(1.0)
        mzx = _r(-1.0) if ny < 0.0 else _r(1.0)
        # XY: n = (-m e.y, m e.x), point (x, y)
        xy0a = _r(-mxy * e0y); xy0b = _r(mxy * e0x)
        xy1a = _r(-mxy * e1y); xy1b = _r(mxy * e1x)
        xy2a = _r(-mxy * e2y); xy2b = _r(mxy * e2x)
        dxy0 = _r(-dot2(xy0a, xy0b, ax_, ay_) + dot2(max(xy0a, 0.0), max(xy0b, 0.0), vx, vy))
        dxy1 = _r(-dot2(xy1a, xy1b, bx, by) + dot2(max(xy1a, 0.0), max(xy1b, 0.0), vx, vy))
        dxy2 = _r(-dot2(xy2a, xy2b, cx, cy) + dot2(max(xy2a, 0.0), max(xy2b, 0.0), vx, vy))
        # YZ: n = (-m e.z, m e.y), point (y, z)
        yz0a = _r(-myz * e0z); yz0b = _r(myz * e0y)
        yz1a = _r(-myz * e1z); yz1b = _r(myz * e1y)
        yz2a = _r(-myz * e2z); yz2b = _r(myz * e2y)
        dyz0 = _r(-dot2(yz0a, yz0b, ay_, az_) + dot2(max(yz0a, 0.0), max(yz0b, 0.0), vy, vz))
        dyz1 = _r(-dot2(yz1a, yz1b, by, bz) + dot2(max(yz1a, 0.0), max(yz1b, 0.0), vy, vz))
        dyz2 = _r(-dot2(yz2a, yz2b, cy, cz) + dot2(max(yz2a, 0.0), max(yz2b, 0.0), vy, vz))
        # ZX: n = (-m e.x, m e.z), point (z, x)
        zx0a = _r(-mzx * e0x); zx0b = _r(mzx * e0z)
        zx1a = _r(-mzx * e1x); zx1b = _r(mzx * e1z)
        zx2a = _r(-mzx * e2x); zx2b = _r(mzx * e2z)
        dzx0 = _r(-dot2(zx0a, zx0b, az_, ax_) + dot2(max(zx0a, 0.0), max(zx0b, 0.0), vz, vx))
        dzx1 = _r(-dot2(zx1a, zx1b, bz, bx) + dot2(max(zx1a, 0.0), max(zx1b, 0.0), vz, vx))
        dzx2 = _r(-dot2(zx2a, zx2b, cz, cx) + dot2(max(zx2a, 0.0), max(zx2b, 0.0), vz, vx))

        for z in range(bbmin[2], bbmax[2]):
            pz = _r(np.float32(z) * vz)
            for y in range(bbmin[1], bbmax[1]):
                py = _r(np.float32(y) * vy)
                for x in range(bbmin[0], bbmax[0]):
                    px = _r(np.float32(x) * vx)
                    ndp = dot3(nx, ny, nz, px, py, pz)
                    if _r(_r(ndp + d1) * _r(ndp + d2)) > 0.0:
                        continue
                    if _r(dot2(xy0a, xy0b, px, py) + dxy0) < 0.0:
                        continue
                    if _r(dot2(xy1a, xy1b, px, py) + dxy1) < 0.0:
                        continue
                    if _r(dot2(xy2a, xy2b, px, py) + dxy2) < 0.0:
                        continue
                    if _r(dot2(yz0a, yz0b, py, pz) + dyz0) < 0.0:
                        continue
                    if _r(dot2(yz1a, yz1b, py, pz) + dyz1) < 0.0:
                        continue
                    if _r(dot2(yz2a, yz2b, py, pz) + dyz2) < 0.0:
                        continue
                    if _r(dot2(zx0a, zx0b, pz, px) + dzx0) < 0.0:
                        continue
                    if _r(dot2(zx1a, zx1b, pz, px) + dzx1) < 0.0:
                        continue
                    if _r(dot2(zx2a, zx2b, pz, px) + dzx2) < 0.0:
                        continue
                    row = hash_find(hkeys, hvals, voxel_key(x - gmin[0], y - gmin[1], z - gmin[2], gsize))
                    if row >= 0:
                        for s in range(10):
                            qef[row, s] = _r(qef[row, s] + qv[s])


@njit(cache=True)
def boundary_qef(segs, weight, vs, gmin, gmax, hkeys, hvals, qef):
    """Adds ``weight ·`` the line quadric of each boundary segment to every existing voxel a 3D DDA visits from
    ``floor(v0 / vs)`` along it (§3.2 step 3). ``segs`` float32 [E, 2, 3]; ``qef`` float32 [C, 10] in place."""
    gsize = gmax - gmin
    A = np.zeros((3, 3), np.float32)
    qv = np.zeros(10, np.float32)
    d = np.zeros(3, np.float64)
    tmax = np.zeros(3, np.float64)
    tdelta = np.zeros(3, np.float64)
    step = np.zeros(3, np.int64)
    cur = np.zeros(3, np.int64)
    wq = _r(weight)
    for e in range(segs.shape[0]):
        p0 = segs[e, 0]
        p1 = segs[e, 1]
        for a in range(3):
            d[a] = np.float64(_r(p1[a] - p0[a]))
        length = np.sqrt((d[0] * d[0] + d[1] * d[1]) + d[2] * d[2])
        if length < 1e-6:
            continue
        for a in range(3):
            d[a] = d[a] / length
        for i in range(3):
            for j in range(3):
                A[i, j] = _r((1.0 if i == j else 0.0) - np.float32(d[i] * d[j]))
        b0 = -dot3(A[0, 0], A[0, 1], A[0, 2], p0[0], p0[1], p0[2])
        b1 = -dot3(A[1, 0], A[1, 1], A[1, 2], p0[0], p0[1], p0[2])
        b2 = -dot3(A[2, 0], A[2, 1], A[2, 2], p0[0], p0[1], p0[2])
        r0 = dot3(p0[0], p0[1], p0[2], A[0, 0], A[1, 0], A[2, 0])
        r1 = dot3(p0[0], p0[1], p0[2], A[0, 1], A[1, 1], A[2, 1])
        r2 = dot3(p0[0], p0[1], p0[2], A[0, 2], A[1, 2], A[2, 2])
        c = dot3(r0, r1, r2, p0[0], p0[1], p0[2])
        qv[0] = A[0, 0]; qv[1] = A[0, 1]; qv[2] = A[0, 2]; qv[3] = b0
        qv[4] = A[1, 1]; qv[5] = A[1, 2]; qv[6] = b1
        qv[7] = A[2, 2]; qv[8] = b2
        qv[9] = c
        for s in range(10):
            qv[s] = _r(wq * qv[s])

        for a in range(3):
            cur[a] = int(np.floor(_r(p0[a] / vs[a])))
            step[a] = 1 if d[a] > 0.0 else -1
            if d[a] == 0.0:
                tmax[a] = np.inf
                tdelta[a] = np.inf
            else:
                border = _r(vs[a] * np.float32(cur[a] + (1 if step[a] > 0 else 0)))
                tmax[a] = np.float64(_r(border - p0[a])) / d[a]
                tdelta[a] = np.float64(vs[a]) / abs(d[a])
        while True:
            if gmin[0] <= cur[0] < gmax[0] and gmin[1] <= cur[1] < gmax[1] and gmin[2] <= cur[2] < gmax[2]:
                row = hash_find(hkeys, hvals, voxel_key(cur[0] - gmin[0], cur[1] - gmin[1], cur[2] - gmin[2], gsize))
                if row >= 0:
                    for s in range(10):
                        qef[row, s] = _r(qef[row, s] + qv[s])
            if tmax[0] < tmax[1]:
                a = 0 if tmax[0] < tmax[2] else 2
            else:
                a = 1 if tmax[1] < tmax[2] else 2
            if tmax[a] > length:
                break
            cur[a] += step[a]
            tmax[a] += tdelta[a]


@njit(cache=True)
def _qef_error(Q, p0, p1, p2):
    """``p^T Q p`` for homogeneous ``p = (p0, p1, p2, 1)`` in Eigen's SSE order (row vector, then dot)."""
    r0 = dot4_sse(p0, p1, p2, 1.0, Q[0, 0], Q[1, 0], Q[2, 0], Q[3, 0])
    r1 = dot4_sse(p0, p1, p2, 1.0, Q[0, 1], Q[1, 1], Q[2, 1], Q[3, 1])
    r2 = dot4_sse(p0, p1, p2, 1.0, Q[0, 2], Q[1, 2], Q[2, 2], Q[3, 2])
    r3 = dot4_sse(p0, p1, p2, 1.0, Q[0, 3], Q[1, 3], Q[2, 3], Q[3, 3])
    return dot4_sse(r0, r1, r2, r3, p0, p1, p2, 1.0)


@njit(cache=True)
def solve_dual_vertices(voxels, means, cnt, qef, vs, reg_weight, n):
    """Per-voxel QEF minimiser with the reference's in-box fallback (§3.2 steps 4-5).

    Returns float32 [n, 3] dual vertices in the shifted world frame.
    """
    out = np.zeros((n, 3), np.float32)
    Q = np.zeros((4, 4), np.float32)
    qr = np.zeros((3, 3), np.float32)
    rhs = np.zeros(3, np.float32)
    sol = np.zeros(3, np.float32)
    scratch = np.zeros((3, 3), np.float32)
    ints = np.zeros((2, 3), np.int64)
    lo = np.zeros(3, np.float32)
    hi = np.zeros(3, np.float32)
    v = np.zeros(3, np.float32)
    cand = np.zeros(4, np.float32)
    rw = _r(reg_weight)
    for i in range(n):
        for s in range(10):
            Q[_QI[s, 0], _QI[s, 1]] = qef[i, s]
            Q[_QI[s, 1], _QI[s, 0]] = qef[i, s]
        for a in range(3):
            lo[a] = _r(np.float32(voxels[i, a]) * vs[a])
            hi[a] = _r(np.float32(voxels[i, a] + 1) * vs[a])
        if rw > 0.0:
            px = _r(means[i, 0] / cnt[i]); py = _r(means[i, 1] / cnt[i]); pz = _r(means[i, 2] / cnt[i])
            scale = _r(rw * cnt[i])
            for a in range(3):
                Q[a, a] = _r(Q[a, a] + scale)
            pp = dot3(px, py, pz, px, py, pz)
            Q[0, 3] = _r(Q[0, 3] + _r(scale * -px)); Q[3, 0] = Q[0, 3]
            Q[1, 3] = _r(Q[1, 3] + _r(scale * -py)); Q[3, 1] = Q[1, 3]
            Q[2, 3] = _r(Q[2, 3] + _r(scale * -pz)); Q[3, 2] = Q[2, 3]
            Q[3, 3] = _r(Q[3, 3] + _r(scale * pp))

        for r in range(3):
            for c in range(3):
                qr[r, c] = Q[r, c]
            rhs[r] = -Q[r, 3]
        cpqr_solve(qr, 3, rhs, sol, scratch, ints)
        v[0] = sol[0]; v[1] = sol[1]; v[2] = sol[2]
        inside = (v[0] >= lo[0] and v[0] <= hi[0] and v[1] >= lo[1] and v[1] <= hi[1]
                  and v[2] >= lo[2] and v[2] <= hi[2])
        if not inside:
            best = np.float32(np.inf)
            # one coordinate fixed to a face of the box, 2x2 solve for the other two
            for fa in range(3):
                a1 = (fa + 1) % 3
                a2 = (fa + 2) % 3
                for side in range(2):
                    fixed = lo[fa] if side == 0 else hi[fa]
                    qr[0, 0] = Q[a1, a1]; qr[0, 1] = Q[a1, a2]
                    qr[1, 0] = Q[a2, a1]; qr[1, 1] = Q[a2, a2]
                    rhs[0] = -_r(_r(Q[a1, fa] * fixed) + Q[a1, 3])
                    rhs[1] = -_r(_r(Q[a2, fa] * fixed) + Q[a2, 3])
                    cpqr_solve(qr, 2, rhs, sol, scratch, ints)
                    x1 = sol[0]
                    x2 = sol[1]
                    if x1 >= lo[a1] and x1 <= hi[a1] and x2 >= lo[a2] and x2 <= hi[a2]:
                        cand[fa] = fixed
                        cand[a1] = x1
                        cand[a2] = x2
                        err = _qef_error(Q, cand[0], cand[1], cand[2])
                        if err < best:
                            best = err
                            v[0] = cand[0]; v[1] = cand[1]; v[2] = cand[2]
            # two coordinates fixed to an edge of the box, 1D minimiser along the free axis
            for fa in range(3):
                a1 = (fa + 1) % 3
                a2 = (fa + 2) % 3
                qa = Q[fa, fa]
                for side in range(4):
                    c1 = lo[a1] if side < 2 else hi[a1]
                    c2 = lo[a2] if side % 2 == 0 else hi[a2]
                    x = _r(-dot3(Q[fa, a1], Q[fa, a2], Q[fa, 3], c1, c2, 1.0) / qa)
                    if x >= lo[fa] and x <= hi[fa]:
                        cand[fa] = x
                        cand[a1] = c1
                        cand[a2] = c2
                        err = _qef_error(Q, cand[0], cand[1], cand[2])
                        if err < best:
                            best = err
                            v[0] = cand[0]; v[1] = cand[1]; v[2] = cand[2]
            # corners; the reference enumerates max before min on each axis
            for cx in range(2):
                for cy in range(2):
                    for cz in range(2):
                        c0 = lo[0] if cx else hi[0]
                        c1 = lo[1] if cy else hi[1]
                        c2 = lo[2] if cz else hi[2]
                        err = _qef_error(Q, c0, c1, c2)
                        if err < best:
                            best = err
                            v[0] = c0; v[1] = c1; v[2] = c2
        out[i, 0] = v[0]
        out[i, 1] = v[1]
        out[i, 2] = v[2]
    return out
