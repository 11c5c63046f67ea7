"""Flow DiTs: input validation, batching, conditioning forms, precision layout, init, elastic memory, RoPE buffer."""
import math

import pytest
import torch

from pixal3d.models import ElasticSLatFlowModel, SLatFlowModel, SparseStructureFlowModel
from pixal3d.modules.transformer import TimestepEmbedder, timestep_embedding
from pixal3d.sparse import SparseTensor
from tests.conftest import random_sparse_coords as _coords

TINY = dict(model_channels=32, cond_channels=12, num_blocks=2, num_heads=2, mlp_ratio=2.0, pe_mode="rope",
            share_mod=True, initialization="scaled", qk_rms_norm=True, qk_rms_norm_cross=True)


def _randomize(model, seed=0):
    """Random weights everywhere (the scaled init zeroes the output layer, which would hide bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_((torch.randn(p.shape, generator=g) * 0.3).to(p.dtype))
    return model.eval()




def _ss(**kw):
    return SparseStructureFlowModel(**{"resolution": 4, "in_channels": 3, "out_channels": 3, **TINY, **kw})


def _slat(cls=SLatFlowModel, **kw):
    return cls(**{"resolution": 8, "in_channels": 5, "out_channels": 4, **TINY, **kw})


def test_timestep_embedding_cos_first_float64():
    t = torch.tensor([0.0, 250.0, 999.0])
    emb = timestep_embedding(t, 8)
    k = torch.arange(4, dtype=torch.float64)
    args = t.double()[:, None] * torch.exp(-math.log(10000) * k / 4)[None]
    torch.testing.assert_close(emb.double(), torch.cat([args.cos(), args.sin()], 1), rtol=1e-5, atol=1e-5)
    assert TimestepEmbedder(16)(t).shape == (3, 16)


def test_ss_input_validation():
    m = _ss()
    x, t, c = torch.randn(2, 3, 4, 4, 4), torch.tensor([1.0, 2.0]), torch.randn(2, 5, 12)
    assert m(x, t, c).shape == x.shape
    with pytest.raises(ValueError, match=r"x must be \[B, 3, 4, 4, 4\]"):
        m(torch.randn(2, 3, 4, 4, 5), t, c)
    with pytest.raises(ValueError, match=r"cond must be \[B=2, L, 12\]"):
        m(x, t, torch.randn(2, 5, 11))
    with pytest.raises(ValueError, match=r"t must be a 1-D tensor \[B=2\]"):
        m(x, torch.ones(3), c)
    p = _ss(image_attn_mode="proj", proj_in_channels=7)
    with pytest.raises(ValueError, match="missing \\['proj'\\]"):
        p(x, t, {"global": c})
    with pytest.raises(ValueError, match=r"cond\['proj'\] must be \[B=2, R³=64, 7\]"):
        p(x, t, {"global": c, "proj": torch.randn(2, 63, 7)})
    with pytest.raises(ValueError, match="dict"):
        p(x, t, c)


def test_ss_proj_dict_equals_tuple():
    m = _randomize(_ss(image_attn_mode="proj", proj_in_channels=7))
    x, t = torch.randn(2, 3, 4, 4, 4), torch.tensor([10.0, 900.0])
    g, p = torch.randn(2, 5, 12), torch.randn(2, 64, 7)
    with torch.no_grad():
        torch.testing.assert_close(m(x, t, {"global": g, "proj": p}), m(x, t, (g, p)), rtol=0, atol=0)


def test_slat_batch_isolation_and_cond_forms():
    """A 2-sample batch equals each sample run alone (varlen attention must not leak across samples); proj as
    SparseTensor, [N, Cp] tensor or tuple, and cond as a list of tensors, all agree."""
    m = _randomize(_slat(image_attn_mode="proj", proj_in_channels=6))
    coords = _coords([9, 14])
    feats, proj = torch.randn(23, 5), torch.randn(23, 6)
    g, t = torch.randn(2, 4, 12), torch.tensor([100.0, 700.0])
    with torch.no_grad():
        out = m(SparseTensor(feats, coords), t, {"global": g, "proj": SparseTensor(proj, coords)})
        out2 = m(SparseTensor(feats, coords), t, (list(g.unbind(0)), proj))
        torch.testing.assert_close(out.feats, out2.feats, rtol=1e-6, atol=1e-6)
        assert torch.equal(out.coords, coords) and out.feats.shape == (23, 4)
        for b, sl in enumerate((slice(0, 9), slice(9, 23))):
            c1 = coords[sl].clone()
            c1[:, 0] = 0
            one = m(SparseTensor(feats[sl], c1), t[b:b + 1], {"global": g[b:b + 1], "proj": proj[sl]})
            torch.testing.assert_close(one.feats, out.feats[sl], rtol=1e-5, atol=1e-5)


def test_slat_input_validation():
    m = _slat(in_channels=8)
    coords = _coords([4, 5])
    x, t, c = SparseTensor(torch.randn(9, 5), coords), torch.tensor([1.0, 2.0]), torch.randn(2, 3, 12)
    concat = SparseTensor(torch.randn(9, 3), coords)
    assert m(x, t, c, concat_cond=concat).feats.shape == (9, 4)
    with pytest.raises(TypeError, match="SparseTensor"):
        m(torch.randn(9, 8), t, c)
    with pytest.raises(ValueError, match=r"feats \[N, 8\]"):
        m(x, t, c)  # concat_cond forgotten
    with pytest.raises(ValueError, match="same coords"):
        m(x, t, c, concat_cond=SparseTensor(torch.randn(9, 3), _coords([4, 5], seed=3)))
    with pytest.raises(ValueError, match=r"cond must be \[B=2, L, 12\]"):
        m(x, t, torch.randn(3, 3, 12), concat_cond=concat)
    with pytest.raises((TypeError, ValueError)):
        SparseTensor(torch.randn(9, 5), coords.float())  # float coords rejected by the sparse tensor itself
    p = _slat(image_attn_mode="proj", proj_in_channels=6)
    with pytest.raises(ValueError, match=r"cond\['proj'\] must be a SparseTensor or a tensor \[N=9, 6\]"):
        p(x, t, {"global": c, "proj": torch.randn(8, 6)})
    with pytest.raises(ValueError, match="missing \\['proj'\\]"):
        p(x, t, {"global": c})


def test_precision_layout_and_convert_to():
    m = _slat(dtype="bfloat16", image_attn_mode="proj", proj_in_channels=6)
    blk = m.blocks[0]
    for lin in (blk.self_attn.to_qkv, blk.self_attn.to_out, blk.cross_attn.proj_linear,
                blk.cross_attn.cross_attn_block.to_kv, blk.mlp.mlp[0]):
        assert lin.weight.dtype == torch.bfloat16
    for p in (blk.modulation, blk.norm2.weight, blk.self_attn.q_rms_norm.gamma, m.input_layer.weight,
              m.out_layer.weight, m.t_embedder.mlp[0].weight, m.adaLN_modulation[1].weight):
        assert p.dtype == torch.float32
    coords = _coords([5])
    x = SparseTensor(torch.randn(5, 5), coords)
    out = m(x, torch.tensor([3.0]), {"global": torch.randn(1, 2, 12), "proj": torch.randn(5, 6)})
    assert out.feats.dtype == torch.float32 and torch.isfinite(out.feats).all()
    m.convert_to("float32")
    assert blk.self_attn.to_qkv.weight.dtype == torch.float32 and m.dtype == torch.float32


@pytest.mark.parametrize("scheme", ["scaled", "vanilla"])
def test_initialization(scheme):
    torch.manual_seed(0)
    m = _ss(model_channels=64, num_blocks=3, initialization=scheme, image_attn_mode="proj")
    C, nb = 64, 3
    assert torch.count_nonzero(m.out_layer.weight) == 0 and torch.count_nonzero(m.adaLN_modulation[1].weight) == 0
    assert abs(m.t_embedder.mlp[0].weight.std().item() - 0.02) < 0.004
    w = torch.cat([b.self_attn.to_out.weight.flatten() for b in m.blocks] +
                  [b.cross_attn.cross_attn_block.to_out.weight.flatten() for b in m.blocks])
    qkv = m.blocks[0].self_attn.to_qkv.weight
    if scheme == "scaled":
        assert abs(w.std().item() / (1 / math.sqrt(5 * nb * C)) - 1) < 0.05
        assert abs(qkv.std().item() / math.sqrt(2 / (5 * C)) - 1) < 0.05
        assert abs(m.input_layer.weight.std().item() / (1 / math.sqrt(3)) - 1) < 0.25
        assert abs(m.blocks[0].cross_attn.proj_linear.weight.std().item() / math.sqrt(2 / (5 * C)) - 1) < 0.05
    else:  # xavier uniform: bound sqrt(6 / (fan_in + fan_out))
        assert qkv.abs().max().item() <= math.sqrt(6 / (C + 3 * C)) + 1e-6
    assert torch.all(m.blocks[0].self_attn.q_rms_norm.gamma == 1)
    assert abs(m.blocks[0].modulation.std().item() / (1 / math.sqrt(C)) - 1) < 0.1


def test_elastic_mem_ratio_and_checkpoint_gradients():
    m = _randomize(_slat(ElasticSLatFlowModel, num_blocks=4)).train()
    with m.with_mem_ratio(0.5) as exact:
        assert exact == 0.5  # n = min(ceil(0.5·4) + 1, 4) = 3 blocks checkpointed
        assert [b.use_checkpoint for b in m.blocks] == [True, True, True, False]
    assert not any(b.use_checkpoint for b in m.blocks)
    with m.with_mem_ratio(1.0) as exact:
        assert exact == 1.0 and not any(b.use_checkpoint for b in m.blocks)
    coords = _coords([6, 4])
    feats = torch.randn(10, 5)
    args = (torch.tensor([5.0, 50.0]), torch.randn(2, 3, 12))

    def grads(ratio):
        m.zero_grad()
        with m.with_mem_ratio(ratio):
            m(SparseTensor(feats, coords), *args).feats.square().sum().backward()
        return [p.grad.clone() for p in m.parameters()]
    for a, b in zip(grads(1.0), grads(0.0)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)

    class Controller:
        calls = []

        def get_mem_ratio(self, n):
            self.calls.append(n)
            return 0.3

        def update_run_states(self, n, r):
            self.calls.append((n, r))
    ctl = Controller()
    m.register_memory_controller(ctl)
    m(SparseTensor(feats, coords), *args)
    assert ctl.calls == [10, (10, 0.25)]  # n = min(ceil(0.7·4)+1, 4) = 4 -> 1 - 3/4


def test_rope_phases_buffer_loading():
    m = _ss()
    assert m.rope_phases.shape == (64, 8) and m.rope_phases.dtype == torch.complex64
    sd = m.state_dict()
    fresh = _ss()
    without = {k: v for k, v in sd.items() if k != "rope_phases"}
    fresh.load_state_dict(without, strict=True)  # files without the table load
    fresh.load_state_dict({**without, "rope_phases": sd["rope_phases"].real.clone()}, strict=True)  # real part only
    assert torch.equal(fresh.rope_phases, m.rope_phases)
    other = SparseStructureFlowModel(resolution=4, in_channels=3, out_channels=3,
                                     **{**TINY, "rope_freq": (1.0, 100.0)}).state_dict()["rope_phases"]
    # a complex table is what the stored model ran with: used as stored, with a warning when it is not the computed one
    with pytest.warns(UserWarning, match="rope_phases"):
        fresh.load_state_dict({**without, "rope_phases": other}, strict=True)
    assert torch.equal(fresh.rope_phases, other)
    # a real-valued copy cannot be used; one that does not match this config is an error
    with pytest.raises(RuntimeError, match="rope_phases"):
        fresh.load_state_dict({**without, "rope_phases": other.real.clone()}, strict=True)
    with pytest.raises(RuntimeError, match="rope_phases"):
        fresh.load_state_dict({**without, "rope_phases": other[:10]}, strict=True)


def test_ape_mode_runs():
    m = _ss(pe_mode="ape")
    assert m.pos_emb.shape == (64, 32)
    assert m(torch.randn(1, 3, 4, 4, 4), torch.tensor([1.0]), torch.randn(1, 2, 12)).shape == (1, 3, 4, 4, 4)
    s = _slat(pe_mode="ape")
    out = s(SparseTensor(torch.randn(5, 5), _coords([5])), torch.tensor([1.0]), torch.randn(1, 2, 12))
    assert out.feats.shape == (5, 4)


def test_unknown_kwargs_warn_and_bad_args_raise():
    with pytest.warns(UserWarning, match="ignoring unknown constructor arguments"):
        _ss(some_future_flag=True)
    with pytest.raises(ValueError, match="pe_mode"):
        _ss(pe_mode="sin")
    with pytest.raises(ValueError, match="image_attn_mode"):
        _ss(image_attn_mode="concat")
