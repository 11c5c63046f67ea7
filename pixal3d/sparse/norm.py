"""Per-sample Group/Layer norms on sparse tensors (TRELLIS2_SPEC.md §1.5).

Like the reference, each sample's features ``[N_b, C]`` are viewed as ``[1, C, N_b]`` and passed to the torch norm:
GroupNorm then normalises each group over all tokens of the sample; LayerNorm normalises over the LAST (token) axis,
so its ``normalized_shape`` must equal ``N_b`` for it to run -- a quirk kept for parity (the released networks use
the dense ``LayerNorm32`` on ``feats`` instead). The ``...32`` variants compute in float32 and cast back.
"""
import torch
import torch.nn as nn

from .basic import VarLenTensor

__all__ = ["SparseGroupNorm", "SparseLayerNorm", "SparseGroupNorm32", "SparseLayerNorm32"]


def _per_sample(norm_forward, x: VarLenTensor, dtype=None) -> VarLenTensor:
    if not isinstance(x, VarLenTensor):
        raise TypeError(f"sparse norms expect a VarLenTensor/SparseTensor, got {type(x).__name__}")
    if x.feats.dim() != 2:
        raise ValueError(f"sparse norms expect feats [N, C], got {tuple(x.feats.shape)}; reshape first")
    feats = x.feats if dtype is None else x.feats.to(dtype)
    out = torch.empty_like(feats)
    for s in x.layout:
        if s.stop == s.start:
            continue
        bfeats = feats[s].permute(1, 0).unsqueeze(0)  # [1, C, N_b]
        out[s] = norm_forward(bfeats).squeeze(0).permute(1, 0)
    return x.replace(out if dtype is None else out.to(x.feats.dtype))


class SparseGroupNorm(nn.GroupNorm):
    """GroupNorm over each sample's tokens. Keys ``weight [C]``, ``bias [C]``. Input feats ``[N, C]``."""

    def forward(self, input: VarLenTensor) -> VarLenTensor:
        return _per_sample(super().forward, input)


class SparseLayerNorm(nn.LayerNorm):
    """LayerNorm applied to each sample's ``[1, C, N_b]`` view (normalises over tokens; see module doc)."""

    def forward(self, input: VarLenTensor) -> VarLenTensor:
        return _per_sample(super().forward, input)


class SparseGroupNorm32(SparseGroupNorm):
    """:class:`SparseGroupNorm` computed in float32, output cast back to the input dtype."""

    def forward(self, input: VarLenTensor) -> VarLenTensor:
        return _per_sample(nn.GroupNorm.forward.__get__(self), input, torch.float32)


class SparseLayerNorm32(SparseLayerNorm):
    """:class:`SparseLayerNorm` computed in float32, output cast back to the input dtype."""

    def forward(self, input: VarLenTensor) -> VarLenTensor:
        return _per_sample(nn.LayerNorm.forward.__get__(self), input, torch.float32)
