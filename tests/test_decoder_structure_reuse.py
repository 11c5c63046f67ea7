"""SC-VAE decoders build each level's structure once per forward (issue #11): one neighbour map per level (not one
per conv), and one child computation per upsampling level for both branches of a C2S block. Outputs stay
bit-identical.

The ``gpu``-marked test repeats the checks with fp16 decoders on CUDA, where ``auto`` uses the Triton backend's maps.
"""
import collections

import pytest
import torch

from pixal3d.models import get_model_class
from pixal3d.sparse import SparseTensor, conv, conv_triton, spatial

CB = "SparseConvNeXtBlock3d"
ARGS = dict(model_channels=[16, 16, 8, 8, 8], latent_channels=4, num_blocks=[2, 1, 1, 1, 0], block_type=[CB] * 5,
            up_block_type=["SparseResBlockC2S3d"] * 4, block_args=[{}] * 5)
LEVELS = 5  # 4 upsamplings: 5 resolution levels carry convolutions


def _decoder(pred_subdiv: bool, seed=0, dtype=torch.float64, device="cpu"):
    torch.manual_seed(seed)
    dec = get_model_class("SparseUnetVaeDecoder")(out_channels=6, pred_subdiv=pred_subdiv, **ARGS)
    with torch.no_grad():
        for p in dec.parameters():
            p.normal_(0, 0.3)
        if pred_subdiv:  # keep ~3 children per voxel so the finest level stays small
            for stage in dec.blocks[:-1]:
                stage[-1].to_subdiv.bias.copy_(torch.tensor([2.0, -9, 2.0, -9, -9, 2.0, -9, -9]))
                stage[-1].to_subdiv.weight.mul_(0.05)
    dec = dec.to(device)
    if dtype == torch.float16:
        dec.convert_to_fp16()
    else:
        dec = dec.to(dtype)
        dec.dtype = dtype  # run the stages in this dtype too
    return dec.eval()


def _latent(seed=1, dtype=torch.float64, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    xyz = torch.unique(torch.randint(0, 5, (40, 3), generator=g), dim=0)
    coords = torch.cat([torch.zeros(len(xyz), 1, dtype=torch.long), xyz], 1).int()
    return SparseTensor(torch.randn(len(coords), 4, generator=g, dtype=dtype), coords).to(device)


def _fresh(t):
    """The same voxels and features without any cached structure."""
    return SparseTensor(t.feats.clone(), t.coords.clone())


class _Counter:
    """Counts neighbour-map builds (both backends), per coordinate set, while active."""

    def __init__(self, monkeypatch):
        self.builds = collections.Counter()
        for mod, name in ((conv, "build_neighbor_map"), (conv_triton, "build_triton_map")):
            orig = getattr(mod, name)

            def wrap(coords, *a, _orig=orig, **k):
                self.builds[(coords.shape[0], coords.data_ptr())] += 1
                return _orig(coords, *a, **k)
            monkeypatch.setattr(mod, name, wrap)

    def take(self):
        out = dict(self.builds)
        self.builds.clear()
        return out


@torch.no_grad()
def test_each_level_map_built_once_per_forward(monkeypatch):
    counter = _Counter(monkeypatch)
    pred = _decoder(True)
    z = _latent()
    _, subs = pred(z, return_subs=True)
    first = counter.take()
    assert len(first) == LEVELS and set(first.values()) == {1}  # 40 convs, one map per level
    pred(z, return_subs=True)
    assert len(counter.take()) == LEVELS - 1  # the latent level stays cached on z; finer levels are new tensors
    guided = _decoder(False, seed=2)
    guided(_fresh(z), guide_subs=[_fresh(s) for s in subs])
    built = counter.take()
    assert len(built) == LEVELS and set(built.values()) == {1}


@torch.no_grad()
def test_c2s_children_once_per_level_and_identical(monkeypatch):
    calls = collections.Counter()
    orig = spatial.children_from_subdivision

    def counting(x, sub, f):
        calls["children"] += 1
        return orig(x, sub, f)
    monkeypatch.setattr(spatial, "children_from_subdivision", counting)
    pred = _decoder(True)
    z = _latent()
    h, subs = pred(z, return_subs=True)
    assert calls["children"] == LEVELS - 1  # both branches of each C2S block share one computation
    # reference: the computation per call with a private cache each (the code before the memo)
    monkeypatch.setattr(spatial, "_children_once", lambda x, sub, f: (orig(x, sub, f), {}))
    calls.clear()
    h_ref, subs_ref = pred(_fresh(z), return_subs=True)
    assert torch.equal(h.coords, h_ref.coords) and torch.equal(h.feats, h_ref.feats) and h.feats.dtype == torch.float64
    assert all(torch.equal(a.feats, b.feats) for a, b in zip(subs, subs_ref))


@torch.no_grad()
def test_memo_follows_the_subdivision_object():
    """A different mask (or parent set) with the same subdivision object recomputes; a bool tensor is not memoised."""
    x = _latent(dtype=torch.float32)
    up = spatial.SparseChannel2Spatial(2)
    feats = x.replace(torch.randn(x.feats.shape[0], 16))
    mask_a = torch.zeros(x.feats.shape[0], 8, dtype=torch.bool)
    mask_a[:, 0] = True
    sub = x.replace(mask_a)
    out_a = up(feats, sub)
    sub.feats = mask_a.clone()
    sub.feats[:, 3] = True
    out_b = up(feats, sub)
    assert out_b.coords.shape[0] == 2 * out_a.coords.shape[0]
    assert up(feats, sub.feats).coords.shape == out_b.coords.shape


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run on the GPU machine)")
@torch.no_grad()
def test_cuda_fp16_maps_once_per_level_and_c2s_memo_identical(monkeypatch):
    """fp16 on CUDA (the Triton backend's maps under ``auto``): one map per level, and the C2S memo changes no bit."""
    counter = _Counter(monkeypatch)
    pred = _decoder(True, dtype=torch.float16, device="cuda")
    z = _latent(dtype=torch.float32, device="cuda")
    h, _ = pred(z, return_subs=True)
    built = counter.take()
    assert len(built) == LEVELS and set(built.values()) == {1}
    orig = spatial.children_from_subdivision
    monkeypatch.setattr(spatial, "_children_once", lambda x, sub, f: (orig(x, sub, f), {}))
    h_ref, _ = pred(_fresh(z), return_subs=True)
    assert torch.equal(h.coords, h_ref.coords) and torch.equal(h.feats, h_ref.feats)
