"""Stage-1 flow DiT on the dense 16³ sparse-structure latent (TRELLIS2_SPEC §2.1, §2.2; PIXAL3D_SPEC §4.2).

``SparseStructureFlowModel`` predicts the flow velocity of a ``[B, 8, R, R, R]`` latent. Tokens are the grid cells
in x-major order (token ``x·R² + y·R + z``), RoPE phases come from the fixed grid (buffer ``rope_phases``,
complex64 ``[R³, D/2]``). This module also hosts :class:`FlowDiTBase`, the constructor/precision logic shared with
the sparse SLat models.
"""
import warnings
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from pixal3d.modules.attention.rope import rope_phases as compute_rope_phases
from pixal3d.modules.transformer import (AbsolutePositionEmbedder, IMAGE_ATTN_MODES, ModulatedTransformerCrossBlock,
                                         TimestepEmbedder, split_proj_context)
from pixal3d.modules.utils import convert_module_to, manual_cast, str_to_dtype

from .base import ConfigMixin
from .init import INITIALIZATIONS, initialize_flow_weights

__all__ = ["SparseStructureFlowModel", "FlowDiTBase", "TimestepEmbedder"]


class FlowDiTBase(ConfigMixin, nn.Module):
    """Shared part of the flow DiTs: argument checks, ``t_embedder``, shared ``adaLN_modulation``, precision.

    Subclasses build ``input_layer``, ``blocks`` and ``out_layer`` then call :meth:`_finish_init`.
    """

    def _common_init(self, resolution, in_channels, model_channels, cond_channels, out_channels, num_blocks,
                     num_heads, num_head_channels, mlp_ratio, pe_mode, rope_freq, dtype, use_checkpoint, share_mod,
                     initialization, qk_rms_norm, qk_rms_norm_cross, image_attn_mode, proj_in_channels,
                     vae_in_channels, kwargs):
        if kwargs:
            # the Pixal3D classes accept and ignore extra args; say so instead of dropping them silently
            warnings.warn(f"{type(self).__name__}: ignoring unknown constructor arguments {sorted(kwargs)}")
        for name, v in (("resolution", resolution), ("in_channels", in_channels), ("model_channels", model_channels),
                        ("cond_channels", cond_channels), ("out_channels", out_channels), ("num_blocks", num_blocks)):
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if pe_mode not in ("ape", "rope"):
            raise ValueError(f"pe_mode must be 'ape' or 'rope', got {pe_mode!r}")
        if initialization not in INITIALIZATIONS:
            raise ValueError(f"initialization must be one of {INITIALIZATIONS}, got {initialization!r}")
        if image_attn_mode not in IMAGE_ATTN_MODES:
            raise ValueError(f"image_attn_mode must be one of {IMAGE_ATTN_MODES}, got {image_attn_mode!r}")
        self.resolution, self.in_channels, self.model_channels = resolution, in_channels, model_channels
        self.cond_channels, self.out_channels, self.num_blocks = cond_channels, out_channels, num_blocks
        self.num_heads = num_heads or model_channels // num_head_channels
        if model_channels % self.num_heads:
            raise ValueError(f"model_channels ({model_channels}) must be divisible by num_heads ({self.num_heads})")
        self.mlp_ratio, self.pe_mode, self.rope_freq = mlp_ratio, pe_mode, tuple(rope_freq)
        self.use_checkpoint, self.share_mod, self.initialization = use_checkpoint, share_mod, initialization
        self.qk_rms_norm, self.qk_rms_norm_cross = qk_rms_norm, qk_rms_norm_cross
        self.image_attn_mode = image_attn_mode
        self.proj_in_channels = proj_in_channels or cond_channels
        self.vae_in_channels = vae_in_channels or 16
        self.dtype = str_to_dtype(dtype)
        self.t_embedder = TimestepEmbedder(model_channels)
        if share_mod:
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(model_channels, 6 * model_channels))

    def _block_kwargs(self) -> dict:
        return dict(num_heads=self.num_heads, mlp_ratio=self.mlp_ratio, attn_mode="full",
                    use_checkpoint=self.use_checkpoint, use_rope=self.pe_mode == "rope", rope_freq=self.rope_freq,
                    share_mod=self.share_mod, qk_rms_norm=self.qk_rms_norm, qk_rms_norm_cross=self.qk_rms_norm_cross,
                    image_attn_mode=self.image_attn_mode, proj_in_channels=self.proj_in_channels,
                    vae_in_channels=self.vae_in_channels)

    def _finish_init(self) -> None:
        initialize_flow_weights(self, self.initialization)
        self.convert_to(self.dtype)

    @property
    def device(self) -> torch.device:
        """Device of the parameters."""
        return next(self.parameters()).device

    def convert_to(self, dtype) -> None:
        """Converts the Linear layers inside ``blocks`` (incl. ``proj_linear``) to ``dtype``; everything else stays
        float32 (TRELLIS2_SPEC §2.1 "Precision"). Sets ``self.dtype``, the dtype activations run in."""
        self.dtype = str_to_dtype(dtype)
        convert_module_to(self.blocks, self.dtype)

    def _embed_time(self, t: torch.Tensor, batch: int) -> torch.Tensor:
        if not isinstance(t, torch.Tensor) or t.dim() != 1 or t.shape[0] not in (1, batch):
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"t must be a 1-D tensor [B={batch}] of timesteps in [0, 1000], got {got}")
        t_emb = self.t_embedder(t)
        if self.share_mod:
            t_emb = self.adaLN_modulation(t_emb)
        return manual_cast(t_emb, self.dtype)


class SparseStructureFlowModel(FlowDiTBase):
    """Dense flow DiT of stage 1 (TRELLIS2_SPEC §2.2) with Pixal3D's optional projection conditioning (§4.2).

    Args (reference names): resolution R; in/out channels; model_channels C; cond_channels C_ctx; num_blocks;
    num_heads (default ``C // num_head_channels``); mlp_ratio; pe_mode ``'ape'|'rope'``; rope_freq; dtype of the
    torso (``'float32'``, ``'float16'``, ``'bfloat16'``); use_checkpoint; share_mod; initialization
    ``'vanilla'|'scaled'``; qk_rms_norm(_cross); image_attn_mode ``'cross'|'proj'|'gated_proj'``; proj_in_channels
    (default C_ctx); vae_in_channels (default 16). Unknown extra args are ignored with a warning (as the reference
    accepts ``**kwargs``).

    Buffers: ``rope_phases`` complex64 ``[R³, D/2]`` (rope mode, persistent; files without it, or with only its real
    part, load fine — it is recomputed and checked); ``pos_emb`` ``[R³, C]`` (ape mode).
    """
    _derived_buffers = ("rope_phases", "pos_emb")

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
        if pe_mode == "ape":
            self.register_buffer("pos_emb", self._compute_pos_emb(None))
        else:
            self.register_buffer("rope_phases", self._compute_rope_phases(None))
        self.input_layer = nn.Linear(in_channels, model_channels)
        self.blocks = nn.ModuleList([ModulatedTransformerCrossBlock(model_channels, cond_channels,
                                                                    **self._block_kwargs())
                                     for _ in range(num_blocks)])
        self.out_layer = nn.Linear(model_channels, out_channels)
        self._finish_init()

    # ------------------------------------------------------------------ derived buffers
    def _grid(self, device) -> torch.Tensor:
        r = torch.arange(self.resolution, device=device)
        return torch.stack(torch.meshgrid(r, r, r, indexing="ij"), dim=-1).reshape(-1, 3)

    def _compute_rope_phases(self, device) -> torch.Tensor:
        return compute_rope_phases(self._grid(device), self.model_channels // self.num_heads, self.rope_freq)

    def _compute_pos_emb(self, device) -> torch.Tensor:
        return AbsolutePositionEmbedder(self.model_channels, 3)(self._grid(device))

    def rebuild_derived_buffers(self, device=None) -> None:
        """Recomputes ``rope_phases``/``pos_emb`` (e.g. after loading on the ``meta`` device)."""
        device = device if device is not None else self.input_layer.weight.device
        if self.pe_mode == "rope":
            self.rope_phases = self._compute_rope_phases(device)
        else:
            self.pos_emb = self._compute_pos_emb(device)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # The phase table is a function of the config, so a file may omit it (the TRELLIS.2 release does). A complex
        # table in the file is used as stored, like the reference's load_state_dict would: a model that was run or
        # trained with an altered table (e.g. one reloaded from a real-valued copy, imaginary part zero) must keep it
        # to reproduce its outputs. A real-typed table can only be a lossy copy of the complex buffer: it is checked
        # against the config and the computed table is kept.
        name = "rope_phases" if self.pe_mode == "rope" else "pos_emb"
        key = prefix + name
        given = state_dict.pop(key, None)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if key in missing_keys:
            missing_keys.remove(key)
        if given is None:
            return
        ref = self._compute_rope_phases("cpu") if name == "rope_phases" else self._compute_pos_emb("cpu")
        val = given.detach().to("cpu")
        if val.shape != ref.shape:
            error_msgs.append(f"{key}: the stored table has shape {tuple(val.shape)} but this config computes "
                              f"{tuple(ref.shape)}; check resolution/num_heads/rope_freq")
            return
        if val.is_complex() == ref.is_complex():
            if not torch.allclose(val.to(ref.dtype), ref, atol=1e-4, rtol=1e-4):
                warnings.warn(f"{key} in the checkpoint differs from the table this config computes; using the "
                              "stored one, as the model was run with it", stacklevel=2)
            with torch.no_grad():
                getattr(self, name).copy_(val.to(getattr(self, name).device))
        elif not torch.allclose(val.to(ref.real.dtype), ref.real, atol=1e-4, rtol=1e-4):
            error_msgs.append(f"{key}: the stored real-valued table does not match the real part of the one this "
                              "config computes; check resolution/num_heads/rope_freq")

    # ------------------------------------------------------------------ forward
    def _check_cond(self, cond, batch: int):
        def check_global(g):
            if not isinstance(g, torch.Tensor) or g.dim() != 3 or g.shape[0] != batch \
                    or g.shape[2] != self.cond_channels:
                got = tuple(g.shape) if isinstance(g, torch.Tensor) else type(g).__name__
                raise ValueError(f"cond{'[global]' if self.image_attn_mode != 'cross' else ''} must be "
                                 f"[B={batch}, L, {self.cond_channels}], got {got}")
        if self.image_attn_mode == "cross":
            check_global(cond)
            return manual_cast(cond, self.dtype)
        keys = ("global", "proj") if self.image_attn_mode == "proj" else ("global", "proj_semantic", "proj_color")
        parts = split_proj_context(cond, keys)
        check_global(parts[0])
        L = self.resolution ** 3
        widths = (self.proj_in_channels,) if self.image_attn_mode == "proj" else (self.proj_in_channels,
                                                                                  self.vae_in_channels)
        for k, p, w in zip(keys[1:], parts[1:], widths):
            if not isinstance(p, torch.Tensor) or tuple(p.shape) != (batch, L, w):
                got = tuple(p.shape) if isinstance(p, torch.Tensor) else type(p).__name__
                raise ValueError(f"cond[{k!r}] must be [B={batch}, R³={L}, {w}] (x-major grid order), got {got}")
        return {k: manual_cast(p, self.dtype) for k, p in zip(keys, parts)}

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor:
        """Flow velocity.

        Args:
            x: ``[B, in_channels, R, R, R]`` noisy latent.
            t: ``[B]`` timesteps already multiplied by 1000.
            cond: ``[B, L, cond_channels]`` (``cross``), or ``{'global': [B, L, cond_channels],
                'proj': [B, R³, proj_in_channels]}`` / ``(global, proj)`` (``proj`` mode).

        Returns:
            ``[B, out_channels, R, R, R]`` in ``x.dtype``.

        Raises:
            ValueError: any input of the wrong shape, or a proj-mode condition without its ``proj`` part.
        """
        R = self.resolution
        if not isinstance(x, torch.Tensor) or x.dim() != 5 or tuple(x.shape[1:]) != (self.in_channels, R, R, R):
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must be [B, {self.in_channels}, {R}, {R}, {R}], got {got}")
        B = x.shape[0]
        cond = self._check_cond(cond, B)
        h = self.input_layer(x.reshape(B, self.in_channels, -1).permute(0, 2, 1))
        if self.pe_mode == "ape":
            h = h + self.pos_emb[None]
        t_emb = self._embed_time(t, B)
        h = manual_cast(h, self.dtype)
        phases = self.rope_phases if self.pe_mode == "rope" else None
        for block in self.blocks:
            h = block(h, t_emb, cond, phases)
        h = manual_cast(h, x.dtype)
        h = self.out_layer(F.layer_norm(h, h.shape[-1:]))
        return h.permute(0, 2, 1).reshape(B, self.out_channels, R, R, R)
