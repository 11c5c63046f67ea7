"""Image metrics: PSNR (optionally masked), SSIM, normal-map PSNR / angular error, optional LPIPS and CLIP score.

Layout: every function takes images as numpy arrays or torch tensors of shape ``[..., H, W, C]`` by default
(``channel_axis=-1``); pass ``channel_axis=1`` for ``[B, C, H, W]`` tensors or ``channel_axis=None`` for single-channel
``[..., H, W]``. Leading dimensions are independent images; results have the leading shape (a 0-d result is returned
as a Python ``float``, anything else as a float64 numpy array). Values are expected in ``[0, data_range]``
(default ``[0, 1]``). Maths is float64.

SSIM (Wang et al. 2004; the definition of TRELLIS2_SPEC §5.4): per channel, Gaussian window 11×11 with σ = 1.5
(normalised to sum 1), ``C1 = (0.01·L)²``, ``C2 = (0.03·L)²`` with ``L = data_range``, local moments
``μ = w*x``, ``σ² = w*x² − μ²``, ``σ_xy = w*(xy) − μ_x μ_y`` (population, not sample, covariance) and
``SSIM = (2μxμy + C1)(2σxy + C2) / ((μx² + μy² + C1)(σx² + σy² + C2))``, averaged over positions and channels.
``padding='valid'`` (default, the metric convention) averages only positions where the window fits inside the image
— equal to ``skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=L)``; ``padding='same'`` zero-pads by 5 pixels and averages every pixel —
the 3DGS/TRELLIS training-loss convention.
"""
from __future__ import annotations

from typing import Optional, Union

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["psnr", "ssim", "gaussian_window", "normal_psnr", "normal_angular_error", "lpips_distance",
           "clip_score", "LPIPSUnavailable"]

Array = Union[np.ndarray, torch.Tensor]


class LPIPSUnavailable(ImportError):
    """``lpips`` (or its pretrained backbone weights) cannot be loaded here."""


def _t(x, name) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        t = x.detach().to("cpu", torch.float64)
    else:
        a = np.asarray(x)
        if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer) or a.dtype == bool):
            raise TypeError(f"{name} must be numeric, got dtype {a.dtype}")
        t = torch.from_numpy(a.astype(np.float64))
    return t


def _to_bhwc(x: torch.Tensor, channel_axis: Optional[int], name: str):
    """-> ``([N, H, W, C] tensor, leading shape)``."""
    if channel_axis is None:
        if x.dim() < 2:
            raise ValueError(f"{name} must have at least 2 dims [..., H, W], got {tuple(x.shape)}")
        x = x.unsqueeze(-1)
    else:
        if x.dim() < 3:
            raise ValueError(f"{name} must have at least 3 dims (H, W and a channel axis), got {tuple(x.shape)}")
        x = torch.movedim(x, channel_axis, -1)
    lead = tuple(x.shape[:-3])
    return x.reshape(-1, *x.shape[-3:]), lead


def _out(v: torch.Tensor, lead):
    v = v.reshape(lead) if lead else v.reshape(())
    return float(v) if v.dim() == 0 else v.numpy()


def _check_pair(a, b, channel_axis, name_a="pred", name_b="target"):
    ta, tb = _t(a, name_a), _t(b, name_b)
    if ta.shape != tb.shape:
        raise ValueError(f"{name_a} and {name_b} shapes differ: {tuple(ta.shape)} vs {tuple(tb.shape)}")
    if not (torch.isfinite(ta).all() and torch.isfinite(tb).all()):
        raise ValueError("images contain NaN/inf")
    xa, lead = _to_bhwc(ta, channel_axis, name_a)
    xb, _ = _to_bhwc(tb, channel_axis, name_b)
    return xa, xb, lead


def psnr(pred: Array, target: Array, mask: Optional[Array] = None, data_range: float = 1.0,
         channel_axis: Optional[int] = -1):
    """Peak signal-to-noise ratio ``10·log10(L² / MSE)`` in dB per image (``inf`` when identical).

    Args:
        pred, target: images (see module docstring for layouts), same shape.
        mask: optional ``[..., H, W]`` (bool or {0,1} float weights) selecting the pixels; MSE is then the weighted
            mean over selected pixels and all channels. An image whose mask is empty gives ``nan``.
        data_range: ``L`` (1 for [0, 1] images, 255 for uint8).
    Raises:
        ValueError: shape mismatch, mask shape not matching ``[..., H, W]``, non-finite values, ``data_range <= 0``.
    """
    if not data_range > 0:
        raise ValueError(f"data_range must be > 0, got {data_range}")
    x, y, lead = _check_pair(pred, target, channel_axis)
    se = (x - y) ** 2  # [N, H, W, C]
    if mask is None:
        mse = se.mean(dim=(1, 2, 3))
    else:
        m = _t(mask, "mask")
        if tuple(m.shape) != tuple(lead) + tuple(x.shape[1:3]):
            raise ValueError(f"mask must have shape {tuple(lead) + tuple(x.shape[1:3])} ([..., H, W]), "
                             f"got {tuple(m.shape)}")
        m = m.reshape(x.shape[0], x.shape[1], x.shape[2], 1)
        den = m.sum(dim=(1, 2, 3)) * x.shape[3]
        mse = (se * m).sum(dim=(1, 2, 3)) / den  # 0/0 -> nan for an empty mask
    val = 10 * torch.log10(data_range ** 2 / mse)  # mse = 0 -> +inf (torch does not warn)
    return _out(val, lead)


def gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Normalised 2-D Gaussian window float64 ``[size, size]`` (outer product of the 1-D one; sums to 1)."""
    if size < 1 or size % 2 == 0:
        raise ValueError(f"window size must be a positive odd integer, got {size}")
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    r = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-r ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(pred: Array, target: Array, data_range: float = 1.0, channel_axis: Optional[int] = -1,
         window_size: int = 11, sigma: float = 1.5, padding: str = "valid", return_map: bool = False):
    """Structural similarity per image (see module docstring for the exact definition).

    Returns:
        per-image SSIM (float or ``[...]`` array); with ``return_map`` also the per-pixel map
        ``[N, H', W', C]`` float64 torch tensor (``H' = H − 10`` for 'valid').
    Raises:
        ValueError: shape mismatch, an image smaller than the window with 'valid' padding, unknown padding.
    """
    if padding not in ("valid", "same"):
        raise ValueError(f"padding must be 'valid' or 'same', got {padding!r}")
    x, y, lead = _check_pair(pred, target, channel_axis)
    N, H, W, C = x.shape
    if padding == "valid" and (H < window_size or W < window_size):
        raise ValueError(f"images of {H}x{W} are smaller than the {window_size}x{window_size} SSIM window")
    w = gaussian_window(window_size, sigma)[None, None].expand(C, 1, window_size, window_size)
    pad = 0 if padding == "valid" else window_size // 2
    x = x.permute(0, 3, 1, 2)
    y = y.permute(0, 3, 1, 2)

    def filt(z):
        return F.conv2d(z, w, padding=pad, groups=C)

    mx, my = filt(x), filt(y)
    sxx = filt(x * x) - mx * mx
    syy = filt(y * y) - my * my
    sxy = filt(x * y) - mx * my
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    smap = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    val = _out(smap.mean(dim=(1, 2, 3)), lead)
    return (val, smap.permute(0, 2, 3, 1)) if return_map else val


def _decode_normals(x: torch.Tensor) -> torch.Tensor:
    n = x * 2 - 1
    return n / n.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def normal_psnr(pred: Array, target: Array, mask: Optional[Array] = None, channel_axis: Optional[int] = -1):
    """PSNR of encoded normal maps ``(n + 1)/2`` in [0, 1] (the renderer's 'normal' output), optionally masked
    (e.g. with the GT mask, or the union of both masks). Exactly :func:`psnr` with ``data_range=1`` and 3 channels."""
    x = _t(pred, "pred")
    if (x.shape[channel_axis] if channel_axis is not None else 1) != 3:
        raise ValueError(f"normal maps need 3 channels on axis {channel_axis}, got shape {tuple(x.shape)}")
    return psnr(pred, target, mask=mask, data_range=1.0, channel_axis=channel_axis)


def normal_angular_error(pred: Array, target: Array, mask: Optional[Array] = None,
                         channel_axis: Optional[int] = -1):
    """Mean angle in degrees between decoded normals ``n = 2x − 1`` (re-normalised) of two encoded normal maps,
    over ``mask`` pixels (all pixels if None). Per image; ``nan`` for an empty mask."""
    x, y, lead = _check_pair(pred, target, channel_axis)
    if x.shape[-1] != 3:
        raise ValueError(f"normal maps need 3 channels, got {x.shape[-1]}")
    cos = (_decode_normals(x) * _decode_normals(y)).sum(-1).clamp(-1, 1)
    ang = torch.rad2deg(torch.acos(cos))  # [N, H, W]
    if mask is None:
        return _out(ang.mean(dim=(1, 2)), lead)
    m = _t(mask, "mask").reshape(ang.shape)
    return _out((ang * m).sum(dim=(1, 2)) / m.sum(dim=(1, 2)), lead)


_LPIPS_CACHE = {}


def _lpips_model(net: str):
    if net not in ("alex", "vgg", "squeeze"):
        raise ValueError(f"LPIPS net must be 'alex', 'vgg' or 'squeeze', got {net!r}")
    if net in _LPIPS_CACHE:
        return _LPIPS_CACHE[net]
    try:
        import lpips  # noqa: F401
    except Exception as exc:  # ImportError, or torchvision failing to import
        raise LPIPSUnavailable(
            "LPIPS needs the optional 'lpips' package (pip install lpips; it pulls torchvision — install the "
            f"torchvision build that matches your torch). Import failed: {type(exc).__name__}: {exc}") from exc
    try:
        model = lpips.LPIPS(net=net, verbose=False).eval()
    except Exception as exc:  # backbone weights are downloaded by torchvision on first use
        raise LPIPSUnavailable(
            f"lpips.LPIPS(net={net!r}) could not be built: {type(exc).__name__}: {exc}. Its ImageNet backbone "
            "weights are downloaded by torchvision on first use; without network, copy them into "
            "$TORCH_HOME/hub/checkpoints first.") from exc
    _LPIPS_CACHE[net] = model
    return model


def lpips_distance(pred: Array, target: Array, net: str = "alex", channel_axis: Optional[int] = -1,
                   device: Optional[str] = None):
    """LPIPS (Zhang et al. 2018) through the ``lpips`` package, per image, on [0, 1] RGB inputs (mapped to [−1, 1]
    as the package expects). ``net='vgg'`` is what the TRELLIS trainers use as a loss; 'alex' is the usual metric.

    Raises:
        LPIPSUnavailable: ``lpips``/``torchvision`` not importable or backbone weights not obtainable.
        ValueError: shape mismatch or not 3 channels.
    """
    x, y, lead = _check_pair(pred, target, channel_axis)
    if x.shape[-1] != 3:
        raise ValueError(f"LPIPS needs RGB images (3 channels), got {x.shape[-1]}")
    model = _lpips_model(net)
    dev = torch.device(device) if device else next(model.parameters()).device
    model = model.to(dev)
    with torch.no_grad():
        xa = (x.permute(0, 3, 1, 2).float() * 2 - 1).to(dev)
        ya = (y.permute(0, 3, 1, 2).float() * 2 - 1).to(dev)
        d = model(xa, ya).reshape(-1).double().cpu()
    return _out(d, lead)


def clip_score(images: Array, texts, model_name: str = "ViT-B-32", pretrained: str = "openai",
               channel_axis: Optional[int] = -1, device: Optional[str] = None):
    """CLIP score ``100·max(cos(E_img, E_txt), 0)`` per (image, text) pair through ``open_clip`` (optional).

    Args:
        images: ``[..., H, W, 3]`` in [0, 1]; texts: one string per image (same count) or one string for all.
    Raises:
        ImportError: ``open_clip`` missing, or its weights cannot be obtained (no network).
    """
    try:
        import open_clip
    except Exception as exc:
        raise ImportError(f"clip_score needs the optional 'open_clip_torch' package: {exc}") from exc
    x, lead = _to_bhwc(_t(images, "images"), channel_axis, "images")
    if isinstance(texts, str):
        texts = [texts] * x.shape[0]
    if len(texts) != x.shape[0]:
        raise ValueError(f"got {len(texts)} texts for {x.shape[0]} images")
    model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=pretrained)
    tokenizer = open_clip.get_tokenizer(model_name)
    dev = torch.device(device or "cpu")
    model = model.to(dev).eval()
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN, device=dev).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD, device=dev).view(1, 3, 1, 1)
    img = F.interpolate(x.permute(0, 3, 1, 2).float().to(dev), size=(size, size), mode="bicubic",
                        align_corners=False).clamp(0, 1)
    with torch.no_grad():
        ei = model.encode_image((img - mean) / std)
        et = model.encode_text(tokenizer(list(texts)).to(dev))
    cos = F.cosine_similarity(ei.double(), et.double(), dim=-1)
    return _out(100 * cos.clamp_min(0).cpu(), lead)
