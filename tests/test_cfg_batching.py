"""Batched classifier-free guidance (``batch_cfg``): one model call of batch 2B per guided step gives the same samples
as the two separate passes, for every input form the pipelines use, without host reads once the caches are warm."""
import types

import pytest
import torch

from pixal3d.models import ElasticSLatFlowModel, SLatFlowModel, SparseStructureFlowModel
from pixal3d.pipelines.image_to_3d import Pixal3DImageTo3DPipeline
from pixal3d.pipelines.samplers import FlowEulerCfgSampler, FlowEulerGuidanceIntervalSampler, get_sampler, \
    make_negative_cond
from pixal3d.sparse import SparseTensor, VarLenTensor
from tests.conftest import random_sparse_coords
from tests.test_varlen_meta import count_host_reads

TINY = dict(model_channels=32, cond_channels=12, num_blocks=2, num_heads=2, mlp_ratio=2.0, pe_mode="rope",
            share_mod=True, initialization="scaled", qk_rms_norm=True, qk_rms_norm_cross=True)
# steps=4, rescale_t=1: t = 1, 0.75, 0.5, 0.25; the interval guides the middle two steps only
PARAMS = dict(steps=4, rescale_t=1.0, guidance_strength=3.0, guidance_interval=(0.4, 0.8), verbose=False)


def _tiny(cls, dtype=torch.float64, seed=0, **kw):
    """Random weights everywhere (the scaled init zeroes the output layer, which would hide a wrong split)."""
    m = cls(**{**TINY, **kw})
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_((torch.randn(p.shape, generator=g) * 0.3).to(p.dtype))
    if dtype == torch.float64:  # the whole model in float64 (convert_to only knows the half/float32 torso)
        m = m.double()
        m.dtype = torch.float64
    return m.eval()


class Counting:
    """The model, recording the batch size (length of t) of every call."""

    def __init__(self, model):
        self.model, self.batches = model, []

    def __call__(self, x, t, cond, **kwargs):
        self.batches.append(t.shape[0])
        return self.model(x, t, cond, **kwargs)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _dense_case(mode, batch, dtype=torch.float64):
    m = _tiny(SparseStructureFlowModel, dtype, resolution=4, in_channels=3, out_channels=3,
              image_attn_mode="cross" if mode == "cross" else "proj", proj_in_channels=5)
    g = _gen(1)
    noise = torch.randn(batch, 3, 4, 4, 4, generator=g, dtype=dtype)
    glob = torch.randn(batch, 6, 12, generator=g, dtype=dtype)
    if mode == "cross":
        return m, noise, glob, {}
    proj = torch.randn(batch, 64, 5, generator=g, dtype=dtype)
    return m, noise, ({"global": glob, "proj": proj} if mode == "proj" else (glob, proj)), {}


def _sparse_case(form, batch, dtype=torch.float64):
    """SLat flows as the pipelines call them (``form`` picks the condition / kwargs layout)."""
    ns = (9, 14)[:batch]
    coords = random_sparse_coords(list(ns))
    n = coords.shape[0]
    g = _gen(2)
    glob = torch.randn(batch, 4, 12, generator=g, dtype=dtype)
    proj = torch.randn(n, 6, generator=g, dtype=dtype)
    kwargs = {}
    if form == "tex":  # texture flow: proj mode plus the shape latent concatenated to the noise
        m = _tiny(ElasticSLatFlowModel, dtype, resolution=8, in_channels=8, out_channels=5, image_attn_mode="proj",
                  proj_in_channels=6)
        noise = SparseTensor(torch.randn(n, 5, generator=g, dtype=dtype), coords)
        kwargs["concat_cond"] = noise.replace(torch.randn(n, 3, generator=g, dtype=dtype))
        return m, noise, {"global": glob, "proj": proj}, kwargs
    cross = form in ("varlen", "list")
    m = _tiny(SLatFlowModel, dtype, resolution=8, in_channels=5, out_channels=5,
              image_attn_mode="cross" if cross else "proj", proj_in_channels=6)
    noise = SparseTensor(torch.randn(n, 5, generator=g, dtype=dtype), coords)
    if form == "proj_tensor":
        cond = {"global": glob, "proj": proj}
    elif form == "proj_sparse":
        cond = {"global": glob, "proj": noise.replace(proj)}
    elif form == "proj_tuple":
        cond = (glob, noise.replace(proj))
    else:  # per-sample token sequences of different lengths
        seqs = [torch.randn(3 + 2 * b, 12, generator=g, dtype=dtype) for b in range(batch)]
        cond = VarLenTensor.from_tensor_list(seqs) if form == "varlen" else seqs
    return m, noise, cond, kwargs


def _negative(cond):
    if isinstance(cond, VarLenTensor):
        return cond.replace(torch.zeros_like(cond.feats))
    if isinstance(cond, (list, tuple)):
        return type(cond)(_negative(c) for c in cond)
    return make_negative_cond(cond)


def _run(case, batch_cfg, rescale, sampler_cls=FlowEulerGuidanceIntervalSampler):
    model, noise, cond, kwargs = case
    counting = Counting(model)
    sampler = sampler_cls(1e-5, batch_cfg=batch_cfg)
    extra = PARAMS if sampler_cls is FlowEulerGuidanceIntervalSampler else \
        {k: v for k, v in PARAMS.items() if k != "guidance_interval"}
    out = sampler.sample(counting, noise, cond=cond, neg_cond=_negative(cond), guidance_rescale=rescale, **extra,
                         **kwargs)
    return out, counting.batches


def _feats(x):
    return x.feats if isinstance(x, SparseTensor) else x


def _assert_same_samples(case, rescale, batch, tol):
    ref, calls_sep = _run(case, False, rescale)
    out, calls_bat = _run(case, True, rescale)
    assert calls_sep == [batch] * 6  # 4 steps, the 2 guided ones call twice
    assert calls_bat == [batch, 2 * batch, 2 * batch, batch]  # one call per step, guided ones on 2B samples
    for a, b in zip(out.pred_x_t, ref.pred_x_t):
        torch.testing.assert_close(_feats(a), _feats(b), atol=tol, rtol=tol)
    torch.testing.assert_close(_feats(out.samples), _feats(ref.samples), atol=tol, rtol=tol)
    # the guidance moved the samples: a wrong split (e.g. halves swapped) would not agree
    assert (_feats(ref.samples) - _feats(case[1])).abs().max() > 0.1
    if isinstance(case[1], SparseTensor):
        assert out.samples.coords is case[1].coords


@pytest.mark.parametrize("rescale", [0.0, 0.7])
@pytest.mark.parametrize("mode", ["cross", "proj", "proj_tuple"])
def test_dense_sparse_structure_flow(mode, rescale):
    for batch in (1, 2):
        _assert_same_samples(_dense_case(mode, batch), rescale, batch, 1e-10)


@pytest.mark.parametrize("rescale", [0.0, 0.7])
@pytest.mark.parametrize("form", ["proj_tensor", "proj_sparse", "proj_tuple", "tex", "varlen", "list"])
@pytest.mark.parametrize("batch", [1, 2])
def test_sparse_slat_flows(form, batch, rescale):
    _assert_same_samples(_sparse_case(form, batch), rescale, batch, 1e-10)


def test_float32_and_plain_cfg_sampler():
    case = _sparse_case("tex", 2, dtype=torch.float32)
    ref, calls_sep = _run(case, False, 0.7, FlowEulerCfgSampler)
    out, calls_bat = _run(case, True, 0.7, FlowEulerCfgSampler)
    assert calls_sep == [2] * 8 and calls_bat == [4] * 4
    torch.testing.assert_close(out.samples.feats, ref.samples.feats, atol=1e-5, rtol=1e-5)


def test_one_model_call_per_guided_step_and_per_call_override():
    model, noise, cond, kwargs = _sparse_case("tex", 1)
    counting = Counting(model)
    sampler = get_sampler("FlowEulerGuidanceIntervalSampler", sigma_min=1e-5)  # batch_cfg on by default
    assert sampler.batch_cfg is True
    sampler.sample(counting, noise, cond, make_negative_cond(cond), steps=3, guidance_strength=3.0, verbose=False,
                   **kwargs)
    assert counting.batches == [2, 2, 2]
    counting.batches.clear()
    sampler.sample(counting, noise, cond, make_negative_cond(cond), steps=3, guidance_strength=3.0, verbose=False,
                   batch_cfg=False, **kwargs)
    assert counting.batches == [1] * 6
    off = get_sampler("FlowEulerGuidanceIntervalSampler", sigma_min=1e-5, batch_cfg=False)
    counting.batches.clear()
    off.sample(counting, noise, cond, make_negative_cond(cond), steps=2, verbose=False, **kwargs)
    assert counting.batches == [1] * 4
    with pytest.raises(TypeError, match="batch_cfg"):
        get_sampler("FlowEulerCfgSampler", batch_cfg="false")
    with pytest.raises(TypeError, match="batch_cfg"):
        sampler.sample(counting, noise, cond, make_negative_cond(cond), steps=1, verbose=False, batch_cfg=0, **kwargs)


def test_unknown_inputs_fall_back_to_two_passes():
    model, noise, cond, kwargs = _dense_case("cross", 1)
    seen = []

    def opaque_model(x, t, c, tag=None):  # an extra kwarg that is not a tensor: not stackable
        seen.append((t.shape[0], tag))
        return model(x, t, c)
    out = FlowEulerCfgSampler(1e-5).sample(opaque_model, noise, cond, torch.zeros_like(cond), steps=2,
                                           verbose=False, tag="x")
    ref = FlowEulerCfgSampler(1e-5, batch_cfg=False).sample(model, noise, cond, torch.zeros_like(cond), steps=2,
                                                            verbose=False)
    assert seen == [(1, "x")] * 4
    torch.testing.assert_close(out.samples, ref.samples, atol=0, rtol=0)


def test_model_that_ignores_the_batch_is_reported():
    noise = torch.zeros(1, 3)
    with pytest.raises(ValueError, match="batch_cfg=False"):
        FlowEulerCfgSampler().sample(lambda x, t, c: torch.zeros(1, 3), noise, torch.ones(1, 2), torch.zeros(1, 2),
                                     steps=1, verbose=False)


def test_batched_sparse_steps_read_nothing_from_the_device():
    """Once ``x``'s own layout is known, a batched run (doubled structure, stacked conditions, every step's forward)
    reads no tensor value on the host: on a GPU, no sync per step."""
    model, noise, cond, kwargs = _sparse_case("tex", 2, dtype=torch.float32)
    neg = make_negative_cond(cond)
    sampler = FlowEulerGuidanceIntervalSampler(1e-5)
    with torch.no_grad():
        sampler.sample(model, noise, cond, neg, steps=1, verbose=False, **kwargs)
        with count_host_reads() as c:
            sampler.sample(model, noise, cond, neg, steps=3, guidance_rescale=0.7, verbose=False, **kwargs)
    assert sum(c.values()) == 0, dict(c)


def test_low_vram_pipeline_runs_separate_passes():
    model, noise, cond, kwargs = _sparse_case("tex", 1)
    counting = Counting(model)
    for low_vram, expected in ((False, [2, 2]), (True, [1] * 4)):
        counting.batches.clear()
        stub = types.SimpleNamespace(models=types.SimpleNamespace(low_vram=low_vram),
                                     samplers={"tex_slat": FlowEulerGuidanceIntervalSampler(1e-5)},
                                     sampler_params={"tex_slat": {"steps": 2, "guidance_strength": 3.0}})
        Pixal3DImageTo3DPipeline._sample(stub, "tex_slat", counting, noise, cond, None, "tex", **kwargs)
        assert counting.batches == expected, low_vram
