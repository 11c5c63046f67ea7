"""Normalisation layers that compute in float32 (TRELLIS2_SPEC §1.5, ``modules/norm.py``).

The torsos of the released networks run in fp16/bf16; layer and group norms are numerically fragile in half precision,
so these variants upcast their input to float32, normalise, and cast the result back to the input dtype. Under
autocast no explicit casts are made (autocast already runs norms in float32 and picks the output dtype itself), which
is what the reference does.
"""
import torch
import torch.nn as nn

__all__ = ["LayerNorm32", "GroupNorm32", "ChannelLayerNorm32", "layer_norm32"]


def _autocast_on(x: torch.Tensor) -> bool:
    return torch.is_autocast_enabled(x.device.type)


def layer_norm32(x: torch.Tensor, normalized_shape, weight=None, bias=None, eps: float = 1e-5) -> torch.Tensor:
    """Functional form of :class:`LayerNorm32`: ``layer_norm`` over the trailing ``normalized_shape`` of ``x`` in
    float32 (weight/bias upcast), cast back to ``x.dtype``; plain ``layer_norm`` under autocast."""
    if _autocast_on(x):
        return nn.functional.layer_norm(x, normalized_shape, weight, bias, eps)
    w = weight.float() if weight is not None else None
    b = bias.float() if bias is not None else None
    return nn.functional.layer_norm(x.float(), normalized_shape, w, b, eps).to(x.dtype)


class LayerNorm32(nn.LayerNorm):
    """``nn.LayerNorm`` over the last dimension(s), computed in float32 (TRELLIS2_SPEC §1.5, §2.1).

    Input ``[..., *normalized_shape]`` of any float dtype; output has the same shape and the input dtype (autocast
    off). Parameters (``weight``, ``bias`` when affine) keep their own dtype and are upcast for the computation.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return layer_norm32(x, self.normalized_shape, self.weight, self.bias, self.eps)


class GroupNorm32(nn.GroupNorm):
    """``nn.GroupNorm`` on channel-first input ``[B, C, ...]``, computed in float32 (TRELLIS2_SPEC §1.5).

    Output has the input's shape and dtype (autocast off).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _autocast_on(x):
            return super().forward(x)
        dtype = x.dtype
        w = self.weight.float() if self.weight is not None else None
        b = self.bias.float() if self.bias is not None else None
        y = nn.functional.group_norm(x.float(), self.num_groups, w, b, self.eps)
        return y.to(dtype)


class ChannelLayerNorm32(LayerNorm32):
    """Layer norm over the channel axis of a channel-first dense tensor ``[B, C, *spatial]`` (TRELLIS2_SPEC §1.5).

    The channel axis is moved last, normalised with :class:`LayerNorm32` (``normalized_shape`` must be ``C``), and
    moved back. Output: same shape and dtype as the input.

    Raises:
        ValueError: the input has fewer than 2 dimensions.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2:
            raise ValueError(f"ChannelLayerNorm32 expects a channel-first tensor [B, C, ...], got shape {tuple(x.shape)}")
        perm = [0] + list(range(2, x.dim())) + [1]
        inv = [0, x.dim() - 1] + list(range(1, x.dim() - 1))
        y = super().forward(x.permute(*perm).contiguous())
        return y.permute(*inv).contiguous()
