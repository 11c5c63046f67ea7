"""Sparse U-Net VAE: the texture SC-VAE and the trunk of the shape SC-VAE (TRELLIS2_SPEC §2.6).

Both networks are a list of stages; stage ``i`` holds ``num_blocks[i]`` blocks of ``block_type[i]`` at width
``model_channels[i]`` followed (except in the last stage) by one resampling block ``model_channels[i] ->
model_channels[i+1]``. Keys are therefore ``blocks.{i}.{j}`` with the resampling block at ``j = num_blocks[i]``.

Precision: ``use_fp16`` stores the Linear/conv parameters inside ``blocks`` in float16 and runs the stages in float16;
the input/output projections and all LayerNorm parameters stay float32 (the "skin").
"""
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from pixal3d import sparse as sp
from pixal3d.models.base import ConfigMixin
from pixal3d.modules.fused_layer_norm import layer_norm_act
from pixal3d.modules.utils import convert_module_to

from .blocks import BLOCK_TYPES

__all__ = ["SparseUnetVaeEncoder", "SparseUnetVaeDecoder"]

# Spatial-cache key under which SparseSpatial2Channel stores the coarse->fine structure that C2S reuses (§1.3).
_C2S_CACHE_KEY = "channel2spatial_2"


def _block_class(name: str, what: str):
    if name not in BLOCK_TYPES:
        raise ValueError(f"unknown {what} {name!r}; known: {', '.join(sorted(BLOCK_TYPES))}")
    return BLOCK_TYPES[name]


def _check_stage_args(model_channels, num_blocks, block_type, resample_type, block_args, resample_name):
    n = len(num_blocks)
    if n == 0:
        raise ValueError("num_blocks must list at least one stage")
    for name, seq, want in (("model_channels", model_channels, n), ("block_type", block_type, n),
                            ("block_args", block_args, n), (resample_name, resample_type, n - 1)):
        if len(seq) < want:
            raise ValueError(f"{name} has {len(seq)} entries but {want} are needed for {n} stages")


def _build_stages(model_channels, num_blocks, block_type, resample_type, block_args, extra_resample_args):
    stages = nn.ModuleList()
    for i in range(len(num_blocks)):
        stage = nn.ModuleList()
        cls = _block_class(block_type[i], "block_type")
        for _ in range(num_blocks[i]):
            stage.append(cls(model_channels[i], **block_args[i]))
        if i < len(num_blocks) - 1:
            rcls = _block_class(resample_type[i], "resampling block type")
            stage.append(rcls(model_channels[i], model_channels[i + 1], **extra_resample_args, **block_args[i]))
        stages.append(stage)
    return stages


def _xavier_linears(module: nn.Module) -> None:
    # every nn.Linear (SparseLinear included) gets xavier-uniform weights and zero bias, after the blocks' own init
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _check_input(x, channels: int, who: str) -> None:
    if not isinstance(x, sp.SparseTensor):
        raise TypeError(f"{who} expects a pixal3d.sparse.SparseTensor, got {type(x).__name__}")
    if x.coords.dtype != torch.int32 or x.coords.dim() != 2 or x.coords.shape[1] != 4:
        raise ValueError(f"{who}: coords must be int32 [N, 4] rows (batch, x, y, z), got {x.coords.dtype} "
                         f"{tuple(x.coords.shape)}")
    if x.feats.dim() != 2 or x.feats.shape[1] != channels:
        raise ValueError(f"{who} expects feats [N, {channels}], got {tuple(x.feats.shape)}")
    if not x.feats.is_floating_point():
        raise TypeError(f"{who} expects floating-point feats, got {x.feats.dtype}; convert with x.float()")


class _SparseUnetBase(ConfigMixin, nn.Module):
    """Shared fp16 handling: only ``blocks`` changes dtype."""

    def convert_to_fp16(self) -> None:
        """Stores the Linear/conv parameters of ``blocks`` in float16 and runs the stages in float16."""
        self.use_fp16 = True
        self.dtype = torch.float16
        convert_module_to(self.blocks, torch.float16)

    def convert_to_fp32(self) -> None:
        """Back to float32 stages."""
        self.use_fp16 = False
        self.dtype = torch.float32
        convert_module_to(self.blocks, torch.float32)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


class SparseUnetVaeEncoder(_SparseUnetBase):
    """SC-VAE encoder (TRELLIS2_SPEC §2.6; released ``tex_enc_next_dc_f16c32_fp16``).

    Args:
        in_channels: input feature channels (6 for PBR: base colour RGB, metallic, roughness, alpha in [-1, 1]).
        model_channels: width per stage, e.g. ``[64, 128, 256, 512, 1024]``.
        latent_channels: latent channels (32).
        num_blocks: blocks per stage, e.g. ``[0, 4, 8, 16, 4]``.
        block_type: per-stage block class name (``'SparseConvNeXtBlock3d'``).
        down_block_type: per-stage (all but the last) downsampling block name (``'SparseResBlockS2C3d'``).
        block_args: per-stage keyword args for the blocks (only ``use_checkpoint`` in the released configs).
        use_fp16: float16 stages.

    Keys: ``input_layer [C0, in]``, ``blocks.{i}.{j}.*``, ``to_latent [2·latent, C_last]``.
    """

    def __init__(self, in_channels: int, model_channels: List[int], latent_channels: int, num_blocks: List[int],
                 block_type: List[str], down_block_type: List[str], block_args: List[Dict[str, Any]],
                 use_fp16: bool = False):
        super().__init__()
        _check_stage_args(model_channels, num_blocks, block_type, down_block_type, block_args, "down_block_type")
        self.in_channels = in_channels
        self.model_channels = list(model_channels)
        self.latent_channels = latent_channels
        self.num_blocks = list(num_blocks)
        self.use_fp16 = use_fp16
        self.dtype = torch.float16 if use_fp16 else torch.float32

        self.input_layer = sp.SparseLinear(in_channels, model_channels[0])
        self.to_latent = sp.SparseLinear(model_channels[len(num_blocks) - 1], 2 * latent_channels)
        self.blocks = _build_stages(model_channels, num_blocks, block_type, down_block_type, block_args, {})
        _xavier_linears(self)
        if use_fp16:
            self.convert_to_fp16()

    def forward(self, x: "sp.SparseTensor", sample_posterior: bool = False, return_raw: bool = False):
        """Encodes sparse voxel features to the latent grid (``2^(stages-1)`` times coarser per axis).

        Args:
            x: SparseTensor, feats ``[N, in_channels]`` float, coords int32 ``[N, 4]`` at the input resolution.
            sample_posterior: ``z = mean + exp(logvar/2)·ε`` instead of ``z = mean``.
            return_raw: also return ``mean`` and ``logvar``.

        Returns:
            ``z`` (SparseTensor, feats ``[M, latent]`` in ``x``'s dtype, coarse coords sorted by (b, x, y, z)), or
            ``(z, mean, logvar)`` with plain tensors ``[M, latent]``. ``z`` shares the spatial cache of ``x``, so
            a decoder fed with it (or a ``replace`` of it) reproduces the encoder's structure.

        Raises:
            TypeError / ValueError: ``x`` is not a SparseTensor with int32 ``[N, 4]`` coords and
            ``[N, in_channels]`` float feats.
        """
        _check_input(x, self.in_channels, type(self).__name__)
        h = self.input_layer(x).type(self.dtype)
        for stage in self.blocks:
            for block in stage:
                h = block(h)
        h = h.type(x.dtype)
        h = h.replace(F.layer_norm(h.feats, h.feats.shape[-1:]))
        h = self.to_latent(h)
        mean, logvar = h.feats.chunk(2, dim=-1)
        if sample_posterior:
            std = torch.exp(0.5 * logvar)
            z = mean + std * torch.randn_like(std)
        else:
            z = mean
        z = h.replace(z)
        if return_raw:
            return z, mean, logvar
        return z


class SparseUnetVaeDecoder(_SparseUnetBase):
    """SC-VAE decoder with learned or guided subdivision (TRELLIS2_SPEC §2.6; released ``tex_dec_next_dc_f16c32_fp16``).

    Args:
        out_channels: output feature channels (6 for PBR, 7 for the shape decoder).
        model_channels: width per stage, e.g. ``[1024, 512, 256, 128, 64]``.
        latent_channels: latent channels (32).
        num_blocks: blocks per stage, e.g. ``[4, 16, 8, 4, 0]``.
        block_type: per-stage block class name.
        up_block_type: per-stage (all but the last) upsampling block name (``'SparseResBlockC2S3d'``).
        block_args: per-stage keyword args for the blocks.
        use_fp16: float16 stages.
        pred_subdiv: the upsampling blocks predict their subdivision (``to_subdiv`` heads); when False they are
            guided by ``guide_subs`` or by the spatial cache.

    Keys: ``from_latent [C0, latent]``, ``blocks.{i}.{j}.*``, ``output_layer [out, C_last]``.
    """

    def __init__(self, out_channels: int, model_channels: List[int], latent_channels: int, num_blocks: List[int],
                 block_type: List[str], up_block_type: List[str], block_args: List[Dict[str, Any]],
                 use_fp16: bool = False, pred_subdiv: bool = True):
        super().__init__()
        _check_stage_args(model_channels, num_blocks, block_type, up_block_type, block_args, "up_block_type")
        self.out_channels = out_channels
        self.model_channels = list(model_channels)
        self.latent_channels = latent_channels
        self.num_blocks = list(num_blocks)
        self.use_fp16 = use_fp16
        self.pred_subdiv = pred_subdiv
        self.dtype = torch.float16 if use_fp16 else torch.float32

        self.output_layer = sp.SparseLinear(model_channels[len(num_blocks) - 1], out_channels)
        self.from_latent = sp.SparseLinear(latent_channels, model_channels[0])
        self.blocks = _build_stages(model_channels, num_blocks, block_type, up_block_type, block_args,
                                    {"pred_subdiv": pred_subdiv})
        _xavier_linears(self)
        if use_fp16:
            self.convert_to_fp16()

    @property
    def num_upsamples(self) -> int:
        """Number of ×2 upsampling blocks (stages − 1)."""
        return len(self.blocks) - 1

    def _check_guides(self, guide_subs) -> None:
        if not isinstance(guide_subs, (list, tuple)):
            raise TypeError(f"guide_subs must be a list of {self.num_upsamples} SparseTensors, "
                            f"got {type(guide_subs).__name__}")
        if len(guide_subs) != self.num_upsamples:
            raise ValueError(f"guide_subs has {len(guide_subs)} entries but the decoder has {self.num_upsamples} "
                             "upsampling blocks; pass one subdivision SparseTensor per level (e.g. the `subs` "
                             "returned by the shape decoder with return_subs=True)")
        for i, g in enumerate(guide_subs):
            if not isinstance(g, sp.SparseTensor):
                raise TypeError(f"guide_subs[{i}] must be a SparseTensor, got {type(g).__name__}")
            if g.feats.dim() != 2 or g.feats.shape[1] != 8:
                raise ValueError(f"guide_subs[{i}] feats must be [N, 8] (8 child logits or flags per voxel), got "
                                 f"{tuple(g.feats.shape)}")

    @staticmethod
    def _plan_guided_levels(h, guide_subs) -> List["sp.SparseTensor"]:
        """Bool copies of the guides (fresh objects per call: nothing is memoised on the caller's guides), with the
        whole upsampling structure planned ahead (:func:`pixal3d.sparse.spatial.plan_channel2spatial`: every host
        sync of the chain happens here, so the forward then queues its GPU work without stalling). Not planned
        when ``h`` carries an encoder's structure, which the upsampling blocks follow instead of the guides.

        Raises:
            ValueError: a guide whose voxel count differs from its level's.
        """
        guides = [g.replace(g.feats if g.feats.dtype == torch.bool else g.feats > 0) for g in guide_subs]
        if h.get_spatial_cache(_C2S_CACHE_KEY) is None:
            try:
                sp.plan_channel2spatial(h, guides, 2)
            except ValueError as e:
                raise ValueError(f"guide_subs does not lie on the decoder's voxels ({e}); guides must come from a "
                                 "decoder run on the same latent coordinates") from e
        return guides

    @staticmethod
    def _guide_level_mismatch(i: int, guide, h) -> Optional[torch.Tensor]:
        """Raises at once when the voxel counts differ; otherwise a 0-dim bool device tensor, true when the
        coordinates differ (None when they are the same tensor). Reading it would synchronise, so the decoder
        collects the flags and reads them once, after its last level (:meth:`_raise_on_guide_mismatch`)."""
        if guide.coords.shape != h.coords.shape:
            raise ValueError(f"guide_subs[{i}] does not lie on the decoder's voxels at level {i} "
                             f"({guide.coords.shape[0]} vs {h.coords.shape[0]} voxels); guides must come from a "
                             "decoder run on the same latent coordinates")
        return None if guide.coords is h.coords else (guide.coords != h.coords).any()

    @staticmethod
    def _raise_on_guide_mismatch(flags: Dict[int, torch.Tensor]) -> None:
        if not flags:
            return
        differ = torch.stack(list(flags.values())).cpu().tolist()  # the decoder's one sync for its guides
        bad = [i for i, d in zip(flags, differ) if d]
        if bad:
            raise ValueError(f"guide_subs{bad} do not lie on the decoder's voxels at those levels (same voxel "
                             "counts, other coordinates or another order); guides must come from a decoder run on "
                             "the same latent coordinates")

    def forward(self, x: "sp.SparseTensor", guide_subs: Optional[Sequence["sp.SparseTensor"]] = None,
                return_subs: bool = False):
        """Decodes a latent SparseTensor.

        Args:
            x: SparseTensor, feats ``[N, latent]`` float, int32 coords ``[N, 4]`` on the latent grid.
            guide_subs: only with ``pred_subdiv=False``: one SparseTensor per upsampling level with feats
                ``[N_i, 8]`` (logits ``> 0`` or bool flags) on that level's voxels. May be omitted when ``x``
                carries the encoder's spatial cache (training / structure reuse).
            return_subs: only with ``pred_subdiv=True``: also return the predicted subdivision logits.

        Returns:
            ``h`` SparseTensor feats ``[N_out, out_channels]`` in ``x``'s dtype at ``2^(stages-1)``× resolution;
            with ``return_subs`` ``(h, subs)`` (``subs[i]`` feats ``[N_i, 8]`` logits on level-i voxels); in training
            mode with ``pred_subdiv`` ``(h, subs_gt, subs)`` where ``subs_gt[i]`` is the encoder's bool
            ``[N_i, 8]`` child occupancy read from the spatial cache (``'subdivision'``, None if absent).

        Raises:
            TypeError / ValueError: bad ``x``; ``guide_subs`` with ``pred_subdiv=True``; ``return_subs`` with
            ``pred_subdiv=False``; wrong guide count/shape/coordinates; no guide and no cached structure when
            ``pred_subdiv=False``.
        """
        _check_input(x, self.latent_channels, type(self).__name__)
        if guide_subs is not None and self.pred_subdiv:
            raise ValueError("guide_subs is only for decoders built with pred_subdiv=False; this one predicts its own "
                             "subdivisions")
        if return_subs and not self.pred_subdiv:
            raise ValueError("return_subs needs a decoder built with pred_subdiv=True (this one is guided)")
        if guide_subs is not None:
            self._check_guides(guide_subs)

        h = self.from_latent(x).type(self.dtype)
        subs_gt, subs = [], []
        guides = None if guide_subs is None else self._plan_guided_levels(h, guide_subs)
        guide_flags = {}  # level -> device flag "guide coordinates differ", read once after the last level
        last = len(self.blocks) - 1
        for i, stage in enumerate(self.blocks):
            for j, block in enumerate(stage):
                if i < last and j == len(stage) - 1:
                    if self.pred_subdiv:
                        if self.training:
                            subs_gt.append(h.get_spatial_cache("subdivision"))
                        h, sub = block(h)
                        subs.append(sub)
                    else:
                        guide = None
                        if guides is not None:
                            guide = guides[i]
                            flag = self._guide_level_mismatch(i, guide, h)
                            if flag is not None:
                                guide_flags[i] = flag
                        elif h.get_spatial_cache(_C2S_CACHE_KEY) is None:
                            raise ValueError(f"decoder built with pred_subdiv=False needs guide_subs (one subdivision "
                                             f"per level) or a latent carrying the encoder's spatial cache; level {i} "
                                             "has neither")
                        h = block(h, subdiv=guide)
                else:
                    h = block(h)
        self._raise_on_guide_mismatch(guide_flags)
        # F.layer_norm (eps 1e-5, no affine) in x's dtype; fused with the upcast from the fp16 torso on CUDA
        h = h.replace(layer_norm_act(h.feats, eps=1e-5, out_dtype=x.dtype))
        h = self.output_layer(h)
        if self.training and self.pred_subdiv:
            return h, subs_gt, subs
        if return_subs:
            return h, subs
        return h

    def upsample(self, x: "sp.SparseTensor", upsample_times: int) -> torch.Tensor:
        """Coordinates reached after ``upsample_times`` predicted ×2 subdivisions (used by the cascades, §4.5).

        Runs ``from_latent`` and the first ``upsample_times`` stages only.

        Args:
            x: latent SparseTensor as in :meth:`forward`.
            upsample_times: ``0 <= upsample_times <= stages - 1``.

        Returns:
            int32 coords ``[M, 4]`` at ``2^upsample_times`` × the latent resolution.

        Raises:
            ValueError: ``pred_subdiv=False``, or ``upsample_times`` out of range. TypeError / ValueError: bad ``x``.
        """
        if not self.pred_subdiv:
            raise ValueError("upsample() needs a decoder that predicts its subdivisions (pred_subdiv=True)")
        if not isinstance(upsample_times, int) or not 0 <= upsample_times <= self.num_upsamples:
            raise ValueError(f"upsample_times must be an int in [0, {self.num_upsamples}], got {upsample_times!r}")
        _check_input(x, self.latent_channels, type(self).__name__)
        h = self.from_latent(x).type(self.dtype)
        for i in range(upsample_times):
            for block in self.blocks[i][:-1]:
                h = block(h)
            h, _ = self.blocks[i][-1](h)
        return h.coords
