"""2-D neighbourhood attention with NATTEN semantics, plus a pure-PyTorch fallback (used by NAF, PIXAL3D_SPEC §3).

NATTEN's dilated neighbourhood: along each axis of length ``L`` with kernel ``k`` (odd) and dilation ``d``, position
``i`` belongs to the group ``g = i mod d`` (the positions ``g, g+d, g+2d, ...``). Inside its group it attends to the
``k`` consecutive members centred on itself, the window being shifted (not truncated) at the group's ends. 2-D windows
are the product of the two 1-D windows. ``natten`` is used when installed and the tensors are on CUDA; otherwise
:func:`upsampled_neighborhood_attention_torch` computes the same thing in chunks without materialising upsampled keys.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

__all__ = ["natten_available", "window_indices", "nearest_exact_indices", "upsampled_neighborhood_attention",
           "upsampled_neighborhood_attention_torch", "upsampled_neighborhood_attention_at"]


def natten_available() -> bool:
    """True when some version of the ``natten`` package can be imported."""
    try:
        import natten  # noqa: F401
    except Exception:  # natten import can fail with CUDA/ABI errors, not only ImportError
        return False
    return True


def window_indices(length: int, kernel_size: int, dilation: int, device=None) -> torch.Tensor:
    """NATTEN neighbour indices along one axis: ``[length, kernel_size]`` int64 positions in ``[0, length)``.

    Raises:
        ValueError: even kernel, or ``length < kernel_size * dilation`` (some group would be shorter than the kernel;
            NATTEN rejects this too).
    """
    if kernel_size % 2 != 1 or kernel_size < 1:
        raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")
    if dilation < 1:
        raise ValueError(f"dilation must be >= 1, got {dilation}")
    if length < kernel_size * dilation:
        raise ValueError(f"axis length {length} is smaller than kernel_size * dilation = {kernel_size * dilation}")
    i = torch.arange(length, device=device)
    group, pos = i % dilation, i // dilation
    group_len = (length - group + dilation - 1) // dilation
    start = torch.minimum(torch.clamp(pos - kernel_size // 2, min=0), group_len - kernel_size)
    return group[:, None] + dilation * (start[:, None] + torch.arange(kernel_size, device=device)[None, :])


def nearest_exact_indices(out_len: int, in_len: int, device=None) -> torch.Tensor:
    """Source index of each output position of ``F.interpolate(mode='nearest-exact')``, ``[out_len]`` int64."""
    # Interpolating the index ramp itself reuses torch's exact rounding rule instead of re-deriving it.
    ramp = torch.arange(in_len, dtype=torch.float64, device=device).view(1, 1, in_len)
    return F.interpolate(ramp, size=out_len, mode="nearest-exact").view(out_len).round().long()


def _window_tables(out_hw, lr_hw, kernel_size, dilation, device):
    """Low-res key rows ``[H, ky]`` and columns ``[W, kx]`` of every query row / column: the NATTEN window in the
    upsampled map, mapped back through the nearest-exact upsampling."""
    rows = nearest_exact_indices(out_hw[0], lr_hw[0], device)[window_indices(out_hw[0], kernel_size[0], dilation[0],
                                                                             device)]
    cols = nearest_exact_indices(out_hw[1], lr_hw[1], device)[window_indices(out_hw[1], kernel_size[1], dilation[1],
                                                                             device)]
    return rows, cols


def upsampled_neighborhood_attention_torch(q: torch.Tensor, k_lr: torch.Tensor, v_lr: torch.Tensor,
                                           kernel_size: Sequence[int], dilation: Sequence[int],
                                           scale: Optional[float] = None,
                                           chunk_elements: int = 1 << 25) -> torch.Tensor:
    """Neighbourhood cross-attention of high-res queries over nearest-exact-upsampled low-res keys/values.

    Equal to NATTEN ``na2d(q, up(k_lr), up(v_lr), kernel_size, dilation)`` where ``up`` is
    ``F.interpolate(..., size=q's H, W, mode='nearest-exact')``, but gathers straight from the low-res tensors and
    processes query rows in chunks of about ``chunk_elements`` gathered values.

    Args:
        q: ``[B, H, W, heads, Dk]``.
        k_lr: ``[B, h, w, heads, Dk]``.
        v_lr: ``[B, h, w, heads, Dv]`` (Dv may differ from Dk).
        kernel_size, dilation: ``(ky, kx)``, ``(dy, dx)``.
        scale: logit scale; default ``Dk ** -0.5``.

    Returns:
        ``[B, H, W, heads, Dv]`` in the dtype of ``q`` (softmax accumulated in at least float32).
    """
    b, hq, wq, nh, dk = q.shape
    if k_lr.shape[:1] != q.shape[:1] or k_lr.shape[3:] != q.shape[3:] or v_lr.shape[:4] != k_lr.shape[:4]:
        raise ValueError(f"shape mismatch: q {tuple(q.shape)}, k {tuple(k_lr.shape)}, v {tuple(v_lr.shape)}")
    scale = dk ** -0.5 if scale is None else scale
    rows, cols = _window_tables((hq, wq), k_lr.shape[1:3], kernel_size, dilation, q.device)
    ky, kx = rows.shape[1], cols.shape[1]
    acc = torch.promote_types(q.dtype, torch.float32)
    dv = v_lr.shape[-1]
    per_row = wq * ky * kx * nh * dk + wq * kx * nh * dv
    chunk = max(1, int(chunk_elements // max(per_row, 1)))
    out = q.new_empty((b, hq, wq, nh, dv))
    for r0 in range(0, hq, chunk):
        r1 = min(hq, r0 + chunk)
        rr = rows[r0:r1]                                           # [rc, ky]
        # keys of every (query row, query col, window row, window col): [B, rc, W, ky, kx, heads, Dk]
        k_nb = k_lr[:, rr[:, None, :, None], cols[None, :, None, :]]
        logits = torch.einsum("brwnd,brwyxnd->brwnyx", q[:, r0:r1].to(acc), k_nb.to(acc)) * scale
        attn = logits.reshape(*logits.shape[:4], ky * kx).softmax(-1).reshape(logits.shape)
        res = torch.zeros((b, r1 - r0, wq, nh, dv), dtype=acc, device=q.device)
        for a in range(ky):
            v_rows = v_lr[:, rr[:, a]]                              # [B, rc, w, heads, Dv]
            v_nb = v_rows[:, :, cols]                               # [B, rc, W, kx, heads, Dv]
            res += torch.einsum("brwnx,brwxnd->brwnd", attn[:, :, :, :, a, :], v_nb.to(acc))
        out[:, r0:r1] = res.to(out.dtype)
    return out


def upsampled_neighborhood_attention_at(q_sel: torch.Tensor, pixels: torch.Tensor, out_size: Sequence[int],
                                        k_lr: torch.Tensor, v_lr: torch.Tensor, kernel_size: Sequence[int],
                                        dilation: Sequence[int], scale: Optional[float] = None,
                                        chunk_elements: int = 1 << 25) -> torch.Tensor:
    """:func:`upsampled_neighborhood_attention_torch` evaluated at a list of query pixels only.

    Each output row is the full-map result at its pixel (same windows, same softmax), so a caller that reads a few
    thousand pixels of a ``1024²`` map never builds the map (Pixal3D reads NAF features only where voxels project).

    Args:
        q_sel: ``[P, heads, Dk]`` queries at the selected pixels.
        pixels: ``[P, 3]`` integer ``(batch, row, col)`` of those pixels in the ``out_size`` map.
        out_size: ``(H, W)`` of the full query map (it defines the windows and the nearest-exact upsampling).
        k_lr: ``[B, h, w, heads, Dk]``; v_lr: ``[B, h, w, heads, Dv]``.
        kernel_size, dilation, scale: as in :func:`upsampled_neighborhood_attention_torch`.

    Returns:
        ``[P, heads, Dv]`` in the dtype of ``q_sel`` (softmax accumulated in at least float32).

    Raises:
        ValueError: shape mismatch or pixels outside the map / batch.
    """
    hq, wq = (int(v) for v in out_size)
    if pixels.dim() != 2 or pixels.shape[1] != 3 or pixels.shape[0] != q_sel.shape[0]:
        raise ValueError(f"pixels must be [P, 3] (batch, row, col) with P = {q_sel.shape[0]}, got "
                         f"{tuple(pixels.shape)}")
    if q_sel.dim() != 3 or k_lr.shape[3:] != q_sel.shape[1:] or v_lr.shape[:4] != k_lr.shape[:4]:
        raise ValueError(f"shape mismatch: q {tuple(q_sel.shape)}, k {tuple(k_lr.shape)}, v {tuple(v_lr.shape)}")
    px = pixels.to(device=q_sel.device, dtype=torch.long)
    if px.numel() and (px[:, 1].min() < 0 or px[:, 1].max() >= hq or px[:, 2].min() < 0 or px[:, 2].max() >= wq
                       or px[:, 0].min() < 0 or px[:, 0].max() >= k_lr.shape[0]):
        raise ValueError(f"pixels must lie in the {hq}x{wq} map and the batch of {k_lr.shape[0]}")
    _, nh, dk = q_sel.shape
    scale = dk ** -0.5 if scale is None else scale
    rows, cols = _window_tables((hq, wq), k_lr.shape[1:3], kernel_size, dilation, q_sel.device)
    ky, kx = rows.shape[1], cols.shape[1]
    acc = torch.promote_types(q_sel.dtype, torch.float32)
    dv = v_lr.shape[-1]
    chunk = max(1, int(chunk_elements // max(ky * kx * nh * max(dk, dv), 1)))
    out = q_sel.new_empty((q_sel.shape[0], nh, dv))
    for p0 in range(0, q_sel.shape[0], chunk):
        b, r, c = px[p0:p0 + chunk].unbind(1)
        rr, cc = rows[r], cols[c]                                              # [p, ky], [p, kx]
        bi, ri, ci = b[:, None, None], rr[:, :, None], cc[:, None, :]
        logits = torch.einsum("pnd,pyxnd->pnyx", q_sel[p0:p0 + chunk].to(acc), k_lr[bi, ri, ci].to(acc)) * scale
        attn = logits.reshape(*logits.shape[:2], ky * kx).softmax(-1).reshape(logits.shape)
        out[p0:p0 + chunk] = torch.einsum("pnyx,pyxnd->pnd", attn, v_lr[bi, ri, ci].to(acc)).to(out.dtype)
    return out


def _natten_upsampled(q, k_lr, v_lr, kernel_size, dilation, scale):
    hq, wq = q.shape[1:3]

    def up(x):  # [B, h, w, n, d] -> [B, H, W, n, d]
        bb, h, w, n, d = x.shape
        y = F.interpolate(x.reshape(bb, h, w, n * d).permute(0, 3, 1, 2), size=(hq, wq), mode="nearest-exact")
        return y.permute(0, 2, 3, 1).reshape(bb, hq, wq, n, d).to(q.dtype)

    k, v = up(k_lr), up(v_lr)
    try:
        from natten import na2d  # natten >= 0.20: [B, H, W, heads, D] layout
        return na2d(q, k, v, kernel_size=tuple(kernel_size), dilation=tuple(dilation), scale=scale)
    except ImportError:
        from natten.functional import na2d_av, na2d_qk  # legacy natten: [B, heads, H, W, D]
        qh, kh, vh = (t.permute(0, 3, 1, 2, 4) for t in (q, k, v))
        attn = (na2d_qk(qh, kh, kernel_size=tuple(kernel_size), dilation=tuple(dilation)) * scale).softmax(-1)
        return na2d_av(attn, vh, kernel_size=tuple(kernel_size), dilation=tuple(dilation)).permute(0, 2, 3, 1, 4)


def upsampled_neighborhood_attention(q, k_lr, v_lr, kernel_size, dilation, scale=None, backend: str = "auto"):
    """Dispatches :func:`upsampled_neighborhood_attention_torch` semantics to ``natten`` or pure PyTorch.

    Args:
        backend: ``'auto'`` (natten if importable and on CUDA), ``'natten'`` or ``'torch'``.

    Raises:
        ValueError: unknown backend; ImportError: ``'natten'`` requested but not installed.
    """
    if backend not in ("auto", "natten", "torch"):
        raise ValueError(f"backend must be 'auto', 'natten' or 'torch', got {backend!r}")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    use_natten = backend == "natten" or (backend == "auto" and q.is_cuda and natten_available())
    if use_natten:
        if not natten_available():
            raise ImportError("backend='natten' needs the natten package (pip install natten==0.21.0 with a wheel "
                              "matching your torch/CUDA); use backend='torch' otherwise")
        return _natten_upsampled(q, k_lr, v_lr, kernel_size, dilation, scale)
    return upsampled_neighborhood_attention_torch(q, k_lr, v_lr, kernel_size, dilation, scale)
