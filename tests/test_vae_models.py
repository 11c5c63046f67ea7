"""Structure, key tables, precision rules and maths of the VAEs (TRELLIS2_SPEC §1.6, §2.4–2.7).

Full-size configs are built on the ``meta`` device (no memory) and checked against the spec's parameter counts and key
tables; the maths is checked on small models against float64 re-computations written independently here.
"""
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pixal3d.models import get_model_class
from pixal3d.modules.norm import ChannelLayerNorm32, GroupNorm32
from pixal3d.modules.spatial import pixel_shuffle_3d, pixel_unshuffle_3d
from pixal3d.models.sc_vaes.sparse_unet_vae import SparseUnetVaeDecoder
from pixal3d.sparse import SparseTensor

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "models" / "trellis2"


def build_config(stem: str, device="meta"):
    cfg = json.loads((CONFIGS / f"{stem}.json").read_text())
    with torch.device(device):
        return get_model_class(cfg["name"])(**cfg["args"])


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------------------- dense pixel shuffle


def test_pixel_shuffle_3d_packing_is_channel_major_x_high_bit():
    # Every input value encodes its own (channel, x, y, z): the output position tells where the op moved it.
    B, C, f, X, Y, Z = 1, 2, 2, 2, 3, 2
    ch, xs, ys, zs = torch.meshgrid(torch.arange(C * 8), torch.arange(X), torch.arange(Y), torch.arange(Z),
                                    indexing="ij")
    x = (ch * 1000 + xs * 100 + ys * 10 + zs).double()[None]
    out = pixel_shuffle_3d(x, f)
    assert out.shape == (B, C, f * X, f * Y, f * Z)
    for c in range(C):
        for a in range(2):
            for b in range(2):
                for d in range(2):
                    src = c * 8 + a * 4 + b * 2 + d
                    for i in range(X):
                        for j in range(Y):
                            for k in range(Z):
                                assert out[0, c, 2 * i + a, 2 * j + b, 2 * k + d] == src * 1000 + i * 100 + j * 10 + k


def test_pixel_unshuffle_inverts_shuffle():
    x = torch.randn(2, 16, 3, 2, 4, dtype=torch.float64)
    assert torch.equal(pixel_unshuffle_3d(pixel_shuffle_3d(x, 2), 2), x)


def test_pixel_shuffle_bad_input():
    with pytest.raises(ValueError, match="divisible"):
        pixel_shuffle_3d(torch.zeros(1, 12, 2, 2, 2), 2)
    with pytest.raises(ValueError, match=r"\[B, C, X, Y, Z\]"):
        pixel_shuffle_3d(torch.zeros(8, 2, 2, 2), 2)


# ------------------------------------------------------------------------------------------------- dense SS VAE

SS_DEC_KEYS = {
    "blocks.2.conv.weight": (1024, 512, 3, 3, 3),
    "blocks.5.conv.weight": (256, 128, 3, 3, 3),
    "input_layer.weight": (512, 8, 3, 3, 3),
    "middle_block.1.conv2.weight": (512, 512, 3, 3, 3),
    "blocks.7.norm1.weight": (32,),
    "out_layer.0.weight": (32,),
    "out_layer.2.weight": (1, 32, 3, 3, 3),
}
SS_ENC_KEYS = {
    "blocks.2.conv.weight": (128, 32, 2, 2, 2),
    "blocks.5.conv.weight": (512, 128, 2, 2, 2),
    "input_layer.weight": (32, 1, 3, 3, 3),
    "blocks.0.conv1.weight": (32, 32, 3, 3, 3),
    "out_layer.0.weight": (512,),
    "out_layer.2.weight": (16, 512, 3, 3, 3),
}


@pytest.mark.parametrize("stem,count,keys", [
    ("ss_dec_conv3d_16l8_fp16", 73_671_201, SS_DEC_KEYS),
    ("ss_enc_conv3d_16l8_fp16", 59_298_192, SS_ENC_KEYS),
])
def test_ss_vae_full_size_keys_and_dtypes(stem, count, keys):
    model = build_config(stem)
    assert n_params(model) == count
    sd = model.state_dict()
    for k, shape in keys.items():
        assert tuple(sd[k].shape) == shape, k
    # fp16 torso: conv weights inside blocks/middle_block are half, their norms and the skin stay float32
    for k, v in sd.items():
        torso = k.startswith(("blocks.", "middle_block."))
        is_norm = ".norm" in k
        expect = torch.float16 if torso and not is_norm else torch.float32
        assert v.dtype == expect, f"{k}: {v.dtype}"


def test_ss_resblocks_ignore_norm_type():
    # Checkpoint quirk: residual blocks always use ChannelLayerNorm32; only out_layer follows norm_type.
    enc = get_model_class("SparseStructureEncoder")(1, 4, 1, [32, 32], num_res_blocks_middle=1, norm_type="group")
    assert isinstance(enc.out_layer[0], GroupNorm32)
    assert isinstance(enc.blocks[0].norm1, ChannelLayerNorm32) and isinstance(enc.middle_block[0].norm2,
                                                                               ChannelLayerNorm32)
    assert enc.blocks[0].norm1.eps == 1e-5 and enc.blocks[0].norm1.elementwise_affine


def _resblock_ref(x, blk):
    """float64 ResBlock3d written from the formula: conv2(SiLU(LN2(conv1(SiLU(LN1(x)))))) + x."""
    def cln(h, norm):
        hp = h.permute(0, 2, 3, 4, 1)
        mu = hp.mean(-1, keepdim=True)
        var = hp.var(-1, unbiased=False, keepdim=True)
        hp = (hp - mu) / torch.sqrt(var + norm.eps) * norm.weight.double() + norm.bias.double()
        return hp.permute(0, 4, 1, 2, 3)
    h = F.conv3d(F.silu(cln(x, blk.norm1)), blk.conv1.weight.double(), blk.conv1.bias.double(), padding=1)
    h = F.conv3d(F.silu(cln(h, blk.norm2)), blk.conv2.weight.double(), blk.conv2.bias.double(), padding=1)
    return h + x


def test_ss_decoder_matches_float64_formula():
    torch.manual_seed(0)
    dec = get_model_class("SparseStructureDecoder")(1, 4, 1, [8, 4], num_res_blocks_middle=1).eval()
    for p in dec.parameters():  # conv2 is zero-initialised; randomise everything so each layer matters
        torch.nn.init.normal_(p, std=0.3)
    z = torch.randn(2, 4, 3, 3, 3)
    with torch.no_grad():
        ours = dec(z)
        h = F.conv3d(z.double(), dec.input_layer.weight.double(), dec.input_layer.bias.double(), padding=1)
        h = _resblock_ref(h, dec.middle_block[0])
        h = _resblock_ref(h, dec.blocks[0])
        up = dec.blocks[1].conv
        h = F.conv3d(h, up.weight.double(), up.bias.double(), padding=1)       # [B, 8*4, 3,3,3]
        # explicit channel-major, x-high-bit placement (TRELLIS2_SPEC §1.6)
        fine = torch.zeros(2, 4, 6, 6, 6, dtype=torch.float64)
        for a in range(2):
            for b in range(2):
                for d in range(2):
                    fine[:, :, a::2, b::2, d::2] = h[:, [c * 8 + a * 4 + b * 2 + d for c in range(4)]]
        h = _resblock_ref(fine, dec.blocks[2])
        n = dec.out_layer[0]
        hp = h.permute(0, 2, 3, 4, 1)
        hp = (hp - hp.mean(-1, keepdim=True)) / torch.sqrt(hp.var(-1, unbiased=False, keepdim=True) + n.eps)
        h = (hp * n.weight.double() + n.bias.double()).permute(0, 4, 1, 2, 3)
        ref = F.conv3d(F.silu(h), dec.out_layer[2].weight.double(), dec.out_layer[2].bias.double(), padding=1)
    assert ours.shape == (2, 1, 6, 6, 6)
    assert float((ours.double() - ref).norm() / ref.norm()) < 1e-5


def test_ss_encoder_posterior_sampling():
    torch.manual_seed(0)
    enc = get_model_class("SparseStructureEncoder")(1, 4, 1, [8, 8], num_res_blocks_middle=1).eval()
    x = (torch.rand(2, 1, 8, 8, 8) > 0.5).float()
    with torch.no_grad():
        z0, mean, logvar = enc(x, return_raw=True)
        assert torch.equal(z0, mean) and z0.shape == (2, 4, 4, 4, 4)
        torch.manual_seed(1)
        z1 = enc(x, sample_posterior=True)
    torch.manual_seed(1)
    eps = torch.randn_like(mean)
    torch.testing.assert_close(z1, mean + torch.exp(0.5 * logvar) * eps)


def test_ss_fp16_torso_runs_and_returns_input_dtype():
    torch.manual_seed(0)
    dec = get_model_class("SparseStructureDecoder")(1, 4, 1, [8, 8], num_res_blocks_middle=1, use_fp16=True).eval()
    assert dec.blocks[0].conv1.weight.dtype == torch.float16 and dec.input_layer.weight.dtype == torch.float32
    with torch.no_grad():
        out = dec(torch.randn(1, 4, 2, 2, 2))
    assert out.dtype == torch.float32 and out.shape == (1, 1, 4, 4, 4) and torch.isfinite(out).all()


def test_ss_bad_input():
    enc = get_model_class("SparseStructureEncoder")(1, 4, 1, [8, 8], num_res_blocks_middle=1)
    dec = get_model_class("SparseStructureDecoder")(1, 4, 1, [8, 8], num_res_blocks_middle=1)
    with pytest.raises(ValueError, match="divisible by 2"):
        enc(torch.zeros(1, 1, 7, 8, 8))
    with pytest.raises(ValueError, match=r"\[B, 1, X, Y, Z\]"):
        enc(torch.zeros(1, 2, 8, 8, 8))
    with pytest.raises(TypeError, match="floating-point"):
        enc(torch.zeros(1, 1, 8, 8, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\[B, 4, X, Y, Z\]"):
        dec(torch.zeros(1, 4, 8, 8))
    with pytest.raises(ValueError, match="norm_type"):
        get_model_class("SparseStructureDecoder")(1, 4, 1, [8, 8], norm_type="batch")


# ------------------------------------------------------------------------------------------------------ SC-VAEs

CB = "SparseConvNeXtBlock3d"


def random_sparse(channels: int, grid: int = 6, batch: int = 2, fill: float = 0.35, seed: int = 0,
                  dtype=torch.float64) -> SparseTensor:
    """Random voxel subsets of a ``grid³`` box per sample (rows ordered by batch), random features."""
    g = torch.Generator().manual_seed(seed)
    coords = []
    for b in range(batch):
        occ = torch.rand(grid, grid, grid, generator=g) < fill
        xyz = occ.nonzero()
        coords.append(torch.cat([torch.full((xyz.shape[0], 1), b), xyz], 1))
    coords = torch.cat(coords).int()
    feats = torch.randn(coords.shape[0], channels, generator=g, dtype=dtype)
    return SparseTensor(feats, coords)


def randomise(module, seed=0, std=0.3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std)
    return module


def keyed(coords: torch.Tensor, feats: torch.Tensor) -> dict:
    return {tuple(c): f for c, f in zip(coords.tolist(), feats)}


def assert_same_sparse(ours: SparseTensor, ref: dict, tol=1e-6):
    """Same coordinate set and features within ``tol`` (LayerNorm32 computes in float32, hence not 1e-15)."""
    got = keyed(ours.coords, ours.feats)
    assert set(got) == set(ref), "coordinate sets differ"
    num = sum(float(((got[k].double() - ref[k]).detach() ** 2).sum()) for k in ref)
    den = sum(float((ref[k].detach() ** 2).sum()) for k in ref)
    assert (num / den) ** 0.5 < tol


# float64 references written from the formulas of TRELLIS2_SPEC §1.4–1.6 / §2.5, on dict {coord: feature row}

def ref_conv(d: dict, weight: torch.Tensor, bias: torch.Tensor) -> dict:
    out = {}
    for (b, x, y, z) in d:
        acc = bias.double().clone()
        for i in range(3):
            for j in range(3):
                for k in range(3):
                    q = (b, x + i - 1, y + j - 1, z + k - 1)
                    if q in d:
                        acc = acc + weight[:, i, j, k, :].double() @ d[q]
        out[(b, x, y, z)] = acc
    return out


def ref_ln(v: torch.Tensor, norm, eps=1e-6):
    v = (v - v.mean()) / torch.sqrt(v.var(unbiased=False) + eps)
    if norm is not None and norm.weight is not None:
        v = v * norm.weight.double() + norm.bias.double()
    return v


def ref_s2c(d: dict) -> dict:
    C = next(iter(d.values())).shape[0]
    out = {}
    for (b, x, y, z), v in d.items():
        p = (b, x // 2, y // 2, z // 2)
        s = x % 2 + 2 * (y % 2) + 4 * (z % 2)
        out.setdefault(p, torch.zeros(8 * C, dtype=torch.float64))[s * C:(s + 1) * C] = v
    return out


def ref_c2s(d: dict, children: dict) -> dict:
    out = {}
    for (b, x, y, z), v in d.items():
        c = v.shape[0] // 8
        for s in range(8):
            if children[(b, x, y, z)][s]:
                out[(b, 2 * x + s % 2, 2 * y + s // 2 % 2, 2 * z + s // 4)] = v[s * c:(s + 1) * c]
    return out


def test_convnext_block_matches_float64_formula():
    from pixal3d.models.sc_vaes.blocks import SparseConvNeXtBlock3d
    blk = randomise(SparseConvNeXtBlock3d(8).double())
    x = random_sparse(8)
    d = keyed(x.coords, x.feats)
    h = ref_conv(d, blk.conv.weight, blk.conv.bias)
    ref = {}
    for k, v in h.items():
        v = ref_ln(v, blk.norm)
        v = blk.mlp[2].weight.double() @ torch.nn.functional.silu(blk.mlp[0].weight.double() @ v + blk.mlp[0].bias) \
            + blk.mlp[2].bias
        ref[k] = v + d[k]
    with torch.no_grad():
        assert_same_sparse(blk(x), ref)


def test_s2c_block_matches_float64_formula():
    from pixal3d.models.sc_vaes.blocks import SparseResBlockS2C3d
    blk = randomise(SparseResBlockS2C3d(8, 16).double())
    assert blk.norm2.weight is None and tuple(blk.conv1.weight.shape) == (2, 3, 3, 3, 8)
    x = random_sparse(8, seed=1)
    d = keyed(x.coords, x.feats)
    h = ref_conv({k: torch.nn.functional.silu(ref_ln(v, blk.norm1)) for k, v in d.items()}, blk.conv1.weight,
                 blk.conv1.bias)
    h = ref_s2c(h)
    h = ref_conv({k: torch.nn.functional.silu(ref_ln(v, None)) for k, v in h.items()}, blk.conv2.weight,
                 blk.conv2.bias)
    xs = ref_s2c(d)
    ref = {k: h[k] + xs[k].reshape(16, 4).mean(-1) for k in h}
    with torch.no_grad():
        assert_same_sparse(blk(x), ref)


def test_c2s_block_matches_float64_formula():
    from pixal3d.models.sc_vaes.blocks import SparseResBlockC2S3d
    blk = randomise(SparseResBlockC2S3d(16, 8).double())
    x = random_sparse(16, grid=4, seed=2)
    d = keyed(x.coords, x.feats)
    logits = {k: blk.to_subdiv.weight.double() @ v + blk.to_subdiv.bias for k, v in d.items()}
    children = {k: (v > 0).tolist() for k, v in logits.items()}
    h = ref_conv({k: torch.nn.functional.silu(ref_ln(v, blk.norm1)) for k, v in d.items()}, blk.conv1.weight,
                 blk.conv1.bias)
    h = ref_c2s(h, children)
    h = ref_conv({k: torch.nn.functional.silu(ref_ln(v, None)) for k, v in h.items()}, blk.conv2.weight,
                 blk.conv2.bias)
    xf = ref_c2s(d, children)
    ref = {k: h[k] + xf[k].repeat_interleave(4) for k in h}
    with torch.no_grad():
        out, sub = blk(x)
    assert_same_sparse(sub, logits)
    assert_same_sparse(out, ref)


# ---- full-size configurations (TRELLIS2_SPEC §2 counts, §2.6/2.7 key tables)

SC_ENC_KEYS = {
    "input_layer.weight": (64, 6), "blocks.0.0.norm1.weight": (64,), "blocks.0.0.conv1.weight": (16, 3, 3, 3, 64),
    "blocks.0.0.conv2.weight": (128, 3, 3, 3, 128), "blocks.1.3.conv.weight": (128, 3, 3, 3, 128),
    "blocks.1.0.mlp.0.weight": (512, 128), "blocks.1.0.mlp.2.weight": (128, 512),
    "blocks.1.4.conv1.weight": (32, 3, 3, 3, 128), "blocks.1.4.conv2.weight": (256, 3, 3, 3, 256),
    "blocks.2.8.conv1.weight": (64, 3, 3, 3, 256), "blocks.3.16.conv2.weight": (1024, 3, 3, 3, 1024),
    "blocks.4.3.mlp.0.weight": (4096, 1024), "to_latent.weight": (64, 1024),
}
SC_DEC_KEYS = {
    "from_latent.weight": (1024, 32), "blocks.0.3.conv.weight": (1024, 3, 3, 3, 1024),
    "blocks.0.4.conv1.weight": (4096, 3, 3, 3, 1024), "blocks.0.4.conv2.weight": (512, 3, 3, 3, 512),
    "blocks.1.16.conv1.weight": (2048, 3, 3, 3, 512), "blocks.2.8.conv1.weight": (1024, 3, 3, 3, 256),
    "blocks.3.4.conv1.weight": (512, 3, 3, 3, 128), "blocks.3.4.conv2.weight": (64, 3, 3, 3, 64),
}


@pytest.mark.parametrize("stem,count,n_out", [
    ("shape_enc_next_dc_f16c32_fp16", 354_385_392, None),
    ("tex_enc_next_dc_f16c32_fp16", 354_385_392, None),
    ("shape_dec_next_dc_f16c32_fp16", 474_231_463, 7),
    ("tex_dec_next_dc_f16c32_fp16", 474_216_006, 6),
])
def test_sc_vae_full_size_keys_and_dtypes(stem, count, n_out):
    model = build_config(stem)
    cfg = json.loads((CONFIGS / f"{stem}.json").read_text())
    assert model.config == cfg
    assert n_params(model) == count
    sd = model.state_dict()
    table = SC_ENC_KEYS if n_out is None else {**SC_DEC_KEYS, "output_layer.weight": (n_out, 64)}
    for k, shape in table.items():
        assert tuple(sd[k].shape) == shape, k
    subdiv = [k for k in sd if "to_subdiv" in k]
    if stem.startswith("shape_dec"):
        assert sorted(subdiv) == sorted(f"blocks.{i}.{j}.to_subdiv.{p}" for i, j in ((0, 4), (1, 16), (2, 8), (3, 4))
                                        for p in ("weight", "bias"))
        assert tuple(sd["blocks.2.8.to_subdiv.weight"].shape) == (8, 256)
    else:
        assert subdiv == []
    assert not any(k.startswith("blocks.4.") for k in sd) or n_out is None   # decoder's last stage is empty
    for k, v in sd.items():
        half = k.startswith("blocks.") and ".norm" not in k
        assert v.dtype == (torch.float16 if half else torch.float32), f"{k}: {v.dtype}"


# ---- behaviour on small models

ENC_ARGS = dict(model_channels=[8, 16, 32], latent_channels=4, num_blocks=[1, 1, 1], block_type=[CB] * 3,
                down_block_type=["SparseResBlockS2C3d"] * 2, block_args=[{}] * 3)
DEC_ARGS = dict(model_channels=[32, 16, 8], latent_channels=4, num_blocks=[1, 1, 1], block_type=[CB] * 3,
                up_block_type=["SparseResBlockC2S3d"] * 2, block_args=[{}] * 3)


def small(name, seed=0, **kw):
    torch.manual_seed(seed)
    cls = get_model_class(name)
    args = ENC_ARGS if "Encoder" in name else DEC_ARGS
    if name == "SparseUnetVaeEncoder":
        args = {"in_channels": 6, **args}
    if name == "SparseUnetVaeDecoder":
        args = {"out_channels": 6, **args}
    if name == "FlexiDualGridVaeDecoder":
        args = {"resolution": 16, **args}
    model = cls(**{**args, **kw}).eval()
    # zero-initialised conv2s would hide half of each block: randomise everything
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model


def trunk_forward(dec, z, **kw):
    """The decoder trunk without the FlexiDualGrid head (raw 7-channel output)."""
    return SparseUnetVaeDecoder.forward(dec, z, **kw)


def test_encoder_decoder_teacher_forcing_and_subdivision_targets():
    enc = small("SparseUnetVaeEncoder").train()
    dec = small("FlexiDualGridVaeDecoder", seed=1)
    x = random_sparse(6, grid=16, fill=0.15, seed=3, dtype=torch.float32)
    z = enc(x)
    assert z.feats.shape[1] == 4 and int(z.coords[:, 1:].max()) < 4
    h, subs_gt, subs = trunk_forward(dec.train(), z)
    # the encoder's structure is reproduced exactly, whatever the (random) subdivision heads predict
    assert {tuple(c) for c in h.coords.tolist()} == {tuple(c) for c in x.coords.tolist()}
    assert len(subs_gt) == len(subs) == 2
    # subs_gt[-1]: bit s of a level-1 voxel is set iff its child s is an input voxel
    lvl = subs[-1].coords.long()
    kids = {(b, 2 * x_ + s % 2, 2 * y + s // 2 % 2, 2 * z_ + s // 4)
            for (b, x_, y, z_), m in zip(lvl.tolist(), subs_gt[-1].tolist()) for s in range(8) if m[s]}
    assert subs_gt[-1].dtype == torch.bool and kids == {tuple(c) for c in x.coords.tolist()}


def test_guided_decoder_follows_predicted_subdivisions():
    shape = small("SparseUnetVaeDecoder", seed=4)
    guided = get_model_class("SparseUnetVaeDecoder")(out_channels=6, pred_subdiv=False, **DEC_ARGS).eval()
    missing, unexpected = guided.load_state_dict(shape.state_dict(), strict=False)
    assert missing == [] and all("to_subdiv" in k for k in unexpected)
    z = random_sparse(4, grid=4, fill=0.6, seed=5, dtype=torch.float32)
    with torch.no_grad():
        h, subs = shape(z, return_subs=True)
        g_logits = guided(z, guide_subs=subs)
        g_bool = guided(z, guide_subs=[s.replace(s.feats > 0) for s in subs])
    assert torch.equal(g_logits.coords, h.coords) and torch.equal(g_bool.coords, h.coords)
    torch.testing.assert_close(g_logits.feats, h.feats)
    torch.testing.assert_close(g_bool.feats, h.feats)
    with torch.no_grad():
        for k in range(3):
            want = subs[k].coords if k < 2 else h.coords
            assert torch.equal(shape.upsample(z, k), want)
    with pytest.raises(ValueError, match="upsample_times"):
        shape.upsample(z, 3)
    with pytest.raises(ValueError, match="pred_subdiv=True"):
        guided.upsample(z, 1)


def test_guided_decoder_plans_its_structure_before_any_feature_work(monkeypatch):
    """With guides, every child set and grid extent (the host syncs of a C2S chain) is worked out before the first
    convolution is queued, once per level, and the result equals the unplanned C2S chain's."""
    from pixal3d.sparse import SparseConv3d, spatial
    shape = small("SparseUnetVaeDecoder", seed=4)
    guided = get_model_class("SparseUnetVaeDecoder")(out_channels=6, pred_subdiv=False, **DEC_ARGS).eval()
    guided.load_state_dict(shape.state_dict(), strict=False)
    z = random_sparse(4, grid=4, fill=0.6, seed=5, dtype=torch.float32)
    with torch.no_grad():
        h, subs = shape(z, return_subs=True)
    events = []
    children = spatial.children_from_subdivision
    monkeypatch.setattr(spatial, "children_from_subdivision",
                        lambda *a, **k: events.append("children") or children(*a, **k))
    extent = SparseTensor.spatial_shape.fget

    def logged_extent(self):
        if self.get_spatial_cache("shape") is None:
            events.append("extent")
        return extent(self)
    monkeypatch.setattr(SparseTensor, "spatial_shape", property(logged_extent))
    conv_forward = SparseConv3d.forward
    monkeypatch.setattr(SparseConv3d, "forward", lambda self, x: events.append("conv") or conv_forward(self, x))
    with torch.no_grad():
        out = guided(z, guide_subs=subs)
    first_conv = events.index("conv")
    # level 0's extent is already cached on z by the shape decoder's run; the two new levels' are planned
    assert events[:first_conv].count("children") == 2 and events[:first_conv].count("extent") == 2
    assert "children" not in events[first_conv:] and "extent" not in events[first_conv:]
    assert torch.equal(out.coords, h.coords)
    torch.testing.assert_close(out.feats, h.feats)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="checks CUDA host syncs: needs a CUDA device")
def test_gpu_guided_decoder_forward_does_not_sync_after_planning(monkeypatch):
    """Between the planning step and the final read of the guide flags, the forward must not synchronise at all:
    PyTorch's sync debug mode is set to 'error' for exactly that span."""
    shape = small("SparseUnetVaeDecoder", seed=4).cuda()
    guided = get_model_class("SparseUnetVaeDecoder")(out_channels=6, pred_subdiv=False, **DEC_ARGS).eval().cuda()
    guided.load_state_dict(shape.state_dict(), strict=False)
    z = random_sparse(4, grid=4, fill=0.6, seed=5, dtype=torch.float32)
    z = SparseTensor(z.feats.cuda(), z.coords.cuda())
    with torch.no_grad():
        want, subs = shape(z, return_subs=True)
        guided(z, guide_subs=subs)  # warm-up: kernel compiles and the cached offset tables
    plan, check = SparseUnetVaeDecoder._plan_guided_levels, SparseUnetVaeDecoder._raise_on_guide_mismatch
    spans = []

    def planned(h, guide_subs):
        out = plan(h, guide_subs)
        torch.cuda.set_sync_debug_mode("error")
        spans.append("open")
        return out

    def checked(flags):
        torch.cuda.set_sync_debug_mode("default")
        spans.append("closed")
        return check(flags)
    monkeypatch.setattr(SparseUnetVaeDecoder, "_plan_guided_levels", staticmethod(planned))
    monkeypatch.setattr(SparseUnetVaeDecoder, "_raise_on_guide_mismatch", staticmethod(checked))
    try:
        with torch.no_grad():
            out = guided(SparseTensor(z.feats, z.coords), guide_subs=subs)  # a fresh tensor: nothing cached
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert spans == ["open", "closed"]
    assert torch.equal(out.coords, want.coords)
    torch.testing.assert_close(out.feats, want.feats)


def test_guided_decoder_reuses_encoder_structure_without_guides():
    enc = small("SparseUnetVaeEncoder")
    dec = small("SparseUnetVaeDecoder", pred_subdiv=False)
    x = random_sparse(6, grid=12, fill=0.2, seed=6, dtype=torch.float32)
    with torch.no_grad():
        y = dec(enc(x))
    assert {tuple(c) for c in y.coords.tolist()} == {tuple(c) for c in x.coords.tolist()} and y.feats.shape[1] == 6
    # a fresh latent (no cache) needs guides
    fresh = random_sparse(4, grid=3, seed=7, dtype=torch.float32)
    with pytest.raises(ValueError, match="guide_subs"):
        dec(fresh)
    # guides given with a latent that carries the encoder's structure are checked against that structure (which the
    # upsampling blocks follow): guides predicted elsewhere do not lie on it
    with torch.no_grad():
        z = enc(x)
        _, other = small("SparseUnetVaeDecoder", seed=9)(SparseTensor(z.feats, z.coords), return_subs=True)
        with pytest.raises(ValueError, match="lie on the decoder's voxels"):
            dec(z, guide_subs=other)


def test_decoder_guide_errors():
    guided = small("SparseUnetVaeDecoder", pred_subdiv=False)
    pred = small("SparseUnetVaeDecoder")
    z = random_sparse(4, grid=3, fill=0.6, seed=8, dtype=torch.float32)
    with torch.no_grad():
        _, subs = pred(z, return_subs=True)
    with pytest.raises(ValueError, match="2 upsampling blocks"):
        guided(z, guide_subs=subs[:1])
    with pytest.raises(ValueError, match=r"\[N, 8\]"):
        guided(z, guide_subs=[subs[0].replace(subs[0].feats[:, :7]), subs[1]])
    with pytest.raises(ValueError, match="does not lie on the decoder's voxels"):
        guided(z, guide_subs=[subs[1], subs[1]])
    # same voxel count, another row order: found after the last level (the check is read once, not per level)
    perm = torch.arange(subs[0].feats.shape[0])
    b = subs[0].coords[:, 0]
    i = int(torch.nonzero(b[1:] == b[:-1])[0])  # two neighbouring rows of one batch element, swapped
    perm[i], perm[i + 1] = i + 1, i
    shuffled = SparseTensor(subs[0].feats[perm], subs[0].coords[perm])
    with pytest.raises(ValueError, match=r"guide_subs\[0\] do not lie on the decoder's voxels"):
        guided(z, guide_subs=[shuffled, subs[1]])
    with pytest.raises(TypeError, match="list"):
        guided(z, guide_subs=subs[0])
    with pytest.raises(ValueError, match="pred_subdiv=False"):
        pred(z, guide_subs=subs)
    with pytest.raises(ValueError, match="return_subs"):
        guided(z, guide_subs=subs, return_subs=True)


def test_sparse_vae_bad_inputs():
    enc = small("SparseUnetVaeEncoder")
    x = random_sparse(6, grid=4, seed=9, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"feats \[N, 6\]"):
        enc(x.replace(x.feats[:, :5]))
    with pytest.raises(TypeError, match="SparseTensor"):
        enc(x.feats)
    bad = SparseTensor(x.feats, x.coords.long(), check=False)
    with pytest.raises(ValueError, match="int32"):
        enc(bad)
    with pytest.raises(TypeError, match="int32"):   # the SparseTensor constructor already refuses it
        SparseTensor(x.feats, x.coords.long())
    fenc = small("FlexiDualGridVaeEncoder")
    v = random_sparse(3, grid=4, seed=9, dtype=torch.float32)
    with pytest.raises(ValueError, match="same voxels"):
        fenc(v, SparseTensor(torch.zeros(3, 3, dtype=torch.bool), v.coords[:3]))
    with pytest.raises(ValueError, match="unknown block_type"):
        get_model_class("SparseUnetVaeEncoder")(**{**ENC_ARGS, "in_channels": 6, "block_type": ["Nope"] * 3})
    with pytest.raises(ValueError, match="down_block_type has 1 entries"):
        get_model_class("SparseUnetVaeEncoder")(**{**ENC_ARGS, "in_channels": 6,
                                                   "down_block_type": ["SparseResBlockS2C3d"]})
    with pytest.raises(ValueError, match="resolution"):
        small("FlexiDualGridVaeDecoder").set_resolution(0)


def test_fdg_encoder_input_transform():
    fenc = small("FlexiDualGridVaeEncoder", seed=10)
    tenc = get_model_class("SparseUnetVaeEncoder")(in_channels=6, **ENC_ARGS).eval()
    tenc.load_state_dict(fenc.state_dict())
    v = random_sparse(3, grid=8, seed=11, dtype=torch.float32)
    v = v.replace(torch.rand_like(v.feats))
    inter = v.replace(torch.rand(v.feats.shape[0], 3) > 0.5)
    x = v.replace(torch.cat([v.feats - 0.5, inter.feats.float() - 0.5], 1))
    with torch.no_grad():
        torch.testing.assert_close(fenc(v, inter).feats, tenc(x).feats)


def test_posterior_sampling_sparse():
    enc = small("SparseUnetVaeEncoder", seed=12)
    x = random_sparse(6, grid=8, seed=13, dtype=torch.float32)
    with torch.no_grad():
        z, mean, logvar = enc(x, return_raw=True)
        torch.manual_seed(5)
        zs = enc(x, sample_posterior=True)
    torch.manual_seed(5)
    torch.testing.assert_close(zs.feats, mean + torch.exp(0.5 * logvar) * torch.randn_like(mean))
    assert torch.equal(z.feats, mean)


def test_fp16_sparse_vae_runs_and_keeps_skin_fp32():
    enc = get_model_class("SparseUnetVaeEncoder")(in_channels=6, use_fp16=True, **ENC_ARGS).eval()
    assert enc.blocks[1][0].conv.weight.dtype == torch.float16 and enc.blocks[1][0].norm.weight.dtype == torch.float32
    assert enc.input_layer.weight.dtype == torch.float32 and enc.to_latent.weight.dtype == torch.float32
    x = random_sparse(6, grid=8, seed=14, dtype=torch.float32)
    with torch.no_grad():
        z = enc(x)
        ref = get_model_class("SparseUnetVaeEncoder")(in_channels=6, **ENC_ARGS).eval()
        ref.load_state_dict(enc.state_dict())
        zr = ref(x)
    assert z.feats.dtype == torch.float32 and torch.isfinite(z.feats).all()
    assert float((z.feats - zr.feats).norm() / zr.feats.norm()) < 2e-2


def test_fdg_decoder_outputs():
    dec = small("FlexiDualGridVaeDecoder", seed=15)
    z = random_sparse(4, grid=3, fill=0.7, seed=16, dtype=torch.float32)
    with torch.no_grad():
        h, subs = trunk_forward(dec, z, return_subs=True)
        meshes, subs2 = dec(z, return_subs=True)
    assert len(meshes) == 2 and len(subs2) == 2
    v_local = 2.0 * torch.sigmoid(h.feats[:, :3]) - 0.5            # voxel_margin 0.5
    b0 = h.coords[:, 0] == 0
    world = (h.coords[b0, 1:].float() + v_local[b0]) / 16 - 0.5    # resolution 16, aabb [-0.5, 0.5]^3
    torch.testing.assert_close(meshes[0].vertices, world)
    assert meshes[0].faces.dtype == torch.int64
    # training: per-sample train-mode meshes from the ground-truth flags, plus the raw fields
    enc = small("FlexiDualGridVaeEncoder", seed=17).train()
    fine = random_sparse(3, grid=12, fill=0.2, seed=18, dtype=torch.float32)
    gt = fine.replace(torch.rand(fine.feats.shape[0], 3) > 0.5)
    zt = enc(fine.replace(torch.rand_like(fine.feats)), gt)
    dec.train()
    meshes, verts, logits, subs_gt, subs = dec(zt, gt_intersected=gt)
    assert torch.equal(verts.coords, gt.coords) and verts.feats.shape == (gt.feats.shape[0], 3)
    v = verts.feats.detach()
    assert float(v.min()) > -0.5 and float(v.max()) < 1.5 and logits.feats.shape[1] == 3
    assert len(meshes) == 2 and all(s.dtype == torch.bool for s in subs_gt)
    with pytest.raises(ValueError, match="gt_intersected"):
        dec(zt)


def test_unused_block_variants_agree_with_their_specialised_forms():
    # SparseResBlock3d in 'spatial2channel' mode is the S2C / C2S block (both verified above and by the fixtures);
    # in 'nearest' mode it is SparseResBlockDownsample3d / SparseResBlockUpsample3d with the same keys.
    from pixal3d.models.sc_vaes import blocks as B
    x = random_sparse(16, grid=6, seed=20)
    pairs = [
        (B.SparseResBlock3d(16, 32, downsample=True, resample_mode="spatial2channel"), B.SparseResBlockS2C3d(16, 32)),
        (B.SparseResBlock3d(16, 8, upsample=True, resample_mode="spatial2channel"), B.SparseResBlockC2S3d(16, 8)),
        (B.SparseResBlock3d(16, 8, downsample=True), B.SparseResBlockDownsample3d(16, 8)),
        (B.SparseResBlock3d(16, 8, upsample=True), B.SparseResBlockUpsample3d(16, 8)),
    ]
    for generic, special in pairs:
        randomise(generic.double())
        special.double().load_state_dict(generic.state_dict(), strict=True)
        with torch.no_grad():
            a, b = generic(x), special(x)
        a, b = (a, b) if isinstance(a, tuple) else ((a,), (b,))
        for u, v in zip(a, b):
            assert torch.equal(u.coords, v.coords)
            torch.testing.assert_close(u.feats, v.feats)
    assert "skip_connection.weight" in pairs[2][0].state_dict()


def test_downsample_block_matches_float64_formula():
    from pixal3d.models.sc_vaes.blocks import SparseResBlockDownsample3d
    blk = randomise(SparseResBlockDownsample3d(8, 8).double())
    x = random_sparse(8, seed=21)
    d = keyed(x.coords, x.feats)

    def pool(dd):
        groups = {}
        for (b, i, j, k), v in dd.items():
            groups.setdefault((b, i // 2, j // 2, k // 2), []).append(v)
        return {p: torch.stack(vs).mean(0) for p, vs in groups.items()}

    h = pool({k: F.silu(ref_ln(v, blk.norm1)) for k, v in d.items()})
    h = ref_conv(h, blk.conv1.weight, blk.conv1.bias)
    h = ref_conv({k: F.silu(ref_ln(v, None)) for k, v in h.items()}, blk.conv2.weight, blk.conv2.bias)
    xp = pool(d)
    with torch.no_grad():
        assert_same_sparse(blk(x), {k: h[k] + xp[k] for k in h})


@pytest.mark.parametrize("name", ["FlexiDualGridVaeDecoder", "FlexiDualGridVaeEncoder", "SparseUnetVaeDecoder"])
def test_save_and_load_pretrained_round_trip(name, tmp_path):
    from pixal3d.models.pretrained import from_pretrained, save_pretrained
    model = small(name, seed=30)
    save_pretrained(model, tmp_path / "m")
    cfg = json.loads((tmp_path / "m.json").read_text())
    assert cfg["name"] == name and "use_fp16" not in cfg["args"]     # args as passed, defaults not filled in
    loaded = from_pretrained(tmp_path / "m")
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    half = from_pretrained(tmp_path / "m", dtype="float16")
    assert half.blocks[0][0].conv.weight.dtype == torch.float16 and half.blocks[0][0].norm.weight.dtype == torch.float32


def test_ss_vae_from_pretrained_config(tmp_path):
    from pixal3d.models.pretrained import from_pretrained, save_pretrained
    dec = get_model_class("SparseStructureDecoder")(1, 4, 1, [8, 8], num_res_blocks_middle=1, use_fp16=True)
    save_pretrained(dec, tmp_path / "ss")
    loaded = from_pretrained(tmp_path / "ss")
    assert loaded.blocks[0].conv1.weight.dtype == torch.float16 and loaded.dtype == torch.float16
    assert loaded.out_layer[2].weight.dtype == torch.float32
