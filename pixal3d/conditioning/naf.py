"""NAF (valeoai "Neighborhood Attention Filtering") feature upsampler, as Pixal3D uses it (PIXAL3D_SPEC §3).

Architecture (released model: ``dim=256``, 4 attention heads, 4 RoPE heads, kernel 9, RoPE base 100):

1. Image encoder on the raw [0, 1] image (downsampled bilinearly first if it exceeds 4x the output size): two
   branches of ``dim/2`` channels each, a 1x1 one (``encoder``) and a 3x3 one (``sem_encoder``); each is a conv
   followed by two non-residual blocks ``GroupNorm(8) -> SiLU -> conv -> GroupNorm(8) -> SiLU -> conv`` with reflect
   padding. The concatenation is adaptive-average-pooled to the output size and rotated by a 2-D axial RoPE
   (fixed coordinates ``(n + 0.5)/N * 2 - 1`` per axis in eval mode).
2. Queries = that map; keys = the same map adaptive-average-pooled to the feature map's size; values = the low-res
   features. Keys/values are nearest-exact upsampled to the output size and combined by 9x9 neighbourhood attention
   with dilation ``output // input`` (see :mod:`.neighborhood_attention`).

Parameter names follow the released ``naf_release.pth`` state dict (``image_encoder.encoder.*``,
``image_encoder.sem_encoder.*``, ``image_encoder.rope.periods``) so it loads with ``strict=True``.
"""
from __future__ import annotations

import math
import os
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from .neighborhood_attention import upsampled_neighborhood_attention, upsampled_neighborhood_attention_at

__all__ = ["NAF", "NAF_RELEASE_URL"]

NAF_RELEASE_URL = "https://github.com/valeoai/NAF/releases/download/model/naf_release.pth"


class _EncBlock(nn.Module):
    """Pre-activation conv block without residual (as released): GN -> SiLU -> conv -> GN -> SiLU -> conv."""

    def __init__(self, channels: int, kernel_size: int, num_groups: int = 8):
        super().__init__()
        pad = kernel_size // 2
        self.norm1 = nn.GroupNorm(num_groups, channels)
        self.conv1 = nn.Conv2d(channels, channels, kernel_size, padding=pad, padding_mode="reflect")
        self.norm2 = nn.GroupNorm(num_groups, channels)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size, padding=pad, padding_mode="reflect")

    def forward(self, x):
        # in place when no graph is recorded: one map-sized temporary less (1 GiB at 1024² in fp32)
        inplace = not torch.is_grad_enabled()
        x = self.conv1(F.silu(self.norm1(x), inplace=inplace))
        return self.conv2(F.silu(self.norm2(x), inplace=inplace))


def _run_branch(branch: nn.Sequential, image: torch.Tensor) -> torch.Tensor:
    """``branch(image)``; without autograd each map is released as soon as the next one exists (``nn.Sequential``
    keeps every block's input alive while the block runs), which lowers the peak by one map. Same ops, same bits."""
    if torch.is_grad_enabled():
        return branch(image)
    x = branch[0](image)
    for blk in branch[1:]:
        # one statement per op: a name rebound only after the call would keep the previous map alive during it
        x = blk.norm1(x)
        x = blk.conv1(F.silu(x, inplace=True))
        x = blk.norm2(x)
        x = blk.conv2(F.silu(x, inplace=True))
    return x


def _branch(in_channels: int, channels: int, kernel_size: int, num_blocks: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, channels, kernel_size, padding=kernel_size // 2,
                                   padding_mode="reflect"),
                         *[_EncBlock(channels, kernel_size) for _ in range(num_blocks)])


class _AxialRoPE(nn.Module):
    """2-D axial rotary embedding on a ``[B, heads*D, H, W]`` map (DINOv3-style, half-split rotation).

    ``periods`` ``[D/4]`` = ``base ** (2 i / (D/2))`` is a persistent buffer (it is in the released state dict).
    """

    #: elements per slice of the rotation (a bound on its temporaries, not a result-changing setting)
    chunk_elements = 1 << 24

    def __init__(self, dim: int, num_heads: int, base: float):
        super().__init__()
        if dim % (4 * num_heads):
            raise ValueError(f"RoPE dim {dim} must be divisible by 4 * num_heads = {4 * num_heads}")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        q = self.head_dim // 4
        self.register_buffer("periods", base ** (2 * torch.arange(q, dtype=torch.float32) / (self.head_dim // 2)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        dev = self.periods.device
        ch = torch.arange(0.5, h, device=dev, dtype=torch.float32) / h * 2 - 1
        cw = torch.arange(0.5, w, device=dev, dtype=torch.float32) / w * 2 - 1
        coords = torch.stack(torch.meshgrid(ch, cw, indexing="ij"), dim=-1).reshape(h * w, 2)
        angles = 2 * math.pi * coords[:, :, None] / self.periods[None, None, :]     # [HW, 2, D/4]
        angles = angles.flatten(1, 2).repeat(1, 2)                                   # [HW, D]: (h, w, h, w) blocks
        cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
        t = x.reshape(b, self.num_heads, self.head_dim, h * w).transpose(2, 3)      # [B, n, HW, D]
        out = torch.empty_like(t)
        # the same elementwise maths in slices of pixels: the temporaries stay a slice wide, not four full maps
        step = max(1, self.chunk_elements // max(1, b * c))
        for p0 in range(0, h * w, step):
            tc = t[:, :, p0:p0 + step]
            t1, t2 = tc.chunk(2, dim=-1)
            out[:, :, p0:p0 + step] = tc * cos[p0:p0 + step] + torch.cat([-t2, t1], dim=-1) * sin[p0:p0 + step]
        return out.transpose(2, 3).reshape(b, c, h, w)


class _ImageEncoder(nn.Module):
    def __init__(self, dim: int, heads_rope: int, rope_base: float, img_layers: int):
        super().__init__()
        self.encoder = _branch(3, dim // 2, 1, img_layers)
        self.sem_encoder = _branch(3, dim // 2, 3, img_layers)
        self.rope = _AxialRoPE(dim, heads_rope, rope_base)

    def forward(self, image: torch.Tensor, output_size: Tuple[int, int]) -> torch.Tensor:
        oh, ow = output_size
        h, w = image.shape[-2:]
        if h > 4 * oh or w > 4 * ow:
            # bounded work: encode at most 4x the output resolution (the cap uses both output sides, as released)
            image = F.interpolate(image, size=(min(h, 4 * oh, 4 * ow), min(w, 4 * ow, 4 * oh)), mode="bilinear",
                                  align_corners=False)
        # each branch is pooled as soon as it is done, so only one full-resolution branch is alive at a time
        # (concatenating then pooling computes the same values: the pooling acts per channel)
        x = torch.cat([_pool(_run_branch(self.encoder, image), output_size),
                       _pool(_run_branch(self.sem_encoder, image), output_size)], dim=1)
        return self.rope(x)


def _pool(x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """``adaptive_avg_pool2d`` that skips the identity case (a one-element mean is the element itself)."""
    return x if tuple(x.shape[-2:]) == tuple(size) else F.adaptive_avg_pool2d(x, size)


class NAF(nn.Module):
    """NAF upsampler: ``naf(image, features, output_size) -> [B, C, T_h, T_w]``.

    Args:
        dim: width of the image encoder / attention queries and keys (256 released).
        heads_attn: attention heads (queries/keys split ``dim``; values split the feature channels ``C``).
        heads_rope: RoPE heads.
        kernel_size: neighbourhood size (odd).
        rope_base: RoPE base.
        img_layers: conv blocks per encoder branch.
        backend: neighbourhood attention backend, ``'auto'`` | ``'natten'`` | ``'torch'``.

    Call:
        image ``[B, 3, H, W]`` in [0, 1] (Pixal3D passes the un-normalised extractor input), features
        ``[B, C, h, w]`` with ``C`` divisible by ``heads_attn``, output_size ``(T_h, T_w)`` with
        ``T >= kernel_size * (T // h)`` per axis. Returns ``[B, C, T_h, T_w]`` in the dtype of the image encoder.
    """

    def __init__(self, dim: int = 256, heads_attn: int = 4, heads_rope: int = 4, kernel_size: int = 9,
                 rope_base: float = 100.0, img_layers: int = 2, backend: str = "auto"):
        super().__init__()
        if dim % heads_attn:
            raise ValueError(f"dim {dim} must be divisible by heads_attn {heads_attn}")
        self.dim, self.heads_attn, self.kernel_size = dim, heads_attn, (kernel_size, kernel_size)
        self.backend = backend
        self.image_encoder = _ImageEncoder(dim, heads_rope, rope_base, img_layers)

    @classmethod
    def from_pretrained(cls, path_or_url: Optional[str] = None, map_location="cpu", **kwargs) -> "NAF":
        """Builds the released NAF and loads ``naf_release.pth``.

        Args:
            path_or_url: a local ``.pth`` / ``.safetensors`` file or a URL; default: ``$PIXAL3D_NAF_WEIGHTS`` if set,
                else :data:`NAF_RELEASE_URL` (fetched once into the torch hub cache, offline afterwards).

        Raises:
            OSError: the file is missing or the download fails (message says where to put the weights).
        """
        src = path_or_url or os.environ.get("PIXAL3D_NAF_WEIGHTS") or NAF_RELEASE_URL
        try:
            if src.startswith(("http://", "https://")):
                state = torch.hub.load_state_dict_from_url(src, map_location=map_location, progress=True)
            elif src.endswith(".safetensors"):
                from safetensors.torch import load_file
                state = load_file(src, device=str(map_location))
            else:
                state = torch.load(src, map_location=map_location, weights_only=True)
        except Exception as e:  # network, missing file, unpickling: all mean "no weights"
            raise OSError(f"could not load the NAF weights from {src!r} ({type(e).__name__}: {e}). Download "
                          f"{NAF_RELEASE_URL} and pass its path (or set PIXAL3D_NAF_WEIGHTS).") from e
        model = cls(**kwargs)
        model.load_state_dict(state, strict=True)
        return model.eval()

    def _check(self, image, features, output_size) -> Tuple[int, int]:
        if isinstance(output_size, int):
            output_size = (output_size, output_size)
        oh, ow = (int(v) for v in output_size)
        if image.dim() != 4 or image.shape[1] != 3 or features.dim() != 4 or image.shape[0] != features.shape[0]:
            raise ValueError(f"expected image [B,3,H,W] and features [B,C,h,w]; got {tuple(image.shape)} and "
                             f"{tuple(features.shape)}")
        fh, fw = features.shape[-2:]
        if oh < fh or ow < fw:
            raise ValueError(f"output_size {(oh, ow)} must not be smaller than the feature map {(fh, fw)}")
        if features.shape[1] % self.heads_attn:
            raise ValueError(f"feature channels {features.shape[1]} must be divisible by heads_attn {self.heads_attn}")
        return oh, ow

    def forward(self, image: torch.Tensor, features: torch.Tensor,
                output_size: Union[int, Sequence[int]]) -> torch.Tensor:
        oh, ow = self._check(image, features, output_size)
        fh, fw = features.shape[-2:]
        x = self.image_encoder(image, (oh, ow))                          # queries [B, dim, T, T]
        keys = F.adaptive_avg_pool2d(x, (fh, fw))
        n = self.heads_attn

        def heads(t):  # [B, n*d, h, w] -> [B, h, w, n, d]
            bb, c, h, w = t.shape
            return t.reshape(bb, n, c // n, h, w).permute(0, 3, 4, 1, 2)

        dilation = (oh // fh, ow // fw)
        out = upsampled_neighborhood_attention(heads(x), heads(keys), heads(features.to(x.dtype)), self.kernel_size,
                                               dilation, scale=(self.dim // n) ** -0.5, backend=self.backend)
        b, h, w, _, d = out.shape
        return out.permute(0, 3, 4, 1, 2).reshape(b, n * d, h, w)

    def forward_at(self, image: torch.Tensor, features: torch.Tensor, output_size: Union[int, Sequence[int]],
                   pixels: torch.Tensor) -> torch.Tensor:
        """The rows of ``forward(image, features, output_size)`` at ``pixels`` only, without the ``[B, C, T, T]`` map.

        The query map (``dim`` channels) is still built in full; the attention and the ``C``-channel output are
        computed per pixel, with the torch neighbourhood attention whatever ``backend`` says (natten has no
        per-pixel entry point).

        Args:
            pixels: ``[P, 3]`` integer ``(batch, row, col)`` in the ``output_size`` map.

        Returns:
            ``[P, C]`` in the dtype of the image encoder (same channel order as :meth:`forward`).
        """
        oh, ow = self._check(image, features, output_size)
        fh, fw = features.shape[-2:]
        x = self.image_encoder(image, (oh, ow))
        keys = F.adaptive_avg_pool2d(x, (fh, fw))
        n = self.heads_attn
        px = pixels.to(device=x.device, dtype=torch.long)
        q_sel = x[px[:, 0], :, px[:, 1], px[:, 2]]                       # [P, dim]
        q_sel = q_sel.reshape(q_sel.shape[0], n, -1)
        del x

        def heads(t):  # [B, n*d, h, w] -> [B, h, w, n, d]
            bb, c, h, w = t.shape
            return t.reshape(bb, n, c // n, h, w).permute(0, 3, 4, 1, 2)

        out = upsampled_neighborhood_attention_at(q_sel, px, (oh, ow), heads(keys), heads(features.to(q_sel.dtype)),
                                                  self.kernel_size, (oh // fh, ow // fw),
                                                  scale=(self.dim // n) ** -0.5)
        return out.reshape(out.shape[0], -1)
