"""Residual building blocks of the SC-VAEs (TRELLIS2_SPEC §2.5, resampling conventions §1.6).

All convolutions are submanifold ``SparseConv3d(·, ·, 3)`` (weight ``[Co, 3, 3, 3, Ci]``); ``LayerNorm32`` acts per
voxel over the channels of ``feats``. The module and parameter names are those of the released checkpoints.

The two resampling blocks change the grid by a factor 2 per axis through the sparse space-to-channel ops: channel
``s·C + c`` of a coarse voxel holds channel ``c`` of its child ``s = (x%2) + 2(y%2) + 4(z%2)``.
"""
from typing import Optional

import torch
import torch.nn as nn
import torch.utils.checkpoint

from pixal3d import sparse as sp
from pixal3d.modules.fused_layer_norm import layer_norm_act
from pixal3d.modules.norm import LayerNorm32

__all__ = ["SparseConvNeXtBlock3d", "SparseResBlockS2C3d", "SparseResBlockC2S3d", "SparseResBlock3d",
           "SparseResBlockDownsample3d", "SparseResBlockUpsample3d", "BLOCK_TYPES"]


def _zero_(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def _check_sparse(x, who: str) -> None:
    if not isinstance(x, sp.SparseTensor):
        raise TypeError(f"{who} expects a pixal3d.sparse.SparseTensor, got {type(x).__name__}")


def _run(block, fn, *args):
    # activation checkpointing trades compute for memory in training only
    if block.use_checkpoint and torch.is_grad_enabled():
        return torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


def _norm(norm: nn.Module, feats: torch.Tensor, silu: bool = False) -> torch.Tensor:
    # one fused pass on CUDA inference, else exactly ``norm`` (+ ``F.silu``): see modules/fused_layer_norm.py
    return layer_norm_act(feats, norm.weight, norm.bias, norm.eps, silu=silu)


def _norm_silu(norm: nn.Module, x: "sp.SparseTensor") -> "sp.SparseTensor":
    return x.replace(_norm(norm, x.feats, silu=True))


class SparseConvNeXtBlock3d(nn.Module):
    """ConvNeXt-style block at a fixed resolution (TRELLIS2_SPEC §2.5).

    ``h = conv(x)`` (full C -> C conv, not depthwise) -> ``norm`` (LayerNorm, affine, eps 1e-6) -> ``mlp`` =
    ``Linear(C, r·C), SiLU, Linear(r·C, C)`` on feats -> ``out = h + x``.

    Keys: ``conv.{weight [C,3,3,3,C], bias}``, ``norm.{weight, bias}``, ``mlp.0.{weight [rC, C], bias}``,
    ``mlp.2.{weight [C, rC], bias}``. ``mlp.2`` starts at zero here; the VAE constructors re-initialise every Linear
    with xavier (as the reference does).

    Args:
        channels: C.
        mlp_ratio: r (4.0).
        use_checkpoint: recompute the block in the backward pass (saves memory in training).

    Input/output: SparseTensor with feats ``[N, C]`` (any float dtype; the norm computes in float32); same coords.
    """

    def __init__(self, channels: int, mlp_ratio: float = 4.0, use_checkpoint: bool = False):
        super().__init__()
        self.channels = channels
        self.use_checkpoint = use_checkpoint
        hidden = int(channels * mlp_ratio)
        self.norm = LayerNorm32(channels, elementwise_affine=True, eps=1e-6)
        self.conv = sp.SparseConv3d(channels, channels, 3)
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.SiLU(), _zero_(nn.Linear(hidden, channels)))

    def _forward(self, x):
        h = self.conv(x)
        h = h.replace(self.mlp(_norm(self.norm, h.feats)))
        return h + x

    def forward(self, x: "sp.SparseTensor") -> "sp.SparseTensor":
        _check_sparse(x, "SparseConvNeXtBlock3d")
        return _run(self, self._forward, x)


class SparseResBlockS2C3d(nn.Module):
    """Residual downsampling block, fine ``Ci`` channels -> coarse ``Co`` channels (TRELLIS2_SPEC §2.5).

    ``h = conv1(SiLU(norm1(x)))`` (``Ci -> Co/8`` at the fine level) -> ``h = S2C(h)`` (``Co`` channels, coarse) ->
    ``h = conv2(SiLU(norm2(h)))`` (``Co -> Co``, zero-init) -> ``out = h + skip(S2C(x))`` where the skip averages
    groups of ``8·Ci/Co`` consecutive S2C channels: ``reshape(N, Co, 8·Ci/Co).mean(-1)``.

    Keys: ``norm1.{weight, bias}`` (affine), ``conv1.{weight [Co/8,3,3,3,Ci], bias}``,
    ``conv2.{weight [Co,3,3,3,Co], bias}``; ``norm2`` has no parameters.

    Raises:
        ValueError: ``Co`` not divisible by 8, or ``8·Ci`` not divisible by ``Co``.
    """

    def __init__(self, channels: int, out_channels: Optional[int] = None, use_checkpoint: bool = False):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_checkpoint = use_checkpoint
        if self.out_channels % 8 or (8 * channels) % self.out_channels:
            raise ValueError(f"SparseResBlockS2C3d({channels}, {self.out_channels}): out_channels must be divisible "
                             "by 8 and divide 8·channels")
        self.norm1 = LayerNorm32(channels, elementwise_affine=True, eps=1e-6)
        self.norm2 = LayerNorm32(self.out_channels, elementwise_affine=False, eps=1e-6)
        self.conv1 = sp.SparseConv3d(channels, self.out_channels // 8, 3)
        self.conv2 = _zero_(sp.SparseConv3d(self.out_channels, self.out_channels, 3))
        self.updown = sp.SparseSpatial2Channel(2)

    def _skip(self, x):
        group = 8 * self.channels // self.out_channels
        return x.replace(x.feats.reshape(x.feats.shape[0], self.out_channels, group).mean(dim=-1))

    def _forward(self, x):
        h = self.conv1(_norm_silu(self.norm1, x))
        h = self.updown(h)
        x = self.updown(x)
        h = self.conv2(_norm_silu(self.norm2, h))
        return h + self._skip(x)

    def forward(self, x: "sp.SparseTensor") -> "sp.SparseTensor":
        """``x`` feats ``[N_fine, Ci]`` -> feats ``[N_coarse, Co]`` at coords ``coord // 2`` (sorted by (b,x,y,z))."""
        _check_sparse(x, "SparseResBlockS2C3d")
        return _run(self, self._forward, x)


class SparseResBlockC2S3d(nn.Module):
    """Residual upsampling block with learned subdivision, coarse ``Ci`` -> fine ``Co`` (TRELLIS2_SPEC §2.5).

    ``subdiv = to_subdiv(x)`` (8 logits per voxel, from the un-normalised input; only with ``pred_subdiv``) ->
    ``h = conv1(SiLU(norm1(x)))`` (``Ci -> 8·Co``, coarse) -> ``h = C2S(h, subdiv > 0)``, ``x = C2S(x, subdiv > 0)``
    (``Ci/8`` channels) -> ``h = conv2(SiLU(norm2(h)))`` (``Co -> Co``, zero-init) -> ``out = h + skip(x)`` with
    ``skip = repeat_interleave(Co/(Ci/8))`` on channels. Logit ``s`` decides child ``s`` (§1.6). When the spatial cache
    holds the C2S structure for this level (an encoder ran on the same tensor family: teacher forcing, or texture
    decoding that reuses the shape structure), the cached children are used and ``subdiv`` is ignored.

    Keys: ``norm1``, ``conv1.{weight [8Co,3,3,3,Ci], bias}``, ``conv2.{weight [Co,3,3,3,Co], bias}``, and with
    ``pred_subdiv`` ``to_subdiv.{weight [8, Ci], bias [8]}``.

    Raises:
        ValueError: ``Ci`` not divisible by 8 or ``Co`` not divisible by ``Ci/8``.
    """

    def __init__(self, channels: int, out_channels: Optional[int] = None, use_checkpoint: bool = False,
                 pred_subdiv: bool = True):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_checkpoint = use_checkpoint
        self.pred_subdiv = pred_subdiv
        if channels % 8 or self.out_channels % (channels // 8):
            raise ValueError(f"SparseResBlockC2S3d({channels}, {self.out_channels}): channels must be divisible by 8 "
                             "and out_channels by channels/8")
        self.norm1 = LayerNorm32(channels, elementwise_affine=True, eps=1e-6)
        self.norm2 = LayerNorm32(self.out_channels, elementwise_affine=False, eps=1e-6)
        self.conv1 = sp.SparseConv3d(channels, self.out_channels * 8, 3)
        self.conv2 = _zero_(sp.SparseConv3d(self.out_channels, self.out_channels, 3))
        if pred_subdiv:
            self.to_subdiv = sp.SparseLinear(channels, 8)
        self.updown = sp.SparseChannel2Spatial(2)

    def _skip(self, x):
        return x.replace(x.feats.repeat_interleave(self.out_channels // (self.channels // 8), dim=1))

    def _forward(self, x, subdiv):
        if self.pred_subdiv:
            subdiv = self.to_subdiv(x)
        h = self.conv1(_norm_silu(self.norm1, x))
        if subdiv is None or subdiv.feats.dtype == torch.bool:
            children = subdiv  # flags as given: a structure planned ahead is memoised on this very object
        else:
            children = subdiv.replace(subdiv.feats > 0)
        h = self.updown(h, children)
        x = self.updown(x, children)
        h = self.conv2(_norm_silu(self.norm2, h))
        h = h + self._skip(x)
        return (h, subdiv) if self.pred_subdiv else h

    def forward(self, x: "sp.SparseTensor", subdiv: Optional["sp.SparseTensor"] = None):
        """Upsamples ``x`` (feats ``[N, Ci]``).

        Args:
            x: coarse SparseTensor.
            subdiv: only when ``pred_subdiv=False``: SparseTensor with feats ``[N, 8]`` (logits, or bool children)
                on ``x``'s coordinates, row for row; may be None when the spatial cache holds the structure.

        Returns:
            fine SparseTensor (feats ``[N_fine, Co]``); with ``pred_subdiv`` the tuple ``(fine, subdiv_logits)``,
            ``subdiv_logits`` feats ``[N, 8]`` on ``x``'s coordinates.

        Raises:
            TypeError: ``x``/``subdiv`` not SparseTensors. ValueError: ``subdiv`` given to a predicting block, or
            of the wrong shape.
        """
        _check_sparse(x, "SparseResBlockC2S3d")
        if subdiv is not None:
            if self.pred_subdiv:
                raise ValueError("SparseResBlockC2S3d(pred_subdiv=True) predicts its own subdivision; pass subdiv "
                                 "only to blocks built with pred_subdiv=False")
            _check_sparse(subdiv, "SparseResBlockC2S3d (subdiv)")
            if tuple(subdiv.feats.shape) != (x.feats.shape[0], 8):
                raise ValueError(f"subdiv feats must be [{x.feats.shape[0]}, 8] (one row of 8 child logits per "
                                 f"voxel of x), got {tuple(subdiv.feats.shape)}")
        return _run(self, self._forward, x, subdiv)


class SparseResBlock3d(nn.Module):
    """Generic residual block, optionally resampling ×2 (unused by the released models; TRELLIS2_SPEC §2.5).

    ``resample_mode='nearest'``: ``h = conv1(resample(SiLU(norm1(x))))`` (``C -> Co``), skip = ``SparseLinear(C, Co)``
    (key ``skip_connection``) when the width changes; resampling is mean-pooling (``SparseDownsample``) or nearest
    copying (``SparseUpsample``). ``resample_mode='spatial2channel'``: as :class:`SparseResBlockS2C3d` /
    :class:`SparseResBlockC2S3d`. Upsampling predicts ``to_subdiv`` logits from the un-normalised input and returns
    ``(out, subdiv)``. Then ``out = conv2(SiLU(norm2(h))) + skip(x)`` with ``conv2`` zero-initialised.

    Raises:
        ValueError: both ``downsample`` and ``upsample``, an unknown mode, or ``'spatial2channel'`` without
        resampling.
    """

    def __init__(self, channels: int, out_channels: Optional[int] = None, downsample: bool = False,
                 upsample: bool = False, resample_mode: str = "nearest", use_checkpoint: bool = False):
        super().__init__()
        if downsample and upsample:
            raise ValueError("SparseResBlock3d cannot downsample and upsample at the same time")
        if resample_mode not in ("nearest", "spatial2channel"):
            raise ValueError(f"resample_mode must be 'nearest' or 'spatial2channel', got {resample_mode!r}")
        if resample_mode == "spatial2channel" and not (downsample or upsample):
            raise ValueError("resample_mode='spatial2channel' needs downsample=True or upsample=True")
        self.channels = channels
        self.out_channels = out_channels or channels
        self.downsample, self.upsample, self.resample_mode = downsample, upsample, resample_mode
        self.use_checkpoint = use_checkpoint
        co = self.out_channels
        self.norm1 = LayerNorm32(channels, elementwise_affine=True, eps=1e-6)
        self.norm2 = LayerNorm32(co, elementwise_affine=False, eps=1e-6)
        if resample_mode == "nearest":
            self.conv1 = sp.SparseConv3d(channels, co, 3)
        else:
            self.conv1 = sp.SparseConv3d(channels, co // 8 if downsample else co * 8, 3)
        self.conv2 = _zero_(sp.SparseConv3d(co, co, 3))
        if resample_mode == "nearest" and channels != co:
            self.skip_connection = sp.SparseLinear(channels, co)
        if downsample:
            self.updown = sp.SparseDownsample(2) if resample_mode == "nearest" else sp.SparseSpatial2Channel(2)
        elif upsample:
            self.to_subdiv = sp.SparseLinear(channels, 8)
            self.updown = sp.SparseUpsample(2) if resample_mode == "nearest" else sp.SparseChannel2Spatial(2)

    def _skip(self, x):
        if self.resample_mode == "nearest":
            return self.skip_connection(x) if hasattr(self, "skip_connection") else x
        if self.downsample:
            group = 8 * self.channels // self.out_channels
            return x.replace(x.feats.reshape(x.feats.shape[0], self.out_channels, group).mean(dim=-1))
        return x.replace(x.feats.repeat_interleave(self.out_channels // (self.channels // 8), dim=1))

    def _resample(self, x, subdiv):
        if self.downsample:
            return self.updown(x)
        if self.upsample:
            return self.updown(x, subdiv.replace(subdiv.feats > 0))
        return x

    def _forward(self, x):
        subdiv = self.to_subdiv(x) if self.upsample else None
        h = _norm_silu(self.norm1, x)
        if self.resample_mode == "spatial2channel":
            h = self.conv1(h)
        h = self._resample(h, subdiv)
        x = self._resample(x, subdiv)
        if self.resample_mode == "nearest":
            h = self.conv1(h)
        h = self.conv2(_norm_silu(self.norm2, h))
        h = h + self._skip(x)
        return (h, subdiv) if self.upsample else h

    def forward(self, x: "sp.SparseTensor"):
        """SparseTensor feats ``[N, C]`` -> feats ``[N', Co]`` (``(out, subdiv_logits [N, 8])`` when upsampling)."""
        _check_sparse(x, "SparseResBlock3d")
        return _run(self, self._forward, x)


class SparseResBlockDownsample3d(nn.Module):
    """Residual mean-pool downsampling block (unused by the released models; TRELLIS2_SPEC §2.5):
    ``out = conv2(SiLU(norm2(conv1(pool(SiLU(norm1(x))))))) + skip(pool(x))``, ``skip`` a ``SparseLinear`` when the
    width changes. Keys as :class:`SparseResBlock3d` in ``'nearest'`` mode.
    """

    def __init__(self, channels: int, out_channels: Optional[int] = None, use_checkpoint: bool = False):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_checkpoint = use_checkpoint
        co = self.out_channels
        self.norm1 = LayerNorm32(channels, elementwise_affine=True, eps=1e-6)
        self.norm2 = LayerNorm32(co, elementwise_affine=False, eps=1e-6)
        self.conv1 = sp.SparseConv3d(channels, co, 3)
        self.conv2 = _zero_(sp.SparseConv3d(co, co, 3))
        if channels != co:
            self.skip_connection = sp.SparseLinear(channels, co)
        self.updown = sp.SparseDownsample(2)

    def _forward(self, x):
        h = self.updown(_norm_silu(self.norm1, x))
        x = self.updown(x)
        h = self.conv2(_norm_silu(self.norm2, self.conv1(h)))
        return h + (self.skip_connection(x) if hasattr(self, "skip_connection") else x)

    def forward(self, x: "sp.SparseTensor") -> "sp.SparseTensor":
        """SparseTensor feats ``[N, C]`` -> feats ``[M, Co]`` at the parent coordinates."""
        _check_sparse(x, "SparseResBlockDownsample3d")
        return _run(self, self._forward, x)


class SparseResBlockUpsample3d(nn.Module):
    """Residual nearest-neighbour upsampling block with subdivision (unused by the released models; §2.5):
    ``out = conv2(SiLU(norm2(conv1(up(SiLU(norm1(x))))))) + skip(up(x))``; ``up`` copies each voxel to its children
    ``subdiv > 0`` (predicted by ``to_subdiv`` from the un-normalised input when ``pred_subdiv``, else given).

    Returns ``(out, subdiv)`` when ``pred_subdiv``, else ``out``.
    """

    def __init__(self, channels: int, out_channels: Optional[int] = None, use_checkpoint: bool = False,
                 pred_subdiv: bool = True):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_checkpoint = use_checkpoint
        self.pred_subdiv = pred_subdiv
        co = self.out_channels
        self.norm1 = LayerNorm32(channels, elementwise_affine=True, eps=1e-6)
        self.norm2 = LayerNorm32(co, elementwise_affine=False, eps=1e-6)
        self.conv1 = sp.SparseConv3d(channels, co, 3)
        self.conv2 = _zero_(sp.SparseConv3d(co, co, 3))
        if channels != co:
            self.skip_connection = sp.SparseLinear(channels, co)
        if pred_subdiv:
            self.to_subdiv = sp.SparseLinear(channels, 8)
        self.updown = sp.SparseUpsample(2)

    def _forward(self, x, subdiv):
        if self.pred_subdiv:
            subdiv = self.to_subdiv(x)
        children = subdiv.replace(subdiv.feats > 0) if subdiv is not None else None
        h = self.updown(_norm_silu(self.norm1, x), children)
        x = self.updown(x, children)
        h = self.conv2(_norm_silu(self.norm2, self.conv1(h)))
        h = h + (self.skip_connection(x) if hasattr(self, "skip_connection") else x)
        return (h, subdiv) if self.pred_subdiv else h

    def forward(self, x: "sp.SparseTensor", subdiv: Optional["sp.SparseTensor"] = None):
        """As :meth:`SparseResBlockC2S3d.forward`, with nearest copying instead of channel unpacking."""
        _check_sparse(x, "SparseResBlockUpsample3d")
        if subdiv is not None and self.pred_subdiv:
            raise ValueError("SparseResBlockUpsample3d(pred_subdiv=True) predicts its own subdivision")
        return _run(self, self._forward, x, subdiv)


#: block classes addressable by the names used in the configs (``block_type``, ``down_block_type``, ``up_block_type``)
BLOCK_TYPES = {
    "SparseConvNeXtBlock3d": SparseConvNeXtBlock3d,
    "SparseResBlockS2C3d": SparseResBlockS2C3d,
    "SparseResBlockC2S3d": SparseResBlockC2S3d,
    "SparseResBlock3d": SparseResBlock3d,
    "SparseResBlockDownsample3d": SparseResBlockDownsample3d,
    "SparseResBlockUpsample3d": SparseResBlockUpsample3d,
}
