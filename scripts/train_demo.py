"""Trains the embedded demo model (issue 9) end to end: data -> VAEs -> latents -> statistics -> flows -> pipeline.

    python scripts/train_demo.py --work /tmp/demo_micro --scale micro                      # this CPU, minutes
    python scripts/train_demo.py --work /data/demo --scale full --device cuda \\
           --pipeline_dir assets/models/pixal3d-demo                                     # one H100, ~1 h

Steps (``--list_steps``), each resumable: a finished step leaves ``WORK/state/{step}.done`` and is skipped on the next
call (``--redo STEP[,STEP]`` forgets a step and every step after it; the data-toolkit steps also skip finished
assets themselves, and ``train.py`` resumes from its latest checkpoint):

1. ``data``: the data toolkit over the assets (``--assets``; micro: ``--micro_assets``) at the demo resolution:
   metadata, mesh/PBR dumps, stats, conditioning renders (``--num_views``, ``--render_resolution``), canonical dual
   grids + PBR voxels at 128³ (VAE training data), per-view dual grids + PBR voxels at 128³ (latent data).
2. ``split``: a fixed held-out list (``--num_heldout`` assets drawn with ``--seed`` from the sha256-sorted list):
   ``WORK/heldout.txt`` (sha256 per line; every dataset's ``skip_list``) and ``heldout.json`` (with names). Kept once
   written.
3. ``dino``: the frozen, seeded DINOv3-architecture image backbone, written once to ``PIPELINE/dinov3``.
4. ``ss_vae``, ``shape_vae``, ``tex_vae``: ``train.py`` on ``configs/demo/{stage}.json``.
5. ``export_vae``: EMA encoders (float32, ``WORK/ckpts``) and decoders (bfloat16 storage, ``PIPELINE/ckpts``).
6. ``encode``: per-view shape, PBR and SS latents with the trained encoders (``--enc_pretrained``, ``--force``).
7. ``stats``: per-channel mean/std of the training split's shape and texture latents -> ``WORK/latent_stats.json``.
8. ``ss_flow``, ``shape_flow``, ``tex_flow``: ``train.py`` (the statistics go into the datasets' normalisation).
9. ``export``: EMA flows (bfloat16 storage) to ``PIPELINE/ckpts``, ``PIPELINE/pipeline.json``, ``demo_info.json``.

``--scale micro``: ``--micro_assets`` (3 small assets, 1 held out), ``--micro_steps`` steps per stage, batch 2.
``--scale full``: every asset, 6 held out; each training stage first runs ``--calib_steps`` steps to measure its
speed on the device and then trains for ``--stage_minutes`` minutes (``train.py --max_minutes``), with 1.5x the
calibrated steps (clamped to [``--min_steps``, ``--max_steps``]) as its step limit; the plan is written to
``WORK/plan.json``. Every command is appended
with its time and exit status to ``WORK/commands.log``. The configs materialised for each run are kept in
``WORK/configs/``. ``docs/DEMO_MODEL.md`` documents the model.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO))

from make_demo_configs import DEMO, build_configs  # noqa: E402

__all__ = ["STEPS", "Chain", "latent_stats", "write_dino", "export_bf16", "choose_export_weights", "write_pipeline_json", "materialize",
           "choose_heldout", "main"]

STEPS = ("data", "split", "dino", "ss_vae", "shape_vae", "tex_vae", "export_vae", "encode", "stats", "ss_flow",
         "shape_flow", "tex_flow", "export")
VAE_STAGES = ("ss_vae", "shape_vae", "tex_vae")
FLOW_STAGES = ("ss_flow", "shape_flow", "tex_flow")
MICRO_ASSETS = ("kenney_flag", "quaternius_chair", "khronos_avocado")
ENC_NAMES = {"shape": "demo_shape_enc", "tex": "demo_tex_enc", "ss": "demo_ss_enc"}
# pipeline.json model keys -> checkpoint stems in PIPELINE/ckpts. The demo is a single-level cascade at the SS
# occupancy grid, i.e. the '1024' pipeline type (latent grid = occupancy grid; TRELLIS.2's 1024 model has 64 / 64).
PIPELINE_MODELS = {"sparse_structure_flow_model": "ss_flow", "sparse_structure_decoder": "ss_dec",
                   "shape_slat_flow_model_1024": "shape_flow", "shape_slat_decoder": "shape_dec",
                   "tex_slat_flow_model_1024": "tex_flow", "tex_slat_decoder": "tex_dec"}


class ChainError(RuntimeError):
    """A step of the chain failed (the message names the step, the command and where its log is)."""


# ----------------------------------------------------------------------------------------------- pure helpers
def choose_heldout(shas_to_names: Dict[str, str], k: int, seed: int) -> List[str]:
    """``k`` sha256 values drawn with ``random.Random(seed)`` from the sorted list (deterministic for a given set).

    Raises:
        ValueError: ``k`` not smaller than the number of assets (nothing would be left to train on).
    """
    shas = sorted(shas_to_names)
    if not 0 <= k < len(shas):
        raise ValueError(f"cannot hold out {k} of {len(shas)} assets (at least one must remain for training)")
    return sorted(random.Random(seed).sample(shas, k))


def latent_stats(files: List[Path], key: str = "feats") -> Dict[str, list]:
    """Per-channel mean and (population) std of the ``key`` arrays ``[N, C]`` of ``.npz`` files, pooled over all rows.

    Raises:
        ValueError: no files, or files whose channel counts differ.
    """
    if not files:
        raise ValueError("no latent files to compute statistics from (did the encode step run?)")
    n, s, ss, ch = 0, None, None, None
    for f in files:
        with np.load(f) as d:
            x = d[key].astype(np.float64)
        if key == "z":  # dense SS latents [C, r, r, r] -> rows
            x = x.reshape(x.shape[0], -1).T
        if ch is None:
            ch, s, ss = x.shape[1], np.zeros(x.shape[1]), np.zeros(x.shape[1])
        elif x.shape[1] != ch:
            raise ValueError(f"{f}: {x.shape[1]} channels, expected {ch}")
        n += x.shape[0]
        s += x.sum(0)
        ss += (x ** 2).sum(0)
    mean = s / n
    std = np.sqrt(np.maximum(ss / n - mean ** 2, 0.0))
    return {"mean": [round(float(v), 6) for v in mean], "std": [round(float(max(v, 1e-6)), 6) for v in std],
            "rows": int(n), "files": len(files)}


def write_dino(folder: Path, seed: int = DEMO["dino_seed"]) -> Path:
    """Writes the frozen image backbone (random DINOv3-architecture ViT drawn from ``seed``) to ``folder`` unless it
    already holds one (its weights, not the seed, are the reference from then on)."""
    folder = Path(folder)
    if (folder / "config.json").is_file():
        return folder
    import torch
    from transformers import DINOv3ViTConfig, DINOv3ViTModel
    torch.manual_seed(seed)
    model = DINOv3ViTModel(DINOv3ViTConfig(**DEMO["dino"])).eval()
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tmp.rename(folder)
    return folder


def choose_export_weights(run_dir: Path, weights: str = "auto"):
    """EMA rate to export (``None`` = the raw weights) for ``weights`` in ``'auto'``/``'ema'``/``'raw'``.

    An EMA of rate β after t steps still holds β^t of the initial (random) weights: 0.999 after 600 steps keeps 55 %.
    ``'auto'`` therefore exports the EMA only once β^t < 1 %, and the raw weights of shorter runs.
    """
    from pixal3d.trainers.checkpoint import latest_step
    if weights == "raw":
        return None
    rate = json.loads((Path(run_dir) / "config.json").read_text())["trainer"]["args"].get("ema_rate", 0.9999)
    rate = float(rate[0] if isinstance(rate, (list, tuple)) else rate)
    if weights == "ema":
        return rate
    if weights != "auto":
        raise ValueError(f"weights must be 'auto', 'ema' or 'raw', got {weights!r}")
    step = latest_step(Path(run_dir) / "ckpts")
    return rate if step is not None and rate ** step < 0.01 else None


def export_bf16(run_dir: Path, model: str, out_stem: Path, keep_fp32: bool = False, weights: str = "auto") -> Path:
    """Exports ``model`` of a ``train.py`` run to ``out_stem.{json,safetensors}`` (EMA or raw weights, see
    :func:`choose_export_weights`).

    The JSON keeps the training config's (float32) arguments, so the model computes in float32 on a CPU; with
    ``keep_fp32=False`` the floating tensors are stored as bfloat16 (``from_pretrained`` casts them back).
    """
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file
    from pixal3d.trainers.export import export_checkpoint
    out_stem = Path(out_stem)
    out_stem.parent.mkdir(parents=True, exist_ok=True)
    _, st = export_checkpoint(run_dir, str(out_stem), model=model, ema_rate=choose_export_weights(run_dir, weights))
    if not keep_fp32:
        with safe_open(str(st), framework="pt") as f:
            meta = f.metadata()
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        tensors = {k: v.to(torch.bfloat16) if v.dtype == torch.float32 else v for k, v in tensors.items()}
        tmp = Path(str(st) + ".tmp")
        save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, st)
    return out_stem


def write_pipeline_json(folder: Path, stats: Dict[str, dict], steps: int = 12) -> Path:
    """Writes ``folder/pipeline.json`` for the checkpoints of :data:`PIPELINE_MODELS` and the ``dinov3/`` backbone.

    Args:
        stats: ``{'shape': {'mean', 'std'}, 'tex': {'mean', 'std'}}`` latent statistics.
        steps: Euler steps of every stage.
    """
    folder = Path(folder)
    missing = [s for s in PIPELINE_MODELS.values() if not (folder / "ckpts" / f"{s}.json").is_file()]
    if missing or not (folder / "dinov3" / "config.json").is_file():
        raise FileNotFoundError(f"{folder} lacks {['ckpts/' + m for m in missing] or ['dinov3/']}: run the export "
                                "steps first")

    def ext(grid):
        return {"name": "DinoV3ProjFeatureExtractor",
                "args": {"model_name": "dinov3", "image_size": DEMO["image_size"], "grid_resolution": grid}}

    def sampler(**kw):
        return {"name": "FlowEulerGuidanceIntervalSampler", "args": {"sigma_min": 1e-5},
                "params": {"steps": steps, **kw}}
    G = DEMO["latent_grid"]
    cfg = {"name": "Pixal3DImageTo3DPipeline", "args": {
        "models": {k: f"ckpts/{v}" for k, v in PIPELINE_MODELS.items()},
        "sparse_structure_sampler": sampler(guidance_strength=5.0, guidance_rescale=0.7, guidance_interval=[0.6, 1.0],
                                            rescale_t=3.0),
        "shape_slat_sampler": sampler(guidance_strength=5.0, guidance_rescale=0.5, guidance_interval=[0.6, 1.0],
                                      rescale_t=3.0),
        "tex_slat_sampler": sampler(guidance_strength=1.0, guidance_rescale=0.0, guidance_interval=[0.6, 0.9],
                                    rescale_t=3.0),
        "shape_slat_normalization": {"mean": stats["shape"]["mean"], "std": stats["shape"]["std"]},
        "tex_slat_normalization": {"mean": stats["tex"]["mean"], "std": stats["tex"]["std"]},
        "image_cond_models": {"ss": ext(DEMO["ss_latent_resolution"]), "shape_1024": ext(G), "tex_1024": ext(G)},
        "low_vram": False, "default_pipeline_type": "1024"}}
    path = folder / "pipeline.json"
    path.write_text(json.dumps(cfg, indent=2) + "\n")
    return path


def _replace(obj, subs: dict):
    if isinstance(obj, str) and obj in subs:
        return subs[obj]
    if isinstance(obj, dict):
        return {k: _replace(v, subs) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_replace(v, subs) for v in obj]
    return obj


def materialize(stage: str, subs: dict, trainer_overrides: dict) -> dict:
    """``configs/demo/{stage}.json`` with its placeholders replaced (``subs``) and trainer args overridden.

    Raises:
        ValueError: a placeholder left unreplaced, or an invalid result (``train.py``'s own validation).
    """
    from pixal3d.trainers.launch import validate_config
    cfg = json.loads((REPO / "configs" / "demo" / f"{stage}.json").read_text())
    cfg = _replace(cfg, subs)
    left = [s for s in ("$DEMO_DINOV3", "$DEMO_HELDOUT", "$DEMO_SHAPE_NORM", "$DEMO_TEX_NORM") if s in json.dumps(cfg)]
    if left:
        raise ValueError(f"{stage}: placeholders {left} not replaced")
    cfg["trainer"]["args"].update(trainer_overrides)
    validate_config(cfg)
    return cfg


def _file_mb(stem: Path) -> float:
    return Path(str(stem) + ".safetensors").stat().st_size / 2 ** 20


# ----------------------------------------------------------------------------------------------- the chain
class Chain:
    """The resumable chain of :data:`STEPS` for one work folder (see the module docstring)."""

    def __init__(self, args):
        self.a = args
        self.work = Path(args.work).resolve()
        self.data = Path(args.data_root).resolve() if args.data_root else self.work / "data"
        self.pipe = Path(args.pipeline_dir).resolve() if args.pipeline_dir else self.work / "pipeline"
        self.state = self.work / "state"
        for d in (self.work, self.state, self.work / "configs", self.work / "runs", self.work / "ckpts"):
            d.mkdir(parents=True, exist_ok=True)
        self.micro = args.scale == "micro"
        self.device = args.device or ("cuda" if _cuda() else "cpu")
        R = DEMO["ovoxel_resolution"]
        self.lat = {"shape": self.data / "shape_latents" / f"{ENC_NAMES['shape']}_{R}_view",
                    "tex": self.data / "pbr_latents" / f"{ENC_NAMES['tex']}_{R}_view",
                    "ss": self.data / "ss_latents" / f"{ENC_NAMES['ss']}_{DEMO['latent_grid']}_view"}

    # ---- bookkeeping
    def log(self, line: str):
        print(f"[train_demo] {line}", flush=True)

    def run(self, cmd: List[str], name: str, log_file: Optional[Path] = None):
        """Runs ``cmd`` from the repository root, appending it to ``commands.log``; output to ``log_file``."""
        text = " ".join(shlex.quote(str(c)) for c in cmd)
        t0 = time.time()
        self.log(f"$ {text}")
        with open(self.work / "commands.log", "a") as cl:
            cl.write(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {name}: {text}\n")
        env = None
        if getattr(self, "_threads", None):
            # concurrent trainings each default to every core for intra-op work. On the device run the SS VAE took
            # ~15 samples/s beside the two SC-VAEs and ~580 samples/s alone; oversubscribed cores are the likely cause
            env = {**os.environ, "OMP_NUM_THREADS": str(self._threads), "MKL_NUM_THREADS": str(self._threads)}
        if log_file is None:
            rc = subprocess.call([str(c) for c in cmd], cwd=REPO, env=env)
        else:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            with open(log_file, "a") as lf:
                rc = subprocess.call([str(c) for c in cmd], cwd=REPO, stdout=lf, stderr=subprocess.STDOUT, env=env)
        with open(self.work / "commands.log", "a") as cl:
            cl.write(f"    -> rc={rc} in {time.time() - t0:.1f} s\n")
        if rc != 0:
            where = f" (log: {log_file})" if log_file else ""
            raise ChainError(f"step {name}: command failed with exit status {rc}{where}: {text}")

    def done(self, step: str) -> bool:
        return (self.state / f"{step}.done").is_file()

    def mark(self, step: str, info=None):
        (self.state / f"{step}.done").write_text(json.dumps(info or {}, indent=1) + "\n")

    def forget(self, step: str):
        for s in STEPS[STEPS.index(step):]:
            (self.state / f"{s}.done").unlink(missing_ok=True)

    # ---- steps
    def toolkit(self, step: str, *extra):
        cmd = [sys.executable, "-m", f"data_toolkit.{step}", "--root", self.data, "--no_progress", *extra]
        if self.micro:
            cmd += ["--instances", ",".join(self.a.micro_assets)]
        self.run(cmd, f"data/{step}", self.work / "logs" / "data.log")

    def finalize(self):
        self.run([sys.executable, "-m", "data_toolkit.build_metadata", "--root", self.data, "--finalize"],
                 "data/finalize", self.work / "logs" / "data.log")

    def step_data(self):
        R, w = str(DEMO["ovoxel_resolution"]), ["--workers", str(self.a.workers)]
        if not (self.data / "metadata.csv").is_file():
            self.run([sys.executable, "-m", "data_toolkit.build_metadata", "--input", self.a.assets, "--root",
                      self.data], "data/build_metadata", self.work / "logs" / "data.log")
        for step in ("dump_mesh", "dump_pbr", "asset_stats"):
            self.toolkit(step, *w)
        self.toolkit("render_cond", "--num_views", str(self.a.num_views), "--resolution",
                     str(self.a.render_resolution), "--samples", str(self.a.render_samples), *w)
        for step in ("dual_grid", "voxelize_pbr", "dual_grid_view", "voxelize_pbr_view"):
            self.toolkit(step, "--resolution", R, *w)
        self.finalize()

    def _assets(self) -> Dict[str, str]:
        import csv
        with open(self.data / "metadata.csv", newline="") as f:
            rows = {r["sha256"]: r["name"] for r in csv.DictReader(f)}
        if self.micro:
            rows = {s: n for s, n in rows.items() if n in set(self.a.micro_assets)}
            if len(rows) != len(self.a.micro_assets):
                raise ChainError(f"micro assets {self.a.micro_assets} not all found in {self.data}/metadata.csv")
        return rows

    def step_split(self):
        held = self.work / "heldout.txt"
        assets = self._assets()
        if not held.is_file():
            k = self.a.num_heldout if self.a.num_heldout is not None else (1 if self.micro else 6)
            shas = choose_heldout(assets, k, self.a.seed)
            held.write_text("".join(s + "\n" for s in shas))
        shas = held.read_text().split()
        info = {"seed": self.a.seed, "num_assets": len(assets),
                "heldout": [{"sha256": s, "name": assets.get(s, "?")} for s in shas],
                "train": sorted(assets[s] for s in assets if s not in set(shas))}
        (self.work / "heldout.json").write_text(json.dumps(info, indent=1) + "\n")
        return info

    def step_dino(self):
        write_dino(self.pipe / "dinov3")

    def _subs(self) -> dict:
        subs = {"$DEMO_DINOV3": str(self.pipe / "dinov3"), "$DEMO_HELDOUT": str(self.work / "heldout.txt")}
        stats_path = self.work / "latent_stats.json"
        if stats_path.is_file():
            st = json.loads(stats_path.read_text())
            subs["$DEMO_SHAPE_NORM"] = {k: st["shape"][k] for k in ("mean", "std")}
            subs["$DEMO_TEX_NORM"] = {k: st["tex"][k] for k in ("mean", "std")}
        return subs

    def _data_dir(self, stage: str) -> str:
        R, d = DEMO["ovoxel_resolution"], self.data
        if stage in VAE_STAGES:
            # only the folders this stage reads: --data_dir rejects roles that are not folders, and a VAE-only data
            # copy (e.g. one carried to a GPU machine) has no mesh or PBR dumps
            folder = {"ss_vae": ("dual_grid_view", f"dual_grid_view_{R}"), "shape_vae": ("dual_grid_view", f"dual_grid_view_{R}"),
                      "tex_vae": ("pbr_voxel_view", f"pbr_voxels_view_fix_{R}")}[stage]
            roles = {"asset_stats": d / "asset_stats", folder[0]: d / folder[1]}
            if build_configs()[stage]["dataset"]["args"].get("with_mesh"):
                roles["mesh_dump"] = d / "mesh_dumps"
        else:
            roles = {"render_cond": d / "renders_cond", "ss_latent": self.lat["ss"], "shape_latent": self.lat["shape"],
                     "pbr_latent": self.lat["tex"]}
        return json.dumps({"demo": {"base": str(d), **{k: str(v) for k, v in roles.items()}}})

    def _overrides(self, stage: str, steps: int, batch: Optional[int] = None) -> dict:
        o = {"max_steps": int(steps), "i_save": max(1, min(int(steps), 200)), "i_print": 1 if self.micro else 50,
             "i_sample": 10 ** 9}
        if batch is not None:
            o["batch_size_per_gpu"] = batch
        if self.device == "cuda":
            o["num_workers"] = self.a.num_workers
            if stage in FLOW_STAGES:
                o.update(mix_precision_mode="amp", mix_precision_dtype="bfloat16")
        return o

    def _train(self, stage: str, overrides: dict, out: Path, log_name: str, max_minutes=None):
        cfg = materialize(stage, self._subs(), overrides)
        cfg_path = self.work / "configs" / f"{log_name}.json"
        cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
        budget = [] if max_minutes is None else ["--max_minutes", f"{max_minutes:.3f}"]
        self.run([sys.executable, "train.py", "--config", cfg_path, "--output_dir", out, "--data_dir",
                  self._data_dir(stage), "--device", self.device, "--seed", str(self.a.seed), "--auto_retry", "0",
                  *budget], stage, self.work / "logs" / f"{log_name}.log")

    def _plan_steps(self, stage: str) -> dict:
        """Micro: ``--micro_steps``. Full: calibrate, then fill ``--stage_minutes``."""
        plan_path = self.work / "plan.json"
        plan = json.loads(plan_path.read_text()) if plan_path.is_file() else {}
        if stage in plan:
            return plan[stage]
        if self.micro:
            entry = {"steps": self.a.micro_steps, "batch": 2}
        elif self.a.calib_steps == 0:  # no calibration: the wall-clock budget alone ends the stage
            entry = {"steps": int(self.a.max_steps), "batch": None, "budget_minutes": self.a.stage_minutes}
        else:
            calib = self.work / "runs" / f"{stage}_calib"
            shutil.rmtree(calib, ignore_errors=True)
            self._train(stage, self._overrides(stage, self.a.calib_steps), calib, f"{stage}_calib")
            rows = [json.loads(l) for l in (calib / "metrics.jsonl").read_text().splitlines() if l.strip()]
            sps = [r["perf/samples_per_s"] for r in rows if r["step"] > 5 and "perf/samples_per_s" in r]
            if not sps:
                raise ChainError(f"{stage}: calibration logged no throughput ({calib}/metrics.jsonl)")
            batch = json.loads((self.work / "configs" / f"{stage}_calib.json").read_text())["trainer"]["args"][
                "batch_size_per_gpu"]
            sec_per_step = batch / float(np.median(sps))
            # 1.5x the calibrated steps, with the stage's minutes as a hard wall-clock budget: GPU sharing
            # (--parallel) can slow a stage well below its calibrated speed, and the budget then ends it on time
            steps = int(1.5 * self.a.stage_minutes * 60 / sec_per_step)
            steps = int(min(max(steps, self.a.min_steps), self.a.max_steps))
            entry = {"steps": steps, "batch": None, "sec_per_step": round(sec_per_step, 4),
                     "expected_minutes": round(steps * sec_per_step / 60, 2)}
        # stages may be planned by concurrent chains (several trainings sharing one GPU): merge under a lock
        import fcntl
        with open(self.work / ".plan.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            plan = json.loads(plan_path.read_text()) if plan_path.is_file() else {}
            plan[stage] = entry
            tmp = plan_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(plan, indent=1) + "\n")
            os.replace(tmp, plan_path)
        return entry

    def step_train(self, stage: str):
        p = self._plan_steps(stage)
        self._train(stage, self._overrides(stage, p["steps"], p["batch"]), self.work / "runs" / stage, stage,
                    max_minutes=None if self.micro else self.a.stage_minutes)

    def step_export_vae(self):
        ck, pc, runs = self.work / "ckpts", self.pipe / "ckpts", self.work / "runs"
        w, info = self.a.export_weights, {}
        for kind in ("ss", "shape", "tex"):
            run = runs / f"{kind}_vae"
            if not (run / "ckpts").is_dir() and all(Path(f"{p}.safetensors").is_file()
                                                    for p in (ck / f"{kind}_enc", pc / f"{kind}_dec")):
                # trained and exported elsewhere (e.g. another machine): keep its exports
                self.log(f"export_vae: {run} has no checkpoints; keeping the existing {kind}_enc / {kind}_dec")
                info[f"{kind}_vae"] = {"weights": "exported before"}
                continue
            export_bf16(run, "encoder", ck / f"{kind}_enc", keep_fp32=True, weights=w)
            export_bf16(run, "decoder", pc / f"{kind}_dec", weights=w)
            info[f"{kind}_vae"] = self._exported(run)
        return info

    def _exported(self, run: Path) -> dict:
        from pixal3d.trainers.checkpoint import latest_step
        rate = choose_export_weights(run, self.a.export_weights)
        return {"step": latest_step(run / "ckpts"), "weights": "raw" if rate is None else f"ema{rate}"}

    def step_encode(self):
        R, ck = str(DEMO["ovoxel_resolution"]), self.work / "ckpts"
        dev = ["--device", self.device, "--force", "--view"]
        self.finalize()
        self.toolkit("encode_shape_latent", "--resolution", R, "--enc_pretrained", ck / "shape_enc",
                     "--enc_name", ENC_NAMES["shape"], *dev)
        self.toolkit("encode_pbr_latent", "--resolution", R, "--enc_pretrained", ck / "tex_enc",
                     "--enc_name", ENC_NAMES["tex"], *dev)
        self.finalize()
        self.toolkit("encode_ss_latent", "--resolution", str(DEMO["latent_grid"]), "--enc_pretrained",
                     ck / "ss_enc", "--enc_name", ENC_NAMES["ss"], "--shape_latent_dir", self.lat["shape"], *dev)
        self.finalize()

    def step_stats(self):
        held = set((self.work / "heldout.txt").read_text().split())

        def files(d: Path):
            return sorted(f for f in d.glob("*/view*.npz") if f.parent.name not in held)
        st = {"shape": latent_stats(files(self.lat["shape"])), "tex": latent_stats(files(self.lat["tex"])),
              "ss": latent_stats(files(self.lat["ss"]), key="z")}
        (self.work / "latent_stats.json").write_text(json.dumps(st, indent=1) + "\n")
        return {k: {"rows": v["rows"], "files": v["files"]} for k, v in st.items()}

    def step_export(self):
        pc = self.pipe / "ckpts"
        exported = {}
        for stage in FLOW_STAGES:
            export_bf16(self.work / "runs" / stage, "denoiser", pc / stage, weights=self.a.export_weights)
            exported[stage] = self._exported(self.work / "runs" / stage)
        stats = json.loads((self.work / "latent_stats.json").read_text())
        write_pipeline_json(self.pipe, stats, steps=self.a.sample_steps)
        shutil.copy(self.work / "heldout.json", self.pipe / "heldout.json")
        sizes = {s: round(_file_mb(pc / s), 3) for s in PIPELINE_MODELS.values()}
        dino = sum(f.stat().st_size for f in (self.pipe / "dinov3").iterdir()) / 2 ** 20
        info = {"scale": self.a.scale, "device": self.device, "plan": json.loads((self.work / "plan.json").read_text()),
                "exported": exported, "checkpoint_mb": sizes, "dinov3_mb": round(dino, 3),
                "total_mb": round(sum(sizes.values()) + dino, 3),
                "latent_rows": {k: stats[k]["rows"] for k in stats}, "ss_latent_std": stats["ss"]["std"]}
        (self.pipe / "demo_info.json").write_text(json.dumps(info, indent=1) + "\n")
        return info

    def _one(self, step):
        t0 = time.time()
        self.log(f"{step}: start")
        if step in VAE_STAGES + FLOW_STAGES:
            info = self.step_train(step)
        else:
            info = getattr(self, f"step_{step}")()
        self.mark(step, {"seconds": round(time.time() - t0, 1), **(info or {})})
        self.log(f"{step}: done in {time.time() - t0:.1f} s")

    def execute(self, steps):
        """Runs ``steps`` in order. With ``--parallel`` the pending stages of one group (the three VAEs, or the three
        flows, which do not depend on each other) train at the same time on the one device: small models leave most
        of a large GPU idle, and each stage's calibration then measures its speed under that sharing."""
        pending = [s for s in steps if not self.done(s)]
        for s in steps:
            if s not in pending:
                self.log(f"{s}: done before, skipped")
        i = 0
        while i < len(pending):
            group = next((g for g in (VAE_STAGES, FLOW_STAGES) if pending[i] in g), None)
            batch = [pending[i]]
            if getattr(self.a, "parallel", False) and group is not None:
                while i + len(batch) < len(pending) and pending[i + len(batch)] in group:
                    batch.append(pending[i + len(batch)])
            if len(batch) == 1:
                self._one(batch[0])
            else:
                from concurrent.futures import ThreadPoolExecutor
                for st in batch:  # imports the model/dataset registries here, not concurrently inside the threads
                    materialize(st, self._subs(), {})
                self._threads = max(1, (os.cpu_count() or 1) // len(batch))
                try:
                    with ThreadPoolExecutor(len(batch)) as ex:
                        futures = [ex.submit(self._one, st) for st in batch]
                        errors = [f.exception() for f in futures]
                finally:
                    self._threads = None
                bad = [(st, e) for st, e in zip(batch, errors) if e is not None]
                if bad:
                    raise ChainError("; ".join(f"{st}: {e}" for st, e in bad))
            i += len(batch)


def _cuda() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except ImportError:
        return False


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", required=True, help="work folder (runs, logs, state, configs, latents stats)")
    ap.add_argument("--scale", choices=["micro", "full"], default="micro")
    ap.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when available")
    ap.add_argument("--assets", default="/work/shared/data/assets3d", help="folder of raw 3D assets")
    ap.add_argument("--data_root", default=None, help="data-toolkit root (default WORK/data); finished assets of an "
                                                      "existing root are reused")
    ap.add_argument("--pipeline_dir", default=None, help="output pipeline folder (default WORK/pipeline)")
    ap.add_argument("--micro_assets", type=lambda s: s.split(","), default=list(MICRO_ASSETS))
    ap.add_argument("--micro_steps", type=int, default=4, help="training steps per stage at --scale micro")
    ap.add_argument("--num_heldout", type=int, default=None, help="held-out assets (default: 6 full, 1 micro)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--num_views", type=int, default=DEMO["num_views"])
    ap.add_argument("--render_resolution", type=int, default=256)
    ap.add_argument("--render_samples", type=int, default=16)
    ap.add_argument("--workers", type=int, default=1, help="data-toolkit worker processes")
    ap.add_argument("--num_workers", type=int, default=4, help="data-loader workers per training (cuda only)")
    ap.add_argument("--stage_minutes", type=float, default=6.0, help="training minutes per stage at --scale full")
    ap.add_argument("--calib_steps", type=int, default=30,
                    help="steps of the speed calibration run (0: none; --max_steps and the stage's minutes bound it)")
    ap.add_argument("--min_steps", type=int, default=200)
    ap.add_argument("--max_steps", type=int, default=20000)
    ap.add_argument("--sample_steps", type=int, default=12, help="Euler steps per stage written to pipeline.json")
    ap.add_argument("--parallel", action="store_true",
                    help="train the three VAEs together, then the three flows together, on the one device")
    ap.add_argument("--export_weights", choices=["auto", "ema", "raw"], default="auto",
                    help="auto: EMA once it has forgotten its random start (rate^steps < 1%%), else the raw weights")
    ap.add_argument("--steps", default=None, help="comma-separated subset of the steps to run (default: all)")
    ap.add_argument("--redo", default=None, help="forget these steps (and every later one) before running")
    ap.add_argument("--list_steps", action="store_true")
    return ap


def main(argv=None):
    a = build_parser().parse_args(argv)
    if a.list_steps:
        print("\n".join(STEPS))
        return
    chain = Chain(a)
    if a.redo:
        for s in a.redo.split(","):
            if s not in STEPS:
                raise SystemExit(f"unknown step {s!r}; steps: {', '.join(STEPS)}")
            chain.forget(s)
    steps = STEPS if not a.steps else [s for s in a.steps.split(",")]
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        raise SystemExit(f"unknown step(s) {unknown}; steps: {', '.join(STEPS)}")
    t0 = time.time()
    chain.execute(steps)
    chain.log(f"all requested steps done in {time.time() - t0:.1f} s; pipeline folder: {chain.pipe}")


if __name__ == "__main__":
    main()
