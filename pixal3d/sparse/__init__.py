"""Sparse voxel tensors and operators (TRELLIS2_SPEC.md §1.1-1.6, §1.8, §1.9).

Pure PyTorch, CPU-capable; GPU kernels are optional backends selected with ``SPARSE_CONV_BACKEND``.
"""
from .basic import VarLenTensor, SparseTensor, varlen_cat, varlen_unbind, sparse_cat, sparse_unbind
from .linear import SparseLinear
from .nonlinearity import SparseReLU, SparseSiLU, SparseGELU, SparseActivation
from .norm import SparseGroupNorm, SparseLayerNorm, SparseGroupNorm32, SparseLayerNorm32
from .conv import SparseConv3d
from .spatial import (SparseDownsample, SparseUpsample, SparseSpatial2Channel, SparseChannel2Spatial,
                      plan_channel2spatial)
from .serialize import encode_seq, decode_seq
from .grid_sample import grid_sample_3d
from .checks import check_coords, check_unique
from . import config

__all__ = [
    "VarLenTensor", "SparseTensor", "varlen_cat", "varlen_unbind", "sparse_cat", "sparse_unbind",
    "SparseLinear", "SparseReLU", "SparseSiLU", "SparseGELU", "SparseActivation",
    "SparseGroupNorm", "SparseLayerNorm", "SparseGroupNorm32", "SparseLayerNorm32",
    "SparseConv3d", "SparseDownsample", "SparseUpsample", "SparseSpatial2Channel", "SparseChannel2Spatial",
    "plan_channel2spatial",
    "encode_seq", "decode_seq", "grid_sample_3d", "check_coords", "check_unique",
]
