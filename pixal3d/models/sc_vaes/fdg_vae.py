"""Shape SC-VAE on the flexible dual grid (TRELLIS2_SPEC §2.7; O-Voxel extraction §3.4).

The encoder reads per-voxel dual vertices (local to the voxel, in [0, 1]³) and the three edge-intersection flags;
the decoder predicts them back, with a learned subdivision at every ×2 level, and turns them into a triangle mesh.
"""
from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F

from pixal3d import sparse as sp

from .mesh import Mesh
from .sparse_unet_vae import SparseUnetVaeDecoder, SparseUnetVaeEncoder

__all__ = ["FlexiDualGridVaeEncoder", "FlexiDualGridVaeDecoder"]

_AABB = [[-0.5, -0.5, -0.5], [0.5, 0.5, 0.5]]


class FlexiDualGridVaeEncoder(SparseUnetVaeEncoder):
    """Shape encoder: ``SparseUnetVaeEncoder`` with 6 input channels (TRELLIS2_SPEC §2.7; released
    ``shape_enc_next_dc_f16c32_fp16``). Constructor args and keys as :class:`SparseUnetVaeEncoder` minus
    ``in_channels``.
    """

    def __init__(self, model_channels: List[int], latent_channels: int, num_blocks: List[int],
                 block_type: List[str], down_block_type: List[str], block_args: List[Dict[str, Any]],
                 use_fp16: bool = False):
        super().__init__(6, model_channels, latent_channels, num_blocks, block_type, down_block_type, block_args,
                         use_fp16)

    def forward(self, vertices: "sp.SparseTensor", intersected: "sp.SparseTensor", sample_posterior: bool = False,
                return_raw: bool = False):
        """Encodes a flexible dual grid.

        Args:
            vertices: SparseTensor, feats float ``[N, 3]``: dual vertex positions local to each voxel, in [0, 1]³.
            intersected: SparseTensor on the same voxels (row for row), feats bool ``[N, 3]``: the voxel's x/y/z edge
                crosses the surface.
            sample_posterior, return_raw: as :meth:`SparseUnetVaeEncoder.forward`.

        Returns:
            as :meth:`SparseUnetVaeEncoder.forward`; the network input is ``cat(vertices − 0.5, intersected − 0.5)``.

        Raises:
            TypeError / ValueError: non-sparse inputs, wrong feature shapes, or different voxel counts.
        """
        for name, t in (("vertices", vertices), ("intersected", intersected)):
            if not isinstance(t, sp.SparseTensor):
                raise TypeError(f"FlexiDualGridVaeEncoder: {name} must be a SparseTensor, got {type(t).__name__}")
            if t.feats.dim() != 2 or t.feats.shape[1] != 3:
                raise ValueError(f"FlexiDualGridVaeEncoder: {name} feats must be [N, 3], got {tuple(t.feats.shape)}")
        if intersected.feats.shape[0] != vertices.feats.shape[0]:
            raise ValueError(f"vertices has {vertices.feats.shape[0]} voxels but intersected has "
                             f"{intersected.feats.shape[0]}; both must describe the same voxels row by row")
        if not vertices.feats.is_floating_point():
            raise TypeError(f"vertices feats must be floating point (local positions in [0, 1]), got "
                            f"{vertices.feats.dtype}")
        x = vertices.replace(torch.cat([vertices.feats - 0.5,
                                        intersected.feats.to(vertices.feats.dtype) - 0.5], dim=1))
        return super().forward(x, sample_posterior, return_raw)


class FlexiDualGridVaeDecoder(SparseUnetVaeDecoder):
    """Shape decoder: latent -> per-voxel dual grid -> triangle meshes (TRELLIS2_SPEC §2.7; released
    ``shape_dec_next_dc_f16c32_fp16``).

    Args:
        resolution: output grid size (voxel size = 1/resolution in the [-0.5, 0.5]³ cube); see :meth:`set_resolution`.
        model_channels, latent_channels, num_blocks, block_type, up_block_type, block_args, use_fp16: as
            :class:`SparseUnetVaeDecoder` (``out_channels=7``, ``pred_subdiv=True``).
        voxel_margin: m; dual vertices may leave their voxel by up to m voxel sizes.

    Output channels of the trunk: 0:3 dual vertex ``(1+2m)·sigmoid − m``, 3:6 edge-intersection logits, 6 quad split
    weight ``softplus``.
    """

    def __init__(self, resolution: int, model_channels: List[int], latent_channels: int, num_blocks: List[int],
                 block_type: List[str], up_block_type: List[str], block_args: List[Dict[str, Any]],
                 voxel_margin: float = 0.5, use_fp16: bool = False):
        super().__init__(7, model_channels, latent_channels, num_blocks, block_type, up_block_type, block_args,
                         use_fp16, pred_subdiv=True)
        self.set_resolution(resolution)
        self.voxel_margin = voxel_margin

    def set_resolution(self, resolution: int) -> None:
        """Sets the output grid size used to place the mesh vertices (e.g. 512, 1024, 1536).

        Raises:
            ValueError: not a positive int.
        """
        if not isinstance(resolution, int) or isinstance(resolution, bool) or resolution < 1:
            raise ValueError(f"resolution must be a positive int (the output grid size), got {resolution!r}")
        self.resolution = resolution

    def _fields(self, h: "sp.SparseTensor"):
        m = self.voxel_margin
        feats = h.feats
        vertices = (1 + 2 * m) * torch.sigmoid(feats[:, 0:3]) - m
        return vertices, feats[:, 3:6], F.softplus(feats[:, 6:7])

    def _meshes(self, h, vertices, intersected, split, train: bool) -> List[Mesh]:
        # imported here so that the encoder and the raw decoder trunk do not depend on the O-Voxel package
        from pixal3d.ovoxel.flexible_dual_grid import flexible_dual_grid_to_mesh
        meshes = []
        for s in h.layout:
            v, f = flexible_dual_grid_to_mesh(h.coords[s, 1:], vertices[s], intersected[s], split[s], aabb=_AABB,
                                              grid_size=self.resolution, train=train)
            meshes.append(Mesh(v, f))
        return meshes

    def forward(self, x: "sp.SparseTensor", gt_intersected: Optional["sp.SparseTensor"] = None, **kwargs):
        """Decodes latents to meshes.

        Args:
            x: latent SparseTensor (feats ``[N, latent]`` float, int32 coords on the latent grid).
            gt_intersected: training only: SparseTensor with bool feats ``[N_out, 3]`` on the output voxels (row for
                row with the teacher-forced output); the mesh is built from these flags.
            **kwargs: ``return_subs`` (inference) as :meth:`SparseUnetVaeDecoder.forward`.

        Returns:
            eval: ``list[Mesh]`` (one per batch element), or ``(meshes, subs)`` with ``return_subs=True``.
            train: ``(meshes, vertices, intersected_logits, subs_gt, subs)`` where ``vertices`` (feats ``[N, 3]``)
            and ``intersected_logits`` (``[N, 3]``) are SparseTensors on the output voxels; meshes use ``train=True``
            extraction (one mid-vertex per quad).

        Raises:
            ValueError: training without ``gt_intersected`` or with a mismatched voxel count; errors of the trunk.
        """
        decoded = super().forward(x, **kwargs)
        if self.training:
            h, subs_gt, subs = decoded
            if not isinstance(gt_intersected, sp.SparseTensor):
                raise ValueError("FlexiDualGridVaeDecoder in training mode needs gt_intersected (SparseTensor of bool "
                                 "[N, 3] on the output voxels); call .eval() for inference")
            if gt_intersected.feats.shape != (h.feats.shape[0], 3):
                raise ValueError(f"gt_intersected feats must be [{h.feats.shape[0]}, 3] (the decoded voxels), got "
                                 f"{tuple(gt_intersected.feats.shape)}")
            vertices, logits, split = self._fields(h)
            meshes = self._meshes(h, vertices, gt_intersected.feats.bool(), split, train=True)
            return meshes, h.replace(vertices), h.replace(logits), subs_gt, subs
        h, rest = (decoded[0], decoded[1:]) if isinstance(decoded, tuple) else (decoded, ())
        vertices, logits, split = self._fields(h)
        meshes = self._meshes(h, vertices, logits > 0, split, train=False)
        return (meshes, *rest) if rest else meshes
