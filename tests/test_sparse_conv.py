"""SparseConv3d (TRELLIS2_SPEC.md §1.4) against dense ``F.conv3d`` in float64, plus caching and errors."""
import math

import pytest
import torch
import torch.nn.functional as F

from pixal3d.sparse import SparseConv3d, SparseTensor
from pixal3d.sparse.conv import build_neighbor_map
from sparse_helpers import dense_of, gather_dense, random_sparse_coords, shuffle_within_batches


def _dense_reference(conv: SparseConv3d, x: SparseTensor) -> torch.Tensor:
    """Dense conv3d on the zero-filled grid, read back at the active sites."""
    K, D = conv.kernel_size, conv.dilation
    dims = tuple(int(s) for s in x.spatial_shape)
    dense = dense_of(x.feats, x.coords, x.shape[0], dims)
    w = conv.weight.permute(0, 4, 1, 2, 3)  # [Co, Ci, Kx, Ky, Kz]: stored layout -> torch layout
    pad = tuple(d * (k // 2) for k, d in zip(K, D))
    out = F.conv3d(dense, w, conv.bias, padding=pad, dilation=D)
    return gather_dense(out, x.coords)


@pytest.mark.parametrize("K,dil,batch,ci,co,res", [
    (1, 1, 1, 3, 5, 6),
    (3, 1, 1, 4, 4, 7),
    (3, 1, 3, 2, 7, 6),
    (3, 2, 2, 5, 3, 8),
    (5, 1, 2, 3, 2, 7),
    (5, 2, 1, 2, 3, 9),
    (3, 1, 2, 1, 1, (5, 9, 4)),
])
def test_conv_matches_dense(K, dil, batch, ci, co, res):
    gen = torch.Generator().manual_seed(K * 100 + dil * 10 + batch)
    coords = random_sparse_coords(batch, res, 0.35, gen)
    coords = coords[shuffle_within_batches(coords, gen)]  # the map must not rely on xyz-sorted rows
    feats = torch.randn(coords.shape[0], ci, generator=gen, dtype=torch.float64)
    x = SparseTensor(feats, coords, check_unique=True)
    torch.manual_seed(0)
    conv = SparseConv3d(ci, co, K, dilation=dil).double()
    with torch.no_grad():
        conv.bias.normal_()
    out = conv(x)
    assert torch.equal(out.coords, x.coords)
    ref = _dense_reference(conv, x)
    torch.testing.assert_close(out.feats, ref, rtol=1e-10, atol=1e-10)


def test_conv_without_bias_and_flat_kernel_index():
    """A single active neighbour at +x isolates W[:, 2, 1, 1, :] (flat index 2*9+1*3+1 = 22): no kernel flip."""
    coords = torch.tensor([[0, 1, 1, 1], [0, 2, 1, 1]], dtype=torch.int32)
    feats = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    conv = SparseConv3d(1, 1, 3, bias=False).double()
    with torch.no_grad():
        conv.weight.copy_(torch.arange(27, dtype=torch.float64).reshape(1, 3, 3, 3, 1))
    out = conv(SparseTensor(feats, coords)).feats
    # voxel 0 sees voxel 1 at offset (+1, 0, 0) -> i=2, j=1, k=1 -> weight 22; voxel 1 sees itself -> 13
    assert out[0, 0].item() == 22.0 and out[1, 0].item() == 13.0
    assert conv.bias is None


def test_conv_gradients_match_dense():
    gen = torch.Generator().manual_seed(3)
    coords = random_sparse_coords(2, 6, 0.4, gen)
    feats = torch.randn(coords.shape[0], 3, generator=gen, dtype=torch.float64, requires_grad=True)
    conv = SparseConv3d(3, 4, 3).double()
    out = conv(SparseTensor(feats, coords))
    g = torch.randn(out.feats.shape, generator=gen, dtype=torch.float64)
    gx, gw = torch.autograd.grad((out.feats * g).sum(), (feats, conv.weight))
    feats2 = feats.detach().clone().requires_grad_(True)
    ref = _dense_reference(conv, SparseTensor(feats2, coords))
    gx2, gw2 = torch.autograd.grad((ref * g).sum(), (feats2, conv.weight))
    torch.testing.assert_close(gx, gx2)
    torch.testing.assert_close(gw, gw2)


def test_neighbor_map_is_cached_per_level_and_shared():
    gen = torch.Generator().manual_seed(1)
    coords = random_sparse_coords(1, 6, 0.3, gen)
    x = SparseTensor(torch.randn(coords.shape[0], 2, generator=gen), coords)
    conv = SparseConv3d(2, 2, 3)
    y = conv(x)
    key = "SubMConv3d_neighbor_cache_3x3x3_dilation1"
    nmap = x.get_spatial_cache(key)
    assert nmap is not None and y.get_spatial_cache(key) is nmap  # replace() shares the dict
    conv(y)
    assert x.get_spatial_cache(key) is nmap  # reused, not rebuilt
    SparseConv3d(2, 2, 3, dilation=2)(x)
    assert x.get_spatial_cache("SubMConv3d_neighbor_cache_3x3x3_dilation2") is not None


def test_neighbor_map_respects_batch_and_bounds():
    # same xyz in two batches must not see each other; the grid edge is not wrapped around
    coords = torch.tensor([[0, 0, 0, 0], [1, 0, 0, 1]], dtype=torch.int32)
    nmap = build_neighbor_map(coords, (1, 1, 2), 3)
    assert nmap.num_pairs() == 0


def test_initialisation_statistics():
    torch.manual_seed(0)
    conv = SparseConv3d(16, 32, 3)
    assert conv.weight.shape == (32, 3, 3, 3, 16) and conv.bias.shape == (32,)
    fan_in = 16 * 27
    # kaiming_uniform(a=sqrt(5)) on [Co, Ci, K, K, K] is U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    bound = 1 / math.sqrt(fan_in)
    assert conv.weight.abs().max() <= bound and conv.weight.abs().max() > 0.9 * bound
    assert conv.bias.abs().max() <= bound
    assert abs(conv.weight.std().item() - bound / math.sqrt(3)) < 0.05 * bound


def test_conv_rejects_bad_configs(monkeypatch):
    with pytest.raises(ValueError, match="stride"):
        SparseConv3d(2, 2, 3, stride=2)
    with pytest.raises(ValueError, match="padding"):
        SparseConv3d(2, 2, 3, padding=1)
    conv = SparseConv3d(2, 2, 3)
    x = SparseTensor(torch.randn(1, 2), torch.zeros(1, 4, dtype=torch.int32))
    with pytest.raises(TypeError, match="dtype|float64|cast"):
        conv(x.double())
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        conv(x.replace(torch.randn(1, 3)))
    monkeypatch.setenv("SPARSE_CONV_BACKEND", "spconv")
    with pytest.raises(ValueError, match="torch"):
        conv(x)
    monkeypatch.setenv("SPARSE_CONV_BACKEND", "torch")
    assert conv(x).feats.shape == (1, 2)
