"""Pixal3D's view-aligned projection conditioning (PIXAL3D_SPEC §4.1, §3.4).

``ProjectAttention`` wraps the unchanged TRELLIS.2 cross-attention (``cross_attn_block``) and adds a per-block
``proj_linear`` of the back-projected image features:

    out = cross_attn_block(x, ctx['global']) + proj_linear(ctx['proj'])

un-gated and un-normalised. The context is a dict ``{'global', 'proj'}`` or a tuple ``(global, proj)``. Dense
tokens take ``proj [B, L, Cp]`` aligned with the tokens; sparse tokens take a ``SparseTensor`` (same row order as the
queries) or a plain ``[N, Cp]`` tensor. ``GatedProjectAttention`` is the unreleased ``gated_proj`` variant
(``proj_linear`` over ``cat([proj_semantic, proj_color])``, zero-initialised).
"""
import torch
import torch.nn as nn

__all__ = ["ProjectAttention", "GatedProjectAttention", "split_proj_context"]


def split_proj_context(context, keys=("global", "proj")):
    """Returns the context parts named by ``keys`` from a dict or a tuple/list (in that order).

    Raises:
        ValueError: a key is missing, or the tuple has the wrong length, or the context is of another type.
    """
    if isinstance(context, dict):
        missing = [k for k in keys if k not in context]
        if missing:
            raise ValueError(f"proj-mode condition needs keys {list(keys)}; missing {missing} "
                             f"(got keys {sorted(context)})")
        return tuple(context[k] for k in keys)
    if isinstance(context, (tuple, list)):
        if len(context) != len(keys):
            raise ValueError(f"proj-mode condition tuple must be ({', '.join(keys)}), got {len(context)} items")
        return tuple(context)
    raise ValueError(f"proj-mode condition must be a dict {{{', '.join(repr(k) for k in keys)}}} or a tuple, "
                     f"got {type(context).__name__}")


def _proj_feats(proj, num_tokens, channels: int, sparse: bool, batch: int = None):
    """Checks and returns the feature tensor of a proj condition."""
    feats = proj.feats if hasattr(proj, "feats") and hasattr(proj, "coords") else proj
    if not isinstance(feats, torch.Tensor):
        raise ValueError(f"proj condition must be a tensor or SparseTensor, got {type(proj).__name__}")
    if sparse:
        if feats.dim() != 2 or feats.shape != (num_tokens, channels):
            raise ValueError(f"sparse proj condition must be [N={num_tokens}, {channels}] (one row per voxel, in the "
                             f"voxel order of x), got {tuple(feats.shape)}")
    elif feats.dim() != 3 or feats.shape != (batch, num_tokens, channels):
        raise ValueError(f"dense proj condition must be [B={batch}, L={num_tokens}, {channels}] "
                         f"(tokens in the x-major grid order), got {tuple(feats.shape)}")
    return feats


class ProjectAttention(nn.Module):
    """``cross_attn_block(x, global) + proj_linear(proj)``; keys ``cross_attn_block.*``, ``proj_linear.{weight,bias}``.

    Args:
        cross_attn_block: a ``MultiHeadAttention``/``SparseMultiHeadAttention`` of type ``'cross'``.
        channels: C (output width); proj_in_channels: Cp.
        sparse: whether ``x`` is a ``SparseTensor``.
    """

    def __init__(self, cross_attn_block: nn.Module, channels: int, proj_in_channels: int, sparse: bool = False):
        super().__init__()
        self.cross_attn_block = cross_attn_block
        self.proj_linear = nn.Linear(proj_in_channels, channels, bias=True)
        self.sparse = sparse

    def forward(self, x, context):
        """x: ``[B, L, C]`` or ``SparseTensor [N, C]``; context: ``{'global', 'proj'}`` or ``(global, proj)``."""
        global_ctx, proj = split_proj_context(context)
        out = self.cross_attn_block(x, global_ctx)
        if self.sparse:
            feats = _proj_feats(proj, x.feats.shape[0], self.proj_linear.in_features, True)
            return out.replace(out.feats + self.proj_linear(feats))
        feats = _proj_feats(proj, x.shape[1], self.proj_linear.in_features, False, x.shape[0])
        return out + self.proj_linear(feats)


class GatedProjectAttention(nn.Module):
    """Unreleased ``gated_proj`` variant: ``cross_attn_block(x, global) + proj_linear(cat([semantic, color]))``.

    Context: ``{'global', 'proj_semantic', 'proj_color'}`` or a 3-tuple. ``proj_linear`` is
    ``Linear(dino_in + vae_in, C)``, zero-initialised so training starts from the plain cross attention.
    """

    def __init__(self, cross_attn_block: nn.Module, channels: int, dino_in_channels: int, vae_in_channels: int,
                 sparse: bool = False):
        super().__init__()
        self.cross_attn_block = cross_attn_block
        self.proj_linear = nn.Linear(dino_in_channels + vae_in_channels, channels, bias=True)
        nn.init.zeros_(self.proj_linear.weight)
        nn.init.zeros_(self.proj_linear.bias)
        self.sparse = sparse
        self.dino_in_channels, self.vae_in_channels = dino_in_channels, vae_in_channels

    def forward(self, x, context):
        global_ctx, sem, col = split_proj_context(context, ("global", "proj_semantic", "proj_color"))
        out = self.cross_attn_block(x, global_ctx)
        if self.sparse:
            n = x.feats.shape[0]
            feats = torch.cat([_proj_feats(sem, n, self.dino_in_channels, True),
                               _proj_feats(col, n, self.vae_in_channels, True)], dim=-1)
            return out.replace(out.feats + self.proj_linear(feats))
        B, L = x.shape[:2]
        feats = torch.cat([_proj_feats(sem, L, self.dino_in_channels, False, B),
                           _proj_feats(col, L, self.vae_in_channels, False, B)], dim=-1)
        return out + self.proj_linear(feats)
