"""Resampling ops of TRELLIS2_SPEC.md §1.6: exact packing, caches (§1.3), pooling vs dense references."""
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F

from pixal3d.sparse import (SparseChannel2Spatial, SparseConv3d, SparseDownsample, SparseSpatial2Channel,
                            SparseTensor, SparseUpsample)
from sparse_helpers import dense_of, gather_dense, random_sparse_coords, shuffle_within_batches


def _random(batch=2, res=8, c=3, seed=0, density=0.3):
    gen = torch.Generator().manual_seed(seed)
    coords = random_sparse_coords(batch, res, density, gen)
    coords = coords[shuffle_within_batches(coords, gen)]
    return SparseTensor(torch.randn(coords.shape[0], c, generator=gen, dtype=torch.float64), coords)


def test_s2c_packing_hand_example():
    # parent (0, 1, 1, 1); children s=1 at (3,2,2) [x odd] and s=6 at (2,3,3) [y, z odd]; second parent (0,0,0,0)
    coords = torch.tensor([[0, 3, 2, 2], [0, 2, 3, 3], [0, 1, 1, 1]], dtype=torch.int32)
    feats = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    y = SparseSpatial2Channel(2)(SparseTensor(feats, coords))
    # coarse voxels sorted by code: (0,0,0,0) first, then (0,1,1,1)
    assert y.coords.tolist() == [[0, 0, 0, 0], [0, 1, 1, 1]]
    expected = torch.zeros(2, 16)
    expected[0, 7 * 2:8 * 2] = torch.tensor([5.0, 6.0])   # (1,1,1): s = 1 + 2 + 4 = 7
    expected[1, 1 * 2:2 * 2] = torch.tensor([1.0, 2.0])   # channel = s*C + c
    expected[1, 6 * 2:7 * 2] = torch.tensor([3.0, 4.0])
    assert torch.equal(y.feats, expected)
    assert y.shape == torch.Size([1, 16])
    assert y._scale == (Fraction(2), Fraction(2), Fraction(2))


def test_c2s_from_subdivision_hand_example():
    coords = torch.tensor([[0, 1, 2, 3]], dtype=torch.int32)
    feats = torch.arange(16, dtype=torch.float32).reshape(1, 16)  # C' = 2
    sub = torch.zeros(1, 8, dtype=torch.bool)
    sub[0, 5] = True
    sub[0, 0] = True
    x = SparseTensor(feats, coords)
    y = SparseChannel2Spatial(2)(x, sub)
    # s=0 -> (2,4,6); s=5 = 1 + 4 -> (3,4,7); grouped by parent, increasing s
    assert y.coords.tolist() == [[0, 2, 4, 6], [0, 3, 4, 7]]
    assert y.feats.tolist() == [[0.0, 1.0], [10.0, 11.0]]
    assert y._scale == (Fraction(1, 2),) * 3
    assert y._spatial_cache is not x._spatial_cache  # no cache used -> fresh cache
    # the SparseTensor form of the mask is accepted too
    y2 = SparseChannel2Spatial(2)(SparseTensor(feats, coords), x.replace(sub))
    assert torch.equal(y2.coords, y.coords)


def test_s2c_then_c2s_roundtrip_exact_and_teacher_forcing():
    x = _random(batch=3, res=9, c=4, seed=1)
    s2c, c2s = SparseSpatial2Channel(2), SparseChannel2Spatial(2)
    y = s2c(x)
    # the shared dict lets a tensor derived by replace() rebuild the fine structure without a subdivision
    latent = y.replace(y.feats * 1.0)
    z = c2s(latent)
    assert torch.equal(z.coords, x.coords) and torch.equal(z.feats, x.feats)
    assert z._spatial_cache is x._spatial_cache and z._scale == x._scale
    # the cached path ignores a (contradicting) subdivision
    z2 = c2s(latent, torch.zeros(latent.coords.shape[0], 8, dtype=torch.bool))
    assert torch.equal(z2.coords, x.coords)
    # cache keys at the right levels
    assert x.get_spatial_cache("spatial2channel_2") is not None
    assert y.get_spatial_cache("channel2spatial_2") is not None
    assert y.get_spatial_cache("shape") == torch.Size([5, 5, 5])


def test_c2s_subdivision_path_reproduces_children_set():
    x = _random(batch=2, res=8, c=2, seed=2)
    y = SparseSpatial2Channel(2)(x)
    sub = y.feats.reshape(-1, 8, 2).ne(0).any(-1)  # a child exists iff it carried non-zero features
    fresh = SparseTensor(y.feats, y.coords)        # no cache -> the subdivision path
    z = SparseChannel2Spatial(2)(fresh, sub)
    key = lambda c: (c[:, 0].long() * 10 ** 6 + c[:, 1] * 10 ** 4 + c[:, 2] * 100 + c[:, 3]).long()
    order_x, order_z = torch.argsort(key(x.coords)), torch.argsort(key(z.coords))
    assert torch.equal(x.coords[order_x], z.coords[order_z])
    assert torch.equal(x.feats[order_x], z.feats[order_z])
    # grouped by parent in parent order, children increasing s
    parent = (z.coords[:, 1:] // 2)
    s = (z.coords[:, 1] % 2) + 2 * (z.coords[:, 2] % 2) + 4 * (z.coords[:, 3] % 2)
    code = ((z.coords[:, 0].long() * 8 + parent[:, 0]) * 8 + parent[:, 1]) * 8 + parent[:, 2]
    full = code * 8 + s
    assert torch.all(full[1:] > full[:-1])


def test_training_mode_registers_subdivision():
    x = _random(seed=3)
    s2c = SparseSpatial2Channel(2)
    s2c.eval()
    assert s2c(x).get_spatial_cache("subdivision") is None
    x = _random(seed=3)
    s2c.train()
    y = s2c(x)
    sub = y.get_spatial_cache("subdivision")
    assert sub.dtype == torch.bool and sub.shape == (y.coords.shape[0], 8)
    assert int(sub.sum()) == x.coords.shape[0]
    assert torch.equal(sub, y.feats.reshape(-1, 8, 3).ne(0).any(-1))


def test_c2s_errors():
    x = SparseTensor(torch.randn(2, 16), torch.tensor([[0, 0, 0, 0], [0, 1, 0, 0]], dtype=torch.int32))
    c2s = SparseChannel2Spatial(2)
    with pytest.raises(ValueError, match="subdivision"):
        c2s(x)
    with pytest.raises(TypeError, match="bool"):
        c2s(x, torch.randn(2, 8))
    with pytest.raises(ValueError, match="shape"):
        c2s(x, torch.ones(3, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="8"):
        c2s(x.replace(torch.randn(2, 12)), torch.ones(2, 8, dtype=torch.bool))


def _dense_pool_reference(x, mode):
    dims = [int(s) + int(s) % 2 for s in x.spatial_shape]  # pad to even so every parent window is complete
    B = x.shape[0]
    dense = dense_of(x.feats, x.coords, B, dims)
    mask = dense_of(torch.ones(x.coords.shape[0], 1, dtype=x.feats.dtype), x.coords, B, dims)
    if mode == "mean":
        pooled = F.avg_pool3d(dense, 2) / F.avg_pool3d(mask, 2).clamp_min(1e-30)
    else:
        pooled = F.max_pool3d(torch.where(mask.bool(), dense, torch.full_like(dense, -torch.inf)), 2)
    return pooled, F.max_pool3d(mask, 2)


@pytest.mark.parametrize("mode", ["mean", "max"])
def test_downsample_matches_dense_pooling(mode):
    x = _random(batch=2, res=(7, 8, 6), c=3, seed=4)
    y = SparseDownsample(2, mode)(x)
    pooled, occ = _dense_pool_reference(x, mode)
    parents = torch.nonzero(occ[:, 0] > 0).to(torch.int32)
    assert torch.equal(y.coords, parents)  # sorted lexicographically, like torch.nonzero
    torch.testing.assert_close(y.feats, gather_dense(pooled, y.coords))
    assert y._spatial_cache is x._spatial_cache
    assert y.get_spatial_cache("upsample_2") is not None and x.get_spatial_cache("downsample_2") is not None


def test_upsample_cached_and_subdivision_paths():
    x = _random(batch=2, res=8, c=2, seed=5)
    down, up = SparseDownsample(2), SparseUpsample(2)
    down.train()
    y = down(x)
    z = up(y)  # cached: back to x's coords, each child gets the parent mean
    assert torch.equal(z.coords, x.coords)
    parent = torch.unique(torch.cat([x.coords[:, :1], x.coords[:, 1:] // 2], 1), dim=0, return_inverse=True)[1]
    torch.testing.assert_close(z.feats, y.feats[parent])
    # subdivision path on a fresh tensor gives the same set of children
    sub = y.get_spatial_cache("subdivision")
    z2 = up(SparseTensor(y.feats, y.coords), sub)
    assert z2.coords.shape == x.coords.shape
    assert z2._scale == (Fraction(1, 2),) * 3
    with pytest.raises(ValueError, match="subdivision"):
        up(SparseTensor(y.feats, y.coords))


def test_encoder_decoder_level_chain_with_convs():
    """S2C twice with convs in between, then C2S twice from the latent: structure and scales come back."""
    x = _random(batch=2, res=12, c=2, seed=6, density=0.2)
    s2c, c2s = SparseSpatial2Channel(2), SparseChannel2Spatial(2)
    h1 = s2c(SparseConv3d(2, 2, 3).double()(x))
    h2 = s2c(SparseConv3d(16, 2, 3).double()(h1))
    assert h2._scale == (Fraction(4),) * 3
    g1 = c2s(h2.replace(torch.randn(h2.coords.shape[0], 16, dtype=torch.float64)))
    assert torch.equal(g1.coords, h1.coords)
    g0 = c2s(SparseConv3d(2, 16, 3).double()(g1))
    assert torch.equal(g0.coords, x.coords) and g0._scale == x._scale
