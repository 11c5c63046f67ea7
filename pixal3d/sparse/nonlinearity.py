"""Pointwise activations on sparse/varlen tensors (TRELLIS2_SPEC.md §1.5).

Each class subclasses the torch module so its constructor arguments (``inplace``, ``approximate``) are the same.
"""
import torch.nn as nn

from .basic import VarLenTensor

__all__ = ["SparseReLU", "SparseSiLU", "SparseGELU", "SparseActivation"]


def _check(x):
    if not isinstance(x, VarLenTensor):
        raise TypeError(f"sparse activations expect a VarLenTensor/SparseTensor, got {type(x).__name__}")


class SparseReLU(nn.ReLU):
    """ReLU on ``feats``; returns the same tensor type with shared cache."""

    def forward(self, input: VarLenTensor) -> VarLenTensor:
        _check(input)
        return input.replace(super().forward(input.feats))


class SparseSiLU(nn.SiLU):
    """SiLU on ``feats``; returns the same tensor type with shared cache."""

    def forward(self, input: VarLenTensor) -> VarLenTensor:
        _check(input)
        return input.replace(super().forward(input.feats))


class SparseGELU(nn.GELU):
    """GELU on ``feats`` (``approximate`` as in ``nn.GELU``); returns the same tensor type with shared cache."""

    def forward(self, input: VarLenTensor) -> VarLenTensor:
        _check(input)
        return input.replace(super().forward(input.feats))


class SparseActivation(nn.Module):
    """Wraps any elementwise ``nn.Module`` (e.g. ``nn.GELU(approximate='tanh')``) to act on ``feats``.

    The wrapped module is stored as ``activation`` (it has no parameters in the released networks).
    """

    def __init__(self, activation: nn.Module):
        super().__init__()
        if not isinstance(activation, nn.Module):
            raise TypeError(f"SparseActivation wraps an nn.Module, got {type(activation).__name__}")
        self.activation = activation

    def forward(self, input: VarLenTensor) -> VarLenTensor:
        _check(input)
        return input.replace(self.activation(input.feats))
