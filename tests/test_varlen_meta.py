"""Varlen attention metadata (``VarLenMeta``): built once per forward from host-side layouts, not read back from the
device in every attention call, with outputs bit-identical to the per-call computation it replaces (issue #11).

The CPU tests count host reads of tensor values (``tolist``/``item``/``bool``/``int``/``float``/``index``): on a GPU
each of them is a device-to-host sync. The ``gpu``-marked tests count the real synchronisations with
``torch.cuda.set_sync_debug_mode``.
"""
import collections
from contextlib import contextmanager
from typing import Optional

import pytest
import torch

from pixal3d.models import SLatFlowModel
from pixal3d.modules.attention import SparseMultiHeadAttention, VarLenMeta, varlen_attention
from pixal3d.modules.attention import functional as fn_mod
from pixal3d.modules.attention import sparse_modules
from pixal3d.sparse import SparseTensor, VarLenTensor
from tests.conftest import random_sparse_coords as _coords

TINY = dict(model_channels=32, cond_channels=12, num_heads=2, mlp_ratio=2.0, pe_mode="rope", share_mod=True,
            initialization="scaled", qk_rms_norm=True, qk_rms_norm_cross=True)
HOST_READS = ("tolist", "item", "__bool__", "__int__", "__float__", "__index__")


# ---------------------------------------------------------------------------------------------------------------------
# the per-call implementation this change replaced (verbatim logic), as the reference for bit-identity
# ---------------------------------------------------------------------------------------------------------------------
def _old_pad(x, lens, cu, lmax):
    B = lens.shape[0]
    bidx = torch.repeat_interleave(torch.arange(B, device=x.device), lens, output_size=x.shape[0])
    pos = torch.arange(x.shape[0], device=x.device) - cu[bidx]
    out = x.new_zeros(B, lmax, *x.shape[1:])
    out[bidx, pos] = x
    return out, (bidx, pos)


def _old_varlen_attention(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q: Optional[int] = None,
                          max_seqlen_k: Optional[int] = None, backend: Optional[str] = None):
    cu_seqlens_q = cu_seqlens_q.to(q.device, torch.int64)
    cu_seqlens_k = cu_seqlens_k.to(q.device, torch.int64)
    lens_q = cu_seqlens_q[1:] - cu_seqlens_q[:-1]
    lens_k = cu_seqlens_k[1:] - cu_seqlens_k[:-1]
    q0, qT, k0, kT, qmin, kmin, mq_, mk_, empty_ctx = torch.stack([
        cu_seqlens_q[0], cu_seqlens_q[-1], cu_seqlens_k[0], cu_seqlens_k[-1], lens_q.min(), lens_k.min(),
        lens_q.max(), lens_k.max(), ((lens_k == 0) & (lens_q > 0)).any().to(lens_q.dtype)]).tolist()
    assert q0 == 0 and k0 == 0 and qT == q.shape[0] and kT == k.shape[0] and not empty_ctx
    backend = backend or "sdpa"
    B = lens_q.shape[0]
    if B == 1:
        return fn_mod._dense(q[None], k[None], v[None], None, backend)[0]
    mq, mk = mq_, mk_
    qp, (qb, qpos) = _old_pad(q, lens_q, cu_seqlens_q, mq)
    if kmin == mk:
        kp, vp, mask = k.reshape(B, mk, *k.shape[1:]), v.reshape(B, mk, *v.shape[1:]), None
    else:
        kp, _ = _old_pad(k, lens_k, cu_seqlens_k, mk)
        vp, _ = _old_pad(v, lens_k, cu_seqlens_k, mk)
        mask = (torch.arange(mk, device=k.device)[None] < lens_k[:, None])[:, None, None, :]
    return fn_mod._dense(qp, kp, vp, mask, backend)[qb, qpos]


def _cu(lens):
    out = [0]
    for n in lens:
        out.append(out[-1] + n)
    return torch.tensor(out, dtype=torch.int32)


@contextmanager
def count_host_reads():
    """Counts Python-level reads of tensor values (each one a device->host sync on a GPU)."""
    counts = collections.Counter()
    orig = {n: getattr(torch.Tensor, n) for n in HOST_READS}

    def wrap(name):
        f = orig[name]

        def w(self, *a, **k):
            counts[name] += 1
            return f(self, *a, **k)
        return w
    for n in HOST_READS:
        setattr(torch.Tensor, n, wrap(n))
    try:
        yield counts
    finally:
        for n, f in orig.items():
            setattr(torch.Tensor, n, f)




def _tiny_slat(num_blocks, dtype=torch.float64, seed=0, device="cpu"):
    m = SLatFlowModel(resolution=8, in_channels=8, out_channels=5, num_blocks=num_blocks, image_attn_mode="proj",
                      proj_in_channels=6, **TINY)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_((torch.randn(p.shape, generator=g) * 0.3).to(p.dtype))
    m = m.to(device)
    if dtype == torch.float64:  # the whole model in float64 (convert_to only knows the half/float32 torso)
        m = m.double()
        m.dtype = torch.float64
    return m.eval()


def _slat_inputs(ns=(9, 14, 5), dtype=torch.float64, seed=1, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    coords = _coords(list(ns)).to(device)
    n = coords.shape[0]
    x = SparseTensor(torch.randn(n, 5, generator=g, dtype=dtype).to(device), coords)
    cc = x.replace(torch.randn(n, 3, generator=g, dtype=dtype).to(device))
    cond = {"global": torch.randn(len(ns), 4, 12, generator=g, dtype=dtype).to(device),
            "proj": torch.randn(n, 6, generator=g, dtype=dtype).to(device)}
    t = torch.tensor([100.0, 700.0, 400.0][:len(ns)], device=device)
    return x, t, cond, cc


# ---------------------------------------------------------------------------------------------------------------------
# functional level
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["sdpa", "naive"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("lens_q,lens_k", [([7], [7]), ([5, 9, 1], [5, 9, 1]), ([4, 6], [3, 3]),
                                           ([3, 0, 6], [2, 4, 5]), ([6, 2, 8], [4, 4, 4])])
def test_meta_and_tensor_paths_bit_identical_to_old(backend, dtype, lens_q, lens_k):
    g = torch.Generator().manual_seed(3)
    H, D = 3, 8
    q = torch.randn(sum(lens_q), H, D, generator=g, dtype=dtype)
    k = torch.randn(sum(lens_k), H, D, generator=g, dtype=dtype)
    v = torch.randn(sum(lens_k), H, D, generator=g, dtype=dtype)
    ref = _old_varlen_attention(q, k, v, _cu(lens_q), _cu(lens_k), backend=backend)
    via_tensors = varlen_attention(q, k, v, _cu(lens_q), _cu(lens_k), backend=backend)
    mq, mk = VarLenMeta.from_lengths(lens_q), VarLenMeta.from_lengths(lens_k)
    via_meta = varlen_attention(q, k, v, mq, mk, backend=backend)
    again = varlen_attention(q, k, v, mq, mk, backend=backend)  # cached pad index / mask reused
    for out in (via_tensors, via_meta, again):
        assert torch.equal(out, ref)


def test_meta_host_values_and_device_tensors():
    m = VarLenMeta.from_layout([slice(0, 3), slice(3, 3), slice(3, 10)])
    assert m.lens == (3, 0, 7) and m.cu_host == (0, 3, 3, 10) and (m.batch_size, m.total) == (3, 10)
    assert (m.max_len, m.min_len) == (7, 0)
    assert m.cu_seqlens.dtype == torch.int32 and m.cu_seqlens.tolist() == [0, 3, 3, 10]
    bidx, pos = m.pad_index()
    assert bidx.tolist() == [0] * 3 + [2] * 7 and pos.tolist() == [0, 1, 2] + list(range(7))
    assert m.key_mask().shape == (3, 1, 1, 7) and m.key_mask()[1].sum() == 0
    assert m.pad_index()[0] is bidx  # built once
    x = VarLenTensor(torch.zeros(10, 2), [slice(0, 3), slice(3, 3), slice(3, 10)])
    assert torch.equal(m.cu_seqlens, x.cum_seqlen)
    assert VarLenMeta.from_cu_seqlens(_cu([3, 0, 7])).lens == m.lens
    with pytest.raises(ValueError, match="non-negative"):
        VarLenMeta.from_lengths([2, -1])
    with pytest.raises(ValueError, match="non-empty"):
        VarLenMeta.from_lengths([])


def test_meta_inputs_are_validated_on_the_host():
    q = torch.randn(4, 2, 4)
    with pytest.raises(ValueError, match="no key tokens"):
        varlen_attention(q, q[:2], q[:2], VarLenMeta.from_lengths([2, 2]), VarLenMeta.from_lengths([2, 0]))
    with pytest.raises(ValueError, match="query count 4"):
        varlen_attention(q, q, q, VarLenMeta.from_lengths([1, 2]), VarLenMeta.from_lengths([2, 2]))
    with pytest.raises(ValueError, match="different batch sizes"):
        varlen_attention(q, q, q, VarLenMeta.from_lengths([4]), _cu([2, 2]))
    with pytest.raises(ValueError, match="cu_seqlens_k must start at 0"):
        varlen_attention(q, q, q, VarLenMeta.from_lengths([4]), VarLenMeta([1, 4]))


def test_tensor_cu_seqlens_cost_one_host_read_per_call_and_meta_none():
    q = torch.randn(12, 2, 4)
    with count_host_reads() as c:
        varlen_attention(q, q, q, _cu([5, 7]), _cu([5, 7]))
    assert sum(c.values()) == 1  # q and k lengths read together
    meta = VarLenMeta.from_lengths([5, 7])
    with count_host_reads() as c:
        for _ in range(3):
            varlen_attention(q, q, q, meta, meta)
    assert sum(c.values()) == 0


# ---------------------------------------------------------------------------------------------------------------------
# sparse layers and the SLat flow DiT
# ---------------------------------------------------------------------------------------------------------------------
def test_sparse_layers_share_one_meta_per_tensor_family():
    torch.manual_seed(0)
    coords = _coords([7, 11])
    x = SparseTensor(torch.randn(18, 16, dtype=torch.float64), coords)
    self_attn = SparseMultiHeadAttention(16, 2, use_rope=True).double()
    cross = SparseMultiHeadAttention(16, 2, ctx_channels=12, type="cross").double()
    ctx = torch.randn(2, 5, 12, dtype=torch.float64)
    h = self_attn(x)
    cross(h, ctx)
    meta = sparse_modules.packed_meta(x)
    assert meta.lens == (7, 11) and sparse_modules.packed_meta(h) is meta  # replace() copies share it
    with count_host_reads() as c:
        for _ in range(3):
            h = cross(self_attn(h), ctx)
    assert sum(c.values()) == 0
    vl = VarLenTensor.from_tensor_list([torch.randn(3, 12, dtype=torch.float64), torch.randn(6, 12,
                                                                                             dtype=torch.float64)])
    cross(x, vl)
    assert sparse_modules.packed_meta(vl).lens == (3, 6)
    with count_host_reads() as c:
        cross(x, vl)
    assert sum(c.values()) == 0


def _forward(m, inputs):
    x, t, cond, cc = inputs
    with torch.no_grad():
        return m(x, t, cond, concat_cond=cc)


@pytest.mark.parametrize("cache", ["1", "0"])
def test_slat_forward_bit_identical_to_per_call_attention(monkeypatch, cache):
    """The float64 tiny SLat flow gives the same bits with cached metadata (and with the A/B switch off) as with the
    old per-call implementation patched in."""
    monkeypatch.setenv(sparse_modules.META_CACHE_ENV, cache)
    m = _tiny_slat(3)
    new = _forward(m, _slat_inputs()).feats
    inputs = _slat_inputs()
    _forward(m, inputs)
    new_warm = _forward(m, inputs).feats  # second forward on the same tensors: cached metadata reused
    monkeypatch.setenv(sparse_modules.META_CACHE_ENV, "0")
    monkeypatch.setattr(sparse_modules, "varlen_attention", _old_varlen_attention)
    old = _forward(m, _slat_inputs()).feats
    assert new.dtype == torch.float64 and torch.equal(new, old) and torch.equal(new_warm, old)


def _host_reads_of_forward(num_blocks, warm):
    m = _tiny_slat(num_blocks, dtype=torch.float32)
    inputs = _slat_inputs(dtype=torch.float32)
    if warm:
        _forward(m, inputs)
    with count_host_reads() as c:
        _forward(m, inputs)
    return sum(c.values())


def test_slat_forward_host_reads_do_not_grow_with_depth():
    """Fresh inputs: the batch layout and size are read once per forward (2 reads) whatever the depth; on tensors that
    already went through a forward (the sampler's steps share one cache), nothing is read at all."""
    cold = [_host_reads_of_forward(n, warm=False) for n in (1, 4)]
    warm = [_host_reads_of_forward(n, warm=True) for n in (1, 4)]
    assert cold[0] == cold[1] <= 2, cold
    assert warm == [0, 0], warm


def test_slat_host_read_counter_sees_the_per_call_path(monkeypatch):
    """The switch back to per-call ``cu_seqlens`` tensors reads once per attention call: 2 per block. This is what
    the counter in the test above guards against."""
    monkeypatch.setenv(sparse_modules.META_CACHE_ENV, "0")
    warm = [_host_reads_of_forward(n, warm=True) for n in (1, 4)]
    assert warm == [2, 8], warm


def test_meta_built_once_per_forward(monkeypatch):
    built = collections.Counter()
    orig = VarLenMeta.__init__

    def counting_init(self, *a, **k):
        built["meta"] += 1
        orig(self, *a, **k)
    calls = collections.Counter()
    orig_attn = sparse_modules.varlen_attention

    def counting_attn(*a, **k):
        calls["attn"] += 1
        return orig_attn(*a, **k)
    monkeypatch.setattr(VarLenMeta, "__init__", counting_init)
    monkeypatch.setattr(sparse_modules, "varlen_attention", counting_attn)
    m = _tiny_slat(4)
    _forward(m, _slat_inputs())
    assert calls["attn"] == 8  # self + cross in each of the 4 blocks
    assert built["meta"] == 2  # the voxels' meta and the dense global context's, once each


def test_sampler_reads_no_batch_size_from_the_device():
    from pixal3d.pipelines.samplers import FlowEulerSampler
    m = _tiny_slat(2, dtype=torch.float32)
    x, t, cond, cc = _slat_inputs(dtype=torch.float32)
    sampler = FlowEulerSampler()
    with torch.no_grad():
        sampler.sample(m, x, cond, steps=1, verbose=False, concat_cond=cc)  # first use builds the caches
        with count_host_reads() as c:
            sampler.sample(m, x, cond, steps=3, verbose=False, concat_cond=cc)
    assert sum(c.values()) == 0, dict(c)


def test_windowed_attention_reads_window_lengths_once():
    coords = _coords([20, 30], res=8)
    x = SparseTensor(torch.randn(50, 16, dtype=torch.float64), coords)
    attn = SparseMultiHeadAttention(16, 2, attn_mode="windowed", window_size=4).double()
    ref = attn(x).feats
    with count_host_reads() as c:
        out = attn(x).feats
        attn(x)
    assert sum(c.values()) == 0 and torch.equal(out, ref)
    fwd, bwd, cu = x.get_spatial_cache("windowed_attention_4_0")  # the public partition tuple is unchanged
    assert isinstance(cu, torch.Tensor)


# ---------------------------------------------------------------------------------------------------------------------
# CUDA: real synchronisations (run on the device with ``pytest -m gpu``)
# ---------------------------------------------------------------------------------------------------------------------
def _cuda_syncs(fn) -> int:
    from pixal3d.utils.cuda_sync import count_cuda_syncs
    return count_cuda_syncs(fn)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run on the GPU machine)")
def test_cuda_slat_forward_syncs_do_not_grow_with_depth():
    counts = {}
    for n in (1, 4):
        m = _tiny_slat(n, dtype=torch.float32, device="cuda")
        inputs = _slat_inputs(dtype=torch.float32, device="cuda")
        counts[("cold", n)] = _cuda_syncs(lambda m=m, inputs=inputs: _forward(m, inputs))
        counts[("warm", n)] = _cuda_syncs(lambda m=m, inputs=inputs: _forward(m, inputs))
    # the cold count is a constant of the forward, not of its depth (H100: 7 with 1 block, 6 with 4; 60 per
    # forward before the per-forward metadata); warm forwards have none
    assert counts[("cold", 4)] <= counts[("cold", 1)] <= 8, counts
    assert counts[("warm", 1)] == counts[("warm", 4)] == 0, counts


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run on the GPU machine)")
def test_cuda_warm_slat_forward_has_no_sync():
    m = _tiny_slat(2, dtype=torch.float32, device="cuda")
    inputs = _slat_inputs(dtype=torch.float32, device="cuda")
    _forward(m, inputs)
    assert _cuda_syncs(lambda: _forward(m, inputs)) == 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run on the GPU machine)")
def test_cuda_slat_forward_matches_per_call_attention(monkeypatch):
    m = _tiny_slat(3, dtype=torch.float32, device="cuda")
    new = _forward(m, _slat_inputs(dtype=torch.float32, device="cuda")).feats
    monkeypatch.setenv(sparse_modules.META_CACHE_ENV, "0")
    monkeypatch.setattr(sparse_modules, "varlen_attention", _old_varlen_attention)
    old = _forward(m, _slat_inputs(dtype=torch.float32, device="cuda")).feats
    assert torch.equal(new, old)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
def test_count_cuda_syncs_needs_cuda():
    from pixal3d.utils.cuda_sync import count_cuda_syncs
    with pytest.raises(RuntimeError, match="CUDA"):
        count_cuda_syncs(lambda: None)
