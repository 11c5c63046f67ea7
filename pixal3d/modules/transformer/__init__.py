"""Transformer building blocks of the flow DiTs (TRELLIS2_SPEC §2.1, PIXAL3D_SPEC §4.1)."""
from .blocks import FeedForwardNet
from .embedders import AbsolutePositionEmbedder, TimestepEmbedder, timestep_embedding
from .modulated import IMAGE_ATTN_MODES, ModulatedSparseTransformerCrossBlock, ModulatedTransformerCrossBlock
from .proj_attention import GatedProjectAttention, ProjectAttention, split_proj_context

__all__ = ["FeedForwardNet", "AbsolutePositionEmbedder", "TimestepEmbedder", "timestep_embedding",
           "IMAGE_ATTN_MODES", "ModulatedTransformerCrossBlock", "ModulatedSparseTransformerCrossBlock",
           "ProjectAttention", "GatedProjectAttention", "split_proj_context"]
