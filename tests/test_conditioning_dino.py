"""DINOv3 extractors (PIXAL3D_SPEC §3, TRELLIS2_SPEC §4.4) around a tiny random transformers DINOv3."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import load_fixture
from pixal3d.conditioning.dinov3 import DinoV3FeatureExtractor, DinoV3ProjFeatureExtractor, load_dinov3
from pixal3d.conditioning.naf import NAF
from pixal3d.conditioning.proj_grid import gather_grid_features


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.fixture(scope="module")
def fx():
    from transformers import DINOv3ViTConfig, DINOv3ViTModel
    meta, t = load_fixture("px_dino_proj")
    model = DINOv3ViTModel(DINOv3ViTConfig(**meta["args"]["dinov3_config"]))
    model.load_state_dict({k[len("param."):]: v for k, v in t.items() if k.startswith("param.")}, strict=True)
    return meta, t, model


def test_proj_extractor_fixture(fx):
    meta, t, model = fx
    ex = DinoV3ProjFeatureExtractor(image_size=meta["args"]["image_size"],
                                    grid_resolution=meta["args"]["grid_resolution"], model=model)
    assert ex.proj_channels == 32 and ex.patch_number == 4
    z_global, z_proj = ex(t["in.image"], t["in.camera_angle_x"], t["in.distance"], t["in.mesh_scale"])
    assert z_global.shape == (2, 5, 32) and z_proj.shape == (2, 512, 32)
    assert _rel(z_global, t["out.z_global"]) < 1e-4
    assert _rel(z_proj, t["out.z_proj"]) < 1e-4
    assert not any(p.requires_grad for p in ex.parameters())
    ex.train()
    assert not ex.model.training  # RoPE augmentation must stay off


def test_token_extractor_matches_transformers_hidden_states(fx):
    _, t, model = fx
    ex = DinoV3FeatureExtractor(image_size=64, model=model)
    tokens = ex(t["in.image"])
    assert tokens.shape == (2, 1 + 4 + 16, 32)
    with torch.no_grad():
        x = (t["in.image"] - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / \
            torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        hs = model(x, output_hidden_states=True).hidden_states[-1]
    torch.testing.assert_close(tokens, F.layer_norm(hs, (32,)), rtol=1e-5, atol=1e-5)


def test_pil_input_is_lanczos_resized(fx):
    _, _, model = fx
    ex = DinoV3FeatureExtractor(image_size=64, model=model)
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (90, 70, 3), dtype=np.uint8))
    ref = torch.from_numpy(np.asarray(img.resize((64, 64), Image.LANCZOS), dtype=np.float32) / 255).permute(2, 0, 1)
    torch.testing.assert_close(ex([img]), ex(ref[None]))
    torch.testing.assert_close(ex(img), ex(ref[None]))
    with pytest.raises(ValueError, match="64x64"):
        ex(torch.rand(1, 3, 32, 32))
    with pytest.raises(TypeError):
        ex("image.png")


def test_override_sparse_and_naf_branch(fx):
    _, t, model = fx
    args = (t["in.camera_angle_x"], t["in.distance"], t["in.mesh_scale"])
    ex = DinoV3ProjFeatureExtractor(image_size=64, grid_resolution=8, model=model)
    _, z6 = ex(t["in.image"], *args, grid_resolution_override=6)
    _, z6_ref = DinoV3ProjFeatureExtractor(image_size=64, grid_resolution=6, model=model)(t["in.image"], *args)
    torch.testing.assert_close(z6, z6_ref)
    assert ex.proj_grid.grid_resolution == 8  # restored
    coords = torch.tensor([[0, 0, 1, 2], [1, 5, 5, 5], [0, 3, 0, 4], [1, 0, 0, 0]], dtype=torch.int32)
    _, zs = ex.forward_sparse(t["in.image"], coords, *args, grid_resolution_override=6)
    torch.testing.assert_close(zs, gather_grid_features(z6, coords, 6), rtol=0, atol=1e-6)

    torch.manual_seed(0)
    naf = NAF(dim=16, heads_attn=4, heads_rope=2, kernel_size=3, backend="torch")
    ex_naf = DinoV3ProjFeatureExtractor(image_size=64, grid_resolution=8, use_naf_upsample=True, naf_target_size=16,
                                        model=model, naf_model=naf)
    assert ex_naf.proj_channels == 64
    zg, zp = ex_naf(t["in.image"], *args)
    _, z_lr = ex(t["in.image"], *args)
    torch.testing.assert_close(zp[..., :32], z_lr)           # lr first
    tokens = DinoV3FeatureExtractor(image_size=64, model=model)(t["in.image"])
    patch = tokens[:, 5:].reshape(2, 4, 4, 32).permute(0, 3, 1, 2)
    hr = naf(t["in.image"], patch, (16, 16))
    torch.testing.assert_close(zp[..., 32:], ex.proj_grid(hr, *args, BHWC=False))  # hr second
    _, zps = ex_naf.forward_sparse(t["in.image"], coords[:2].clone().clamp(max=7), *args)
    torch.testing.assert_close(zps, gather_grid_features(zp, coords[:2].clone().clamp(max=7), 8), rtol=0, atol=1e-6)


def test_load_by_local_folder_and_clear_error(fx, tmp_path):
    _, t, model = fx
    model.save_pretrained(tmp_path / "dino")
    ex = DinoV3FeatureExtractor(str(tmp_path / "dino"), image_size=64)
    torch.testing.assert_close(ex(t["in.image"]), DinoV3FeatureExtractor(image_size=64, model=model)(t["in.image"]))
    (tmp_path / "empty").mkdir()
    with pytest.raises(OSError, match="DINOv3 backbone"):
        load_dinov3(str(tmp_path / "empty"))
