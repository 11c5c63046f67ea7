"""Dense sparse-structure VAE of TRELLIS v1 (TRELLIS2_SPEC §2.4).

The encoder maps a dense occupancy grid ``[B, 1, R, R, R]`` to a ``[B, 8, R/4, R/4, R/4]`` latent (64³ -> 16³ in the
released model); the decoder maps the latent back to occupancy logits. The flow model of stage 1 generates the latent;
the voxels with logit > 0 become the sparse structure.

Checkpoint quirk kept on purpose: the residual blocks are built without ``norm_type`` and therefore always use
``ChannelLayerNorm32``; only the norm of ``out_layer`` follows ``norm_type``.
"""
from typing import List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from pixal3d.models.base import ConfigMixin
from pixal3d.modules.norm import ChannelLayerNorm32, GroupNorm32
from pixal3d.modules.spatial import pixel_shuffle_3d
from pixal3d.modules.utils import convert_module_to

__all__ = [
    "ResBlock3d", "DownsampleBlock3d", "UpsampleBlock3d", "SparseStructureEncoder", "SparseStructureDecoder",
    "norm_layer",
]


def norm_layer(norm_type: str, channels: int) -> nn.Module:
    """Channel norm for dense ``[B, C, X, Y, Z]`` tensors: ``'layer'`` -> ``ChannelLayerNorm32(C)`` (affine, eps 1e-5),
    ``'group'`` -> ``GroupNorm32(32, C)``.

    Raises:
        ValueError: unknown ``norm_type``.
    """
    if norm_type == "layer":
        return ChannelLayerNorm32(channels)
    if norm_type == "group":
        return GroupNorm32(32, channels)
    raise ValueError(f"norm_type must be 'layer' or 'group', got {norm_type!r}")


class ResBlock3d(nn.Module):
    """Dense residual block ``conv2(SiLU(norm2(conv1(SiLU(norm1(x)))))) + skip(x)`` (TRELLIS2_SPEC §2.4).

    Convs are ``Conv3d(k=3, p=1)``; ``conv2`` starts at zero; ``skip`` is a 1×1×1 conv when the width changes.
    Keys: ``norm1``, ``norm2``, ``conv1``, ``conv2`` (+ ``skip_connection`` when ``channels != out_channels``).
    Input/output ``[B, C, X, Y, Z]`` -> ``[B, C_out, X, Y, Z]``.
    """

    def __init__(self, channels: int, out_channels: Optional[int] = None, norm_type: str = "layer"):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.norm1 = norm_layer(norm_type, channels)
        self.norm2 = norm_layer(norm_type, self.out_channels)
        self.conv1 = nn.Conv3d(channels, self.out_channels, 3, padding=1)
        self.conv2 = nn.Conv3d(self.out_channels, self.out_channels, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        if channels != self.out_channels:
            self.skip_connection = nn.Conv3d(channels, self.out_channels, 1)
        else:
            self.skip_connection = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return h + self.skip_connection(x)


class DownsampleBlock3d(nn.Module):
    """Strided ``Conv3d(C_in, C_out, k=2, s=2)``: ``[B, C_in, X, Y, Z] -> [B, C_out, X/2, Y/2, Z/2]`` (§2.4).

    ``mode='avgpool'`` (unused by the released model) average-pools instead and needs ``C_in == C_out``.
    """

    def __init__(self, in_channels: int, out_channels: int, mode: str = "conv"):
        super().__init__()
        if mode not in ("conv", "avgpool"):
            raise ValueError(f"DownsampleBlock3d mode must be 'conv' or 'avgpool', got {mode!r}")
        if mode == "avgpool" and in_channels != out_channels:
            raise ValueError("DownsampleBlock3d(mode='avgpool') needs in_channels == out_channels")
        self.in_channels, self.out_channels, self.mode = in_channels, out_channels, mode
        if mode == "conv":
            self.conv = nn.Conv3d(in_channels, out_channels, 2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "conv":
            return self.conv(x)
        return F.avg_pool3d(x, 2)


class UpsampleBlock3d(nn.Module):
    """``Conv3d(C_in, 8·C_out, k=3, p=1)`` then dense ``pixel_shuffle_3d(2)`` (§2.4, §1.6):
    ``[B, C_in, X, Y, Z] -> [B, C_out, 2X, 2Y, 2Z]``.

    ``mode='nearest'`` (unused by the released model) is nearest-neighbour interpolation and needs ``C_in == C_out``.
    """

    def __init__(self, in_channels: int, out_channels: int, mode: str = "conv"):
        super().__init__()
        if mode not in ("conv", "nearest"):
            raise ValueError(f"UpsampleBlock3d mode must be 'conv' or 'nearest', got {mode!r}")
        if mode == "nearest" and in_channels != out_channels:
            raise ValueError("UpsampleBlock3d(mode='nearest') needs in_channels == out_channels")
        self.in_channels, self.out_channels, self.mode = in_channels, out_channels, mode
        if mode == "conv":
            self.conv = nn.Conv3d(in_channels, out_channels * 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "conv":
            return pixel_shuffle_3d(self.conv(x), 2)
        return F.interpolate(x, scale_factor=2, mode="nearest")


def _check_dense_input(x, channels: int, factor: int, what: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what} expects a torch.Tensor [B, {channels}, X, Y, Z], got {type(x).__name__}")
    if x.dim() != 5 or x.shape[1] != channels:
        raise ValueError(f"{what} expects a dense tensor [B, {channels}, X, Y, Z], got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{what} expects a floating-point tensor, got {x.dtype}; convert with x.float()")
    if any(s % factor for s in x.shape[2:]):
        raise ValueError(f"{what} needs spatial sizes divisible by {factor}, got {tuple(x.shape[2:])}")


class _DenseVaeBase(ConfigMixin, nn.Module):
    """fp16 handling shared by the SS encoder and decoder: only ``blocks`` and ``middle_block`` convs change dtype."""

    def convert_to_fp16(self) -> None:
        """Converts the conv parameters of ``blocks`` and ``middle_block`` to float16 (norm params stay float32)."""
        self.use_fp16 = True
        self.dtype = torch.float16
        convert_module_to(self.blocks, torch.float16)
        convert_module_to(self.middle_block, torch.float16)

    def convert_to_fp32(self) -> None:
        """Converts the torso back to float32."""
        self.use_fp16 = False
        self.dtype = torch.float32
        convert_module_to(self.blocks, torch.float32)
        convert_module_to(self.middle_block, torch.float32)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


class SparseStructureEncoder(_DenseVaeBase):
    """Dense occupancy encoder E_S (TRELLIS2_SPEC §2.4; released ``ss_enc_conv3d_16l8_fp16``).

    Args:
        in_channels: input channels (1 for occupancy).
        latent_channels: latent channels (8).
        num_res_blocks: residual blocks per resolution.
        channels: widths per resolution, e.g. ``[32, 128, 512]``; each step between two entries halves the grid.
        num_res_blocks_middle: residual blocks at the coarsest resolution after ``blocks``.
        norm_type: ``'layer'`` or ``'group'``, used by ``out_layer`` only (residual blocks always use layer norm).
        use_fp16: run ``blocks`` and ``middle_block`` in float16 (their conv weights are stored in float16).

    Keys: ``input_layer``, ``blocks.{k}`` (per width: ``num_res_blocks`` ``ResBlock3d`` then a ``DownsampleBlock3d``
    except after the last), ``middle_block.{k}``, ``out_layer.0`` (norm), ``out_layer.2`` (conv to ``2·latent``).
    """

    def __init__(self, in_channels: int, latent_channels: int, num_res_blocks: int, channels: List[int],
                 num_res_blocks_middle: int = 2, norm_type: str = "layer", use_fp16: bool = False):
        super().__init__()
        if not channels:
            raise ValueError("channels must be a non-empty list of widths")
        self.in_channels = in_channels
        self.latent_channels = latent_channels
        self.num_res_blocks = num_res_blocks
        self.channels = list(channels)
        self.num_res_blocks_middle = num_res_blocks_middle
        self.norm_type = norm_type
        self.use_fp16 = use_fp16
        self.dtype = torch.float16 if use_fp16 else torch.float32

        self.input_layer = nn.Conv3d(in_channels, channels[0], 3, padding=1)
        self.blocks = nn.ModuleList()
        for i, ch in enumerate(channels):
            self.blocks.extend(ResBlock3d(ch, ch) for _ in range(num_res_blocks))
            if i < len(channels) - 1:
                self.blocks.append(DownsampleBlock3d(ch, channels[i + 1]))
        self.middle_block = nn.Sequential(*[ResBlock3d(channels[-1], channels[-1])
                                            for _ in range(num_res_blocks_middle)])
        self.out_layer = nn.Sequential(
            norm_layer(norm_type, channels[-1]),
            nn.SiLU(),
            nn.Conv3d(channels[-1], latent_channels * 2, 3, padding=1),
        )
        if use_fp16:
            self.convert_to_fp16()

    def forward(self, x: torch.Tensor, sample_posterior: bool = False, return_raw: bool = False):
        """Encodes a dense grid.

        Args:
            x: ``[B, in_channels, X, Y, Z]`` float (occupancy in {0, 1}); X, Y, Z divisible by ``2^(len(channels)-1)``.
            sample_posterior: draw ``z = mean + exp(logvar/2)·ε`` instead of ``z = mean``.
            return_raw: also return ``mean`` and ``logvar``.

        Returns:
            ``z`` ``[B, latent, X/2^k, Y/2^k, Z/2^k]`` in ``x.dtype``, or ``(z, mean, logvar)`` with ``return_raw``.

        Raises:
            TypeError / ValueError: ``x`` is not a float 5-D tensor with ``in_channels`` channels and divisible sizes.
        """
        _check_dense_input(x, self.in_channels, 2 ** (len(self.channels) - 1), "SparseStructureEncoder")
        h = self.input_layer(x).type(self.dtype)
        for block in self.blocks:
            h = block(h)
        h = self.middle_block(h)
        h = self.out_layer(h.type(x.dtype))
        mean, logvar = h.chunk(2, dim=1)
        if sample_posterior:
            std = torch.exp(0.5 * logvar)
            z = mean + std * torch.randn_like(std)
        else:
            z = mean
        if return_raw:
            return z, mean, logvar
        return z


class SparseStructureDecoder(_DenseVaeBase):
    """Dense occupancy decoder D_S (TRELLIS2_SPEC §2.4; released ``ss_dec_conv3d_16l8_fp16``).

    Args:
        out_channels: output channels (1 occupancy logit).
        latent_channels: latent channels (8).
        num_res_blocks: residual blocks per resolution.
        channels: widths per resolution, e.g. ``[512, 128, 32]``; each step between two entries doubles the grid.
        num_res_blocks_middle: residual blocks at the coarsest resolution before ``blocks``.
        norm_type: ``'layer'`` or ``'group'``, used by ``out_layer`` only.
        use_fp16: run ``blocks`` and ``middle_block`` in float16.

    Keys: ``input_layer``, ``middle_block.{k}``, ``blocks.{k}`` (per width: ``num_res_blocks`` ``ResBlock3d`` then an
    ``UpsampleBlock3d`` except after the last), ``out_layer.0`` (norm), ``out_layer.2`` (conv to ``out_channels``).
    """

    def __init__(self, out_channels: int, latent_channels: int, num_res_blocks: int, channels: List[int],
                 num_res_blocks_middle: int = 2, norm_type: str = "layer", use_fp16: bool = False):
        super().__init__()
        if not channels:
            raise ValueError("channels must be a non-empty list of widths")
        self.out_channels = out_channels
        self.latent_channels = latent_channels
        self.num_res_blocks = num_res_blocks
        self.channels = list(channels)
        self.num_res_blocks_middle = num_res_blocks_middle
        self.norm_type = norm_type
        self.use_fp16 = use_fp16
        self.dtype = torch.float16 if use_fp16 else torch.float32

        self.input_layer = nn.Conv3d(latent_channels, channels[0], 3, padding=1)
        self.middle_block = nn.Sequential(*[ResBlock3d(channels[0], channels[0])
                                            for _ in range(num_res_blocks_middle)])
        self.blocks = nn.ModuleList()
        for i, ch in enumerate(channels):
            self.blocks.extend(ResBlock3d(ch, ch) for _ in range(num_res_blocks))
            if i < len(channels) - 1:
                self.blocks.append(UpsampleBlock3d(ch, channels[i + 1]))
        self.out_layer = nn.Sequential(
            norm_layer(norm_type, channels[-1]),
            nn.SiLU(),
            nn.Conv3d(channels[-1], out_channels, 3, padding=1),
        )
        if use_fp16:
            self.convert_to_fp16()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Decodes a latent ``[B, latent, X, Y, Z]`` (float) to logits ``[B, out, 2^k·X, 2^k·Y, 2^k·Z]`` in ``x.dtype``
        (``k = len(channels) - 1``; occupancy is ``logits > 0``).

        Raises:
            TypeError / ValueError: ``x`` is not a float 5-D tensor with ``latent_channels`` channels.
        """
        _check_dense_input(x, self.latent_channels, 1, "SparseStructureDecoder")
        h = self.input_layer(x).type(self.dtype)
        h = self.middle_block(h)
        for block in self.blocks:
            h = block(h)
        return self.out_layer(h.type(x.dtype))
