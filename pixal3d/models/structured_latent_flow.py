"""Stage-2/3 flow DiTs on sparse structured latents (TRELLIS2_SPEC §2.3, §5.2; PIXAL3D_SPEC §4.2).

``SLatFlowModel`` predicts a velocity per occupied latent voxel. Self-attention is full attention within each
sample, with RoPE from the voxel coordinates; cross attention reads the image condition. ``concat_cond`` (texture
model) is concatenated to the noise features (noise first). ``ElasticSLatFlowModel`` adds the training-time
elastic-memory hook (gradient checkpointing of the first blocks).
"""
import math
from contextlib import contextmanager
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from pixal3d.modules.transformer import (AbsolutePositionEmbedder, ModulatedSparseTransformerCrossBlock,
                                         split_proj_context)
from pixal3d.modules.utils import manual_cast

from .sparse_structure_flow import FlowDiTBase

__all__ = ["SLatFlowModel", "ElasticSLatFlowModel", "SparseTransformerElasticMixin"]


def _sp():
    from pixal3d import sparse
    return sparse


def _is_sparse(x) -> bool:
    return isinstance(x, _sp().SparseTensor)


class SLatFlowModel(FlowDiTBase):
    """Sparse flow DiT (TRELLIS2_SPEC §2.3); constructor arguments as :class:`SparseStructureFlowModel`.

    ``resolution`` is stored but unused in rope mode. Keys: those of the dense model without ``rope_phases``;
    ``input_layer``/``out_layer`` are ``SparseLinear``.
    """

    def __init__(self, resolution: int, in_channels: int, model_channels: int, cond_channels: int,
                 out_channels: int, num_blocks: int, num_heads: Optional[int] = None,
                 num_head_channels: Optional[int] = 64, mlp_ratio: float = 4, pe_mode: str = "ape",
                 rope_freq: Tuple[float, float] = (1.0, 10000.0), dtype: str = "float32",
                 use_checkpoint: bool = False, share_mod: bool = False, initialization: str = "vanilla",
                 qk_rms_norm: bool = False, qk_rms_norm_cross: bool = False, image_attn_mode: str = "cross",
                 proj_in_channels: Optional[int] = None, vae_in_channels: Optional[int] = None, **kwargs):
        super().__init__()
        self._common_init(resolution, in_channels, model_channels, cond_channels, out_channels, num_blocks,
                          num_heads, num_head_channels, mlp_ratio, pe_mode, rope_freq, dtype, use_checkpoint,
                          share_mod, initialization, qk_rms_norm, qk_rms_norm_cross, image_attn_mode,
                          proj_in_channels, vae_in_channels, kwargs)
        sp = _sp()
        if pe_mode == "ape":
            self.pos_embedder = AbsolutePositionEmbedder(model_channels)
        self.input_layer = sp.SparseLinear(in_channels, model_channels)
        self.blocks = nn.ModuleList([ModulatedSparseTransformerCrossBlock(model_channels, cond_channels,
                                                                          **self._block_kwargs())
                                     for _ in range(num_blocks)])
        self.out_layer = sp.SparseLinear(model_channels, out_channels)
        self._finish_init()

    # ------------------------------------------------------------------ input checks
    def _global_cond(self, g, batch: int, label: str):
        sp = _sp()
        if isinstance(g, (list, tuple)) and all(isinstance(a, torch.Tensor) for a in g):
            for i, a in enumerate(g):
                if a.dim() != 2 or a.shape[1] != self.cond_channels:
                    raise ValueError(f"{label}[{i}] must be [L_b, {self.cond_channels}], got {tuple(a.shape)}")
            g = sp.VarLenTensor.from_tensor_list(list(g))
        if isinstance(g, torch.Tensor):
            if g.dim() != 3 or g.shape[0] != batch or g.shape[2] != self.cond_channels:
                raise ValueError(f"{label} must be [B={batch}, L, {self.cond_channels}], a list of B tensors "
                                 f"[L_b, {self.cond_channels}] or a VarLenTensor; got {tuple(g.shape)}")
        elif isinstance(g, sp.VarLenTensor) and not isinstance(g, sp.SparseTensor):
            if g.feats.dim() != 2 or g.feats.shape[1] != self.cond_channels or len(g.layout) != batch:
                raise ValueError(f"{label} VarLenTensor must hold {batch} samples of width {self.cond_channels}, "
                                 f"got {len(g.layout)} samples, feats {tuple(g.feats.shape)}")
        else:
            raise ValueError(f"{label} must be a [B, L, {self.cond_channels}] tensor, a list of [L_b, "
                             f"{self.cond_channels}] tensors or a VarLenTensor; got {type(g).__name__}")
        return manual_cast(g, self.dtype)

    def _proj_cond(self, p, x, width: int, label: str):
        N = x.feats.shape[0]
        if _is_sparse(p):
            if tuple(p.feats.shape) != (N, width):
                raise ValueError(f"{label} must have feats [N={N}, {width}], got {tuple(p.feats.shape)}")
            if p.coords is not x.coords and not torch.equal(p.coords, x.coords):
                raise ValueError(f"{label} must use the same coords (same row order) as x")
            return manual_cast(p.feats, self.dtype)
        if not isinstance(p, torch.Tensor) or tuple(p.shape) != (N, width):
            got = tuple(p.shape) if isinstance(p, torch.Tensor) else type(p).__name__
            raise ValueError(f"{label} must be a SparseTensor or a tensor [N={N}, {width}] (rows in x's voxel "
                             f"order), got {got}")
        return manual_cast(p, self.dtype)

    def _check_cond(self, cond, x):
        batch = len(x.layout)
        if self.image_attn_mode == "cross":
            return self._global_cond(cond, batch, "cond")
        if self.image_attn_mode == "proj":
            g, p = split_proj_context(cond)
            return {"global": self._global_cond(g, batch, "cond['global']"),
                    "proj": self._proj_cond(p, x, self.proj_in_channels, "cond['proj']")}
        g, s, c = split_proj_context(cond, ("global", "proj_semantic", "proj_color"))
        return {"global": self._global_cond(g, batch, "cond['global']"),
                "proj_semantic": self._proj_cond(s, x, self.proj_in_channels, "cond['proj_semantic']"),
                "proj_color": self._proj_cond(c, x, self.vae_in_channels, "cond['proj_color']")}

    # ------------------------------------------------------------------ forward
    def forward(self, x, t: torch.Tensor, cond, concat_cond=None, **kwargs):
        """Flow velocity per voxel.

        Args:
            x: ``SparseTensor`` with feats ``[N, in_channels - C_concat]`` and int32 coords ``[N, 4]``.
            t: ``[B]`` timesteps already multiplied by 1000.
            cond: ``cross`` mode: ``[B, L, cond_channels]``, a list of B ``[L_b, cond_channels]`` tensors, or a
                ``VarLenTensor``. ``proj`` mode: ``{'global': <as above>, 'proj': SparseTensor (x's coords) or
                [N, proj_in_channels]}`` or the tuple ``(global, proj)``.
            concat_cond: optional ``SparseTensor`` with x's coords, concatenated after the noise features.

        Returns:
            ``SparseTensor`` with x's coords and feats ``[N, out_channels]`` in x's dtype.

        Raises:
            TypeError: x or concat_cond is not a SparseTensor.
            ValueError: wrong feature widths, coords, batch sizes, or condition shapes (messages give the expected
                shapes).
        """
        sp = _sp()
        if not _is_sparse(x):
            raise TypeError(f"x must be a pixal3d.sparse.SparseTensor(feats [N, C], coords int32 [N, 4]), "
                            f"got {type(x).__name__}")
        if concat_cond is not None:
            if not _is_sparse(concat_cond):
                raise TypeError(f"concat_cond must be a SparseTensor with x's coords, got {type(concat_cond).__name__}")
            if concat_cond.coords is not x.coords and not torch.equal(concat_cond.coords, x.coords):
                raise ValueError("concat_cond must have the same coords (same row order) as x")
            x = sp.sparse_cat([x, concat_cond], dim=-1)
        if x.feats.dim() != 2 or x.feats.shape[1] != self.in_channels:
            raise ValueError(f"x (with concat_cond) must have feats [N, {self.in_channels}], "
                             f"got {tuple(x.feats.shape)}")
        batch = len(x.layout)
        cond = self._check_cond(cond, x)
        h = self.input_layer(x)
        h = manual_cast(h, self.dtype)
        t_emb = self._embed_time(t, batch)
        if self.pe_mode == "ape":
            h = h.replace(h.feats + manual_cast(self.pos_embedder(h.coords[:, 1:]), self.dtype))
        for block in self.blocks:
            h = block(h, t_emb, cond)
        h = manual_cast(h, x.dtype)
        h = h.replace(F.layer_norm(h.feats, h.feats.shape[-1:]))
        return self.out_layer(h)


class SparseTransformerElasticMixin:
    """Elastic memory for sparse DiTs (TRELLIS2_SPEC §5.2): gradient-checkpoint the first blocks on demand.

    A memory controller (``get_mem_ratio(input_size) -> float`` and ``update_run_states(input_size, mem_ratio)``,
    e.g. the trainer's ``LinearMemoryController``) registered with :meth:`register_memory_controller` picks the
    ratio per training forward; ``input_size`` is the number of tokens.
    """

    _memory_controller = None

    def register_memory_controller(self, memory_controller) -> None:
        """Attaches the controller consulted by training forwards (``None`` detaches it)."""
        self.__dict__["_memory_controller"] = memory_controller

    @staticmethod
    def _get_input_size(x, *args, **kwargs) -> int:
        return x.feats.shape[0]

    @contextmanager
    def with_mem_ratio(self, mem_ratio: float = 1.0):
        """Checkpoints the first ``n = min(ceil((1 - r)·num_blocks) + 1, num_blocks)`` blocks while active and
        yields the exact ratio ``1 - (n - 1)/num_blocks``; ``r = 1`` changes nothing. Blocks go back to no
        checkpointing on exit.

        Raises:
            ValueError: ``mem_ratio`` outside [0, 1].
        """
        if not 0.0 <= mem_ratio <= 1.0:
            raise ValueError(f"mem_ratio must be in [0, 1], got {mem_ratio}")
        if mem_ratio == 1.0:
            yield 1.0
            return
        num_blocks = len(self.blocks)
        n = min(math.ceil((1 - mem_ratio) * num_blocks) + 1, num_blocks)
        for i, block in enumerate(self.blocks):
            block.use_checkpoint = i < n
        try:
            yield 1 - (n - 1) / num_blocks
        finally:
            for block in self.blocks:
                block.use_checkpoint = False

    def forward(self, *args, **kwargs):
        controller = self._memory_controller
        if controller is None or not torch.is_grad_enabled() or not self.training:
            return super().forward(*args, **kwargs)
        size = self._get_input_size(*args, **kwargs)
        with self.with_mem_ratio(controller.get_mem_ratio(size)) as exact:
            out = super().forward(*args, **kwargs)
        controller.update_run_states(size, exact)
        return out


class ElasticSLatFlowModel(SparseTransformerElasticMixin, SLatFlowModel):
    """:class:`SLatFlowModel` with the elastic-memory hook; identical keys, arguments and outputs."""
