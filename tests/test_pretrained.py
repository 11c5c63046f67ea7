"""from_pretrained / save_pretrained: strict key checks, meta-device build, dtype policy, hub paths, key remap."""
import json
import sys

import pytest
import torch
from conftest import load_fixture
from safetensors.torch import load_file, save_file

import pixal3d.models.sparse_structure_flow as ssf
from pixal3d.models import SLatFlowModel, SparseStructureFlowModel, from_pretrained
from pixal3d.models.pretrained import (StateDictMismatchError, load_state_dict_checked, remap_cross_attn_keys,
                                       resolve_checkpoint, save_pretrained)
from pixal3d.sparse import SparseTensor

TINY = dict(resolution=4, in_channels=3, out_channels=3, model_channels=32, cond_channels=12, num_blocks=2,
            num_heads=2, mlp_ratio=2.0, pe_mode="rope", share_mod=True, initialization="scaled", qk_rms_norm=True,
            qk_rms_norm_cross=True)


def _write_fixture_checkpoint(name, tmp_path, **extra_args):
    meta, tensors = load_fixture(name)
    stem = tmp_path / name
    save_file({k[6:]: v.contiguous() for k, v in tensors.items() if k.startswith("param.")}, f"{stem}.safetensors")
    (tmp_path / f"{name}.json").write_text(json.dumps({"name": meta["class"], "args": {**meta["args"], **extra_args}}))
    return stem, meta, tensors


def test_from_pretrained_matches_fixture_and_builds_on_meta(tmp_path, monkeypatch):
    stem, meta, d = _write_fixture_checkpoint("px_slat_flow_shape", tmp_path)
    seen = []
    real_init = ssf.initialize_flow_weights
    monkeypatch.setattr(ssf, "initialize_flow_weights",
                        lambda m, s: (seen.append({p.device.type for p in m.parameters()}), real_init(m, s)))
    model = from_pretrained(stem)
    assert seen == [{"meta"}]  # the random init only ever touched meta tensors
    assert not model.training and model.input_layer.weight.device.type == "cpu"
    coords = d["in.coords"]
    with torch.no_grad():
        out = model(SparseTensor(d["in.feats"], coords), d["in.t"],
                    {"global": d["in.cond_global"], "proj": SparseTensor(d["in.cond_proj"], coords)})
    err = ((out.feats - d["out.v"]).norm() / d["out.v"].norm()).item()
    assert err < 1e-4


def test_dense_fixture_with_real_rope_table_and_dtype_policy(tmp_path):
    stem, meta, d = _write_fixture_checkpoint("px_ss_flow", tmp_path, dtype="bfloat16")
    m = from_pretrained(stem)  # the fixture stores only the real part of rope_phases: accepted, recomputed
    assert m.rope_phases.dtype == torch.complex64 and m.rope_phases.device.type == "cpu"
    assert m.blocks[0].self_attn.to_qkv.weight.dtype == torch.bfloat16
    assert m.blocks[0].cross_attn.proj_linear.weight.dtype == torch.bfloat16
    assert m.blocks[0].modulation.dtype == torch.float32 and m.input_layer.weight.dtype == torch.float32
    m32 = from_pretrained(stem, dtype="float32")
    assert m32.blocks[0].self_attn.to_qkv.weight.dtype == torch.float32
    cond = {"global": d["in.cond_global"], "proj": d["in.cond_proj"]}
    with torch.no_grad():
        ref = d["out.v"]
        assert ((m32(d["in.x"], d["in.t"], cond) - ref).norm() / ref.norm()).item() < 1e-4
        assert ((m(d["in.x"], d["in.t"], cond) - ref).norm() / ref.norm()).item() < 3e-2  # bf16 torso


@pytest.mark.parametrize("cls,extra", [(SparseStructureFlowModel, {}),
                                       (SLatFlowModel, {"image_attn_mode": "proj", "proj_in_channels": 5,
                                                        "dtype": "bfloat16"})])
def test_save_load_round_trip_is_bit_exact(tmp_path, cls, extra):
    torch.manual_seed(0)
    m = cls(**TINY, **extra)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p.float()).to(p.dtype))
    jp, sp = save_pretrained(m, tmp_path / "sub" / "model")
    cfg = json.loads(jp.read_text())
    assert cfg["name"] == cls.__name__
    assert cfg["args"] == json.loads(json.dumps({**TINY, **extra}))
    m2 = from_pretrained(tmp_path / "sub" / "model")
    s1, s2 = m.state_dict(), m2.state_dict()
    assert s1.keys() == s2.keys()
    for k in s1:
        assert s1[k].dtype == s2[k].dtype and torch.equal(s1[k], s2[k]), k
    if cls is SparseStructureFlowModel:
        assert load_file(str(sp))["rope_phases"].dtype == torch.complex64


def test_strict_mismatch_lists_everything(tmp_path):
    m = SparseStructureFlowModel(**TINY)
    sd = dict(m.state_dict())
    sd.pop("blocks.1.mlp.mlp.2.bias")
    sd["blocks.0.extra.weight"] = torch.zeros(2)
    sd["out_layer.weight"] = torch.zeros(4, 32)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "bad.safetensors"))
    (tmp_path / "bad.json").write_text(json.dumps({"name": "SparseStructureFlowModel", "args": TINY}))
    with pytest.raises(StateDictMismatchError) as e:
        from_pretrained(tmp_path / "bad")
    msg = str(e.value)
    assert "blocks.1.mlp.mlp.2.bias" in msg and "blocks.0.extra.weight" in msg
    assert "out_layer.weight: file (4, 32) vs model (3, 32)" in msg
    with pytest.raises(StateDictMismatchError):
        load_state_dict_checked(SparseStructureFlowModel(**TINY), sd, strict=True)
    # non-strict: the two entries it cannot provide stay on meta -> still an error, naming them
    with pytest.raises(StateDictMismatchError, match="out_layer.weight"):
        from_pretrained(tmp_path / "bad", strict=False)


def test_resolve_paths(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="needs both"):
        resolve_checkpoint(tmp_path / "nothing")
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(ImportError, match="huggingface_hub"):
        resolve_checkpoint("owner/repo/ckpts/model")
    calls = []
    fake = type(sys)("huggingface_hub")
    fake.hf_hub_download = lambda repo, filename: (calls.append((repo, filename)), str(tmp_path / filename))[1]
    monkeypatch.setitem(sys.modules, "huggingface_hub", fake)
    j, s = resolve_checkpoint("owner/repo/ckpts/model")
    assert calls == [("owner/repo", "ckpts/model.json"), ("owner/repo", "ckpts/model.safetensors")]
    assert j.name == "model.json" and s.name == "model.safetensors"


def test_remap_cross_attn_keys_is_opt_in():
    trellis = SparseStructureFlowModel(**TINY).state_dict()
    pixal = SparseStructureFlowModel(**TINY, image_attn_mode="proj")
    with pytest.raises(StateDictMismatchError, match="remap_cross_attn_keys"):
        load_state_dict_checked(pixal, trellis, strict=True)
    remapped = remap_cross_attn_keys(trellis, pixal)
    assert "blocks.0.cross_attn.cross_attn_block.to_q.weight" in remapped
    assert "blocks.0.cross_attn.to_q.weight" in trellis  # input untouched
    with pytest.raises(StateDictMismatchError) as e:
        load_state_dict_checked(pixal, remapped, strict=True)
    assert "proj_linear" in str(e.value) and "unexpected" not in str(e.value)
    load_state_dict_checked(pixal, remapped, strict=False)
    torch.testing.assert_close(pixal.blocks[1].cross_attn.cross_attn_block.to_kv.weight,
                               trellis["blocks.1.cross_attn.to_kv.weight"])
