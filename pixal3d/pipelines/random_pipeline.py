"""Write a small pipeline folder with randomly initialised weights.

It has the layout of the released folders (``pipeline.json`` + ``ckpts/*.json|.safetensors`` + a DINOv3 backbone
folder) and goes through the same loading code, so smoke tests, the app tests and benchmarks exercise the real
pipeline without downloading anything. The outputs are noise-shaped assets, not meaningful 3D.

    python -m pixal3d.pipelines.random_pipeline OUT_DIR [--preset tiny]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Dict

import torch

__all__ = ["write_random_pipeline", "TINY_PRESET"]

# Small enough to run the whole cascade on a CPU in seconds: 4³ SS latents -> 16³ occupancy -> 8³ shape latents ->
# 32³ output (x4 decoders), cascade 64³/96³.
TINY_PRESET = {
    "dino": dict(patch_size=16, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_register_tokens=4, image_size=64, rope_theta=100.0),
    "image_size": 64,
    "latent_channels": 8,
    "flow": dict(model_channels=32, num_blocks=1, num_heads=2, mlp_ratio=2.0, pe_mode="rope", share_mod=True,
                 initialization="scaled", qk_rms_norm=True, qk_rms_norm_cross=True, image_attn_mode="proj"),
    "ss_resolution": 4,
    "ss_channels": [16, 8, 8],
    "vae_channels": [16, 8, 8],
    "steps": 2,
}


def _save(model, path: Path) -> str:
    from ..models.pretrained import save_pretrained
    path.parent.mkdir(parents=True, exist_ok=True)
    save_pretrained(model, path)
    return f"ckpts/{path.name}"


def write_random_pipeline(folder, preset: Dict = None, seed: int = 0) -> Path:
    """Writes a random-weight Pixal3D pipeline folder.

    Args:
        folder: output directory (created).
        preset: sizes (default :data:`TINY_PRESET`).
        seed: torch seed for the weights.

    Returns:
        The folder, loadable with ``Pixal3DImageTo3DPipeline.from_pretrained(folder)``.
    """
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    from ..models import get_model_class

    p = dict(TINY_PRESET if preset is None else preset)
    folder = Path(folder)
    ck = folder / "ckpts"
    torch.manual_seed(seed)
    dino = DINOv3ViTModel(DINOv3ViTConfig(**p["dino"])).eval()
    dino.save_pretrained(folder / "dinov3")
    c, lat, flow = p["dino"]["hidden_size"], p["latent_channels"], p["flow"]
    g = p["ss_resolution"] * 2 ** (len(p["ss_channels"]) - 1) // 2  # latent grid of the shape stage
    models = {}
    models["sparse_structure_flow_model"] = _save(get_model_class("SparseStructureFlowModel")(
        resolution=p["ss_resolution"], in_channels=8, out_channels=8, cond_channels=c, **flow), ck / "ss_flow")
    models["sparse_structure_decoder"] = _save(get_model_class("SparseStructureDecoder")(
        out_channels=1, latent_channels=8, num_res_blocks=1, channels=p["ss_channels"]), ck / "ss_dec")
    for key, in_ch, grid in (("shape_slat_flow_model_512", lat, g), ("shape_slat_flow_model_1024", lat, 2 * g),
                             ("tex_slat_flow_model_512", 2 * lat, g), ("tex_slat_flow_model_1024", 2 * lat, 2 * g)):
        models[key] = _save(get_model_class("ElasticSLatFlowModel")(
            resolution=grid, in_channels=in_ch, out_channels=lat, cond_channels=c, proj_in_channels=c, **flow),
            ck / key.replace("_model", ""))
    n = len(p["vae_channels"])
    vae = dict(model_channels=p["vae_channels"], latent_channels=lat, num_blocks=[1] * n,
               block_type=["SparseConvNeXtBlock3d"] * n, up_block_type=["SparseResBlockC2S3d"] * (n - 1),
               block_args=[{}] * n)
    models["shape_slat_decoder"] = _save(get_model_class("FlexiDualGridVaeDecoder")(
        resolution=g * 2 ** (n - 1), **vae), ck / "shape_dec")
    models["tex_slat_decoder"] = _save(get_model_class("SparseUnetVaeDecoder")(
        out_channels=6, pred_subdiv=False, **vae), ck / "tex_dec")
    sampler = lambda **kw: {"name": "FlowEulerGuidanceIntervalSampler", "args": {"sigma_min": 1e-5},  # noqa: E731
                            "params": {"steps": p["steps"], **kw}}
    extractor = lambda grid: {"name": "DinoV3ProjFeatureExtractor",  # noqa: E731
                              "args": {"model_name": "dinov3", "image_size": p["image_size"], "grid_resolution": grid}}
    norm = {"mean": [0.0] * lat, "std": [1.0] * lat}
    cfg = {"name": "Pixal3DImageTo3DPipeline", "args": {
        "models": models,
        "sparse_structure_sampler": sampler(guidance_strength=7.5, guidance_rescale=0.7, guidance_interval=[0.6, 1.0],
                                            rescale_t=5.0),
        "shape_slat_sampler": sampler(guidance_strength=7.5, guidance_rescale=0.5, guidance_interval=[0.6, 1.0],
                                      rescale_t=3.0),
        "tex_slat_sampler": sampler(guidance_strength=1.0, guidance_rescale=0.0, guidance_interval=[0.6, 0.9],
                                    rescale_t=3.0),
        "shape_slat_normalization": norm, "tex_slat_normalization": norm,
        "image_cond_models": {"ss": extractor(p["ss_resolution"]), "shape_512": extractor(g),
                              "shape_1024": extractor(2 * g), "tex_512": extractor(g), "tex_1024": extractor(2 * g)},
        "low_vram": False, "default_pipeline_type": "512"}}
    (folder / "pipeline.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return folder


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    print(write_random_pipeline(args.folder, seed=args.seed))


if __name__ == "__main__":
    main()
