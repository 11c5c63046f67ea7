"""VarLenTensor / SparseTensor bookkeeping and coordinate validation (TRELLIS2_SPEC.md §1.2, §1.3)."""
from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings, strategies as st

from pixal3d.sparse import SparseTensor, VarLenTensor, sparse_cat, sparse_unbind
from pixal3d.sparse.basic import varlen_cat

FAST = settings(max_examples=40, deadline=None)


def _st(batch_sizes=(3, 2, 4), c=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for b, n in enumerate(batch_sizes):
        xyz = torch.randperm(64, generator=gen)[:n]
        rows.append(torch.stack([torch.full((n,), b), xyz // 16, xyz // 4 % 4, xyz % 4], 1))
    coords = torch.cat(rows).to(torch.int32)
    return SparseTensor(torch.randn(coords.shape[0], c, generator=gen, dtype=torch.float64), coords)


def test_bookkeeping():
    x = _st()
    assert x.shape == torch.Size([3, 2]) and x.batch_size == 3
    assert x.layout == [slice(0, 3), slice(3, 5), slice(5, 9)]
    assert x.seqlen.tolist() == [3, 2, 4] and x.seqlen.dtype == torch.long
    assert x.cum_seqlen.tolist() == [0, 3, 5, 9] and x.cum_seqlen.dtype == torch.int32
    assert x.batch_boardcast_map.tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 2]
    assert x.batch_index is x.batch_boardcast_map
    assert x.spatial_shape == torch.Size((x.coords[:, 1:].max(0)[0] + 1).tolist())
    assert x.device.type == "cpu" and x.dtype == torch.float64


def test_replace_shares_cache_and_scale():
    x = _st()
    x._scale = (Fraction(2),) * 3
    y = x.replace(x.feats[:, :1])
    assert y._spatial_cache is x._spatial_cache and y._scale == x._scale
    assert y.shape == torch.Size([3, 1])
    y.register_spatial_cache("k", 1)
    assert x.get_spatial_cache("k") == 1
    assert str(x._scale) in x._spatial_cache  # per-level dict keyed by str(scale)
    for z in (x.float(), x.half(), x.bfloat16(), x.to(torch.float32), x.type(torch.float32), x.cpu(), x.detach(),
              x.to("cpu", torch.float32), x.to(device="cpu")):
        assert z._spatial_cache is x._spatial_cache and torch.equal(z.coords, x.coords)
    assert x.half().dtype == torch.float16 and x.bfloat16().dtype == torch.bfloat16
    assert x.to(torch.float32).coords.dtype == torch.int32
    with pytest.raises(ValueError, match="rows"):
        x.replace(x.feats[:3])


def test_to_dense_and_reshape():
    x = _st(c=3)
    d = x.to_dense()
    assert d.shape == (3, 3, *x.spatial_shape)
    c = x.coords.long()
    assert torch.equal(d[c[:, 0], :, c[:, 1], c[:, 2], c[:, 3]], x.feats)
    assert d.abs().sum() == pytest.approx(x.feats.abs().sum().item())
    assert torch.equal(x.dense(), d)
    r = x.reshape(3, 1)
    assert r.feats.shape == (9, 3, 1) and r.shape == torch.Size([3, 3, 1])


def test_elementwise_ops():
    x = _st(c=2)
    per_sample = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], dtype=torch.float64)
    expect = x.feats + per_sample[x.coords[:, 0].long()]
    assert torch.equal((x + per_sample).feats, expect)
    assert torch.equal((per_sample + x).feats, expect)
    assert torch.equal((x - 1).feats, x.feats - 1) and torch.equal((1 - x).feats, 1 - x.feats)
    assert torch.equal((x * 2).feats, x.feats * 2) and torch.equal((2 / (x + 10)).feats, 2 / (x.feats + 10))
    assert torch.equal((-x).feats, -x.feats)
    assert torch.equal((x * x).feats, x.feats ** 2) and torch.equal((x / (x * 2)).feats, torch.full_like(x.feats, .5))
    with pytest.raises(ValueError, match="coordinates"):
        x + _st(batch_sizes=(1,), c=2)


def test_getitem_renumbers_batches():
    x = _st()
    for idx, sel in [(1, [1]), (-1, [2]), ([2, 0], [2, 0]), (slice(1, 3), [1, 2]),
                     (torch.tensor([False, True, True]), [1, 2]), (torch.tensor([2, 1]), [2, 1])]:
        y = x[idx]
        assert y.shape[0] == len(sel)
        assert y.coords[:, 0].tolist() == sum(([i] * (x.layout[s].stop - x.layout[s].start)
                                                for i, s in enumerate(sel)), [])
        assert torch.equal(y.feats, torch.cat([x.feats[x.layout[s]] for s in sel]))
        assert torch.equal(y.coords[:, 1:], torch.cat([x.coords[x.layout[s], 1:] for s in sel]))
    with pytest.raises(IndexError):
        x[3]
    with pytest.raises(TypeError):
        x[1.0]


def test_cat_and_unbind():
    a, b = _st((2, 3), seed=1), _st((1,), seed=2)
    c = sparse_cat([a, b])
    assert c.shape[0] == 3 and c.coords[:, 0].tolist() == [0, 0, 1, 1, 1, 2]
    parts = sparse_unbind(c, 0)
    assert [p.coords.shape[0] for p in parts] == [2, 3, 1]
    assert torch.equal(parts[2].feats, b.feats) and parts[2].coords[:, 0].eq(0).all()
    noise = a.replace(torch.zeros(5, 3, dtype=torch.float64))
    cc = sparse_cat([noise, a], dim=-1)  # concat_cond: noise first
    assert cc.feats.shape == (5, 5) and torch.equal(cc.feats[:, 3:], a.feats)
    assert cc._spatial_cache is noise._spatial_cache
    cols = sparse_unbind(a, 1)
    assert len(cols) == 2 and torch.equal(cols[1].feats, a.feats[:, 1])
    with pytest.raises(ValueError, match="voxels"):
        sparse_cat([a, b], dim=-1)


def test_full():
    x = SparseTensor.full((1, 0, 2, 2, 1, 3), (2, 4), 0.5)
    assert x.coords.shape == (2 * 2 * 2 * 2, 4) and x.shape == torch.Size([2, 4])
    assert x.coords[0].tolist() == [0, 1, 0, 2] and x.coords[-1].tolist() == [1, 2, 1, 3]
    assert torch.all(x.feats == 0.5) and x.coords.dtype == torch.int32


def test_varlen_tensor():
    feats = torch.arange(12, dtype=torch.float64).reshape(6, 2)
    v = VarLenTensor(feats, VarLenTensor.layout_from_seqlen([2, 4]))
    assert v.shape == torch.Size([2, 2]) and v.cum_seqlen.tolist() == [0, 2, 6]
    dense, mask = v.to_dense()
    assert dense.shape == (2, 4, 2) and mask.tolist() == [[True, True, False, False], [True] * 4]
    assert torch.equal(dense[1], feats[2:]) and torch.equal(dense[0, :2], feats[:2]) and dense[0, 2:].eq(0).all()
    torch.testing.assert_close(v.mean(dim=1), torch.stack([feats[:2].mean(), feats[2:].mean()]))
    torch.testing.assert_close(v.sum(dim=1), torch.stack([feats[:2].sum(), feats[2:].sum()]))
    torch.testing.assert_close(v.std(dim=1, keepdim=False).reshape(-1),
                               torch.stack([feats[:2].std(unbiased=False), feats[2:].std(unbiased=False)]))
    w = v + torch.tensor([[1.0, 1.0], [10.0, 10.0]], dtype=torch.float64)
    assert w.feats[0, 0] == 1.0 and w.feats[2, 0] == 14.0 and w._cache is v._cache
    assert torch.equal(v[1].feats, feats[2:])
    assert varlen_cat([v, v]).seqlen.tolist() == [2, 4, 2, 4]
    with pytest.raises(ValueError, match="layout"):
        VarLenTensor(feats, [slice(0, 2), slice(3, 6)])


# ------------------------------------------------------------------ validation (hypothesis)
@st.composite
def valid_coords(draw, max_batch=3, max_rows=12, res=8):
    sizes = draw(st.lists(st.integers(1, max_rows), min_size=1, max_size=max_batch))
    rows = []
    for b, n in enumerate(sizes):
        cells = draw(st.lists(st.integers(0, res ** 3 - 1), min_size=n, max_size=n, unique=True))
        rows += [[b, c // res ** 2, c // res % res, c % res] for c in cells]
    return torch.tensor(rows, dtype=torch.int32)


@FAST
@given(valid_coords())
def test_valid_coords_accepted(coords):
    x = SparseTensor(torch.zeros(coords.shape[0], 1), coords, check_unique=True)
    assert x.validate() is x


@FAST
@given(valid_coords(), st.data())
def test_duplicates_rejected_naming_rows(coords, data):
    i = data.draw(st.integers(0, coords.shape[0] - 1))
    same_batch = torch.nonzero(coords[:, 0] == coords[i, 0]).reshape(-1)
    j = int(same_batch[-1]) + 1  # insert a copy of row i at the end of its batch
    dup = torch.cat([coords[:j], coords[i:i + 1], coords[j:]])
    with pytest.raises(ValueError, match=rf"duplicate voxel coordinates in rows \[{i}, {j}\]"):
        SparseTensor(torch.zeros(dup.shape[0], 1), dup, check_unique=True)
    with pytest.raises(ValueError, match="duplicate"):
        SparseTensor(torch.zeros(dup.shape[0], 1), dup).validate()


@FAST
@given(valid_coords(), st.data())
def test_negative_and_out_of_range_rejected(coords, data):
    i = data.draw(st.integers(0, coords.shape[0] - 1))
    axis = data.draw(st.integers(1, 3))
    bad = coords.clone()
    bad[i, axis] = data.draw(st.sampled_from([-1, -1000, 2 ** 20, 2 ** 30]))
    with pytest.raises(ValueError, match=rf"rows \[{i}\]"):
        SparseTensor(torch.zeros(bad.shape[0], 1), bad)


@FAST
@given(valid_coords(max_batch=3), st.integers(1, 3))
def test_batch_gaps_and_disorder_rejected(coords, shift):
    nb = int(coords[:, 0].max()) + 1
    gapped = coords.clone()
    gapped[coords[:, 0] == nb - 1, 0] += shift  # last batch jumps ahead -> empty batches in between
    with pytest.raises(ValueError, match="gap|empty|start"):
        SparseTensor(torch.zeros(coords.shape[0], 1), gapped)
    if nb > 1:
        rev = torch.flip(coords, [0])  # batches in decreasing order
        with pytest.raises(ValueError, match="decrease"):
            SparseTensor(torch.zeros(coords.shape[0], 1), rev)


def test_other_validation_errors():
    c = torch.zeros(2, 4, dtype=torch.int32)
    c[1, 1] = 1
    with pytest.raises(TypeError, match="int32"):
        SparseTensor(torch.zeros(2, 1), c.long())
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        SparseTensor(torch.zeros(2, 1), c[:, :3])
    with pytest.raises(ValueError, match="rows"):
        SparseTensor(torch.zeros(3, 1), c)
    with pytest.raises(ValueError, match="start"):
        SparseTensor(torch.zeros(2, 1), c + torch.tensor([1, 0, 0, 0], dtype=torch.int32))
    with pytest.raises(ValueError, match="batch size"):
        SparseTensor(torch.zeros(2, 1), c, shape=(3, 1))


def test_elementwise_merges_caches_like_reference():
    a = _st(c=2)
    b = a.replace(a.feats * 2)
    b2 = SparseTensor(a.feats.clone(), a.coords)
    a.register_spatial_cache("from_a", 1)
    b2.register_spatial_cache("from_b", 2)
    s = a + b2
    assert s._spatial_cache is not a._spatial_cache
    assert s.get_spatial_cache("from_a") == 1 and s.get_spatial_cache("from_b") == 2
    s.register_spatial_cache("later", 3)  # per-level dict is a's: a sees entries registered on the sum
    assert a.get_spatial_cache("later") == 3 and b.get_spatial_cache("later") == 3
    assert b2.get_spatial_cache("later") is None
