"""``SparseLinear``: ``nn.Linear`` applied to the features of a sparse/varlen tensor (TRELLIS2_SPEC.md §1.5)."""
import torch.nn as nn

from .basic import VarLenTensor


class SparseLinear(nn.Linear):
    """Per-token linear map. Keys ``weight [out, in]``, ``bias [out]`` (same as ``nn.Linear``).

    Input/output: a ``VarLenTensor``/``SparseTensor`` with feats ``[N, in]`` -> same type, feats ``[N, out]``,
    sharing the input's coordinates and spatial cache.

    Raises:
        TypeError: the input is not a VarLenTensor/SparseTensor.
    """

    def forward(self, input: VarLenTensor) -> VarLenTensor:
        if not isinstance(input, VarLenTensor):
            raise TypeError(f"SparseLinear expects a VarLenTensor/SparseTensor, got {type(input).__name__}; "
                            "use nn.Linear for dense tensors")
        return input.replace(super().forward(input.feats))
