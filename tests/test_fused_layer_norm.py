"""Fused layer norm + SiLU of the SC-VAE blocks (``pixal3d/modules/fused_layer_norm.py``).

* CPU: the torch path is op for op what the blocks computed before (``LayerNorm32`` then ``F.silu``), and the
  dispatch rules (gradients, ``PIXAL3D_FUSED_KERNELS=torch``, CPU -> torch path).
* ``test_kernel_*`` run the Triton kernel against a float64 closed form: on CUDA directly, and on CPU under Triton's
  interpreter in a subprocess started by ``test_interpreter_suite``.
* ``test_gpu_*`` need CUDA: a small fp16 SC-VAE decoder, fused against the torch path.
"""
import os

import pytest
import torch
import torch.nn.functional as F

from pixal3d.modules import fused_layer_norm as fln
from pixal3d.modules.norm import LayerNorm32
from tests.conftest import ONE_ROUNDING_ATOL as ATOL
from tests.conftest import interpreter_ulps as _ulps
from tests.conftest import needs_triton_kernel as needs_kernel
from tests.conftest import one_rounding_rtol, run_interpreter_suite, triton_kernel_device

INNER = os.environ.get("PIXAL3D_TRITON_INTERP_INNER_LN") == "1"
HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not (HAS_CUDA and fln.HAS_TRITON), reason="needs a CUDA device and triton")
RTOL = one_rounding_rtol()


def _inputs(N, C, dtype, affine, device="cpu", seed=0, strided=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, C + 5, generator=g) * 2 + 3  # offset mean: exercises the centred variance
    x = x[:, :C] if strided else x[:, :C].contiguous()
    w = 1 + 0.3 * torch.randn(C, generator=g) if affine else None
    b = 0.3 * torch.randn(C, generator=g) if affine else None
    x = x.to(dtype).to(device)
    return x, (w.to(device) if affine else None), (b.to(device) if affine else None)


def _closed(x, w, b, eps, silu):
    """float64 ``(x-μ)/√(σ²+ε)·w + b`` (then ``y·σ(y)``) of the already rounded inputs."""
    x = x.detach().double().cpu()
    mu = x.mean(-1, keepdim=True)
    y = (x - mu) / torch.sqrt(((x - mu) ** 2).mean(-1, keepdim=True) + eps)
    if w is not None:
        y = y * w.double().cpu()
    if b is not None:
        y = y + b.double().cpu()
    return y * torch.sigmoid(y) if silu else y


def _assert_close(out, ref, dtype, factor=1.0):
    out = out.detach().double().cpu()
    assert torch.isfinite(out).all(), "non-finite output (an unwritten row?)"
    err = (out - ref).abs()
    worst = (err / (factor * (RTOL[dtype] * ref.abs() + ATOL))).max().item()
    assert worst <= 1.0, f"error {worst:.3f}x the bound (max abs err {err.max().item():.3g})"


# ---------------------------------------------------------------- torch path and dispatch (CPU)

@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("affine,silu", [(True, True), (False, True), (True, False)])
def test_torch_path_is_the_old_op_sequence(dtype, affine, silu, monkeypatch):
    monkeypatch.delenv("PIXAL3D_FUSED_KERNELS", raising=False)
    x, w, b = _inputs(37, 24, dtype, affine)
    norm = LayerNorm32(24, elementwise_affine=affine, eps=1e-6)
    if affine:
        with torch.no_grad():
            norm.weight.copy_(w)
            norm.bias.copy_(b)
    want = norm(x)
    want = F.silu(want) if silu else want
    got = fln.layer_norm_act(x, norm.weight, norm.bias, 1e-6, silu=silu)
    assert got.dtype == dtype and torch.equal(got, want)
    # the decoders' head: upcast, then plain F.layer_norm (eps 1e-5)
    head = fln.layer_norm_act(x, eps=1e-5, out_dtype=torch.float32)
    assert head.dtype == torch.float32 and torch.equal(head, F.layer_norm(x.float(), (24,)))


def test_torch_path_matches_float64_closed_form():
    x, w, b = _inputs(50, 40, torch.float32, True)
    _assert_close(fln.layer_norm_act(x, w, b, 1e-6, silu=True), _closed(x, w, b, 1e-6, True), torch.float32)


def test_bad_parameter_shapes():
    x = torch.randn(4, 8)
    with pytest.raises(ValueError, match=r"weight must have shape \[8\]"):
        fln.layer_norm_act(x, torch.ones(7))
    with pytest.raises(ValueError, match=r"bias must have shape \[8\]"):
        fln.layer_norm_act(x, torch.ones(8), torch.ones(2, 4))


class _Launched(Exception):
    pass


@pytest.fixture
def launch_raises(monkeypatch):
    """Any Triton launch raises ``_Launched`` (CPU tensors count as kernel tensors in ``triton`` mode here)."""
    def boom(*a, **k):
        raise _Launched
    monkeypatch.setattr(fln, "_launch", boom)
    monkeypatch.setattr(fln, "_use_triton", lambda x, acts, params: not (torch.is_grad_enabled() and x.requires_grad))


def test_blocks_call_the_fused_norm_in_inference_only(launch_raises):
    from pixal3d import sparse as sp
    from pixal3d.models.sc_vaes.blocks import SparseConvNeXtBlock3d, SparseResBlockC2S3d
    coords = torch.tensor([[0, 1, 1, 1], [0, 1, 2, 1], [0, 2, 1, 1]], dtype=torch.int32)
    for block in (SparseConvNeXtBlock3d(16), SparseResBlockC2S3d(16, 8)):
        x = sp.SparseTensor(torch.randn(3, 16), coords)
        with torch.no_grad(), pytest.raises(_Launched):
            block(x)
        x = sp.SparseTensor(torch.randn(3, 16, requires_grad=True), coords)
        out = block(x)  # gradients needed: the torch path, no launch
        out = out[0] if isinstance(out, tuple) else out
        out.feats.sum().backward()
        assert x.feats.grad is not None


def test_dispatch_rules(monkeypatch):
    x = torch.randn(6, 16, dtype=torch.float16)
    monkeypatch.setenv("PIXAL3D_FUSED_KERNELS", "auto")
    assert not fln._use_triton(x, (), ())  # CPU tensors take the torch path under auto
    monkeypatch.setenv("PIXAL3D_FUSED_KERNELS", "torch")
    assert not fln._use_triton(x.cuda() if HAS_CUDA else x, (), ())


# ---------------------------------------------------------------- the kernel (CUDA, or interpreter subprocess)

@pytest.mark.skipif(not fln.HAS_TRITON or HAS_CUDA or fln.triton is None or INNER
                    or os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"),
                    reason="CPU machine with triton: runs the kernel tests under the interpreter")
def test_interpreter_suite():
    summary = run_interpreter_suite(__file__, "PIXAL3D_TRITON_INTERP_INNER_LN", timeout=600)
    assert "skipped" not in summary and "deselected" in summary, summary


DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@needs_kernel
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,C,affine,silu,strided", [(301, 64, True, True, False), (45, 16, False, True, True),
                                                     (9, 1024, True, False, False), (70, 96, False, False, True),
                                                     (130, 8, True, True, False)])
def test_kernel_matches_float64(N, C, affine, silu, strided, dtype, monkeypatch):
    monkeypatch.setenv("PIXAL3D_FUSED_KERNELS", "triton")
    calls = []
    launch = fln._launch
    monkeypatch.setattr(fln, "_launch", lambda *a, **k: calls.append(1) or launch(*a, **k))
    x, w, b = _inputs(N, C, dtype, affine, triton_kernel_device(), seed=C, strided=strided)
    x0 = x.clone()
    with torch.no_grad():
        out = fln.layer_norm_act(x, w, b, 1e-6, silu=silu)
    assert calls == [1] and out.dtype == dtype and out.shape == x.shape and torch.equal(x, x0)
    _assert_close(out, _closed(x, w, b, 1e-6, silu), dtype, _ulps(dtype))


@needs_kernel
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_kernel_upcast_head(dtype, monkeypatch):
    """16-bit torso -> fp32 output (the decoders' final norm): no rounding to the input dtype in between."""
    monkeypatch.setenv("PIXAL3D_FUSED_KERNELS", "triton")
    x, _, _ = _inputs(200, 64, dtype, False, triton_kernel_device(), seed=3)
    with torch.no_grad():
        out = fln.layer_norm_act(x, eps=1e-5, out_dtype=torch.float32)
    assert out.dtype == torch.float32
    _assert_close(out, _closed(x, None, None, 1e-5, False), torch.float32)


@needs_kernel
@pytest.mark.gpu
def test_kernel_empty_and_3d(monkeypatch):
    monkeypatch.setenv("PIXAL3D_FUSED_KERNELS", "triton")
    dev = triton_kernel_device()
    with torch.no_grad():
        assert fln.layer_norm_act(torch.randn(0, 16, device=dev), silu=True).shape == (0, 16)
        x = torch.randn(3, 5, 32, device=dev)
        out = fln.layer_norm_act(x, silu=True)
    assert out.shape == (3, 5, 32)
    _assert_close(out.reshape(15, 32), _closed(x.reshape(15, 32), None, None, 1e-5, True), torch.float32)


# ---------------------------------------------------------------- CUDA: a decoder end to end

@needs_cuda
@pytest.mark.gpu
def test_gpu_fp16_decoder_fused_matches_torch_path(monkeypatch):
    """A guided fp16 decoder (fixed random subdivisions: predicted ones could flip with rounding), fused vs torch."""
    from pixal3d.models import get_model_class
    from pixal3d.sparse import SparseTensor
    from pixal3d.sparse.spatial import children_from_subdivision
    torch.manual_seed(0)
    dec = get_model_class("SparseUnetVaeDecoder")(
        out_channels=6, model_channels=[128, 64, 32], latent_channels=8, num_blocks=[2, 2, 1],
        block_type=["SparseConvNeXtBlock3d"] * 3, up_block_type=["SparseResBlockC2S3d"] * 2,
        block_args=[{}] * 3, use_fp16=True, pred_subdiv=False).cuda().eval()
    with torch.no_grad():
        for p in dec.parameters():  # zero-initialised layers would hide the residual branches
            if not p.any():
                p.normal_(0, 0.05)
    xyz = torch.stack(torch.meshgrid(*[torch.arange(6)] * 3, indexing="ij"), -1).reshape(-1, 3)
    coords = torch.cat([torch.zeros(len(xyz), 1, dtype=torch.long), xyz], 1).int().cuda()
    z = SparseTensor(torch.randn(len(coords), 8, device="cuda"), coords)
    guides, level = [], coords
    for keep in (0.5, 0.3):
        mask = torch.rand(len(level), 8, device="cuda") < keep
        guides.append(SparseTensor(mask, level))
        level = children_from_subdivision(guides[-1], mask, 2)[0]
    outs = {}
    for mode in ("torch", "auto"):
        monkeypatch.setenv("PIXAL3D_FUSED_KERNELS", mode)
        with torch.no_grad():
            outs[mode] = dec(z, guide_subs=guides)
    assert torch.equal(outs["auto"].coords, outs["torch"].coords) and torch.equal(outs["auto"].coords, level)
    a, t = outs["auto"].feats.double(), outs["torch"].feats.double()
    assert ((a - t).norm() / t.norm()).item() < 5e-3
