"""bench/train_mfu.py: its analytic FLOP formula against torch's FlopCounterMode, and a CPU smoke run."""
import json
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
import train_mfu

from pixal3d.modules.attention import backend


@pytest.fixture
def naive_attention():
    # FlopCounterMode does not count the CPU SDPA kernel (torch 2.13), but it counts the naive backend's matmuls
    backend.set_attn_backend("naive")
    yield
    backend.set_attn_backend(None)


def _measure(name, grad_ckpt=False):
    """FlopCounterMode totals of one training forward and of forward + backward, and the analytic counts."""
    device = torch.device("cpu")
    torch.manual_seed(0)
    cfg, model = train_mfu.build_model(name, device, tiny=True, grad_ckpt=grad_ckpt)
    trainer, _ = train_mfu.make_trainer(name, model, device)
    batch = 3
    data = train_mfu.make_batch(name, model, batch, 40, device)
    with FlopCounterMode(display=False) as fwd:
        terms, _ = trainer.training_losses(**data)
    with FlopCounterMode(display=False) as both:
        terms, _ = trainer.training_losses(**data)
        terms["loss"].backward()
    tokens = model.resolution ** 3 if name == "ss" else 40
    return fwd.get_total_flops(), both.get_total_flops(), train_mfu.model_flops(cfg, batch, tokens)


@pytest.mark.parametrize("name", ["ss", "shape"])
def test_flops_match_flop_counter(name, naive_attention):
    fwd, both, fl = _measure(name)
    assert fl["attention"] > 0.05 * fl["total"]  # the tiny configs exercise the attention terms, not only Linears
    assert fwd == pytest.approx(fl["forward"], rel=0.01)
    assert both == pytest.approx(fl["total"], rel=0.01)
    assert both - fwd == pytest.approx(fl["backward"], rel=0.01)


def test_grad_ckpt_recomputes_the_blocks(naive_attention):
    fwd, both, fl = _measure("shape", grad_ckpt=True)
    assert fwd == pytest.approx(fl["forward"], rel=0.01)
    assert both == pytest.approx(fl["total"] + fl["blocks_forward"], rel=0.01)  # the bench's hw_flops_per_step


def test_full_size_formula():
    # the 1.3 B SS flow: ~1.2 B weights per token; attention 12·nb·T²·C·B
    cfg = {"name": "SparseStructureFlowModel", "args": json.loads(train_mfu.CONFIGS["ss"].read_text())["args"]}
    fl = train_mfu.model_flops(cfg, 2, 0)
    C, nb, T = 1536, 30, 4096
    assert fl["matmul_params_per_token"] == nb * (6 * C * C + 1024 * C + 2 * C * 8192) + 8 * C + C * 8
    assert fl["attention"] == pytest.approx(12 * nb * (T * T + T * 5) * C * 2)
    six_n = 6 * fl["matmul_params_per_token"] * 2 * T + fl["attention"]
    assert 0.95 < fl["total"] / six_n < 1.0


def test_smoke_cpu(tmp_path):
    out = tmp_path / "mfu.json"
    rows = train_mfu.main(["--tiny", "--device", "cpu", "--steps", "2", "--warmup", "1", "--json", str(out)])
    data = json.loads(out.read_text())
    assert {"device", "torch", "peak_tflops", "matmul_tflops", "results"} <= set(data)
    assert [r["model"] for r in data["results"]] == ["ss", "shape"] == [r["model"] for r in rows]
    keys = {"step_ms_median", "samples_per_s", "tokens_per_s", "peak_mem_gib", "model_flops_per_step",
            "achieved_tflops", "mfu", "mfu_vs_matmul", "hfu", "batch", "tokens_per_sample", "loss_last"}
    for r in data["results"]:
        assert keys <= set(r)
        assert r["step_ms_median"] > 0 and r["model_flops_per_step"] > 0 and r["mfu"] > 0
        assert torch.isfinite(torch.tensor(r["loss_last"]))
        assert r["tokens_per_s"] == pytest.approx(r["samples_per_s"] * r["tokens_per_sample"])
