"""Attention elementwise fast paths: equal-length varlen without padding, fused q/k RMS norm + RoPE (Triton).

* The varlen tests run everywhere and compare bit for bit with the padded algorithm.
* ``test_kernel_*`` need the Triton kernel: on a CUDA machine they run directly (``-m gpu``); on a CPU machine with
  triton they run under the interpreter in a subprocess started by ``test_interpreter_suite`` (``TRITON_INTERPRET=1``
  must be set before triton is imported). bf16 is only checked on CUDA: the interpreter converts fp32 to bf16 by
  truncation instead of round-to-nearest-even, so its bf16 results are not those of the GPU.
* ``test_gpu_*`` are the full-size checks for the GPU machine, skipped elsewhere.
"""
import math
import os

import pytest
import torch

from pixal3d.modules.attention import (MultiHeadAttention, MultiHeadRMSNorm, SparseMultiHeadAttention, VarLenMeta,
                                       apply_rope, rope_phases, varlen_attention)
from pixal3d.modules.attention import functional as fn
from pixal3d.modules.attention import fused_qk as fq
from pixal3d.sparse import SparseTensor
from conftest import random_sparse_coords, run_interpreter_suite, triton_kernel_device

INNER = os.environ.get("PIXAL3D_FUSED_QK_INTERP_INNER") == "1"
CUDA = torch.cuda.is_available()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in ("ATTN_BACKEND", "SPARSE_ATTN_BACKEND", fq.FUSED_KERNELS_ENV):
        monkeypatch.delenv(name, raising=False)


# ---------------------------------------------------------------- equal-length varlen (no padding)

def _padded_varlen(q, k, v, meta_q, meta_k, backend):
    """The padded algorithm for queries (scatter, attend, gather), keys as ``varlen_attention`` does them."""
    B, mq, mk = meta_q.batch_size, meta_q.max_len, meta_k.max_len
    idx = meta_q.pad_index()
    if meta_k.min_len == mk:
        kp, vp, mask = k.reshape(B, mk, *k.shape[1:]), v.reshape(B, mk, *v.shape[1:]), None
    else:
        kidx = meta_k.pad_index()
        kp, vp, mask = fn._pad(k, kidx, B, mk), fn._pad(v, kidx, B, mk), meta_k.key_mask()
    return fn._dense(fn._pad(q, idx, B, mq), kp, vp, mask, backend)[idx]


def _count_pads(monkeypatch):
    calls = []
    real = fn._pad

    def spy(x, *a):
        calls.append(x.shape[0])
        return real(x, *a)
    monkeypatch.setattr(fn, "_pad", spy)
    return calls


@pytest.mark.parametrize("backend", ["sdpa", "naive"])
@pytest.mark.parametrize("B", [2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("strided", [False, True])
def test_varlen_equal_lengths_bit_identical_to_padded(backend, B, dtype, strided, monkeypatch):
    """Self attention over B equal-length samples (the CFG pair): q/k/v used as a reshape, no padding, same bits."""
    g = torch.Generator().manual_seed(B)
    L, H, D = 11, 3, 16
    qkv = torch.randn(B * L, 3, H, D, generator=g).to(dtype)
    q, k, v = qkv.unbind(1) if strided else (t.contiguous() for t in qkv.unbind(1))
    meta = VarLenMeta.from_lengths([L] * B)
    ref = _padded_varlen(q, k, v, meta, meta, backend)
    pads = _count_pads(monkeypatch)
    out = varlen_attention(q, k, v, meta, meta, backend=backend)
    assert pads == []  # no scatter into a padded batch
    assert out.shape == q.shape and torch.equal(out, ref)


@pytest.mark.parametrize("backend", ["sdpa", "naive"])
@pytest.mark.parametrize("lens_q,lens_k", [([6, 6], [3, 8]), ([5, 5, 5], [4, 1, 7]), ([4, 9], [7, 7]),
                                           ([2, 7, 3], [5, 2, 6])])
def test_varlen_unequal_lengths_still_padded(backend, lens_q, lens_k, monkeypatch):
    """Only the sides with unequal lengths are padded; results equal the padded algorithm and a float64 loop."""
    g = torch.Generator().manual_seed(len(lens_q))
    H, D = 2, 8
    q = torch.randn(sum(lens_q), H, D, generator=g)
    k, v = (torch.randn(sum(lens_k), H, D, generator=g) for _ in range(2))
    mq, mk = VarLenMeta.from_lengths(lens_q), VarLenMeta.from_lengths(lens_k)
    ref = _padded_varlen(q, k, v, mq, mk, backend)
    pads = _count_pads(monkeypatch)
    out = varlen_attention(q, k, v, mq, mk, backend=backend)
    expect = ([] if len(set(lens_q)) == 1 else [q.shape[0]]) + ([] if len(set(lens_k)) == 1 else [k.shape[0]] * 2)
    assert pads == expect
    assert torch.equal(out, ref)
    for b in range(len(lens_q)):
        sq = slice(mq.cu_host[b], mq.cu_host[b + 1])
        sk = slice(mk.cu_host[b], mk.cu_host[b + 1])
        s = torch.einsum("qhd,khd->hqk", q[sq].double(), k[sk].double()) / math.sqrt(D)
        want = torch.einsum("hqk,khd->qhd", torch.softmax(s, -1), v[sk].double())
        torch.testing.assert_close(out[sq].double(), want, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- dispatch (CPU, no kernel needed)

def _layers(dtype, C=32, heads=2, seed=0):
    """Random sparse/dense self (RoPE + qk RMS norm) and cross (qk RMS norm) layers in ``dtype``."""
    torch.manual_seed(seed)
    mods = {"sparse_self": SparseMultiHeadAttention(C, heads, use_rope=True, qk_rms_norm=True),
            "sparse_cross": SparseMultiHeadAttention(C, heads, ctx_channels=12, type="cross", qk_rms_norm=True),
            "dense_self": MultiHeadAttention(C, heads, use_rope=True, qk_rms_norm=True),
            "dense_cross": MultiHeadAttention(C, heads, ctx_channels=12, type="cross", qk_rms_norm=True)}
    for m in mods.values():
        for mod in m.modules():
            if isinstance(mod, MultiHeadRMSNorm):
                mod.gamma.data.uniform_(0.5, 1.5)
        for n, p in m.named_parameters():
            if "gamma" not in n:
                p.data = p.data.to(dtype)
    return mods


def _run_layers(mods, dtype, device="cpu", ns=(20, 20), R=4):
    """Runs every layer of :func:`_layers`; returns ``{name: output tensor}``."""
    g = torch.Generator().manual_seed(1)
    C = mods["dense_self"].channels
    D = C // mods["dense_self"].num_heads
    coords = random_sparse_coords(list(ns), res=6, seed=2).to(device)
    feats = torch.randn(coords.shape[0], C, generator=g).to(device, dtype)
    ctx = torch.randn(len(ns), 5, 12, generator=g).to(device, dtype)
    grid = torch.stack(torch.meshgrid(*(torch.arange(R),) * 3, indexing="ij"), -1).reshape(-1, 3)
    phases = rope_phases(grid, D).to(device)
    xd = torch.randn(2, R ** 3, C, generator=g).to(device, dtype)
    return {"sparse_self": mods["sparse_self"](SparseTensor(feats, coords)).feats,
            "sparse_cross": mods["sparse_cross"](SparseTensor(feats, coords), ctx).feats,
            "dense_self": mods["dense_self"](xd, phases=phases),
            "dense_cross": mods["dense_cross"](xd, ctx)}


def test_mode_env_and_cpu_dispatch(monkeypatch):
    x = torch.randn(4, 2, 8)
    assert fq.fused_kernels_mode() == "auto"
    if not fq.interpreting():
        for mode in ("auto", "triton", "torch"):
            monkeypatch.setenv(fq.FUSED_KERNELS_ENV, mode)
            assert not fq.use_triton(x) and not fq.use_triton(x.half())
    monkeypatch.setenv(fq.FUSED_KERNELS_ENV, "cuda")
    with pytest.raises(ValueError, match="auto"):
        fq.use_triton(x)


@pytest.mark.skipif(fq.interpreting(), reason="checks the CPU path outside the interpreter")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_layers_bit_identical_auto_vs_torch(dtype, monkeypatch):
    mods = _layers(dtype)
    with torch.no_grad():
        monkeypatch.setenv(fq.FUSED_KERNELS_ENV, "torch")
        ref = _run_layers(mods, dtype)
        for mode in ("auto", "triton"):
            monkeypatch.setenv(fq.FUSED_KERNELS_ENV, mode)
            out = _run_layers(mods, dtype)
            for name in ref:
                assert torch.equal(out[name], ref[name]), (mode, name)


def test_gradients_take_the_torch_path(monkeypatch):
    """With autograd recording, ``triton`` mode still runs the differentiable PyTorch path (no kernel call)."""
    calls = []
    monkeypatch.setattr(fq, "rms_norm_rope", lambda *a, **k: calls.append(1))
    monkeypatch.setenv(fq.FUSED_KERNELS_ENV, "triton")
    mods = _layers(torch.float32)
    out = _run_layers(mods, torch.float32)
    sum(o.square().sum() for o in out.values()).backward()
    assert calls == []
    for m in mods.values():
        assert m.q_rms_norm.gamma.grad is not None and m.q_rms_norm.gamma.grad.abs().sum() > 0
    x = torch.randn(3, 2, 4, requires_grad=True)
    assert not fq.use_triton(x) and not fq.use_triton(x.detach(), torch.ones(2, 4, requires_grad=True))


# ---------------------------------------------------------------- the kernel (CUDA, or interpreter subprocess)


def needs_kernel(fn_):
    """Kernel test: ``gpu``-marked and skipped where no kernel can run (CPU without the interpreter)."""
    return pytest.mark.gpu(pytest.mark.skipif(triton_kernel_device() is None,
                                              reason="needs triton with CUDA, or the interpreter subprocess")(fn_))


def _skip_bf16_interp(dtype):
    if dtype == torch.bfloat16 and not CUDA:
        pytest.skip("the Triton interpreter truncates fp32->bf16 instead of rounding to nearest; bf16 runs on CUDA")


#: unit roundoff of each output dtype; fp32 gets 16 of them for the reduction-order noise of a 128-wide sum
UNIT = {torch.float32: 2.0 ** -20, torch.float16: 2.0 ** -11, torch.bfloat16: 2.0 ** -8}


def _reference64(x, gammas, scale, phases):
    """float64 ``rope(normalize(x)·gamma·scale)`` of ``x [B, L, S, H, D]`` -> ``[S, B, L, H, D]`` and the per-channel
    error budget: one rounding of the normalised value and one of the output, each at most a unit roundoff of the
    channel pair's magnitude (the rotation preserves it)."""
    y = x.double().movedim(2, 0)
    if gammas is not None:
        y = y / y.norm(dim=-1, keepdim=True).clamp_min(1e-12) * torch.stack(gammas).double()[:, None, None] * scale
    pair = y.reshape(*y.shape[:-1], -1, 2).norm(dim=-1).repeat_interleave(2, -1)
    if phases is not None:
        yc = torch.view_as_complex(y.reshape(*y.shape[:-1], -1, 2).contiguous())
        y = torch.view_as_real(yc * phases.to(torch.complex128)[:, None]).reshape(y.shape)
    return y, 2.5 * UNIT[x.dtype] * pair + 1e-30


def _check_kernel(B, L, H, D, dtype, norm, rope, seed=0, slots=2):
    dev = triton_kernel_device()
    g = torch.Generator().manual_seed(seed)
    qkv = (torch.randn(B, L, 3, H, D, generator=g) * 3).to(dev, dtype)
    x = qkv[:, :, :slots]
    gammas = [(torch.rand(H, D, generator=g) + 0.5).to(dev) for _ in range(slots)] if norm else None
    phases = rope_phases(torch.randint(0, 64, (L, 3), generator=g), D).to(dev) if rope else None
    out = torch.full((slots, B, L, H, D), float("nan"), dtype=dtype, device=dev)
    res = fq.rms_norm_rope(x, gammas, D ** 0.5, phases, out=out)
    assert res is out
    ref, tol = _reference64(x.cpu(), [t.cpu() for t in gammas] if norm else None, D ** 0.5,
                            phases.cpu() if rope else None)
    err = (out.cpu().double() - ref).abs()
    assert not out.isnan().any(), "unwritten output elements"
    assert (err <= tol).all(), f"max err {err.max().item():.3g}, worst ratio {(err / tol).max().item():.3g}"
    return x, gammas, phases, out, tol


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("D", [16, 64, 128])
@pytest.mark.parametrize("H", [2, 3])
@pytest.mark.parametrize("norm,rope", [(True, True), (True, False), (False, True)])
def test_kernel_self_qk_vs_float64(dtype, D, H, norm, rope):
    """q and k slots of a packed ``[N, 3, H, D]`` ``to_qkv`` output, read in place."""
    _skip_bf16_interp(dtype)
    _check_kernel(1, 40, H, D, dtype, norm, rope, seed=D + H)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_kernel_dense_batch_single_slot_and_odd_width(dtype):
    """``[B, L, S, H, D]`` with B > 1 (phases shared over B), one slot, and D not a power of two (masked lanes)."""
    _skip_bf16_interp(dtype)
    _check_kernel(3, 13, 2, 64, dtype, True, True, seed=1)
    _check_kernel(2, 17, 3, 64, dtype, True, False, seed=2, slots=1)
    _check_kernel(2, 9, 2, 24, dtype, True, True, seed=3)
    _check_kernel(1, 9, 3, 10, dtype, True, False, seed=4, slots=1)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_kernel_matches_torch_modules(dtype):
    """Against the PyTorch path itself (which also rounds between norm and RoPE): at most one unit in the last place
    apart, and fp16 is expected to be identical almost everywhere."""
    x, gammas, phases, out, tol = _check_kernel(1, 40, 3, 64, dtype, True, True, seed=7)
    for s in range(2):
        norm = MultiHeadRMSNorm(64, 3).to(x.device)
        norm.gamma.data = gammas[s]
        with torch.no_grad(), pytest.MonkeyPatch.context() as mp:
            mp.setenv(fq.FUSED_KERNELS_ENV, "torch")
            ref = apply_rope(norm(x[0, :, s]), phases)
        diff = (out[s, 0].double() - ref.double()).abs()
        assert (diff <= 2 * tol[s, 0].to(diff.device)).all()
        if dtype == torch.float16:
            assert (diff > 0).float().mean() < 0.01


@needs_kernel
def test_kernel_zero_and_nan_rows_like_f_normalize():
    """``max(||x||, 1e-12)``: a zero head row stays zero; a NaN spreads over its row only, as in ``F.normalize``."""
    dev = triton_kernel_device()
    x = torch.randn(1, 4, 1, 2, 8, device=dev)
    x[0, 1, 0, 0, 3] = float("nan")
    x[0, 2, 0, 1] = 0
    out = fq.rms_norm_rope(x, [torch.ones(2, 8, device=dev)], 8 ** 0.5)[0, 0]
    ref = torch.nn.functional.normalize(x[0, :, 0], dim=-1) * 8 ** 0.5
    assert torch.equal(out.isnan(), ref.isnan()) and out[1, 0].isnan().all() and (out[2, 1] == 0).all()
    torch.testing.assert_close(out.nan_to_num(), ref.nan_to_num(), rtol=1e-6, atol=1e-6)


@needs_kernel
def test_kernel_rejects_bad_arguments():
    dev = triton_kernel_device()
    x = torch.randn(1, 5, 2, 2, 8, device=dev)
    with pytest.raises(ValueError, match="gammas"):
        fq.rms_norm_rope(x, [torch.ones(2, 8, device=dev)], 1.0)
    with pytest.raises(ValueError, match="phases"):
        fq.rms_norm_rope(x, None, 1.0, torch.ones(4, 4, dtype=torch.complex64, device=dev))
    with pytest.raises(ValueError, match="out"):
        fq.rms_norm_rope(x, None, 1.0, torch.ones(5, 4, dtype=torch.complex64, device=dev),
                         out=torch.empty(2, 1, 5, 2, 8, dtype=torch.float16, device=dev))


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_kernel_layers_triton_vs_torch(dtype, monkeypatch):
    """The attention layers with ``PIXAL3D_FUSED_KERNELS=triton`` call the kernel (once per self-attention layer,
    once per cross q and k) and agree with the PyTorch path."""
    dev = triton_kernel_device()
    mods = {k: m.to(dev) for k, m in _layers(dtype).items()}
    calls = []
    real = fq.rms_norm_rope
    with torch.no_grad():
        monkeypatch.setenv(fq.FUSED_KERNELS_ENV, "torch")
        ref = _run_layers(mods, dtype, dev)
        monkeypatch.setenv(fq.FUSED_KERNELS_ENV, "triton")
        monkeypatch.setattr(fq, "rms_norm_rope", lambda *a, **k: calls.append(a[0].shape[2]) or real(*a, **k))
        out = _run_layers(mods, dtype, dev)
    assert sorted(calls) == [1, 1, 1, 1, 2, 2]  # 2 self layers (q+k slots), 2 cross layers x (q, k)
    for name in ref:
        torch.testing.assert_close(out[name], ref[name], rtol=16 * UNIT[dtype], atol=16 * UNIT[dtype])


@needs_kernel
def test_kernel_dispatch_under_triton_mode(monkeypatch):
    dev = triton_kernel_device()
    x = torch.randn(4, 2, 8, device=dev, dtype=torch.float16)
    monkeypatch.setenv(fq.FUSED_KERNELS_ENV, "triton")
    assert fq.use_triton(x) and fq.use_triton(x.float())
    assert not fq.use_triton(x.double())
    assert not fq.use_triton(x, torch.ones(2, 8, device=dev, requires_grad=True))
    with torch.no_grad():
        assert fq.use_triton(x, torch.ones(2, 8, device=dev, requires_grad=True))
    monkeypatch.setenv(fq.FUSED_KERNELS_ENV, "auto")
    assert fq.use_triton(x) == CUDA and not fq.use_triton(x.float())
    monkeypatch.setenv(fq.FUSED_KERNELS_ENV, "torch")
    assert not fq.use_triton(x)


@pytest.mark.skipif(not fq.HAS_TRITON or CUDA or fq.interpreting() or INNER,
                    reason="CPU machine with triton: runs the kernel tests under the interpreter")
def test_interpreter_suite():
    run_interpreter_suite(__file__, "PIXAL3D_FUSED_QK_INTERP_INNER", timeout=600, drop_env=(fq.FUSED_KERNELS_ENV,))


# ---------------------------------------------------------------- full size, GPU only

def needs_gpu_kernel(fn_):
    return pytest.mark.gpu(pytest.mark.skipif(not CUDA or not fq.HAS_TRITON,
                                              reason="needs a CUDA device with triton (run on the GPU machine)")(fn_))




@needs_gpu_kernel
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("norm,rope", [(True, True), (True, False)])
def test_gpu_kernel_full_size_vs_float64(dtype, norm, rope):
    _check_kernel(1, 10_000, 12, 128, dtype, norm, rope, seed=11)


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@needs_gpu_kernel
@pytest.mark.parametrize("kind", ["sparse_self", "sparse_cross", "dense_self"])
def test_gpu_full_size_layers_auto_vs_torch(kind, monkeypatch, no_tf32):
    """C=1536 / 12 heads (SLat flow) sparse layers on 2 x 4000 tokens, and the SS flow's dense C=1024 / 16 heads
    layer on 2 x 16³ tokens, in bf16: ``auto`` (kernel) and ``torch`` agree to bf16 rounding, and both stay within
    1e-2 of an fp32 copy of the layer (same bf16-representable weights)."""
    dev = torch.device("cuda")
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(3)
    if kind == "dense_self":
        C, heads, R = 1024, 16, 16
        layer = MultiHeadAttention(C, heads, use_rope=True, qk_rms_norm=True)
        grid = torch.stack(torch.meshgrid(*(torch.arange(R),) * 3, indexing="ij"), -1).reshape(-1, 3)
        phases = rope_phases(grid, C // heads).to(dev)
        x = torch.randn(2, R ** 3, C, generator=g).to(dev)

        def run(m, dt):
            return m(x.to(dt), phases=phases)
    else:
        C, heads = 1536, 12
        layer = (SparseMultiHeadAttention(C, heads, use_rope=True, qk_rms_norm=True) if kind == "sparse_self" else
                 SparseMultiHeadAttention(C, heads, ctx_channels=1024, type="cross", qk_rms_norm=True))
        coords = random_sparse_coords([4000, 4000], res=32, seed=4).to(dev)
        feats = torch.randn(8000, C, generator=g).to(dev)
        ctx = torch.randn(2, 1374, 1024, generator=g).to(dev)

        def run(m, dt):
            return m(SparseTensor(feats.to(dt), coords), ctx.to(dt) if m._type == "cross" else None).feats
    layer = layer.to(dev)
    linears = [m for m in layer.modules() if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        for m in layer.modules():
            if isinstance(m, MultiHeadRMSNorm):
                m.gamma.uniform_(0.5, 1.5)
        for m in linears:
            m.to(torch.bfloat16).float()
        out32 = run(layer, torch.float32)
        for m in linears:  # gammas stay float32, as convert_to leaves them
            m.to(torch.bfloat16)
        calls, res = [], {}
        real = fq.rms_norm_rope
        monkeypatch.setattr(fq, "rms_norm_rope", lambda *a, **k: calls.append(1) or real(*a, **k))
        for mode in ("torch", "auto"):
            monkeypatch.setenv(fq.FUSED_KERNELS_ENV, mode)
            res[mode] = run(layer, torch.bfloat16)
    assert len(calls) == (2 if kind == "sparse_cross" else 1)  # auto only: q+k in one launch, or cross q and k
    assert res["auto"].dtype == res["torch"].dtype == torch.bfloat16
    assert _rel(res["auto"], res["torch"]) < 4e-3
    assert _rel(res["auto"], out32) < 1e-2 and _rel(res["torch"], out32) < 1e-2


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device (run on the GPU machine)")
def test_gpu_equal_length_varlen_bit_identical(monkeypatch):
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(2 * 3000, 12, 128, generator=g).to("cuda", torch.bfloat16) for _ in range(3))
    meta = VarLenMeta.from_lengths([3000, 3000], "cuda")
    ref = _padded_varlen(q, k, v, meta, meta, "sdpa")
    pads = _count_pads(monkeypatch)
    assert torch.equal(varlen_attention(q, k, v, meta, meta, backend="sdpa"), ref) and pads == []


@needs_gpu_kernel
def test_gpu_gradients_take_the_torch_path(monkeypatch):
    calls = []
    real = fq.rms_norm_rope
    monkeypatch.setattr(fq, "rms_norm_rope", lambda *a, **k: calls.append(1) or real(*a, **k))
    mods = {k: m.cuda() for k, m in _layers(torch.bfloat16).items()}
    out = _run_layers(mods, torch.bfloat16, "cuda")
    sum(o.float().square().sum() for o in out.values()).backward()
    assert calls == []
    assert all(m.q_rms_norm.gamma.grad is not None for m in mods.values())
    with torch.no_grad():
        _run_layers(mods, torch.bfloat16, "cuda")
    assert len(calls) == 6
