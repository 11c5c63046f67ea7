"""NAF upsampler and neighbourhood attention (PIXAL3D_SPEC §3; valeoai/NAF architecture)."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pixal3d.conditioning.naf import NAF
from pixal3d.conditioning.neighborhood_attention import (natten_available, upsampled_neighborhood_attention,
                                                         upsampled_neighborhood_attention_at,
                                                         upsampled_neighborhood_attention_torch, window_indices)


def _natten_window_start(index, length, k, d):
    """Window start as written in NATTEN's kernels (independent formulation of the same rule)."""
    nb = k // 2
    if d <= 1:
        return max(index - nb, 0) + (index + nb >= length) * (length - index - nb - 1)
    ni = index - nb * d
    if ni < 0:
        return index % d
    if index + nb * d >= length:
        imodd = index % d
        a = (length // d) * d
        b = length - a
        if imodd < b:
            return length - b + imodd - 2 * nb * d
        return a + imodd - k * d
    return ni


@pytest.mark.parametrize("length,k,d", [(10, 3, 1), (10, 3, 2), (37, 5, 3), (64, 9, 4), (512, 9, 16), (23, 7, 3)])
def test_window_indices_match_natten_rule(length, k, d):
    idx = window_indices(length, k, d)
    for i in range(length):
        s = _natten_window_start(i, length, k, d)
        assert idx[i].tolist() == [s + d * j for j in range(k)], i
        assert i in idx[i].tolist()
    with pytest.raises(ValueError):
        window_indices(k * d - 1, k, d)


def _brute_force_na(q, k_lr, v_lr, ks, dil, scale):
    """float64 reference: upsample K/V explicitly, then loop over queries and their NATTEN windows."""
    b, h, w, n, _ = q.shape

    def up(x):
        bb, hh, ww, nn_, dd = x.shape
        y = F.interpolate(x.reshape(bb, hh, ww, nn_ * dd).permute(0, 3, 1, 2), size=(h, w), mode="nearest-exact")
        return y.permute(0, 2, 3, 1).reshape(bb, h, w, nn_, dd)
    k, v = up(k_lr), up(v_lr)
    out = torch.zeros(b, h, w, n, v.shape[-1], dtype=torch.float64)
    for y in range(h):
        sy = _natten_window_start(y, h, ks[0], dil[0])
        ys = [sy + dil[0] * j for j in range(ks[0])]
        for x in range(w):
            sx = _natten_window_start(x, w, ks[1], dil[1])
            xs = [sx + dil[1] * j for j in range(ks[1])]
            kk = k[:, ys][:, :, xs].reshape(b, -1, n, k.shape[-1])    # [B, ky*kx, n, d]
            vv = v[:, ys][:, :, xs].reshape(b, -1, n, v.shape[-1])
            logit = torch.einsum("bnd,bknd->bnk", q[:, y, x], kk) * scale
            out[:, y, x] = torch.einsum("bnk,bknd->bnd", logit.softmax(-1), vv)
    return out


@pytest.mark.parametrize("hq,wq,hk,wk,ks", [(12, 12, 3, 3, (3, 3)), (16, 12, 4, 3, (3, 3)), (20, 14, 5, 7, (5, 5)),
                                           (13, 11, 4, 3, (3, 3))])
def test_pure_torch_na_matches_brute_force(hq, wq, hk, wk, ks):
    torch.manual_seed(0)
    dil = (hq // hk, wq // wk)
    q = torch.randn(2, hq, wq, 2, 4, dtype=torch.float64)
    k = torch.randn(2, hk, wk, 2, 4, dtype=torch.float64)
    v = torch.randn(2, hk, wk, 2, 6, dtype=torch.float64)
    ref = _brute_force_na(q, k, v, ks, dil, 0.5)
    got = upsampled_neighborhood_attention_torch(q, k, v, ks, dil, 0.5, chunk_elements=500)  # forces several chunks
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    got32 = upsampled_neighborhood_attention(q.float(), k.float(), v.float(), ks, dil, 0.5, backend="torch")
    torch.testing.assert_close(got32.double(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not (natten_available() and torch.cuda.is_available()), reason="natten with CUDA not available")
def test_pure_torch_na_matches_natten():
    torch.manual_seed(0)
    q = torch.randn(1, 64, 64, 4, 64, device="cuda")
    k = torch.randn(1, 8, 8, 4, 64, device="cuda")
    v = torch.randn(1, 8, 8, 4, 256, device="cuda")
    a = upsampled_neighborhood_attention(q, k, v, (9, 9), (8, 8), backend="natten")
    b = upsampled_neighborhood_attention(q, k, v, (9, 9), (8, 8), backend="torch")
    torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)


def test_released_state_dict_names_and_shapes():
    sd = NAF().state_dict()
    expected = {}
    for branch, ks in (("encoder", 1), ("sem_encoder", 3)):
        p = f"image_encoder.{branch}"
        expected[f"{p}.0.weight"], expected[f"{p}.0.bias"] = (128, 3, ks, ks), (128,)
        for blk in (1, 2):
            for norm in ("norm1", "norm2"):
                expected[f"{p}.{blk}.{norm}.weight"] = expected[f"{p}.{blk}.{norm}.bias"] = (128,)
            for conv in ("conv1", "conv2"):
                expected[f"{p}.{blk}.{conv}.weight"], expected[f"{p}.{blk}.{conv}.bias"] = (128, 128, ks, ks), (128,)
    expected["image_encoder.rope.periods"] = (16,)
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected
    # periods = base ** (2 i / (D_head / 2)) with base 100, D_head = 64
    np.testing.assert_allclose(sd["image_encoder.rope.periods"].numpy(), 100.0 ** (2 * np.arange(16) / 32), rtol=1e-6)


def _reference_naf(model, image, feats, out_hw):
    """float64 functional re-derivation of the NAF forward from its published description."""
    sd = {k: v.double() for k, v in model.state_dict().items()}
    x = image.double()

    def conv(t, pfx, k):
        t = F.pad(t, [k // 2] * 4, mode="reflect") if k > 1 else t
        return F.conv2d(t, sd[pfx + ".weight"], sd[pfx + ".bias"])

    def branch(name, k):
        p = f"image_encoder.{name}"
        t = conv(x, f"{p}.0", k)
        for blk in (1, 2):
            t = F.group_norm(t, 8, sd[f"{p}.{blk}.norm1.weight"], sd[f"{p}.{blk}.norm1.bias"])
            t = conv(F.silu(t), f"{p}.{blk}.conv1", k)
            t = F.group_norm(t, 8, sd[f"{p}.{blk}.norm2.weight"], sd[f"{p}.{blk}.norm2.bias"])
            t = conv(F.silu(t), f"{p}.{blk}.conv2", k)
        return t
    enc = F.adaptive_avg_pool2d(torch.cat([branch("encoder", 1), branch("sem_encoder", 3)], 1), out_hw)
    b, c, h, w = enc.shape
    heads_rope = model.image_encoder.rope.num_heads
    dh = c // heads_rope
    periods = sd["image_encoder.rope.periods"]
    rot = torch.empty_like(enc)
    for yy in range(h):
        for xx in range(w):
            cy, cx = (yy + 0.5) / h * 2 - 1, (xx + 0.5) / w * 2 - 1
            ang = torch.cat([2 * math.pi * cy / periods, 2 * math.pi * cx / periods])     # [D/2]
            for hd in range(heads_rope):
                vec = enc[:, hd * dh:(hd + 1) * dh, yy, xx]
                a, bb = vec[:, :dh // 2], vec[:, dh // 2:]
                rot[:, hd * dh:(hd + 1) * dh, yy, xx] = torch.cat([a * ang.cos() - bb * ang.sin(),
                                                                   bb * ang.cos() + a * ang.sin()], 1)
    keys = F.adaptive_avg_pool2d(rot, feats.shape[-2:])
    n = model.heads_attn

    def heads(t):
        return t.reshape(t.shape[0], n, t.shape[1] // n, *t.shape[-2:]).permute(0, 3, 4, 1, 2)
    dil = (out_hw[0] // feats.shape[-2], out_hw[1] // feats.shape[-1])
    out = _brute_force_na(heads(rot), heads(keys), heads(feats.double()), model.kernel_size, dil, (c // n) ** -0.5)
    return out.permute(0, 3, 4, 1, 2).reshape(b, -1, *out_hw)


def test_naf_forward_matches_float64_reference():
    torch.manual_seed(0)
    model = NAF(dim=32, heads_attn=4, heads_rope=2, kernel_size=3, backend="torch")
    for p in model.parameters():  # non-trivial norms so every parameter matters
        p.data.add_(0.1 * torch.randn_like(p))
    image = torch.rand(1, 3, 40, 36)
    feats = torch.randn(1, 8, 4, 3)
    out = model(image, feats, (12, 9))
    assert out.shape == (1, 8, 12, 9)
    ref = _reference_naf(model, image, feats, (12, 9))
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-4)
    # an image much larger than 4x the output is first reduced bilinearly (bounded encoder cost)
    big = torch.rand(1, 3, 80, 80)
    out_big = model(big, feats[..., :3, :3], (9, 9))
    small = F.interpolate(big, size=(36, 36), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out_big, model(small, feats[..., :3, :3], (9, 9)))


def test_naf_from_pretrained_roundtrip_and_errors(tmp_path):
    torch.manual_seed(0)
    m = NAF()
    torch.save(m.state_dict(), tmp_path / "naf_release.pth")
    m2 = NAF.from_pretrained(str(tmp_path / "naf_release.pth"))
    for k, v in m.state_dict().items():
        assert torch.equal(v, m2.state_dict()[k])
    with pytest.raises(OSError, match="NAF weights"):
        NAF.from_pretrained(str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError):
        m(torch.rand(1, 3, 32, 32), torch.randn(1, 8, 8, 8), (4, 4))


@pytest.mark.parametrize("hq,wq,hk,wk,ks", [(12, 12, 4, 4, 3), (15, 12, 5, 3, 3), (30, 30, 6, 6, 5), (16, 24, 4, 6, 3)])
def test_na_at_pixels_matches_the_full_map(hq, wq, hk, wk, ks):
    """Per-pixel evaluation equals the full-map torch path at those pixels (float64), window edges included."""
    g = torch.Generator().manual_seed(hq * wq)
    b, nh, dk, dv = 2, 2, 4, 3
    q = torch.randn(b, hq, wq, nh, dk, generator=g, dtype=torch.float64)
    k = torch.randn(b, hk, wk, nh, dk, generator=g, dtype=torch.float64)
    v = torch.randn(b, hk, wk, nh, dv, generator=g, dtype=torch.float64)
    dil = (hq // hk, wq // wk)
    full = upsampled_neighborhood_attention_torch(q, k, v, (ks, ks), dil, scale=0.7)
    px = torch.stack([torch.randint(0, b, (60,), generator=g), torch.randint(0, hq, (60,), generator=g),
                      torch.randint(0, wq, (60,), generator=g)], 1)
    px = torch.cat([px, torch.tensor([[0, 0, 0], [1, hq - 1, wq - 1], [1, 0, wq - 1], [0, hq - 1, 0]])])
    got = upsampled_neighborhood_attention_at(q[px[:, 0], px[:, 1], px[:, 2]], px, (hq, wq), k, v, (ks, ks), dil,
                                              scale=0.7, chunk_elements=200)   # several chunks
    torch.testing.assert_close(got, full[px[:, 0], px[:, 1], px[:, 2]], rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="lie in"):
        upsampled_neighborhood_attention_at(q[0, :1, 0], torch.tensor([[0, hq, 0]]), (hq, wq), k, v, (ks, ks), dil)


def test_naf_forward_at_equals_forward_rows():
    torch.manual_seed(0)
    model = NAF(dim=32, heads_attn=4, heads_rope=2, kernel_size=3, backend="torch").double()
    for p in model.parameters():
        p.data.add_(0.1 * torch.randn_like(p))
    image = torch.rand(2, 3, 24, 24, dtype=torch.float64)
    feats = torch.randn(2, 8, 4, 4, dtype=torch.float64)
    full = model(image, feats, (16, 16))
    px = torch.stack([torch.randint(0, 2, (50,)), torch.randint(0, 16, (50,)), torch.randint(0, 16, (50,))], 1)
    got = model.forward_at(image, feats, (16, 16), px)
    assert got.shape == (50, 8)
    torch.testing.assert_close(got, full[px[:, 0], :, px[:, 1], px[:, 2]], rtol=1e-12, atol=1e-12)


def test_naf_memory_saving_paths_are_bit_identical(monkeypatch):
    """Sliced RoPE, per-branch pooling and in-place SiLU change no bit: the same model with one-pixel slices and the
    plain graph-recording path (out-of-place SiLU) give equal outputs."""
    from pixal3d.conditioning import naf as naf_mod
    torch.manual_seed(0)
    model = NAF(dim=32, heads_attn=4, heads_rope=2, kernel_size=3, backend="torch")
    for p in model.parameters():
        p.data.add_(0.1 * torch.randn_like(p))
    image, feats = torch.rand(1, 3, 24, 20), torch.randn(1, 8, 4, 5)
    with torch.no_grad():
        fast = model(image, feats, (12, 10))
        pooled = model(image, feats, (8, 5))           # output smaller than the image: pooling runs
    monkeypatch.setattr(naf_mod._AxialRoPE, "chunk_elements", 1)
    with torch.enable_grad():
        slow = model(image, feats, (12, 10))
        slow_pooled = model(image, feats, (8, 5))
    assert torch.equal(fast, slow) and torch.equal(pooled, slow_pooled)
