"""Flow Euler samplers (TRELLIS2_SPEC §4.1): closed-form ODEs, hand-computed CFG/rescale, interval logic, fixtures."""

import numpy as np
import pytest
import torch

from conftest import load_fixture
from pixal3d.pipelines.samplers import (FlowEulerCfgSampler, FlowEulerGuidanceIntervalSampler, FlowEulerSampler,
                                        get_sampler, make_negative_cond, timestep_schedule)

SIGMA = 1e-5


class _Sparse:
    """Minimal stand-in with the sparse-tensor interface the samplers rely on (.feats/.coords/.replace)."""

    def __init__(self, feats, coords):
        self.feats, self.coords = feats, coords

    def replace(self, feats):
        return _Sparse(feats, self.coords)


def test_timestep_schedule_values():
    assert timestep_schedule(4, 1.0) == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0], abs=1e-15)
    r = 5.0
    expected = [r * t / (1 + (r - 1) * t) for t in [1, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6, 0]]
    got = timestep_schedule(6, r)
    assert got == pytest.approx(expected, abs=1e-15)
    assert got[1] == pytest.approx(25 / 26, abs=1e-15)  # 5(5/6) / (1 + 4(5/6))
    with pytest.raises(ValueError):
        timestep_schedule(0)
    with pytest.raises(ValueError):
        timestep_schedule(3, rescale_t=0.0)


@pytest.mark.parametrize("rescale_t", [1.0, 3.0])
def test_straight_flow_is_integrated_exactly(rescale_t):
    # A single data point mu: the true velocity along x_t = (1-t) mu + (s + (1-s) t) eps is the constant
    # (1-s) eps - mu, so every Euler step lands exactly on the path (closed form below).
    torch.manual_seed(0)
    mu = torch.randn(2, 3, 4, dtype=torch.float64)
    eps = torch.randn(2, 3, 4, dtype=torch.float64)
    seen_t = []

    def model(x, t, cond):
        seen_t.append(t.clone())
        tt = t[0].item() / 1000.0
        e = (x - (1 - tt) * mu) / (SIGMA + (1 - SIGMA) * tt)
        return (1 - SIGMA) * e - mu

    out = FlowEulerSampler(SIGMA).sample(model, eps.clone(), steps=5, rescale_t=rescale_t, verbose=False)
    ts = timestep_schedule(5, rescale_t)
    for i, t in enumerate(ts[1:]):
        torch.testing.assert_close(out.pred_x_t[i], (1 - t) * mu + (SIGMA + (1 - SIGMA) * t) * eps)
        torch.testing.assert_close(out.pred_x_0[i], mu)
    torch.testing.assert_close(out.samples, mu + SIGMA * eps)
    assert [s.dtype for s in seen_t] == [torch.float32] * 5 and all(s.shape == (2,) for s in seen_t)
    np.testing.assert_allclose([s[0].item() for s in seen_t], np.float32(np.array(ts[:-1]) * 1000), rtol=0)


def test_linear_field_matches_euler_product():
    # v = a x: each Euler step multiplies by (1 - a (t - t_prev)).
    a = 0.7
    x0 = torch.randn(3, 5, dtype=torch.float64)
    out = FlowEulerSampler().sample(lambda x, t, c: a * x, x0.clone(), steps=7, rescale_t=2.0, verbose=False)
    ts = timestep_schedule(7, 2.0)
    factor = np.prod([1 - a * (t - tp) for t, tp in zip(ts[:-1], ts[1:])])
    torch.testing.assert_close(out.samples, x0 * factor)
    assert len(out.pred_x_t) == 7 and len(out.pred_x_0) == 7


def _const_model(v_pos, v_neg):
    def model(x, t, cond):
        return v_pos.clone() if cond == "pos" else v_neg.clone()
    return model


def test_cfg_and_rescale_dense_hand_computed():
    torch.manual_seed(1)
    x = torch.randn(2, 3, 4, dtype=torch.float64)
    vp, vn = torch.randn_like(x), torch.randn_like(x)
    w, phi = 7.5, 0.7
    sampler = FlowEulerCfgSampler(SIGMA)
    out = sampler.sample(_const_model(vp, vn), x.clone(), cond="pos", neg_cond="neg", steps=1,
                         guidance_strength=w, guidance_rescale=phi, verbose=False)
    # hand computation at t = 1 with numpy (unbiased std over non-batch dims)
    X, VP, VN = x.numpy(), vp.numpy(), vn.numpy()
    t = 1.0
    v = w * VP + (1 - w) * VN
    x0p = (1 - SIGMA) * X - (SIGMA + (1 - SIGMA) * t) * VP
    x0c = (1 - SIGMA) * X - (SIGMA + (1 - SIGMA) * t) * v
    sp = x0p.reshape(2, -1).std(axis=1, ddof=1)[:, None, None]
    sc = x0c.reshape(2, -1).std(axis=1, ddof=1)[:, None, None]
    x0 = phi * x0c * sp / sc + (1 - phi) * x0c
    v = ((1 - SIGMA) * X - x0) / (SIGMA + (1 - SIGMA) * t)
    np.testing.assert_allclose(out.samples.numpy(), X - 1.0 * v, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(out.pred_x_0[0].numpy(), x0, rtol=1e-12, atol=1e-12)


def test_cfg_without_rescale_and_extreme_strengths():
    x = torch.randn(1, 6, dtype=torch.float64)
    vp, vn = torch.randn_like(x), torch.randn_like(x)
    s = FlowEulerCfgSampler(SIGMA)
    out = s.sample(_const_model(vp, vn), x.clone(), cond="pos", neg_cond="neg", steps=1, guidance_strength=3.0,
                   verbose=False)
    torch.testing.assert_close(out.samples, x - (3.0 * vp - 2.0 * vn))
    calls = []

    def counting(xx, t, cond):
        calls.append(cond)
        return vp.clone()
    s.sample(counting, x.clone(), cond="pos", neg_cond=None, steps=2, guidance_strength=1.0, verbose=False)
    assert calls == ["pos", "pos"]
    calls.clear()
    s.sample(counting, x.clone(), cond="pos", neg_cond="neg", steps=2, guidance_strength=0.0, verbose=False)
    assert calls == ["neg", "neg"]
    with pytest.raises(ValueError, match="neg_cond"):
        s.sample(counting, x.clone(), cond="pos", neg_cond=None, steps=1, guidance_strength=2.0, verbose=False)


def test_cfg_rescale_sparse_uses_per_sample_population_std():
    torch.manual_seed(2)
    coords = torch.tensor([[0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0], [1, 2, 2, 2]], dtype=torch.int32)
    x = _Sparse(torch.randn(5, 3, dtype=torch.float64), coords)
    vp, vn = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    w, phi = 7.5, 0.5
    seen = []

    def model(xx, t, cond):
        seen.append(t)
        return xx.replace(vp.clone() if cond == "pos" else vn.clone())
    out = FlowEulerCfgSampler(SIGMA).sample(model, x, cond="pos", neg_cond="neg", steps=1, guidance_strength=w,
                                            guidance_rescale=phi, verbose=False)
    assert seen[0].shape == (2,)  # batch size from coords[:, 0]
    X, VP, VN = x.feats.numpy(), vp.numpy(), vn.numpy()
    v = w * VP + (1 - w) * VN
    x0p = (1 - SIGMA) * X - VP
    x0c = (1 - SIGMA) * X - v
    b = coords[:, 0].numpy()
    ratio = np.empty((5, 1))
    for i in range(2):
        ratio[b == i] = x0p[b == i].std(ddof=0) / x0c[b == i].std(ddof=0)
    x0 = phi * x0c * ratio + (1 - phi) * x0c
    v = ((1 - SIGMA) * X - x0) / 1.0
    assert out.samples.coords is coords
    np.testing.assert_allclose(out.samples.feats.numpy(), X - v, rtol=1e-12, atol=1e-12)


def test_guidance_interval_switching_is_on_current_t_inclusive():
    calls = []

    def model(x, t, cond):
        calls.append((round(t[0].item() / 1000, 6), cond))
        return torch.zeros_like(x)
    s = FlowEulerGuidanceIntervalSampler(SIGMA)
    s.sample(model, torch.zeros(1, 2), cond="pos", neg_cond="neg", steps=4, rescale_t=1.0, guidance_strength=5.0,
             guidance_interval=(0.5, 0.75), verbose=False)
    assert calls == [(1.0, "pos"), (0.75, "pos"), (0.75, "neg"), (0.5, "pos"), (0.5, "neg"), (0.25, "pos")]
    with pytest.raises(ValueError):
        s.sample(model, torch.zeros(1, 2), cond="pos", neg_cond="neg", steps=2, guidance_interval=(0.9, 0.1),
                 verbose=False)


def test_dict_conditions_and_negative_cond():
    cond = {"global": torch.randn(1, 5, 4), "proj": _Sparse(torch.randn(3, 2), torch.zeros(3, 4, dtype=torch.int32))}
    neg = make_negative_cond(cond)
    assert torch.equal(neg["global"], torch.zeros(1, 5, 4))
    assert torch.equal(neg["proj"].feats, torch.zeros(3, 2)) and neg["proj"].coords is cond["proj"].coords
    received = []

    def model(x, t, c):
        received.append(c)
        return torch.zeros_like(x)
    FlowEulerGuidanceIntervalSampler().sample(model, torch.zeros(1, 3), cond=cond, neg_cond=neg, steps=1,
                                              guidance_strength=2.0, verbose=False)
    assert received[0] is cond and received[1] is neg
    with pytest.raises(TypeError):
        make_negative_cond("text")


def test_get_sampler_and_bad_inputs():
    s = get_sampler("FlowEulerGuidanceIntervalSampler", sigma_min=1e-5)
    assert isinstance(s, FlowEulerGuidanceIntervalSampler) and s.sigma_min == 1e-5
    with pytest.raises(KeyError):
        get_sampler("DDIM")
    with pytest.raises(TypeError):
        FlowEulerSampler().sample(lambda *a: None, [1.0, 2.0], verbose=False)
    with pytest.raises(ValueError, match="shape"):
        FlowEulerSampler().sample(lambda x, t, c: torch.zeros(3), torch.zeros(2, 2), steps=1, verbose=False)


# ------------------------------------------------------------------------------------------------ parity fixtures
def _load_fixture_model(name, class_name):
    from pixal3d.models import get_model_class
    cls = get_model_class(class_name)
    meta, t = load_fixture(name)
    model = cls(**meta["args"]).eval()
    params = {k[len("param."):]: v for k, v in t.items() if k.startswith("param.")}
    # The fixture's state dict is what the reference ran with. A complex ``rope_phases`` is loaded as stored: the
    # sampler fixtures were made with a model whose phase table had been reloaded from a real-valued copy, so its
    # imaginary part is zero, and the trajectory (out.step*) depends on exactly that table. A real-typed table is a
    # lossy serialisation of the complex buffer and is recomputed from the config instead.
    if "rope_phases" in params and not params["rope_phases"].is_complex():
        params.pop("rope_phases")
    missing, unexpected = model.load_state_dict(params, strict=False)
    assert not unexpected, unexpected
    assert all("rope" in k for k in missing), missing  # recomputable RoPE buffers only
    return meta, t, model


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def test_sampler_dense_fixture():
    meta, t, model = _load_fixture_model("sampler_dense", "SparseStructureFlowModel")
    cond = {"global": t["in.cond_global"], "proj": t["in.cond_proj"]}
    out = FlowEulerGuidanceIntervalSampler(1e-5).sample(model, t["in.noise"], cond=cond, neg_cond=make_negative_cond(cond),
                                                        verbose=False, **meta["params"])
    for i, x in enumerate(out.pred_x_t):
        assert _rel(x, t[f"out.step{i}"]) < 1e-4, f"step {i}"
    assert _rel(out.samples, t["out.samples"]) < 1e-4


def test_sampler_sparse_fixture():
    meta, t, model = _load_fixture_model("sampler_sparse", "SLatFlowModel")
    from pixal3d.sparse import SparseTensor
    coords = t["in.coords"]
    noise = SparseTensor(t["in.noise"], coords)
    cond = {"global": t["in.cond_global"], "proj": SparseTensor(t["in.cond_proj"], coords)}
    out = FlowEulerGuidanceIntervalSampler(1e-5).sample(model, noise, cond=cond, neg_cond=make_negative_cond(cond),
                                                        verbose=False, **meta["params"])
    for i, x in enumerate(out.pred_x_t):
        assert torch.equal(x.coords, coords)
        assert _rel(x.feats, t[f"out.step{i}"]) < 1e-4, f"step {i}"
    assert _rel(out.samples.feats, t["out.samples"]) < 1e-4
