"""Writes the official training configs (TRELLIS2_SPEC §5.6, PIXAL3D_SPEC §5) in this project's schema.

Model args come from ``configs/models/{trellis2,pixal3d}/*.json`` (the released checkpoint configs); the values
below are the training-config values of the specs. Run ``python configs/train/make_configs.py`` to regenerate.
"""
import copy
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODELS = HERE.parent / "models"

SHAPE_NORM = {
    "mean": [0.781296, 0.018091, -0.495192, -0.558457, 1.060530, 0.093252, 1.518149, -0.933218, -0.732996, 2.604095,
             -0.118341, -2.143904, 0.495076, -2.179512, -2.130751, -0.996944, 0.261421, -2.217463, 1.260067,
             -0.150213, 3.790713, 1.481266, -1.046058, -1.523667, -0.059621, 2.220780, 1.621212, 0.877230, 0.567247,
             -3.175944, -3.186688, 1.578665],
    "std": [5.972266, 4.706852, 5.445010, 5.209927, 5.320220, 4.547237, 5.020802, 5.444004, 5.226681, 5.683095,
            4.831436, 5.286469, 5.652043, 5.367606, 5.525084, 4.730578, 4.805265, 5.124013, 5.530808, 5.619001,
            5.103930, 5.417670, 5.269677, 5.547194, 5.634698, 5.235274, 6.110351, 5.511298, 6.237273, 4.879207,
            5.347008, 5.405691]}
PBR_NORM = {
    "mean": [3.501659, 2.212398, 2.226094, 0.251093, -0.026248, -0.687364, 0.439898, -0.928075, 0.029398, -0.339596,
             -0.869527, 1.038479, -0.972385, 0.126042, -1.129303, 0.455149, -1.209521, 2.069067, 0.544735, 2.569128,
             -0.323407, 2.293000, -1.925608, -1.217717, 1.213905, 0.971588, -0.023631, 0.106750, 2.021786, 0.250524,
             -0.662387, -0.768862],
    "std": [2.665652, 2.743913, 2.765121, 2.595319, 3.037293, 2.291316, 2.144656, 2.911822, 2.969419, 2.501689,
            2.154811, 3.163343, 2.621215, 2.381943, 3.186697, 3.021588, 2.295916, 3.234985, 3.233086, 2.260140,
            2.874801, 2.810596, 3.292720, 2.674999, 2.680878, 2.372054, 2.451546, 2.353556, 2.995195, 2.379849,
            2.786195, 2.775190]}
ATTRS = ["base_color", "metallic", "roughness", "alpha"]
CLIP = {"name": "AdaptiveGradClipper", "args": {"max_norm": 1.0, "clip_percentile": 95}}
FLOW_OPT = {"name": "AdamW", "args": {"lr": 1e-4, "weight_decay": 0.01, "betas": [0.9, 0.95], "eps": 1e-8}}
T2_DINO = "facebook/dinov3-vitl16-pretrain-lvd1689m"
PX_DINO = "camenduru/dinov3-vitl16-pretrain-lvd1689m"
T2 = "microsoft/TRELLIS.2-4B/ckpts/"
SS_DEC_V1 = "microsoft/TRELLIS-image-large/ckpts/ss_dec_conv3d_16l8_fp16"


def model(family, stem, **override):
    cfg = json.loads((MODELS / family / f"{stem}.json").read_text())
    cfg["args"].update(override)
    return cfg


def opt(lr, base=None):
    o = copy.deepcopy(base or FLOW_OPT)
    o["args"]["lr"] = lr
    return o


def intervals(finetune):
    return {"i_log": 500, "i_sample": 1000 if finetune else 10000, "i_save": 1000 if finetune else 10000}


def flow_trainer(name, bs, split, lr, t_schedule, image_cond_model, elastic=None, finetune=False, ft_ckpt=None,
                 **extra):
    args = {"max_steps": 1000000, "batch_size_per_gpu": bs, "batch_split": split, "optimizer": opt(lr),
            "ema_rate": [0.9999], "mix_precision_mode": "amp", "mix_precision_dtype": "bfloat16"}
    if elastic is not None:
        args["elastic"] = {"name": "LinearMemoryController",
                           "args": {"target_ratio": elastic[0], "max_mem_ratio_start": elastic[1]}}
    args.update({"grad_clip": CLIP, **intervals(finetune), "p_uncond": 0.1, "t_schedule": t_schedule,
                 "sigma_min": 1e-5, "image_cond_model": image_cond_model, **extra})
    if ft_ckpt:
        args["finetune_ckpt"] = {"denoiser": ft_ckpt}
    return {"name": name, "args": args}


def vae_trainer(name, bs, split, lr, finetune, ft=None, **extra):
    args = {"max_steps": 1000000, "batch_size_per_gpu": bs, "batch_split": split,
            "optimizer": {"name": "AdamW", "args": {"lr": lr, "weight_decay": 0.0}}, "ema_rate": [0.9999],
            "fp16_mode": "inflat_all", "fp16_scale_growth": 1e-3, "grad_clip": CLIP, **intervals(finetune), **extra}
    if ft:
        args["finetune_ckpt"] = ft
    return {"name": name, "args": args}


def checkpointed(m):
    m["args"]["block_args"] = [{"use_checkpoint": True} for _ in m["args"]["block_args"]]
    return m


def scvae():
    out = {}
    shape_lambdas = {"lambda_intersected": 0.1, "lambda_vertice": 1e-2, "lambda_subdiv": 0.1, "lambda_kl": 1e-6,
                     "lambda_mask": 1.0, "lambda_depth": 10.0, "lambda_normal": 1.0, "lambda_ssim": 0.2,
                     "lambda_lpips": 0.2}
    ds = {"resolution": 256, "max_active_voxels": 1000000, "max_num_faces": 1000000, "min_aesthetic_score": 4.5,
          "with_mesh": True}
    out["scvae/shape_vae_next_dc_f16c32_fp16"] = {
        "models": {"encoder": model("trellis2", "shape_enc_next_dc_f16c32_fp16"),
                   "decoder": model("trellis2", "shape_dec_next_dc_f16c32_fp16", resolution=256)},
        "dataset": {"name": "FlexiDualGridDataset", "args": ds},
        "trainer": vae_trainer("ShapeVaeTrainer", 8, 2, 1e-4, False, **shape_lambdas)}
    base = "outputs/scvae/shape_vae_next_dc_f16c32_fp16/ckpts/"
    out["scvae/shape_vae_next_dc_f16c32_fp16_ft_512"] = {
        "models": {"encoder": checkpointed(model("trellis2", "shape_enc_next_dc_f16c32_fp16")),
                   "decoder": checkpointed(model("trellis2", "shape_dec_next_dc_f16c32_fp16", resolution=512))},
        "dataset": {"name": "FlexiDualGridDataset", "args": {**ds, "resolution": 512}},
        "trainer": vae_trainer("ShapeVaeTrainer", 4, 2, 1e-5, True,
                               ft={"encoder": base + "encoder_ema0.9999_step1000000.pt",
                                   "decoder": base + "decoder_ema0.9999_step1000000.pt"},
                               render_resolution=1024, snapshot_batch_size=1, **shape_lambdas)}
    tds = {"resolution": 256, "max_active_voxels": 1000000, "max_num_faces": 1000000, "min_aesthetic_score": 4.5,
           "attrs": ATTRS, "with_mesh": False}
    out["scvae/tex_vae_next_dc_f16c32_fp16"] = {
        "models": {"encoder": model("trellis2", "tex_enc_next_dc_f16c32_fp16"),
                   "decoder": model("trellis2", "tex_dec_next_dc_f16c32_fp16")},
        "dataset": {"name": "SparseVoxelPbrDataset", "args": tds},
        "trainer": vae_trainer("PbrVaeTrainer", 8, 1, 1e-4, False, loss_type="l1", lambda_kl=1e-6,
                               lambda_render=0.0)}
    tbase = "outputs/scvae/tex_vae_next_dc_f16c32_fp16/ckpts/"
    out["scvae/tex_vae_next_dc_f16c32_fp16_ft_512"] = {
        "models": {"encoder": model("trellis2", "tex_enc_next_dc_f16c32_fp16"),
                   "decoder": model("trellis2", "tex_dec_next_dc_f16c32_fp16")},
        "dataset": {"name": "SparseVoxelPbrDataset", "args": {**tds, "resolution": 512, "with_mesh": True}},
        "trainer": vae_trainer("PbrVaeTrainer", 4, 2, 1e-5, True,
                               ft={"encoder": tbase + "encoder_ema0.9999_step1000000.pt",
                                   "decoder": tbase + "decoder_ema0.9999_step1000000.pt"},
                               loss_type="l1", lambda_kl=1e-6, lambda_render=1.0, lambda_ssim=0.2, lambda_lpips=0.2,
                               render_resolution=512, radius_range=[2, 100])}
    return out


def gen():
    out = {}
    dino = lambda s: {"name": "DinoV3FeatureExtractor", "args": {"model_name": T2_DINO, "image_size": s}}  # noqa
    out["gen/ss_flow_img_dit_1_3B_64_bf16"] = {
        "models": {"denoiser": model("trellis2", "ss_flow_img_dit_1_3B_64_bf16")},
        "dataset": {"name": "ImageConditionedSparseStructureLatent",
                    "args": {"min_aesthetic_score": 4.5, "pretrained_ss_dec": SS_DEC_V1, "image_size": 512}},
        "trainer": flow_trainer("ImageConditionedFlowMatchingCFGTrainer", 8, 4, 1e-4,
                                {"name": "logitNormal", "args": {"mean": 1.0, "std": 1.0}}, dino(512))}
    for kind, stem in (("shape", "slat_flow_img2shape_dit_1_3B"), ("tex", "slat_flow_imgshape2tex_dit_1_3B")):
        for res, img, tokens, bs, split, lr, el, ft in ((512, 512, 8192, 8, 2, 1e-4, (0.75, 0.5), None),
                                                        (1024, 1024, 32768, 2, 1, 2e-5, (0.75, 0.25), 512)):
            mstem = f"{stem}_{res}_bf16"
            m = model("trellis2", mstem)
            m["name"] = "ElasticSLatFlowModel"
            if kind == "shape":
                ds = {"name": "ImageConditionedSLatShape",
                      "args": {"resolution": res, "image_size": img, "min_aesthetic_score": 4.5, "max_tokens": tokens,
                               "normalization": SHAPE_NORM,
                               "pretrained_slat_dec": T2 + "shape_dec_next_dc_f16c32_fp16"}}
            else:
                ds = {"name": "ImageConditionedSLatPbr",
                      "args": {"resolution": res, "image_size": img, "min_aesthetic_score": 4.5, "max_tokens": tokens,
                               "full_pbr": res == 1024, "attrs": ATTRS, "pbr_slat_normalization": PBR_NORM,
                               "shape_slat_normalization": SHAPE_NORM,
                               "pretrained_pbr_slat_dec": T2 + "tex_dec_next_dc_f16c32_fp16",
                               "pretrained_shape_slat_dec": T2 + "shape_dec_next_dc_f16c32_fp16"}}
            name = f"gen/{mstem}" + ("_ft1024" if res == 1024 else "")
            ft_ckpt = (f"outputs/gen/{stem}_512_bf16/ckpts/denoiser_ema0.9999_step1000000.pt" if ft else None)
            if res == 1024:
                name = f"gen/{stem}_512_bf16_ft1024"
            out[name] = {"models": {"denoiser": m}, "dataset": ds,
                         "trainer": flow_trainer("ImageConditionedSparseFlowMatchingCFGTrainer", bs, split, lr,
                                                 {"name": "uniform"}, dino(img), elastic=el, finetune=res == 1024,
                                                 ft_ckpt=ft_ckpt)}
    return out


def pixal3d():
    out = {}

    def proj(img, R, naf=None):
        a = {"model_name": PX_DINO, "image_size": img, "grid_resolution": R}
        if naf:
            a.update(use_naf_upsample=True, naf_target_size=naf)
        return {"name": "DinoV3ProjFeatureExtractor", "args": a}

    common_ds = {"min_aesthetic_score": 4.5, "num_views": 2, "load_camera_info": True,
                 "skip_aesthetic_score_datasets": ["texverse"]}
    ss_model = model("pixal3d", "ss_flow_img_dit_1_3B_64_bf16")
    for name, res, R, bs, split, ft in (("ss_flow_img_dit_1_3B_32_bf16_proj_finetune", 8, 8, 16, 1, None),
                                        ("ss_flow_img_dit_1_3B_32_bf16_proj_finetune_ft64", 16, 16, 8, 2,
                                         "outputs/pixal3d/ss_flow_img_dit_1_3B_32_bf16_proj_finetune")):
        m = copy.deepcopy(ss_model)
        m["args"]["resolution"] = res
        out[f"pixal3d/{name}"] = {
            "models": {"denoiser": m},
            "dataset": {"name": "ViewImageConditionedSparseStructureLatentView",
                        "args": {**common_ds, "image_size": 512, "pretrained_ss_dec": SS_DEC_V1}},
            "trainer": flow_trainer("ImageConditionedProjFlowMatchingCFGTrainer", bs, split, 1e-4,
                                    {"name": "logitNormal", "args": {"mean": 1.0, "std": 1.0}}, proj(512, R),
                                    finetune=ft is not None, run_projection_test=False,
                                    ft_ckpt=ft and ft + "/ckpts/denoiser_ema0.9999_step1000000.pt")}
    shape_m = model("pixal3d", "slat_flow_img2shape_dit_1_3B_512_bf16")
    tex_m = model("pixal3d", "slat_flow_imgshape2tex_dit_1_3B_1024_bf16")
    rows = [  # (kind, name, latent res, O-Voxel res, image, tokens, bs, split, lr, elastic, naf, finetune-from)
        ("shape", "slat_flow_img2shape_dit_1_3B_256_bf16_proj_finetune", 16, 256, 512, 8192, 16, 2, 1e-4,
         (0.75, 0.5), 256, None),
        ("shape", "slat_flow_img2shape_dit_1_3B_256_bf16_proj_finetune_ft512", 32, 512, 512, 8192, 8, 2, 1e-4,
         (0.75, 0.5), 512, "slat_flow_img2shape_dit_1_3B_256_bf16_proj_finetune"),
        ("shape", "slat_flow_img2shape_dit_1_3B_512_bf16_proj_finetune_ft1024", 64, 1024, 1024, 32768, 2, 2, 2e-5,
         (0.75, 0.25), 512, "slat_flow_img2shape_dit_1_3B_256_bf16_proj_finetune_ft512"),
        ("tex", "slat_flow_imgshape2tex_dit_1_3B_256_bf16_proj_finetune", 16, 256, 512, 8192, 16, 1, 1e-4,
         (0.75, 0.5), 256, None),
        ("tex", "slat_flow_imgshape2tex_dit_1_3B_512_bf16_proj_finetune", 32, 512, 512, 8192, 8, 2, 1e-4,
         (0.75, 0.5), 256, "slat_flow_imgshape2tex_dit_1_3B_256_bf16_proj_finetune"),
        ("tex", "slat_flow_imgshape2tex_dit_1_3B_512_bf16_proj_finetune_ft1024", 64, 1024, 1024, 32768, 2, 2, 2e-5,
         (0.75, 0.25), 1024, "slat_flow_imgshape2tex_dit_1_3B_512_bf16_proj_finetune"),
    ]
    for kind, name, lres, res, img, tokens, bs, split, lr, el, naf, ft in rows:
        m = copy.deepcopy(shape_m if kind == "shape" else tex_m)
        m["args"]["resolution"] = lres
        if kind == "shape":
            ds = {"name": "ViewImageConditionedSLatShapeView",
                  "args": {"resolution": res, "image_size": img, "max_tokens": tokens, **common_ds,
                           "normalization": SHAPE_NORM, "pretrained_slat_dec": T2 + "shape_dec_next_dc_f16c32_fp16"}}
        else:
            ds = {"name": "ViewImageConditionedSLatPbrView",
                  "args": {"resolution": res, "image_size": img, "max_tokens": tokens, **common_ds,
                           "full_pbr": res == 1024, "attrs": ATTRS, "pbr_slat_normalization": PBR_NORM,
                           "shape_slat_normalization": SHAPE_NORM,
                           "pretrained_pbr_slat_dec": T2 + "tex_dec_next_dc_f16c32_fp16",
                           "pretrained_shape_slat_dec": T2 + "shape_dec_next_dc_f16c32_fp16"}}
        out[f"pixal3d/{name}"] = {
            "models": {"denoiser": m}, "dataset": ds,
            "trainer": flow_trainer("ImageConditionedProjSparseFlowMatchingCFGTrainer", bs, split, lr,
                                    {"name": "uniform"}, proj(img, lres, naf), elastic=el, finetune=ft is not None,
                                    run_projection_test=False,
                                    ft_ckpt=ft and f"outputs/pixal3d/{ft}/ckpts/denoiser_ema0.9999_step1000000.pt")}
    return out


def all_configs() -> dict:
    """``{relative path without .json: config}`` of every official config."""
    return {**scvae(), **gen(), **pixal3d()}


if __name__ == "__main__":
    for rel, cfg in all_configs().items():
        p = HERE / f"{rel}.json"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(cfg, indent=4) + "\n")
        print(p.relative_to(HERE))
