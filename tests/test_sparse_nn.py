"""SparseLinear, activations and per-sample norms (TRELLIS2_SPEC.md §1.5) against torch references."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from pixal3d.sparse import (SparseActivation, SparseGELU, SparseGroupNorm, SparseGroupNorm32, SparseLayerNorm,
                            SparseLayerNorm32, SparseLinear, SparseReLU, SparseSiLU, SparseTensor)


def _x(sizes=(5, 3), c=4, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    coords = torch.cat([torch.stack([torch.full((n,), b), torch.arange(n), torch.zeros(n, dtype=torch.long),
                                     torch.zeros(n, dtype=torch.long)], 1) for b, n in enumerate(sizes)])
    return SparseTensor(torch.randn(coords.shape[0], c, generator=gen, dtype=dtype) * 3 + 1,
                        coords.to(torch.int32))


def test_linear_keys_and_values():
    x = _x()
    lin = SparseLinear(4, 6).double()
    assert set(lin.state_dict()) == {"weight", "bias"} and lin.weight.shape == (6, 4)
    y = lin(x)
    torch.testing.assert_close(y.feats, x.feats @ lin.weight.T + lin.bias)
    assert y._spatial_cache is x._spatial_cache and torch.equal(y.coords, x.coords)
    with pytest.raises(TypeError, match="nn.Linear"):
        lin(x.feats)


def test_activations():
    x = _x()
    assert torch.equal(SparseReLU()(x).feats, F.relu(x.feats))
    assert torch.equal(SparseSiLU()(x).feats, F.silu(x.feats))
    assert torch.equal(SparseGELU(approximate="tanh")(x).feats, F.gelu(x.feats, approximate="tanh"))
    assert torch.equal(SparseActivation(nn.Tanh())(x).feats, torch.tanh(x.feats))


def test_group_norm_per_sample():
    x = _x(sizes=(5, 3, 7), c=6)
    norm = SparseGroupNorm(3, 6).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.normal_()
    out = norm(x).feats
    for s in x.layout:
        f = x.feats[s]
        g = f.reshape(f.shape[0], 3, 2)
        mean = g.mean(dim=(0, 2), keepdim=True)
        var = g.var(dim=(0, 2), unbiased=False, keepdim=True)
        ref = ((g - mean) / torch.sqrt(var + norm.eps)).reshape(f.shape) * norm.weight + norm.bias
        torch.testing.assert_close(out[s], ref)


def test_layer_norm_quirk_normalises_over_tokens():
    x = _x(sizes=(4, 4), c=3)
    norm = SparseLayerNorm(4).double()  # normalized_shape = tokens per sample
    out = norm(x).feats
    for s in x.layout:
        f = x.feats[s]  # [4, 3]: each channel normalised across the 4 tokens
        ref = (f - f.mean(0)) / torch.sqrt(f.var(0, unbiased=False) + norm.eps)
        torch.testing.assert_close(out[s], ref)


def test_fp32_variants_cast_back():
    x = _x(sizes=(4, 4), c=4, dtype=torch.float16)
    for norm in (SparseGroupNorm32(2, 4), SparseLayerNorm32(4)):
        y = norm(x)
        assert y.dtype == torch.float16
        ref_mod = SparseGroupNorm(2, 4) if isinstance(norm, SparseGroupNorm32) else SparseLayerNorm(4)
        ref = ref_mod(x.float()).feats
        torch.testing.assert_close(y.feats.float(), ref, rtol=2e-3, atol=2e-3)
