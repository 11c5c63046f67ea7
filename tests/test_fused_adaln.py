"""Fused adaLN kernels (``pixal3d/modules/fused_adaln.py``) and their use in the modulated blocks.

* CPU tests: the torch path against a float64 closed form, bit-identity of the blocks with the unfused op sequence
  (whatever ``PIXAL3D_FUSED_KERNELS`` says), and the dispatch rules (gradients, autocast, dtypes -> torch path).
* ``test_kernel_*`` run the Triton kernels: on CUDA directly, and on CPU under Triton's interpreter in a subprocess
  started by ``test_interpreter_suite`` (``TRITON_INTERPRET=1`` must be set before triton is imported).
* ``test_gpu_*`` need CUDA: a full-width kernel check and full-width flow-DiT blocks, fused vs torch vs fp32.
"""
import copy
import os

import pytest
import torch

from pixal3d.models import ElasticSLatFlowModel, SLatFlowModel, SparseStructureFlowModel
from pixal3d.modules import fused_adaln as fa
from pixal3d.modules.norm import LayerNorm32
from pixal3d.modules.transformer import ModulatedSparseTransformerCrossBlock, ModulatedTransformerCrossBlock
from pixal3d.sparse import SparseTensor
from tests.conftest import ONE_ROUNDING_ATOL as ATOL
from tests.conftest import interpreter_ulps as _ulps
from tests.conftest import needs_triton_kernel as needs_kernel
from tests.conftest import one_rounding_rtol, random_sparse_coords, run_interpreter_suite, triton_kernel_device

INNER = os.environ.get("PIXAL3D_TRITON_INTERP_INNER") == "1"
HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not (HAS_CUDA and fa.HAS_TRITON), reason="needs a CUDA device and triton")
RTOL = one_rounding_rtol()


# ---------------------------------------------------------------- cases and the float64 closed form

def _case(kind, C, dtype, device="cpu", seed=0):
    """Inputs of one call as a dict, plus ``samples`` (long [R], each row's sample) for the closed form.

    kinds: ``sparse`` (B=3, uneven, int64 index), ``sparse32`` (int32 index, x a strided column slice), ``dense``
    ([B=2, L=25, C]), ``single`` (B=1 vectors, no index), ``affine`` (LN weight/bias only, as norm2).
    Modulation vectors are chunks of a ``[B, 6C]`` tensor, as the blocks pass them (row stride 6C).
    """
    g = torch.Generator().manual_seed(seed)
    sizes = {"sparse": [7, 30, 13], "sparse32": [20, 1, 29], "dense": [25, 25]}.get(kind, [50])
    B, N = len(sizes), sum(sizes)
    samples = torch.repeat_interleave(torch.arange(B), torch.tensor(sizes))
    x = torch.randn(N, C + 8, generator=g) * 2 + 3  # offset mean: exercises the centred variance
    x = x[:, :C] if kind == "sparse32" else x[:, :C].contiguous()
    mod = torch.randn(B, 6 * C, generator=g) * 0.5
    case = dict(x=x, y=torch.randn(N, C, generator=g), shift=mod[:, :C], scale=mod[:, C:2 * C],
                gate=mod[:, 2 * C:3 * C], batch_index=None, weight=None, bias=None)
    if kind in ("sparse", "sparse32"):
        case["batch_index"] = samples.to(torch.int64 if kind == "sparse" else torch.int32)
    elif kind == "dense":
        case["x"], case["y"] = x.reshape(B, sizes[0], C), case["y"].reshape(B, sizes[0], C)
    elif kind == "affine":
        case.update(shift=None, scale=None, weight=1 + 0.3 * torch.randn(C, generator=g),
                    bias=0.3 * torch.randn(C, generator=g))
    out = {}
    for k, v in case.items():
        if v is not None and v.is_floating_point():
            v = v.to(dtype)
        out[k] = v.to(device) if v is not None else None
    out["samples"] = samples
    return out


def _rows64(t):
    return t.detach().reshape(-1, t.shape[-1]).double().cpu()


def _closed_modln(case, eps=1e-6):
    """float64 ``(x-μ)/√(σ²+ε)·w + b``, then ``·(1 + scale[s]) + shift[s]``, of the (already rounded) inputs."""
    x, s = _rows64(case["x"]), case["samples"]
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    y = (x - mu) / torch.sqrt(var + eps)
    if case["weight"] is not None:
        y = y * case["weight"].double().cpu() + case["bias"].double().cpu()
    if case["scale"] is not None:
        y = y * (1 + case["scale"].double().cpu()[s]) + case["shift"].double().cpu()[s]
    return y


def _closed_gated(case):
    return _rows64(case["x"]) + case["gate"].double().cpu()[case["samples"]] * _rows64(case["y"])


def _assert_close(out, ref, dtype, factor=1.0):
    out = _rows64(out)
    assert torch.isfinite(out).all(), "non-finite output (an unwritten row?)"
    err = (out - ref).abs()
    bound = factor * (RTOL[dtype] * ref.abs() + ATOL)
    worst = (err / bound).max().item()
    assert worst <= 1.0, f"error {worst:.3f}x the bound (max abs err {err.max().item():.3g})"


def _rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


def _modln_args(c):
    return (c["x"], c["shift"], c["scale"], c["batch_index"], c["weight"], c["bias"])


KINDS = [("sparse", 96), ("sparse32", 24), ("dense", 64), ("single", 96), ("affine", 64)]


# ---------------------------------------------------------------- torch path (CPU)

@pytest.mark.parametrize("kind,C", KINDS)
def test_torch_path_matches_float64_closed_form(kind, C):
    c = _case(kind, C, torch.float64)
    # LayerNorm32 normalises in float32 even for float64 input (as it always did): fp32-level agreement there
    torch.testing.assert_close(_rows64(fa.modulated_layer_norm_torch(*_modln_args(c))), _closed_modln(c),
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(_rows64(fa.gated_residual_torch(c["x"], c["y"], c["gate"], c["batch_index"])),
                               _closed_gated(c), rtol=1e-12, atol=1e-12)
    # in bf16 the torch path rounds after every op (so cancellation can cost more than an ulp of the result)
    c = _case(kind, C, torch.bfloat16)
    assert _rel(_rows64(fa.modulated_layer_norm_torch(*_modln_args(c))), _closed_modln(c)) < 5e-3
    assert _rel(_rows64(fa.gated_residual_torch(c["x"], c["y"], c["gate"], c["batch_index"])), _closed_gated(c)) < 5e-3


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("autocast", [False, True])
def test_torch_path_is_the_unfused_op_sequence(dtype, autocast):
    """Bit-identical to ``LayerNorm32(x) * (1 + scale[idx]) + shift[idx]`` and ``x + gate[idx] * y``."""
    c = _case("sparse", 64, dtype)
    idx = c["batch_index"]
    ln = LayerNorm32(64, elementwise_affine=True, eps=1e-6)
    with torch.no_grad():
        ln.weight.normal_()
        ln.bias.normal_()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        x, sh, sc = c["x"], c["shift"], c["scale"]
        plain = LayerNorm32(64, elementwise_affine=False, eps=1e-6)
        assert torch.equal(fa.modulated_layer_norm(x, sh, sc, idx), plain(x) * (1 + sc[idx]) + sh[idx])
        assert torch.equal(fa.modulated_layer_norm(x, weight=ln.weight, bias=ln.bias), ln(x))
        assert torch.equal(fa.gated_residual(x, c["y"], c["gate"], idx), x + c["gate"][idx] * c["y"])
        d = _case("dense", 64, dtype)
        assert torch.equal(fa.modulated_layer_norm(d["x"], d["shift"], d["scale"]),
                           plain(d["x"]) * (1 + d["scale"].unsqueeze(1)) + d["shift"].unsqueeze(1))


def test_shape_errors():
    c = _case("sparse", 24, torch.float32)
    with pytest.raises(ValueError, match="batch_index"):
        fa.modulated_layer_norm(c["x"], c["shift"], c["scale"])
    with pytest.raises(ValueError, match=r"\[B, 24\]"):
        fa.modulated_layer_norm(c["x"], c["shift"][:, :8], c["scale"][:, :8], c["batch_index"])
    with pytest.raises(ValueError, match="same shape"):
        fa.gated_residual(c["x"], c["y"][:3], c["gate"], c["batch_index"])
    with pytest.raises(ValueError, match="batch_index must be"):
        fa.gated_residual(c["x"], c["y"], c["gate"], c["batch_index"][:5])


def test_mode_validation(monkeypatch):
    monkeypatch.setenv("PIXAL3D_FUSED_KERNELS", "cuda")
    with pytest.raises(ValueError, match="auto, triton, torch"):
        fa.fused_mode()
    monkeypatch.setenv("PIXAL3D_FUSED_KERNELS", " Torch ")
    assert fa.fused_mode() == "torch"
    monkeypatch.delenv("PIXAL3D_FUSED_KERNELS")
    assert fa.fused_mode() == "auto"


# ---------------------------------------------------------------- dispatch rules (CPU, launchers replaced)

class _Launched(Exception):
    pass


@pytest.fixture
def cpu_counts_as_triton(monkeypatch):
    """PIXAL3D_FUSED_KERNELS=triton with CPU tensors treated as runnable (as under the interpreter) and launchers
    that raise: any call that would take the Triton path fails loudly."""
    def boom(*a, **k):
        raise _Launched()
    monkeypatch.setenv("PIXAL3D_FUSED_KERNELS", "triton")
    monkeypatch.setattr(fa, "_WARNED", set())
    monkeypatch.setattr(fa, "HAS_TRITON", True)
    monkeypatch.setattr(fa, "interpreting", lambda: True)
    monkeypatch.setattr(fa, "_modln_triton", boom)
    monkeypatch.setattr(fa, "_gated_residual_triton", boom)


@pytest.mark.filterwarnings("ignore:PIXAL3D_FUSED_KERNELS=triton")
def test_dispatch_rules(cpu_counts_as_triton, monkeypatch):
    c = _case("sparse", 24, torch.float32)
    x, idx = c["x"], c["batch_index"]
    # no gradient needed -> the kernel would run (here: raises)
    with pytest.raises(_Launched):
        fa.modulated_layer_norm(*_modln_args(c))
    with pytest.raises(_Launched):
        fa.gated_residual(x, c["y"], c["gate"], idx)
    with torch.enable_grad():
        with pytest.raises(_Launched):  # grad mode alone is not enough: nothing requires grad
            fa.gated_residual(x, c["y"], c["gate"], idx)
        xg, sg, gg = (c[k].clone().requires_grad_() for k in ("x", "shift", "gate"))
        fa.modulated_layer_norm(xg, c["shift"], c["scale"], idx).sum().backward()
        fa.modulated_layer_norm(x, sg, c["scale"], idx).sum().backward()
        fa.modulated_layer_norm(x, weight=torch.ones(24, requires_grad=True), bias=torch.zeros(24))
        fa.gated_residual(xg, c["y"], c["gate"], idx).sum().backward()
        fa.gated_residual(x, c["y"], gg, idx).sum().backward()
        assert xg.grad is not None and sg.grad is not None and gg.grad is not None
    with torch.no_grad(), pytest.warns(UserWarning, match="float64"):
        fa.modulated_layer_norm(x.double(), c["shift"].double(), c["scale"].double(), idx)
    with torch.no_grad(), pytest.warns(UserWarning, match="mixed dtypes"):
        fa.gated_residual(x, c["y"].bfloat16(), c["gate"], idx)  # the torch path promotes to fp32; keep that
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        fa.modulated_layer_norm(*_modln_args(c))
    monkeypatch.setenv("PIXAL3D_FUSED_KERNELS", "auto")  # auto: CUDA half tensors only
    fa.modulated_layer_norm(*_modln_args(_case("sparse", 24, torch.bfloat16)))
    monkeypatch.setenv("PIXAL3D_FUSED_KERNELS", "torch")
    fa.gated_residual(x, c["y"], c["gate"], idx)


def _tiny_models(dtype):
    kw = dict(model_channels=32, cond_channels=12, num_blocks=2, num_heads=2, mlp_ratio=2.0, pe_mode="rope",
              share_mod=True, qk_rms_norm=True, qk_rms_norm_cross=True, image_attn_mode="proj",
              proj_in_channels=6, dtype=dtype)
    g = torch.Generator().manual_seed(0)
    models = [SLatFlowModel(resolution=8, in_channels=5, out_channels=4, **kw),
              SparseStructureFlowModel(resolution=4, in_channels=3, out_channels=3, **kw)]
    with torch.no_grad():
        for m in models:
            for p in m.parameters():
                p.copy_((torch.randn(p.shape, generator=g) * 0.3).to(p.dtype))
    coords = random_sparse_coords([9, 14], res=8)
    sparse_in = (SparseTensor(torch.randn(23, 5, generator=g), coords), torch.tensor([100.0, 700.0]),
                 {"global": torch.randn(2, 4, 12, generator=g), "proj": torch.randn(23, 6, generator=g)})
    dense_in = (torch.randn(2, 3, 4, 4, 4, generator=g), torch.tensor([100.0, 700.0]),
                {"global": torch.randn(2, 4, 12, generator=g), "proj": torch.randn(2, 64, 6, generator=g)})
    return [(m.eval(), inp) for m, inp in zip(models, (sparse_in, dense_in))]


def _out(m, inp):
    out = m(*inp)
    return out.feats if isinstance(out, SparseTensor) else out


def _unfused_sparse(self, x, mod, context):
    """The blocks' pre-fusion forward, verbatim."""
    sm, cm, gm, sp, cp, gp = self._chunks(mod)
    tok = lambda v: v if v.shape[0] == 1 else v[x.batch_boardcast_map.long()]  # noqa: E731
    f = x.feats
    h = self.norm1(f) * (1 + tok(cm)) + tok(sm)
    f = f + tok(gm) * self.self_attn(x.replace(h)).feats
    f = f + self.cross_attn(x.replace(self.norm2(f)), context).feats
    h = self.norm3(f) * (1 + tok(cp)) + tok(sp)
    return x.replace(f + tok(gp) * self.mlp(h))


def _unfused_dense(self, x, mod, context, phases=None):
    sm, cm, gm, sp, cp, gp = self._chunks(mod)
    h = self.norm1(x) * (1 + cm.unsqueeze(1)) + sm.unsqueeze(1)
    x = x + gm.unsqueeze(1) * self.self_attn(h, phases=phases)
    x = x + self.cross_attn(self.norm2(x), context)
    h = self.norm3(x) * (1 + cp.unsqueeze(1)) + sp.unsqueeze(1)
    return x + gp.unsqueeze(1) * self.mlp(h)


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_cpu_blocks_bit_identical_to_unfused(dtype, monkeypatch):
    """On CPU the blocks compute exactly what they computed before fusion, under ``auto`` and ``torch``."""
    for m, inp in _tiny_models(dtype):
        with torch.no_grad():
            got = {}
            for mode in ("auto", "torch"):
                monkeypatch.setenv("PIXAL3D_FUSED_KERNELS", mode)
                got[mode] = _out(m, inp)
            with monkeypatch.context() as mp:
                mp.setattr(ModulatedSparseTransformerCrossBlock, "_forward", _unfused_sparse)
                mp.setattr(ModulatedTransformerCrossBlock, "_forward", _unfused_dense)
                ref = _out(m, inp)
        assert torch.isfinite(ref).all() and ref.abs().max() > 0
        assert torch.equal(got["auto"], ref) and torch.equal(got["torch"], ref)


@pytest.mark.filterwarnings("ignore:PIXAL3D_FUSED_KERNELS=triton")
def test_blocks_take_the_fused_path_only_without_gradients(cpu_counts_as_triton):
    for m, inp in _tiny_models("float32"):
        with torch.no_grad(), pytest.raises(_Launched):  # inference: the blocks do call the fused functions
            _out(m, inp)
        _out(m, inp).square().mean().backward()  # training: parameters require grad -> torch path, gradients flow
        assert all(p.grad is not None for p in m.blocks.parameters())
        m.blocks[0].use_checkpoint = True
        _out(m, inp).sum().backward()


# ---------------------------------------------------------------- the kernels (CUDA, or interpreter subprocess)

@pytest.mark.skipif(not fa.HAS_TRITON or HAS_CUDA or fa.interpreting() or INNER,
                    reason="CPU machine with triton: runs the kernel tests under the interpreter")
def test_interpreter_suite():
    summary = run_interpreter_suite(__file__, "PIXAL3D_TRITON_INTERP_INNER", timeout=600)
    assert "skipped" not in summary and "deselected" in summary, summary


@pytest.fixture
def spy_launch(monkeypatch):
    """Forces the Triton path (``triton`` mode also takes fp32 and interpreter tensors) and counts launches."""
    monkeypatch.setenv("PIXAL3D_FUSED_KERNELS", "triton")
    calls = []
    for name in ("_modln_triton", "_gated_residual_triton"):
        fn = getattr(fa, name)
        monkeypatch.setattr(fa, name, lambda *a, _fn=fn, **k: calls.append(1) or _fn(*a, **k))
    return calls


DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@needs_kernel
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind,C", KINDS)
def test_kernel_modulated_layer_norm_matches_float64(kind, C, dtype, spy_launch):
    c = _case(kind, C, dtype, triton_kernel_device(), seed=C)
    with torch.no_grad():
        out = fa.modulated_layer_norm(*_modln_args(c))
        poisoned = torch.full(c["x"].shape, float("nan"), dtype=dtype, device=c["x"].device)
        fa._modln_triton(*_modln_args(c), 1e-6, out=poisoned)  # every element must be written
    assert spy_launch == [1, 1] and out.dtype == dtype and out.shape == c["x"].shape
    ref = _closed_modln(c)
    _assert_close(out, ref, dtype, _ulps(dtype))
    _assert_close(poisoned, ref, dtype, _ulps(dtype))


@needs_kernel
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind,C", KINDS)
def test_kernel_gated_residual_matches_float64(kind, C, dtype, spy_launch):
    c = _case(kind, C, dtype, triton_kernel_device(), seed=C + 1)
    x0 = c["x"].clone()
    with torch.no_grad():
        out = fa.gated_residual(c["x"], c["y"], c["gate"], c["batch_index"])
        poisoned = torch.full(c["x"].shape, float("nan"), dtype=dtype, device=c["x"].device)
        fa._gated_residual_triton(c["x"], c["y"], c["gate"], c["batch_index"], out=poisoned)
    assert spy_launch == [1, 1] and out.dtype == dtype and torch.equal(c["x"], x0)  # inputs untouched
    _assert_close(out, _closed_gated(c), dtype, _ulps(dtype))
    _assert_close(poisoned, _closed_gated(c), dtype, _ulps(dtype))


@needs_kernel
@pytest.mark.gpu
def test_kernel_empty_input(spy_launch):
    dev = triton_kernel_device()
    x, v = torch.randn(0, 16, device=dev), torch.randn(2, 16, device=dev)
    idx = torch.zeros(0, dtype=torch.long, device=dev)
    with torch.no_grad():
        assert fa.modulated_layer_norm(x, v, v, idx).shape == (0, 16)
        assert fa.gated_residual(x, x, v, idx).shape == (0, 16)
        assert fa.modulated_layer_norm(torch.randn(2, 0, 16, device=dev), v, v).shape == (2, 0, 16)


# ---------------------------------------------------------------- CUDA only: full width



@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_full_width_kernels_match_float64(dtype, monkeypatch):
    """C = 1536, N = 10,000 rows of 2 uneven samples, through the ``auto`` dispatch."""
    monkeypatch.setenv("PIXAL3D_FUSED_KERNELS", "auto")
    g = torch.Generator(device="cuda").manual_seed(0)
    N, C = 10_000, 1536
    idx = (torch.arange(N, device="cuda") >= 3_700).long()
    x = (torch.randn(N, C, device="cuda", generator=g) * 2 + 3).to(dtype)
    y = torch.randn(N, C, device="cuda", generator=g).to(dtype)
    mod = (torch.randn(2, 6 * C, device="cuda", generator=g) * 0.5).to(dtype)
    shift, scale, gate = mod[:, :C], mod[:, C:2 * C], mod[:, 2 * C:3 * C]
    c = dict(x=x, shift=shift, scale=scale, weight=None, bias=None, samples=idx.cpu(), gate=gate, y=y)
    with torch.no_grad():
        _assert_close(fa.modulated_layer_norm(x, shift, scale, idx), _closed_modln(c), dtype)
        _assert_close(fa.gated_residual(x, y, gate, idx), _closed_gated(c), dtype)
        w, b = torch.randn(C, device="cuda"), torch.randn(C, device="cuda")  # fp32 parameters, as norm2's
        _assert_close(fa.modulated_layer_norm(x, weight=w, bias=b), _closed_modln(dict(c, weight=w, bias=b,
                                                                                       shift=None, scale=None)), dtype)


def _randomize_scaled(model, seed):
    """Random weights everywhere with fan-in scaling (the released init zeroes gates and the output layer)."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, device="cuda", generator=g)
            if p.dim() >= 2:
                r = r / p.shape[-1] ** 0.5
            elif name.endswith(("weight", "gamma")):
                r = 1 + 0.1 * r
            else:
                r = 0.1 * r
            p.copy_(r.to(p.dtype))
    return model.eval()


def _fused_vs_torch_vs_fp32(model, inputs, monkeypatch):
    ref = copy.deepcopy(model)
    ref.convert_to("float32")
    calls = []
    fn = fa._modln_triton
    monkeypatch.setattr(fa, "_modln_triton", lambda *a, **k: calls.append(1) or fn(*a, **k))
    with torch.no_grad():
        monkeypatch.setenv("PIXAL3D_FUSED_KERNELS", "auto")
        fp32 = _out(ref, inputs)
        assert not calls  # fp32 activations: torch path
        fused = _out(model, inputs)
        assert len(calls) == 3 * len(model.blocks)
        monkeypatch.setenv("PIXAL3D_FUSED_KERNELS", "torch")
        unfused = _out(model, inputs)
        assert len(calls) == 3 * len(model.blocks)
    assert torch.isfinite(fused).all() and fp32.abs().max() > 0
    e_fused, e_torch = _rel(fused, fp32), _rel(unfused, fp32)
    assert e_fused < 1e-2 and e_torch < 1e-2, (e_fused, e_torch)
    assert e_fused < 1.25 * e_torch + 1e-3, (e_fused, e_torch)  # fusion must not cost accuracy
    assert _rel(fused, unfused) < 1e-2, _rel(fused, unfused)


FULL = dict(model_channels=1536, cond_channels=1024, num_blocks=2, num_heads=12, mlp_ratio=5.3334, pe_mode="rope",
            dtype="bfloat16", share_mod=True, qk_rms_norm=True, qk_rms_norm_cross=True, image_attn_mode="proj")


@needs_cuda
@pytest.mark.gpu
def test_gpu_sparse_slat_blocks_fused_vs_torch_vs_fp32(no_tf32, monkeypatch):
    """Two blocks of the 1.3B SLat flow DiT (slat_flow_img2shape_dit_1_3B_1024_bf16), 2 uneven samples."""
    m = _randomize_scaled(ElasticSLatFlowModel(resolution=64, in_channels=32, out_channels=32, proj_in_channels=2048,
                                               **FULL).cuda(), 1)
    coords = random_sparse_coords([6000, 4000], res=64, seed=1).cuda()
    g = torch.Generator(device="cuda").manual_seed(2)
    x = SparseTensor(torch.randn(10_000, 32, device="cuda", generator=g), coords)
    cond = {"global": torch.randn(2, 1029, 1024, device="cuda", generator=g),
            "proj": torch.randn(10_000, 2048, device="cuda", generator=g)}
    _fused_vs_torch_vs_fp32(m, (x, torch.tensor([300.0, 800.0], device="cuda"), cond), monkeypatch)


@needs_cuda
@pytest.mark.gpu
def test_gpu_dense_ss_blocks_fused_vs_torch_vs_fp32(no_tf32, monkeypatch):
    """Two blocks of the 1.3B sparse-structure flow DiT (ss_flow_img_dit_1_3B_64_bf16): [2, 4096, 1536] tokens."""
    m = _randomize_scaled(SparseStructureFlowModel(resolution=16, in_channels=8, out_channels=8, **FULL).cuda(), 3)
    g = torch.Generator(device="cuda").manual_seed(4)
    x = torch.randn(2, 8, 16, 16, 16, device="cuda", generator=g)
    cond = {"global": torch.randn(2, 1029, 1024, device="cuda", generator=g),
            "proj": torch.randn(2, 4096, 1024, device="cuda", generator=g)}
    _fused_vs_torch_vs_fp32(m, (x, torch.tensor([300.0, 800.0], device="cuda"), cond), monkeypatch)
