"""Triton sparse-conv backend (``pixal3d/sparse/conv_triton.py``) against the float64 torch path.

* Map and dispatch tests run everywhere (the map build is plain PyTorch).
* ``test_kernel_*`` run the Triton kernel: directly on CUDA (the ``gpu`` marker's machine), and on CPU through Triton's
  interpreter in a subprocess started by ``test_interpreter_suite`` (``TRITON_INTERPRET=1`` must be set before triton
  is imported, so it cannot be switched on inside this process). They are skipped when triton is not installed.
"""
import os

import pytest
import torch

from pixal3d.sparse import SparseConv3d, SparseTensor, config
from pixal3d.sparse import conv_triton as ct
from pixal3d.sparse.conv import build_neighbor_map, resolve_backend, submanifold_conv3d
from conftest import run_interpreter_suite, triton_kernel_device
from sparse_helpers import random_sparse_coords, shuffle_within_batches

INNER = os.environ.get("PIXAL3D_TRITON_INTERP_INNER") == "1"


_skip_no_kernel = pytest.mark.skipif(triton_kernel_device() is None,
                                     reason="needs triton with CUDA, or the interpreter subprocess")


def needs_kernel(fn):
    """Kernel test: ``gpu``-marked (selected by ``-m gpu`` on the device) and skipped where no kernel can run."""
    return pytest.mark.gpu(_skip_no_kernel(fn))
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.5e-2}


def _rel(a, b):
    a, b = a.double().cpu(), b.double().cpu()
    return ((a - b).norm() / b.norm()).item()


def _shell(res, thickness, gen):
    """Surface-like coords (a sphere shell) in one batch plus a random cloud in a second: int32 [N, 4]."""
    ax = torch.arange(res, dtype=torch.float32) + 0.5 - res / 2
    d = torch.sqrt(ax.view(-1, 1, 1) ** 2 + ax.view(1, -1, 1) ** 2 + ax.view(1, 1, -1) ** 2)
    xyz = torch.nonzero((d - 0.4 * res).abs() <= thickness)
    shell = torch.cat([torch.zeros_like(xyz[:, :1]), xyz], 1).int()
    cloud = random_sparse_coords(1, res, 0.02, gen)
    cloud[:, 0] = 1
    c = torch.cat([shell, cloud])
    return c[shuffle_within_batches(c, gen)]  # batches contiguous, rows within a batch in no particular order


# ---------------------------------------------------------------- map + dispatch (no kernel needed)

def _assert_map_equals_pair_map(coords, shape, K, dil, shift):
    """The Triton table, read back in row order, equals the torch backend's per-offset pairs (plus the centre)."""
    ref = build_neighbor_map(coords, shape, K, dil)
    tm = ct.build_triton_map(coords, shape, K, dil, chunk_shift=shift)
    n = coords.shape[0]
    V = (K if isinstance(K, tuple) else (K,) * 3)
    V = V[0] * V[1] * V[2]
    assert tm.nbr.shape == (n, V) and tm.nbr.dtype == torch.int32
    assert torch.equal(torch.sort(tm.order.long()).values.cpu(), torch.arange(n))  # a permutation of the rows
    dense = torch.full((n, V), -1, dtype=torch.long)  # row-order table from the torch pairs
    for v, o, i in ref.pairs:
        dense[o.cpu(), v] = i.cpu()
    if ref.center is not None:
        dense[:, ref.center] = torch.arange(n)
    table = torch.empty_like(dense)
    table[tm.order.long().cpu()] = tm.nbr.long().cpu()
    assert torch.equal(table, dense)


@pytest.mark.parametrize("group", [None, 1, 50])
@pytest.mark.parametrize("K,dil,shift", [(3, 1, 4), (3, 2, -1), (5, 1, 1), (1, 1, 0), (2, 1, 2)])
def test_triton_map_matches_pair_map(K, dil, shift, group, monkeypatch):
    # dense random voxels touch every face of the small grid, so off-grid neighbours are exercised; group sizes
    # 1 and 50 split the batched offset search (one offset per search, and a few offsets per search)
    monkeypatch.setenv("SPARSE_CONV_MAP_SEARCH", "torch")
    if group is not None:
        monkeypatch.setattr(ct, "MAP_GROUP_ELEMS", group)
    gen = torch.Generator().manual_seed(K * 10 + dil)
    coords = random_sparse_coords(2, (7, 9, 6), 0.3, gen)
    coords = coords[shuffle_within_batches(coords, gen)]
    _assert_map_equals_pair_map(coords, (7, 9, 6), K, dil, shift)


@needs_kernel
@pytest.mark.gpu
@pytest.mark.parametrize("K,dil,shift", [(3, 1, 4), (3, (2, 2, 1), -1), (5, 1, 1), (1, 1, 0), (2, 1, 2),
                                         ((3, 1, 2), 1, 4)])
@pytest.mark.parametrize("fill", [0.3, 0.9])
def test_kernel_neighbor_search_matches_pair_map(K, dil, shift, fill, monkeypatch):
    """The Triton search kernel (windowed binary searches, consecutive dz keys) against the torch pair map, on a
    sparse and an almost full grid (long runs of consecutive keys), with voxels on every face of the grid."""
    monkeypatch.setenv("SPARSE_CONV_MAP_SEARCH", "triton")
    calls = []
    kern = ct._neighbor_search_kernel
    monkeypatch.setattr(ct, "_neighbor_search_kernel",
                        type("Spy", (), {"__getitem__": lambda self, g: (calls.append(g), kern[g])[1]})())
    gen = torch.Generator().manual_seed(7)
    coords = random_sparse_coords(3, (7, 9, 6), fill, gen)
    coords = coords[shuffle_within_batches(coords, gen)].to(triton_kernel_device())
    _assert_map_equals_pair_map(coords, (7, 9, 6), K, dil, shift)
    assert len(calls) == 1


def test_tile_lists_cover_exactly_the_present_offsets():
    gen = torch.Generator().manual_seed(5)
    coords = _shell(20, 0.9, gen)
    tm = ct.build_triton_map(coords, (20, 20, 20), 3, 1)
    for bn in (16, 64):
        cnt, lst = tm.tiles(bn)
        T = (tm.n + bn - 1) // bn
        assert cnt.shape == (T,) and lst.shape == (T, 27)
        for t in range(T):
            present = (tm.nbr[t * bn:(t + 1) * bn] >= 0).any(0)
            want = torch.nonzero(present).flatten().tolist()
            assert lst[t, :cnt[t]].tolist() == want
    # mask sorting makes tiles sparser in offsets than the plain lexicographic order does
    lex = ct.build_triton_map(coords, (20, 20, 20), 3, 1, chunk_shift=-1)
    assert tm.tiles(64)[0].sum() < lex.tiles(64)[0].sum()


@pytest.mark.gpu
def test_backend_resolution(monkeypatch):
    x = torch.randn(4, 3)
    monkeypatch.delenv("SPARSE_CONV_BACKEND", raising=False)
    assert config.conv_backend() == "auto"
    if not ct.interpreting():
        assert resolve_backend(x, (3, 3, 3), False) == "torch"  # CPU: auto -> torch
    assert resolve_backend(x.double(), (3, 3, 3), False) == "torch"
    monkeypatch.setenv("SPARSE_CONV_BACKEND", "torch")
    assert resolve_backend(x, (3, 3, 3), False) == "torch"
    monkeypatch.setenv("SPARSE_CONV_BACKEND", "bogus")
    with pytest.raises(ValueError, match="triton"):
        config.conv_backend()
    if ct.HAS_TRITON and torch.cuda.is_available():
        monkeypatch.delenv("SPARSE_CONV_BACKEND")
        xc = x.cuda()
        assert resolve_backend(xc, (3, 3, 3), False) == "triton"
        assert resolve_backend(xc.half(), (3, 3, 3), True) == "triton"
        assert resolve_backend(xc, (2, 2, 2), True) == "torch"  # no Triton backward for even kernels
        assert resolve_backend(xc.double(), (3, 3, 3), False) == "torch"
        assert resolve_backend(xc, (3, 3, 3), False, (256, 256)) == "torch"  # wide exact fp32: cuBLAS is faster
        assert resolve_backend(xc.half(), (3, 3, 3), False, (256, 256)) == "triton"
        monkeypatch.setenv("SPARSE_CONV_BACKEND", "triton")
        assert resolve_backend(xc, (3, 3, 3), False, (256, 256)) == "triton"  # explicit request is honoured


@pytest.mark.skipif(ct.interpreting() or torch.cuda.is_available(), reason="checks the CPU fallback")
def test_explicit_triton_on_cpu_falls_back_identically(monkeypatch):
    gen = torch.Generator().manual_seed(2)
    coords = random_sparse_coords(1, 6, 0.4, gen)
    x = SparseTensor(torch.randn(coords.shape[0], 4, generator=gen), coords)
    conv = SparseConv3d(4, 5, 3)
    monkeypatch.setenv("SPARSE_CONV_BACKEND", "torch")
    ref = conv(x).feats
    monkeypatch.setenv("SPARSE_CONV_BACKEND", "triton")
    ct._WARNED.clear()
    with pytest.warns(UserWarning, match="torch backend"):
        out = conv(SparseTensor(x.feats, coords)).feats
    assert torch.equal(out, ref)


@pytest.mark.skipif(not ct.HAS_TRITON or torch.cuda.is_available() or ct.interpreting() or INNER,
                    reason="CPU machine with triton: runs the kernel tests under the interpreter")
def test_interpreter_suite():
    summary = run_interpreter_suite(__file__, "PIXAL3D_TRITON_INTERP_INNER")
    assert " skipped" not in summary, summary


# ---------------------------------------------------------------- the kernel (CUDA, or interpreter subprocess)

def _case(seed, res, ci, co, K=3, dil=1, thickness=0.9):
    gen = torch.Generator().manual_seed(seed)
    coords = _shell(res, thickness, gen)
    feats = torch.randn(coords.shape[0], ci, generator=gen, dtype=torch.float64)
    w = torch.randn(co, K, K, K, ci, generator=gen, dtype=torch.float64) / (ci * 27) ** 0.5
    b = torch.randn(co, generator=gen, dtype=torch.float64)
    return coords, feats, w, b


def _ref(coords, res, feats, w, b, K, dil):
    return submanifold_conv3d(feats, build_neighbor_map(coords, (res,) * 3, K, dil), w, b)


SMALL = not torch.cuda.is_available()  # the interpreter is slow: smaller problems there


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("ci,co", [(16, 24), (40, 8), (5, 3)] if SMALL else [(64, 64), (256, 256), (128, 1024),
                                                                               (1024, 64), (32, 40), (5, 3)])
def test_kernel_forward_matches_float64(dtype, ci, co):
    dev = triton_kernel_device()
    res = 10 if SMALL else 40
    coords, feats, w, b = _case(ci * 7 + co, res, ci, co)
    ref = _ref(coords, res, feats, w, b, 3, 1)
    coords_d = coords.to(dev)
    tm = ct.build_triton_map(coords_d, (res,) * 3, 3, 1)
    cw, cb, cx = w.to(dev, dtype), b.to(dev, dtype), feats.to(dev, dtype)
    out = torch.full((len(coords), co), float("nan"), dtype=dtype, device=dev)  # poisoned: every row must be written
    ct._launch(cx, tm, cw.reshape(co, 27, ci).contiguous(), cb, out=out)
    assert torch.isfinite(out).all()
    assert _rel(out, ref) < TOL[dtype], _rel(out, ref)
    # same-dtype torch path: the two backends agree within the dtype's accumulation tolerance
    torch_out = submanifold_conv3d(cx, build_neighbor_map(coords_d, (res,) * 3, 3, 1), cw, cb)
    assert _rel(out, torch_out.double()) < 2 * TOL[dtype]


@needs_kernel
@pytest.mark.parametrize("K,dil,shift", [(3, 2, 4), (5, 1, -1), (1, 1, 4), (2, 1, 1)])
def test_kernel_other_kernel_sizes(K, dil, shift):
    dev = triton_kernel_device()
    res = 9
    coords, feats, w, b = _case(K * 3 + dil, res, 12, 20, K, dil)
    ref = _ref(coords, res, feats, w, b, K, dil)
    tm = ct.build_triton_map(coords.to(dev), (res,) * 3, K, dil, chunk_shift=shift)
    out = ct.submanifold_conv3d_triton(feats.float().to(dev), tm, w.float().to(dev), b.float().to(dev))
    assert _rel(out, ref) < TOL[torch.float32]


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_kernel_module_forward_and_backward(dtype, monkeypatch):
    """SparseConv3d under ``triton``: outputs and all three gradients against the float64 torch path."""
    dev = triton_kernel_device()
    res = 8 if SMALL else 32
    gen = torch.Generator().manual_seed(11)
    coords = _shell(res, 0.9, gen)
    ci, co = (12, 20) if SMALL else (64, 96)
    torch.manual_seed(0)
    conv = SparseConv3d(ci, co, 3)
    feats = torch.randn(len(coords), ci, generator=gen)
    gy = torch.randn(len(coords), co, generator=gen)
    monkeypatch.setenv("SPARSE_CONV_BACKEND", "torch")
    conv64 = SparseConv3d(ci, co, 3).double()
    conv64.load_state_dict(conv.state_dict())
    x64 = feats.double().requires_grad_(True)
    y64 = conv64(SparseTensor(x64, coords)).feats
    ref = torch.autograd.grad((y64 * gy.double()).sum(), (x64, conv64.weight, conv64.bias))
    monkeypatch.setenv("SPARSE_CONV_BACKEND", "triton")
    convd = conv.to(dev, dtype)
    xd = feats.to(dev, dtype).requires_grad_(True)
    st = SparseTensor(xd, coords.to(dev))
    assert resolve_backend(xd, (3, 3, 3), True) == "triton"
    y = convd(st).feats
    assert isinstance(st.get_spatial_cache("SubMConv3d_neighbor_cache_3x3x3_dilation1_triton"), ct.TritonNeighborMap)
    got = torch.autograd.grad((y.float() * gy.to(dev)).sum(), (xd, convd.weight, convd.bias))
    tol = TOL[dtype] * (1 if dtype == torch.float32 else 3)
    assert _rel(y, y64) < tol
    for name, a, r in zip(("input", "weight", "bias"), got, ref):
        assert _rel(a, r) < tol, name


@needs_kernel
def test_kernel_empty_and_isolated_voxels():
    dev = triton_kernel_device()
    tm = ct.build_triton_map(torch.zeros(0, 4, dtype=torch.int32, device=dev), (4, 4, 4))
    w = torch.randn(3, 3, 3, 3, 2, device=dev)
    assert ct.submanifold_conv3d_triton(torch.zeros(0, 2, device=dev), tm, w).shape == (0, 3)
    # two voxels in different batches at the same xyz: each sees only itself (centre weight)
    coords = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]], dtype=torch.int32, device=dev)
    tm = ct.build_triton_map(coords, (3, 3, 3))
    x = torch.randn(2, 2, device=dev)
    out = ct.submanifold_conv3d_triton(x, tm, w)
    torch.testing.assert_close(out, x @ w[:, 1, 1, 1, :].t(), rtol=1e-5, atol=1e-5)
