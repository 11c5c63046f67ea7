"""Writes ``configs/demo/*.json``: the six training configs of the embedded demo model (issue 9).

The architecture constants live here, in one place, so that the six configs agree with each other (latent
channels, grids, image encoder width) and with ``scripts/train_demo.py``, which materialises them (fills the
placeholders, the step counts of ``--scale``, the normalisation statistics) before calling ``train.py``.

Placeholders in the written files (``train.py`` cannot run them unmaterialised; ``train_demo.py`` replaces them):

* ``"$DEMO_DINOV3"``: folder of the frozen image backbone (``<pipeline>/dinov3``);
* ``"$DEMO_HELDOUT"``: the held-out list (``<work>/heldout.txt``), passed as every dataset's ``skip_list``;
* ``"$DEMO_SHAPE_NORM"`` / ``"$DEMO_TEX_NORM"``: ``{"mean", "std"}`` of the shape / texture latents.

The design and its reasons are in ``docs/DEMO_MODEL.md``.

    python scripts/make_demo_configs.py [--out configs/demo]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

__all__ = ["DEMO", "build_configs", "write_configs"]

# One place for the sizes (docs/DEMO_MODEL.md explains them).
DEMO = {
    "ovoxel_resolution": 128,        # O-Voxel grid of the SC-VAEs (dual_grid_128, pbr_voxels_128)
    "scvae_levels": 3,               # S2C levels: x8, latent grid 128 / 8 = 16
    "latent_grid": 16,               # shape / texture latent grid = SS occupancy grid
    "latent_channels": 16,           # shape and texture latent channels
    "ss_latent_resolution": 8,       # SS VAE: 16³ occupancy -> 8³ x 8 latent
    "ss_latent_channels": 8,
    "image_size": 128,               # conditioning image side (renders are resized to it, LANCZOS)
    "dino": {                        # frozen, seeded DINOv3-architecture ViT (see DEMO_MODEL.md)
        "patch_size": 8, "hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_register_tokens": 4, "image_size": 128, "rope_theta": 100.0,
    },
    "dino_seed": 0,
    "flow": {"model_channels": 192, "num_blocks": 6, "num_heads": 3, "mlp_ratio": 3.0},
    "num_views": 4,                  # views rendered per asset (render_cond --num_views)
}

_FLOW_COMMON = {"pe_mode": "rope", "share_mod": True, "initialization": "scaled", "qk_rms_norm": True,
                "qk_rms_norm_cross": True, "image_attn_mode": "proj", "dtype": "float32"}
_CLIP = {"name": "AdaptiveGradClipper", "args": {"max_norm": 1.0, "clip_percentile": 95}}
_LOG = {"i_print": 50, "i_log": 1, "i_sample": 10_000_000, "i_save": 500, "i_ddpcheck": 1000, "num_workers": 0}


def _sc_vae(kind: str) -> dict:
    """Encoder/decoder model entries of the shape (``'shape'``) or texture (``'tex'``) SC-VAE."""
    n = DEMO["scvae_levels"] + 1
    # finest level (128³): the texture VAE gets 24 channels and a block there. At 12 channels the C2S shortcut hands
    # each child voxel only 12 / 8 -> 3 distinct channels with no block after it, and the texture VAE sat for ~1,000
    # steps on the "one mean colour for every voxel" plateau (docs/DEMO_MODEL.md); geometry needs no such detail.
    fine, fine_blocks = (24, 1) if kind == "tex" else (12, 0)
    enc_ch, dec_ch = [fine, 24, 48, 96][:n], [96, 48, 24, fine][:n]
    common = {"latent_channels": DEMO["latent_channels"], "block_type": ["SparseConvNeXtBlock3d"] * n,
              "block_args": [{}] * n, "use_fp16": False}
    enc = {**common, "model_channels": enc_ch, "num_blocks": [fine_blocks, 1, 1, 2][:n],
           "down_block_type": ["SparseResBlockS2C3d"] * (n - 1)}
    dec = {**common, "model_channels": dec_ch, "num_blocks": [2, 1, 1, fine_blocks][:n],
           "up_block_type": ["SparseResBlockC2S3d"] * (n - 1)}
    if kind == "shape":
        return {"encoder": {"name": "FlexiDualGridVaeEncoder", "args": enc},
                "decoder": {"name": "FlexiDualGridVaeDecoder", "args": {"resolution": DEMO["ovoxel_resolution"],
                                                                        **dec}}}
    return {"encoder": {"name": "SparseUnetVaeEncoder", "args": {"in_channels": 6, **enc}},
            "decoder": {"name": "SparseUnetVaeDecoder", "args": {"out_channels": 6, "pred_subdiv": False, **dec}}}


def _trainer(name: str, lr: float, batch: int, ema=0.999, **extra) -> dict:
    return {"name": name, "args": {"max_steps": 1000, "batch_size_per_gpu": batch, "batch_split": 1,
                                   "optimizer": {"name": "AdamW", "args": {"lr": lr, "weight_decay": 0.0,
                                                                           "betas": [0.9, 0.99]}},
                                   "ema_rate": ema, "grad_clip": _CLIP, **_LOG, **extra}}


def _extractor(grid: int) -> dict:
    return {"name": "DinoV3ProjFeatureExtractor",
            "args": {"model_name": "$DEMO_DINOV3", "image_size": DEMO["image_size"], "grid_resolution": grid}}


def _flow(name: str, resolution: int, in_ch: int, out_ch: int) -> dict:
    c = DEMO["dino"]["hidden_size"]
    return {"name": name, "args": {"resolution": resolution, "in_channels": in_ch, "out_channels": out_ch,
                                   "cond_channels": c, "proj_in_channels": c, **DEMO["flow"], **_FLOW_COMMON}}


def build_configs() -> dict:
    """``{stage: config}`` for the six stages (with placeholders, see the module docstring)."""
    R, G, L = DEMO["ovoxel_resolution"], DEMO["latent_grid"], DEMO["latent_channels"]
    # SLatShape checks coords < resolution // 16 (the released x16 VAEs); our x8 VAE at 128 has grid 16 = 256 // 16
    slat_res = 16 * G
    skip = "$DEMO_HELDOUT"
    # every VAE trains on the view-aligned O-Voxels, the exact distribution its encoder later encodes for the flows
    # (num_views rotated copies of every asset)
    vae_ds = {"resolution": R, "min_aesthetic_score": None, "skip_list": skip, "num_views": DEMO["num_views"]}
    ss_ch = DEMO["ss_latent_channels"]
    cfgs = {}
    cfgs["ss_vae"] = {
        "models": {"encoder": {"name": "SparseStructureEncoder", "args": {
                       "in_channels": 1, "latent_channels": ss_ch, "num_res_blocks": 1, "num_res_blocks_middle": 1,
                       "channels": [32, 64], "use_fp16": False}},
                   "decoder": {"name": "SparseStructureDecoder", "args": {
                       "out_channels": 1, "latent_channels": ss_ch, "num_res_blocks": 1, "num_res_blocks_middle": 1,
                       "channels": [64, 32], "use_fp16": False}}},
        "dataset": {"name": "SparseStructureViewDataset", "args": {
            "resolution": G, "voxel_resolution": R, "min_aesthetic_score": None, "skip_list": skip,
            "num_views": DEMO["num_views"]}},
        "trainer": _trainer("SparseStructureVaeTrainer", 1e-3, 32, snapshot_batch_size=2, loss_type="bce",
                            lambda_kl=1e-3),
    }
    cfgs["shape_vae"] = {
        "models": _sc_vae("shape"),
        "dataset": {"name": "FlexiDualGridViewDataset", "args": {**vae_ds, "max_active_voxels": 200_000,
                                                                 "with_mesh": False}},
        "trainer": _trainer("ShapeVaeTrainer", 1e-3, 8, snapshot_batch_size=2, lambda_intersected=0.1,
                            lambda_vertice=0.01, lambda_subdiv=0.1, lambda_kl=1e-6, render_loss="off"),
    }
    cfgs["tex_vae"] = {
        "models": _sc_vae("tex"),
        "dataset": {"name": "SparseVoxelPbrViewDataset", "args": {
            **vae_ds, "attrs": ["base_color", "metallic", "roughness", "alpha"], "with_mesh": False}},
        # l1 + l2: the squared term breaks the constant-colour plateau sooner (docs/DEMO_MODEL.md, 2-sample study)
        "trainer": _trainer("PbrVaeTrainer", 1e-3, 8, snapshot_batch_size=2, loss_type="l1+l2", lambda_kl=1e-6,
                            lambda_render=0.0),
    }
    fm = {"p_uncond": 0.1, "sigma_min": 1e-5}
    view_ds = {"image_size": DEMO["image_size"], "min_aesthetic_score": None, "num_views": DEMO["num_views"],
               "load_camera_info": True, "skip_list": skip}
    cfgs["ss_flow"] = {
        "models": {"denoiser": _flow("SparseStructureFlowModel", DEMO["ss_latent_resolution"], ss_ch, ss_ch)},
        "dataset": {"name": "ViewImageConditionedSparseStructureLatentView", "args": view_ds},
        "trainer": _trainer("ImageConditionedProjFlowMatchingCFGTrainer", 3e-4, 32, ema=0.999, **fm,
                            t_schedule={"name": "logitNormal", "args": {"mean": 1.0, "std": 1.0}},
                            image_cond_model=_extractor(DEMO["ss_latent_resolution"])),
    }
    cfgs["shape_flow"] = {
        "models": {"denoiser": _flow("ElasticSLatFlowModel", G, L, L)},
        "dataset": {"name": "ViewImageConditionedSLatShapeView", "args": {
            **view_ds, "resolution": slat_res, "max_tokens": 8192, "normalization": "$DEMO_SHAPE_NORM"}},
        "trainer": _trainer("ImageConditionedProjSparseFlowMatchingCFGTrainer", 3e-4, 16, ema=0.999, **fm,
                            t_schedule={"name": "logitNormal", "args": {"mean": 1.0, "std": 1.0}},
                            image_cond_model=_extractor(G)),
    }
    cfgs["tex_flow"] = {
        "models": {"denoiser": _flow("ElasticSLatFlowModel", G, 2 * L, L)},
        "dataset": {"name": "ViewImageConditionedSLatPbrView", "args": {
            **view_ds, "resolution": slat_res, "max_tokens": 8192, "pbr_slat_normalization": "$DEMO_TEX_NORM",
            "shape_slat_normalization": "$DEMO_SHAPE_NORM"}},
        "trainer": _trainer("ImageConditionedProjSparseFlowMatchingCFGTrainer", 3e-4, 16, ema=0.999, **fm,
                            t_schedule={"name": "logitNormal", "args": {"mean": 0.0, "std": 1.0}},
                            image_cond_model=_extractor(G)),
    }
    return cfgs


def write_configs(out_dir="configs/demo") -> list:
    """Writes ``{out_dir}/{stage}.json`` for every stage; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for stage, cfg in build_configs().items():
        p = out / f"{stage}.json"
        p.write_text(json.dumps(cfg, indent=2) + "\n")
        paths.append(p)
    return paths


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "configs" / "demo"))
    a = ap.parse_args(argv)
    for p in write_configs(a.out):
        print(p)


if __name__ == "__main__":
    main()
