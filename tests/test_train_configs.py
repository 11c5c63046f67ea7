"""Official training configs (TRELLIS2_SPEC §5.6, PIXAL3D_SPEC §5): every file validates against the registries,
its models build on the meta device with the released parameter counts, and the key values are the specs'."""
import json
import sys
from pathlib import Path

import pytest
import torch

from pixal3d.models import get_model_class
from pixal3d.trainers.launch import load_config

ROOT = Path(__file__).resolve().parents[1] / "configs" / "train"
OFFICIAL = sorted(p for d in ("scvae", "gen", "pixal3d") for p in (ROOT / d).glob("*.json"))
TINY = sorted((ROOT / "tiny").glob("*.json"))


def test_all_official_configs_present():
    names = {p.relative_to(ROOT).with_suffix("").as_posix() for p in OFFICIAL}
    assert len(names) == 17
    for n in ("scvae/shape_vae_next_dc_f16c32_fp16_ft_512", "scvae/tex_vae_next_dc_f16c32_fp16_ft_512",
              "gen/ss_flow_img_dit_1_3B_64_bf16", "gen/slat_flow_imgshape2tex_dit_1_3B_512_bf16_ft1024",
              "pixal3d/ss_flow_img_dit_1_3B_32_bf16_proj_finetune_ft64",
              "pixal3d/slat_flow_imgshape2tex_dit_1_3B_512_bf16_proj_finetune_ft1024"):
        assert n in names


def test_generator_reproduces_files():
    sys.path.insert(0, str(ROOT))
    try:
        import make_configs
    finally:
        sys.path.pop(0)
    for rel, cfg in make_configs.all_configs().items():
        assert json.loads((ROOT / f"{rel}.json").read_text()) == cfg, rel


@pytest.mark.parametrize("path", OFFICIAL + TINY, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_config_validates(path):
    load_config(path)


# released parameter counts (TRELLIS2_SPEC §2)
COUNTS = {"FlexiDualGridVaeEncoder": 354_385_392, "FlexiDualGridVaeDecoder": 474_231_463,
          "SparseUnetVaeEncoder": 354_385_392, "SparseUnetVaeDecoder": 474_216_006}


@pytest.mark.parametrize("path", sorted((ROOT / "scvae").glob("*.json")), ids=lambda p: p.stem)
def test_scvae_models_build_on_meta(path):
    cfg = load_config(path)
    for entry in cfg["models"].values():
        with torch.device("meta"):
            m = get_model_class(entry["name"])(**entry["args"])
        assert sum(p.numel() for p in m.parameters()) == COUNTS[entry["name"]]


def _cfg(rel):
    return json.loads((ROOT / f"{rel}.json").read_text())


def test_key_values_match_the_specs():
    c = _cfg("scvae/shape_vae_next_dc_f16c32_fp16")
    t = c["trainer"]["args"]
    assert (t["batch_size_per_gpu"], t["batch_split"], t["optimizer"]["args"]["lr"], t["fp16_mode"]) == \
        (8, 2, 1e-4, "inflat_all")
    assert (t["lambda_intersected"], t["lambda_vertice"], t["lambda_subdiv"], t["lambda_kl"], t["lambda_depth"]) == \
        (0.1, 1e-2, 0.1, 1e-6, 10.0)
    assert c["dataset"]["args"]["min_aesthetic_score"] == 4.5
    ft = _cfg("scvae/shape_vae_next_dc_f16c32_fp16_ft_512")
    assert ft["models"]["decoder"]["args"]["resolution"] == 512
    assert all(a == {"use_checkpoint": True} for a in ft["models"]["decoder"]["args"]["block_args"])
    assert ft["trainer"]["args"]["snapshot_batch_size"] == 1 and ft["trainer"]["args"]["i_save"] == 1000
    tex = _cfg("scvae/tex_vae_next_dc_f16c32_fp16_ft_512")["trainer"]["args"]
    assert (tex["lambda_render"], tex["render_resolution"], tex["batch_split"]) == (1.0, 512, 2)
    ss = _cfg("gen/ss_flow_img_dit_1_3B_64_bf16")["trainer"]["args"]
    assert ss["t_schedule"] == {"name": "logitNormal", "args": {"mean": 1.0, "std": 1.0}}
    assert (ss["batch_split"], ss["optimizer"]["args"]["weight_decay"]) == (4, 0.01)
    sh = _cfg("gen/slat_flow_img2shape_dit_1_3B_512_bf16_ft1024")
    assert sh["models"]["denoiser"]["name"] == "ElasticSLatFlowModel"
    assert sh["models"]["denoiser"]["args"]["resolution"] == 64
    assert sh["trainer"]["args"]["elastic"]["args"] == {"target_ratio": 0.75, "max_mem_ratio_start": 0.25}
    assert sh["dataset"]["args"]["max_tokens"] == 32768
    assert _cfg("gen/slat_flow_imgshape2tex_dit_1_3B_512_bf16_ft1024")["dataset"]["args"]["full_pbr"] is True
    px = _cfg("pixal3d/slat_flow_imgshape2tex_dit_1_3B_512_bf16_proj_finetune")
    assert px["models"]["denoiser"]["args"]["resolution"] == 32
    assert px["trainer"]["args"]["image_cond_model"]["args"]["naf_target_size"] == 256
    assert px["dataset"]["args"]["skip_aesthetic_score_datasets"] == ["texverse"]
    ss32 = _cfg("pixal3d/ss_flow_img_dit_1_3B_32_bf16_proj_finetune")
    assert ss32["models"]["denoiser"]["args"]["resolution"] == 8
    assert ss32["trainer"]["args"]["image_cond_model"]["args"]["grid_resolution"] == 8
