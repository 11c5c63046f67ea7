"""The feed-forward net's fused bias + GELU epilogue (CUDA half-precision inference) against the plain ops."""
import pytest
import torch
import torch.nn.functional as F

from pixal3d.modules.transformer.blocks import FeedForwardNet, _gelu_epilogue_ok

CUDA = torch.cuda.is_available()


def test_epilogue_is_not_used_off_cuda_half_inference(monkeypatch):
    ffn = FeedForwardNet(16, 2.0)
    x = torch.randn(3, 5, 16)
    assert not _gelu_epilogue_ok(x, ffn.mlp[0])                     # CPU
    torch.testing.assert_close(ffn(x), ffn.mlp(x), rtol=0, atol=0)  # bit-identical plain path


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device (run on the GPU machine)")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_epilogue_matches_float64_tanh_gelu(dtype, monkeypatch):
    torch.manual_seed(0)
    ffn = FeedForwardNet(256, 4.0).cuda()
    x = torch.randn(2, 1000, 256, device="cuda")
    with torch.no_grad():
        ref = ffn.double()(x.double())                             # exact maths, tanh approximation as released
        h = ffn.to(dtype)
        xh = x.to(dtype)
        assert _gelu_epilogue_ok(xh, h.mlp[0])
        fused = h(xh)
        monkeypatch.setenv("PIXAL3D_FUSED_KERNELS", "torch")
        assert not _gelu_epilogue_ok(xh, h.mlp[0])
        plain = h(xh)
    assert fused.shape == plain.shape == x.shape and fused.dtype == dtype

    def rel(a):
        return ((a.double() - ref).norm() / ref.norm()).item()
    # both round 16-bit operands; the fused one rounds the hidden layer once instead of twice
    tol = 1e-2 if dtype == torch.bfloat16 else 2e-3
    assert rel(fused) < tol and rel(plain) < tol
    assert rel(fused) < 1.5 * rel(plain)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device (run on the GPU machine)")
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 2e-5)])
def test_gpu_addmm_activation_is_the_tanh_approximation(dtype, tol, no_tf32):
    """cuBLASLt's GELU epilogue (or torch's CUDA fallback) must be tanh-GELU, the released models' activation: the
    two GELUs differ by more than 1e-4 here, far above the tolerance."""
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(64, 32, generator=g, dtype=torch.float64) * 2).to("cuda", dtype)
    w = (torch.randn(32, 48, generator=g, dtype=torch.float64) * 0.5).to("cuda", dtype)
    b = torch.randn(48, generator=g, dtype=torch.float64).to("cuda", dtype)
    pre = torch.addmm(b.double(), x.double(), w.double())
    got = torch._addmm_activation(b, x, w, use_gelu=True).double()
    tanh, erf = F.gelu(pre, approximate="tanh"), F.gelu(pre)
    assert (tanh - erf).abs().max() > 1e-4
    torch.testing.assert_close(got, tanh, rtol=tol, atol=tol)
