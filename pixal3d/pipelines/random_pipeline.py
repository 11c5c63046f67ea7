"""Write a small pipeline folder with randomly initialised weights.

It has the layout of the released folders (``pipeline.json`` + ``ckpts/*.json|.safetensors`` + a DINOv3 backbone
folder) and goes through the same loading code, so smoke tests, the app tests and benchmarks exercise the real
pipeline without downloading anything. The outputs are noise-shaped assets, not meaningful 3D.

Two families:

* ``pixal3d``: flow models with ``image_attn_mode='proj'`` (global DINOv3 tokens + back-projected per-voxel features)
  and per-stage ``image_cond_models`` (``DinoV3ProjFeatureExtractor``), loaded by ``Pixal3DImageTo3DPipeline``.
* ``trellis2``: flow models with ``image_attn_mode='cross'`` over the DINOv3 token sequence (``cond_channels`` = the
  DINOv3 width) and the reference's single ``image_cond_model`` entry (``DinoV3FeatureExtractor``; the pipeline runs
  it at 512 and 1024 px), loaded by ``Trellis2ImageTo3DPipeline``.

Both hold all four SLat flow models, so the types ``512``, ``1024``, ``1024_cascade`` and ``1536_cascade`` all run.

    python -m pixal3d.pipelines.random_pipeline OUT_DIR [--family pixal3d|trellis2] [--seed N]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Dict

import torch

__all__ = ["write_random_pipeline", "TINY_PRESET", "FAMILIES"]

FAMILIES = ("pixal3d", "trellis2")

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


def write_random_pipeline(folder, preset: Dict = None, seed: int = 0, family: str = "pixal3d") -> Path:
    """Writes a random-weight pipeline folder.

    Args:
        folder: output directory (created).
        preset: sizes (default :data:`TINY_PRESET`; its ``flow.image_attn_mode`` is set by ``family``).
        seed: torch seed for the weights.
        family: ``'pixal3d'`` or ``'trellis2'`` (module docstring).

    Returns:
        The folder, loadable with ``Pixal3DImageTo3DPipeline.from_pretrained(folder)`` (``family='pixal3d'``) or
        ``Trellis2ImageTo3DPipeline.from_pretrained(folder)`` (``family='trellis2'``).

    Raises:
        ValueError: an unknown ``family``.
    """
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    from ..models import get_model_class

    p = dict(TINY_PRESET if preset is None else preset)
    folder = Path(folder)
    ck = folder / "ckpts"
    torch.manual_seed(seed)
    dino = DINOv3ViTModel(DINOv3ViTConfig(**p["dino"])).eval()
    dino.save_pretrained(folder / "dinov3")
    c, lat = p["dino"]["hidden_size"], p["latent_channels"]
    flow = {**p["flow"], "image_attn_mode": "proj" if family == "pixal3d" else "cross"}
    # TRELLIS.2 cross-attends to the DINOv3 tokens (width c); Pixal3D also takes back-projected features of width c
    proj = {"proj_in_channels": c} if family == "pixal3d" else {}
    g = p["ss_resolution"] * 2 ** (len(p["ss_channels"]) - 1) // 2  # latent grid of the shape stage
    models = {}
    models["sparse_structure_flow_model"] = _save(get_model_class("SparseStructureFlowModel")(
        resolution=p["ss_resolution"], in_channels=8, out_channels=8, cond_channels=c, **flow), ck / "ss_flow")
    models["sparse_structure_decoder"] = _save(get_model_class("SparseStructureDecoder")(
        out_channels=1, latent_channels=8, num_res_blocks=1, channels=p["ss_channels"]), ck / "ss_dec")
    for key, in_ch, grid in (("shape_slat_flow_model_512", lat, g), ("shape_slat_flow_model_1024", lat, 2 * g),
                             ("tex_slat_flow_model_512", 2 * lat, g), ("tex_slat_flow_model_1024", 2 * lat, 2 * g)):
        models[key] = _save(get_model_class("ElasticSLatFlowModel")(
            resolution=grid, in_channels=in_ch, out_channels=lat, cond_channels=c, **proj, **flow),
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
    if family == "pixal3d":
        cond = {"image_cond_models": {"ss": extractor(p["ss_resolution"]), "shape_512": extractor(g),
                                      "shape_1024": extractor(2 * g), "tex_512": extractor(g),
                                      "tex_1024": extractor(2 * g)}}
    else:  # the reference's single entry; the pipeline sets image_size to 512 / 1024 per stage (TRELLIS2_SPEC §4.4)
        cond = {"image_cond_model": {"name": "DinoV3FeatureExtractor", "args": {"model_name": "dinov3"}}}
    name = "Pixal3DImageTo3DPipeline" if family == "pixal3d" else "Trellis2ImageTo3DPipeline"
    cfg = {"name": name, "args": {
        "models": models,
        "sparse_structure_sampler": sampler(guidance_strength=7.5, guidance_rescale=0.7, guidance_interval=[0.6, 1.0],
                                            rescale_t=5.0),
        "shape_slat_sampler": sampler(guidance_strength=7.5, guidance_rescale=0.5, guidance_interval=[0.6, 1.0],
                                      rescale_t=3.0),
        "tex_slat_sampler": sampler(guidance_strength=1.0, guidance_rescale=0.0, guidance_interval=[0.6, 0.9],
                                    rescale_t=3.0),
        "shape_slat_normalization": norm, "tex_slat_normalization": norm,
        **cond,
        "low_vram": False, "default_pipeline_type": "512"}}
    (folder / "pipeline.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return folder


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--family", choices=FAMILIES, default="pixal3d")
    args = ap.parse_args(argv)
    print(write_random_pipeline(args.folder, seed=args.seed, family=args.family))


if __name__ == "__main__":
    main()
