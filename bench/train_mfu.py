"""Training throughput and MFU of the full-size 1.3 B flow DiTs (official configs, random weights and data).

    python bench/train_mfu.py [--device cuda] [--model ss,shape] [--batch B] [--tokens 9600] [--grad_ckpt]
                              [--steps 10] [--warmup 3] [--json OUT.json] [--tiny]

Models: ``configs/models/pixal3d/ss_flow_img_dit_1_3B_64_bf16.json`` (sparse-structure flow, dense 16³ = 4096
tokens, proj 1024 channels) and ``slat_flow_img2shape_dit_1_3B_1024_bf16.json`` (shape SLat flow, proj 2048
channels) on ``--tokens`` sphere-shell voxels per sample. Inputs come from ``bench/flow_dit.py``'s ``make_inputs``:
a random latent ``x_0`` and a random Pixal3D condition ``{'global': [B, 5, 1024], 'proj': per-token features}``.

One training step is what ``BasicTrainer.run_step`` does with the official ``mix_precision_mode='amp'``, bf16, one
micro-batch: the loss of the official trainer class (``ImageConditionedProj[Sparse]FlowMatchingCFGTrainer``, its own
``training_losses``: t from the config's schedule, ``x_t = (1-t) x_0 + (σ + (1-σ) t) ε``, target ``(1-σ) ε - x_0``,
CFG dropout p=0.1) under ``torch.autocast(bf16)``, ``loss.backward()``, ``AdamW.step()`` with the config's
arguments. As in the trainer, the torso's Linear weights are bf16 parameters (the model dtype) updated in place; the
float32 skin (embedders, input/output layers, norms) runs in bf16 through autocast. Not timed: EMA, gradient
clipping, data loading, the DINOv3 condition encoder. ``--grad_ckpt`` checkpoints every block (the official shape
config instead checkpoints a varying share through its elastic memory controller).

Model FLOPs per step (counted analytically from the config; only matmuls and attention, which is also what
``torch.utils.flop_counter.FlopCounterMode`` counts; 2 FLOPs per multiply-add). Notation: B samples of T tokens,
N = B·T, C width, Hm = int(C·mlp_ratio), Cin/Cout latent channels, Cc context width, Lg = 5 global context tokens,
Cp proj channels, nb blocks.

    per token, per block:  to_qkv 3C², self to_out C², cross to_q C², cross to_out C², proj_linear Cp·C, MLP 2·C·Hm
    per token, once:       input_layer Cin·C, out_layer C·Cout
    per sample:            t_embedder 256·C + C², shared adaLN C·6C (per block without share_mod), per block
                           cross to_kv Lg·Cc·2C
    attention forward:     self 4·T²·C per sample per block (QKᵀ and PV), cross 4·T·Lg·C
                           (samples here are all T tokens; unequal ones would be padded to the longest by the
                           sdpa varlen path, and the formula counts B·T² as that path computes)

Forward = 2 × (multiply-adds of those Linears) + attention. Backward of a Linear = its weight gradient (= forward)
plus its input gradient (= forward) when the input needs one. It does not for input_layer (x_t), the first
t_embedder layer (sinusoids), to_kv (image tokens) and proj_linear (projected image features), so backward is
slightly below the usual 2× forward. Attention backward = 2× forward (dV, dP, dQ, dK; the flash kernels' recomputation
of QKᵀ is not model work). Model FLOPs = forward + backward. The usual ``6·N_params·tokens + 12·nb·T²·C·B`` differs
by that input-gradient term (the 6N form is 1.0 % higher for ss, 1.5 % for shape at 9600 tokens). Elementwise
work (norms, RoPE, softmax, GELU, modulation, AdamW) is not counted, as usual for MFU. Gradient checkpointing
recomputes the block forwards; that is hardware work, not model work: it lowers MFU, and ``hfu`` counts it.

MFU = model FLOPs / step time / 989.4 TFLOP/s (H100 SXM dense bf16 peak); the table also gives the ratio to
800 TFLOP/s, the large bf16 matmul rate cuBLAS reaches on the lent H100.

``--tiny`` swaps in tiny widths (same classes, fp32, no autocast) so that the whole script runs in seconds on CPU; the
test suite uses it to check the FLOP formula against FlopCounterMode.
"""
from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]  # pixal3d and flow_dit when run as `python bench/train_mfu.py`
from flow_dit import CONFIGS, make_inputs

# the official Pixal3D training configs of these two models (for the trainer class, t schedule, σ_min, p_uncond and
# AdamW arguments; the model args in them are those of configs/models/pixal3d)
TRAIN_CONFIGS = {
    "ss": REPO / "configs/train/pixal3d/ss_flow_img_dit_1_3B_32_bf16_proj_finetune_ft64.json",
    "shape": REPO / "configs/train/pixal3d/slat_flow_img2shape_dit_1_3B_512_bf16_proj_finetune_ft1024.json",
}
# tiny widths for --tiny; shape keeps 32 latent channels because make_inputs draws 32-channel SLat features
TINY = {
    "ss": {"resolution": 4, "model_channels": 64, "cond_channels": 32, "num_blocks": 2, "num_heads": 4,
           "dtype": "float32"},
    "shape": {"model_channels": 64, "cond_channels": 32, "proj_in_channels": 48, "num_blocks": 2, "num_heads": 4,
              "dtype": "float32"},
}
# per-GPU micro-batch (samples) by model, (no checkpointing, --grad_ckpt). Activations cost about 136 KB per token
# per block in bf16, ~4.1 MB per token for the 30 blocks, on top of ~11 GB of bf16 weights + grads + AdamW state:
# without checkpointing ~8-10 k tokens fit in 80 GB (ss 2×4096 ≈ 45 GB, shape 1×9600 ≈ 50 GB); with it the
# official ss batch of 8 and shape 4×9600 take ~20 GB.
DEFAULT_BATCH = {"ss": (2, 8), "shape": (1, 4)}
TINY_BATCH = 2
NUM_GLOBAL_TOKENS = 5  # DINOv3 ViT-L CLS + 4 registers, the 'global' context of the Pixal3D condition
H100_BF16_PEAK_TFLOPS = 989.4  # H100 SXM dense bf16 (no sparsity)
H100_MATMUL_TFLOPS = 800.0  # measured cuBLAS bf16 large-matmul rate on the lent H100


# ----------------------------------------------------------------------------------------------------- FLOPs
def model_flops(cfg: dict, batch: int, tokens: int, ctx_tokens: int = NUM_GLOBAL_TOKENS) -> dict:
    """Matmul + attention FLOPs of one forward and one backward of a flow DiT (formula in the module docstring).

    Args:
        cfg: ``{"name": class name, "args": constructor args}`` as in ``configs/models``.
        batch: B samples; tokens: T tokens per sample (ignored for the dense model, where T = resolution³).
        ctx_tokens: Lg, tokens of the cross-attention context per sample.

    Returns:
        dict of FLOP counts (floats): ``forward``, ``backward``, ``total`` (= forward + backward), ``blocks_forward``
        (what gradient checkpointing recomputes), ``attention`` (self + cross, forward + backward) and
        ``matmul_params_per_token`` (weights every token multiplies by).
    """
    a = cfg["args"]
    dense = cfg["name"] == "SparseStructureFlowModel"
    C, nb = a["model_channels"], a["num_blocks"]
    T = a["resolution"] ** 3 if dense else tokens
    B, N = batch, batch * T
    Hm = int(C * a.get("mlp_ratio", 4))  # FeedForwardNet's hidden width
    Cc, Lg = a["cond_channels"], ctx_tokens
    mode = a.get("image_attn_mode", "cross")
    Cp = {"cross": 0, "proj": a.get("proj_in_channels") or Cc,
          "gated_proj": (a.get("proj_in_channels") or Cc) + (a.get("vae_in_channels") or 16)}[mode]
    n_mod = 1 if a.get("share_mod", False) else nb  # Linear(C, 6C) on t_emb: once shared, else in every block

    # multiply-adds per token / per sample; "_nog": Linears whose input needs no gradient
    blk_tok = 3 * C * C + C * C + C * C + C * C + 2 * C * Hm  # qkv, self out, cross q, cross out, MLP
    blk_tok_nog = Cp * C  # proj_linear(proj features)
    blk_smp_nog = Lg * Cc * 2 * C  # cross to_kv(image tokens)
    tok, tok_nog = C * a["out_channels"], a["in_channels"] * C  # out_layer, input_layer(x_t)
    smp, smp_nog = C * C + n_mod * 6 * C * C, 256 * C  # t_embedder.mlp.2 + adaLN, t_embedder.mlp.0(sinusoids)
    mac_grad = N * (nb * blk_tok + tok) + B * smp
    mac_nog = N * (nb * blk_tok_nog + tok_nog) + B * (nb * blk_smp_nog + smp_nog)
    # attention: QKᵀ and PV, 2·Lq·Lk·C each per sample
    attn_self = nb * B * 4 * T * T * C
    attn_cross = nb * B * 4 * T * Lg * C
    fwd = 2 * (mac_grad + mac_nog) + attn_self + attn_cross
    bwd = 2 * (2 * mac_grad + mac_nog) + 2 * (attn_self + attn_cross)
    blocks_fwd = 2 * nb * (N * (blk_tok + blk_tok_nog) + B * blk_smp_nog) + attn_self + attn_cross
    return {"forward": float(fwd), "backward": float(bwd), "total": float(fwd + bwd),
            "blocks_forward": float(blocks_fwd), "attention": float(3 * (attn_self + attn_cross)),
            "matmul_params_per_token": nb * (blk_tok + blk_tok_nog) + tok + tok_nog}


# ----------------------------------------------------------------------------------------------------- setup
def build_model(name: str, device, tiny: bool = False, grad_ckpt: bool = False):
    """``(cfg, model)``: the official config (tiny widths with ``tiny``) built on ``device`` in train mode.

    The model keeps its own training initialisation (zero out_layer, scaled init), as a real run starts from it;
    an all-zero output layer does not change the work a step does.
    """
    from pixal3d.models import get_model_class
    cfg = json.loads(CONFIGS[name].read_text())
    args = dict(cfg["args"], **(TINY[name] if tiny else {}), use_checkpoint=grad_ckpt)
    with torch.device(device):  # initialise on the device: a 1.3 B CPU init takes minutes
        model = get_model_class(cfg["name"])(**args)
    return {"name": cfg["name"], "args": args}, model.train()


def make_trainer(name: str, model, device):
    """The official trainer class bound to ``model``, without dataset, logger, optimiser or checkpoints.

    Only its loss path is used: ``training_losses(x_0, cond)`` → sample t, diffuse, CFG dropout of the condition,
    denoiser forward, MSE to the velocity. ``BasicTrainer.__init__`` needs a dataset and an output folder, so it is
    skipped and the few attributes the loss reads are set here from the official training config.
    """
    from pixal3d.trainers import flow_matching as fm
    targs = json.loads(TRAIN_CONFIGS[name].read_text())["trainer"]
    cls, args = getattr(fm, targs["name"]), targs["args"]
    trainer = object.__new__(cls)
    trainer.device = torch.device(device)
    trainer.training_models = {"denoiser": model}
    trainer.t_schedule = {"name": args["t_schedule"]["name"], "args": dict(args["t_schedule"].get("args", {}))}
    trainer.sigma_min = float(args["sigma_min"])
    trainer.p_uncond = float(args["p_uncond"])
    trainer.image_cond_model_spec, trainer._image_cond_model = None, None  # the condition comes as features
    return trainer, args["optimizer"]


def make_batch(name: str, model, batch: int, tokens: int, device) -> dict:
    """``{'x_0', 'cond'}`` of random data: ``flow_dit.make_inputs``'s latent and Pixal3D condition.

    Dense: x_0 ``[B, 8, 16, 16, 16]``, cond ``{'global': [B, 5, Cc], 'proj': [B, 4096, Cp]}``. Sparse: x_0 a
    SparseTensor of B sphere shells of ``tokens`` voxels (feats ``[B·T, 32]``) and ``proj`` a SparseTensor on its
    coords, as ``ImageConditionedProjMixin`` builds it (so that the CFG dropout follows the batch index).
    """
    (x, _, cond), _ = make_inputs(name, model, tokens, batch, device)
    if name != "ss":
        cond = {"global": cond["global"], "proj": x.replace(cond["proj"])}
    return {"x_0": x, "cond": cond}


def train_step(trainer, optimizer, batch: dict, amp_dtype) -> torch.Tensor:
    """One optimisation step (one micro-batch): autocast forward + loss, backward, AdamW. Returns the loss."""
    optimizer.zero_grad(set_to_none=True)
    device_type = trainer.device.type
    with torch.autocast(device_type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
        terms, _ = trainer.training_losses(**batch)
    terms["loss"].float().backward()
    optimizer.step()
    return terms["loss"].detach()


# ----------------------------------------------------------------------------------------------------- bench
def bench_one(name: str, args, device) -> dict:
    """Builds one model, runs ``warmup + steps`` training steps, returns its row (see ``main`` for the keys)."""
    ckpt = bool(args.grad_ckpt)
    batch = args.batch or (TINY_BATCH if args.tiny else DEFAULT_BATCH[name][ckpt])
    tokens = args.tokens or (64 if args.tiny else 9600)
    amp_dtype = None if args.tiny else torch.bfloat16
    torch.manual_seed(args.seed)
    cfg, model = build_model(name, device, args.tiny, ckpt)
    trainer, opt_cfg = make_trainer(name, model, device)
    if opt_cfg["name"] != "AdamW":
        raise ValueError(f"{TRAIN_CONFIGS[name]} uses {opt_cfg['name']}; this bench times AdamW")
    optimizer = torch.optim.AdamW(model.parameters(), **opt_cfg.get("args", {}))  # as the trainer: defaults (foreach)
    data = make_batch(name, model, batch, tokens, device)
    tokens = model.resolution ** 3 if name == "ss" else tokens
    cuda = device.type == "cuda"
    for _ in range(args.warmup):  # cuBLAS/SDPA heuristics, allocator growth, AdamW state creation
        train_step(trainer, optimizer, data, amp_dtype)
    if cuda:
        torch.cuda.synchronize(device)
    times = []
    for _ in range(args.steps):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            loss = train_step(trainer, optimizer, data, amp_dtype)
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            loss = train_step(trainer, optimizer, data, amp_dtype)
            times.append((time.perf_counter() - t0) * 1e3)
    ms = statistics.median(times)
    fl = model_flops(cfg, batch, tokens)
    hw = fl["total"] + (fl["blocks_forward"] if ckpt else 0.0)  # checkpointing re-runs every block forward
    achieved = fl["total"] / (ms * 1e-3) / 1e12
    row = {
        "model": name, "config": str(CONFIGS[name].relative_to(REPO)), "tiny": bool(args.tiny),
        "params": sum(p.numel() for p in model.parameters()), "batch": batch, "tokens_per_sample": tokens,
        "grad_ckpt": ckpt, "precision": "fp32" if amp_dtype is None else "amp-bf16 (bf16 torso weights)",
        "steps": args.steps, "step_ms_median": ms, "step_ms_all": times,
        "samples_per_s": batch / ms * 1e3, "tokens_per_s": batch * tokens / ms * 1e3,
        "peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2 ** 30 if cuda else None,
        "model_flops_per_step": fl["total"], "flops_forward": fl["forward"], "flops_backward": fl["backward"],
        "flops_attention": fl["attention"], "matmul_params_per_token": fl["matmul_params_per_token"],
        "hw_flops_per_step": hw, "achieved_tflops": achieved,
        "mfu": achieved / args.peak_tflops, "mfu_vs_matmul": achieved / args.matmul_tflops,
        "hfu": hw / (ms * 1e-3) / 1e12 / args.peak_tflops, "loss_last": float(loss),
    }
    del trainer, optimizer, model, data
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return row


def main(argv=None) -> list:
    """Runs the bench for each ``--model`` and prints a table; writes ``--json`` if given. Returns the rows.

    JSON: ``{"device", "torch", "peak_tflops", "matmul_tflops", "results": [row, ...]}``; each row has model,
    config, tiny, params, batch, tokens_per_sample, grad_ckpt, precision, steps, step_ms_median, step_ms_all,
    samples_per_s, tokens_per_s, peak_mem_gib (GiB, None on CPU), model_flops_per_step, flops_forward,
    flops_backward, flops_attention, matmul_params_per_token, hw_flops_per_step, achieved_tflops, mfu, mfu_vs_matmul,
    hfu, loss_last.
    """
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--model", default="ss,shape", help="comma list of ss, shape")
    ap.add_argument("--batch", type=int, default=None, help="samples per step (default: per model, see DEFAULT_BATCH)")
    ap.add_argument("--tokens", type=int, default=None, help="SLat tokens per sample (default 9600; 64 with --tiny)")
    ap.add_argument("--grad_ckpt", action="store_true", help="gradient-checkpoint every block")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--tiny", action="store_true", help="tiny widths, fp32: a CPU smoke run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--peak_tflops", type=float, default=H100_BF16_PEAK_TFLOPS)
    ap.add_argument("--matmul_tflops", type=float, default=H100_MATMUL_TFLOPS)
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    names = args.model.split(",")
    for n in names:
        if n not in TRAIN_CONFIGS:
            ap.error(f"unknown model {n!r}; choose from {', '.join(TRAIN_CONFIGS)}")
    if args.steps < 1 or args.warmup < 0:
        ap.error("--steps must be >= 1 and --warmup >= 0")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rows = []
    for n in names:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)  # peak per model (the previous one is freed)
        r = bench_one(n, args, device)
        rows.append(r)
        mem = f"{r['peak_mem_gib']:.1f} GiB" if r["peak_mem_gib"] is not None else "-"
        print(f"{n:5s} B={r['batch']} T={r['tokens_per_sample']} ckpt={int(r['grad_ckpt'])}  "
              f"{r['step_ms_median']:8.1f} ms/step  {r['achieved_tflops']:6.1f} TFLOP/s  MFU {r['mfu']:.1%}  "
              f"peak {mem}", flush=True)
    print(f"\n| model | batch × tokens | grad ckpt | ms / step | samples/s | tokens/s | TFLOP / step | TFLOP/s "
          f"| MFU ({args.peak_tflops:g}) | vs {args.matmul_tflops:g} | peak GiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        mem = f"{r['peak_mem_gib']:.1f}" if r["peak_mem_gib"] is not None else "-"
        print(f"| {r['model']} | {r['batch']} × {r['tokens_per_sample']} | {'yes' if r['grad_ckpt'] else 'no'} "
              f"| {r['step_ms_median']:.1f} | {r['samples_per_s']:.2f} | {r['tokens_per_s']:,.0f} "
              f"| {r['model_flops_per_step'] / 1e12:.2f} | {r['achieved_tflops']:.1f} | {r['mfu']:.1%} "
              f"| {r['mfu_vs_matmul']:.1%} | {mem} |")
    if device.type == "cuda":
        print(f"device {torch.cuda.get_device_name(device)}, torch {torch.__version__}")
    if args.json:
        out = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
               "torch": torch.__version__, "peak_tflops": args.peak_tflops, "matmul_tflops": args.matmul_tflops,
               "results": rows}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1))
    return rows


if __name__ == "__main__":
    main()
