"""Sparse-convolution VAEs of TRELLIS.2 (TRELLIS2_SPEC §2.5–2.7): the texture SC-VAE (``SparseUnetVae*``) and the
shape SC-VAE on the flexible dual grid (``FlexiDualGridVae*``)."""
from .blocks import (SparseConvNeXtBlock3d, SparseResBlock3d, SparseResBlockC2S3d, SparseResBlockDownsample3d,
                     SparseResBlockS2C3d, SparseResBlockUpsample3d)
from .fdg_vae import FlexiDualGridVaeDecoder, FlexiDualGridVaeEncoder
from .mesh import Mesh
from .sparse_unet_vae import SparseUnetVaeDecoder, SparseUnetVaeEncoder

__all__ = ["SparseConvNeXtBlock3d", "SparseResBlock3d", "SparseResBlockC2S3d", "SparseResBlockDownsample3d",
           "SparseResBlockS2C3d", "SparseResBlockUpsample3d", "FlexiDualGridVaeDecoder", "FlexiDualGridVaeEncoder",
           "Mesh", "SparseUnetVaeDecoder", "SparseUnetVaeEncoder"]
