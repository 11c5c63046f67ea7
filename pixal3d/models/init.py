"""Weight initialisation of the flow DiTs (TRELLIS2_SPEC §2.1 "Initialisation", PIXAL3D_SPEC §4.2).

Only matters for training from scratch: released weights overwrite everything (and ``from_pretrained`` builds on the
``meta`` device, where these calls cost nothing).
"""
import math

import torch.nn as nn

__all__ = ["initialize_flow_weights", "INITIALIZATIONS"]

INITIALIZATIONS = ("vanilla", "scaled")


def initialize_flow_weights(model: nn.Module, scheme: str) -> None:
    """Initialises a flow DiT in place.

    ``model`` must expose ``blocks`` (modulated cross blocks), ``t_embedder.mlp``, ``input_layer``, ``out_layer``,
    ``model_channels``, ``num_blocks``, ``in_channels``, ``share_mod`` (and ``adaLN_modulation`` when shared).

    * ``'scaled'``: every Linear ``N(0, √(2/(5C)))``, bias 0 (this includes Pixal3D's ``proj_linear``); each block's
      self/cross ``to_out`` and ``mlp.mlp[2]`` ``N(0, 1/√(5·num_blocks·C))``; ``input_layer`` ``N(0, 1/√in)``.
    * ``'vanilla'``: every Linear xavier-uniform, bias 0.
    * Both: ``t_embedder`` Linear weights ``N(0, 0.02)``; the last ``adaLN_modulation`` Linear (shared or per block)
      and ``out_layer`` zero. Block ``modulation`` (``randn/√C``), LN affine (1, 0) and RMS gammas (ones) keep their
      construction values.

    Raises:
        ValueError: unknown scheme.
    """
    if scheme not in INITIALIZATIONS:
        raise ValueError(f"initialization must be one of {INITIALIZATIONS}, got {scheme!r}")
    C = model.model_channels
    for m in model.modules():
        if isinstance(m, nn.Linear):
            if scheme == "vanilla":
                nn.init.xavier_uniform_(m.weight)
            else:
                nn.init.normal_(m.weight, std=math.sqrt(2.0 / (5.0 * C)))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    if scheme == "scaled":
        std = 1.0 / math.sqrt(5 * model.num_blocks * C)
        for block in model.blocks:
            for lin in (block.self_attn.to_out, block.cross_attn_out, block.mlp.mlp[2]):
                nn.init.normal_(lin.weight, std=std)
                nn.init.zeros_(lin.bias)
        nn.init.normal_(model.input_layer.weight, std=1.0 / math.sqrt(model.in_channels))
        nn.init.zeros_(model.input_layer.bias)
    nn.init.normal_(model.t_embedder.mlp[0].weight, std=0.02)
    nn.init.normal_(model.t_embedder.mlp[2].weight, std=0.02)
    mods = [model.adaLN_modulation[-1]] if model.share_mod else [b.adaLN_modulation[-1] for b in model.blocks]
    for lin in mods + [model.out_layer]:
        nn.init.zeros_(lin.weight)
        nn.init.zeros_(lin.bias)
