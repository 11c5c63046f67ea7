"""Attention for the DiTs (TRELLIS2_SPEC §1.7): backends, kernels, RoPE, per-head RMS norm and the layers.

- :mod:`.backend`     ``ATTN_BACKEND`` / ``SPARSE_ATTN_BACKEND`` selection
- :mod:`.functional`  dense ``[B, L, H, D]`` and packed varlen ``[T, H, D]`` attention
- :mod:`.rope`        3D rotary embedding
- :mod:`.rms_norm`    ``MultiHeadRMSNorm``
- :mod:`.fused_qk`    one-pass Triton q/k RMS norm + RoPE for inference (``PIXAL3D_FUSED_KERNELS``)
- :mod:`.windowed`    axis-aligned and serialized window partitions
- :mod:`.modules` / :mod:`.sparse_modules`  ``MultiHeadAttention`` / ``SparseMultiHeadAttention``
"""
from .backend import VALID_BACKENDS, get_attn_backend, get_sparse_attn_backend, set_attn_backend
from .functional import VarLenMeta, naive_attention, scaled_dot_product_attention, varlen_attention
from .modules import MultiHeadAttention
from .rms_norm import MultiHeadRMSNorm
from .rope import RotaryPositionEmbedder, apply_rope, rope_frequencies, rope_phases, sparse_rope_phases
from .sparse_modules import SparseMultiHeadAttention
from .windowed import (partitioned_self_attention, serialized_partition, sparse_serialized_self_attention,
                       sparse_windowed_self_attention, window_partition)

__all__ = [
    "VALID_BACKENDS", "get_attn_backend", "get_sparse_attn_backend", "set_attn_backend",
    "naive_attention", "scaled_dot_product_attention", "varlen_attention", "VarLenMeta",
    "MultiHeadAttention", "SparseMultiHeadAttention", "MultiHeadRMSNorm",
    "RotaryPositionEmbedder", "apply_rope", "rope_frequencies", "rope_phases", "sparse_rope_phases",
    "window_partition", "serialized_partition", "partitioned_self_attention",
    "sparse_windowed_self_attention", "sparse_serialized_self_attention",
]
