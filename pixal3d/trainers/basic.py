"""``BasicTrainer``: the optimisation loop shared by every trainer (TRELLIS2_SPEC §5.2).

A subclass defines ``training_losses(**batch) -> (terms, status)`` where ``terms['loss']`` is the scalar to minimise
(other entries and ``status`` are logged). Everything else lives here: optimiser, EMA, mixed precision, gradient
clipping, gradient accumulation (``batch_split``) with DDP ``no_sync``, exactly resumable data order and RNG,
atomic checkpoints, logs.
"""
import contextlib
import math
import os
import random
import resource
import time
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from . import dist_utils as du
from .checkpoint import atomic_save, ema_ckpt_path, latest_step, misc_ckpt_path, model_ckpt_path
from .elastic import build_memory_controller
from .grad_clip import build_grad_clipper
from .logger import TrainLogger
from .sampler import ResumableSampler

__all__ = ["BasicTrainer", "NonFiniteLossError", "to_device"]

_OOM_HINT = ("out of memory: lower trainer.batch_size_per_gpu, raise trainer.batch_split (gradient accumulation), "
             "lower dataset.max_tokens, turn on use_checkpoint in the model args or trainer.elastic, or use "
             "mix_precision_mode 'amp' with bfloat16")


class NonFiniteLossError(FloatingPointError):
    """A NaN/Inf loss. Training stops; the last checkpoint on disk is left untouched."""


def to_device(obj, device, non_blocking: bool = False):
    """Moves tensors (and SparseTensor-like objects with ``.to``) inside dicts/lists/tuples to ``device``."""
    if isinstance(obj, dict):
        return {k: to_device(v, device, non_blocking) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device, non_blocking) for v in obj)
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=non_blocking)
    if hasattr(obj, "feats") and hasattr(obj, "to"):
        return obj.to(device)
    return obj


def _count_tokens(batch: dict) -> int:
    """Tokens a micro-batch feeds the network: voxels of a sparse ``x_0``, else ``B·prod(spatial)`` of a dense one."""
    x = batch.get("x_0")
    if x is None:
        return 0
    if hasattr(x, "feats"):
        return int(x.feats.shape[0])
    return int(x.shape[0] * math.prod(x.shape[2:])) if x.dim() > 2 else int(x.shape[0])


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "random": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["random"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class BasicTrainer:
    """Config-driven training loop (TRELLIS2_SPEC §5.2).

    Args (trainer section of the config; reference names):
        models: ``{name: nn.Module}`` already on ``device``; every model with trainable parameters is optimised.
        dataset: a ``torch.utils.data.Dataset`` with ``collate_fn(batch, split_size)`` returning a list of
            micro-batch dicts (see :mod:`pixal3d.datasets`).
        output_dir: run folder (``ckpts/``, ``log.txt``, ``metrics.jsonl``, ``tb_logs/``, ``samples/``).
        load_dir: where to resume from (default ``output_dir``).
        step: checkpoint step to resume from (``None``: start fresh).
        max_steps: last optimisation step.
        batch_size / batch_size_per_gpu: global or per-process batch size (exactly one).
        batch_split: micro-batches per step (gradient accumulation).
        optimizer: ``{'name': torch.optim class name, 'args': {...}}``.
        lr_scheduler: optional ``{'name': torch.optim.lr_scheduler class name, 'args': {...}}`` stepped per step.
        elastic: optional ``{'name': 'LinearMemoryController', 'args': {...}}`` (CUDA only).
        grad_clip: ``None``, a max norm, or ``{'name': 'AdaptiveGradClipper', 'args': {...}}``.
        ema_rate: float or list of floats (EMA copies kept on rank 0).
        mix_precision_mode: ``None``, ``'amp'`` (autocast; GradScaler for float16) or ``'inflat_all'`` (float16
            weights, float32 master copy, dynamic loss scale ``2^log_scale``).
        mix_precision_dtype: ``'bfloat16'`` or ``'float16'``.
        fp16_mode: legacy alias: ``'amp'`` / ``'inflat_all'`` with float16.
        fp16_scale_growth: ``log_scale`` increment per finite ``inflat_all`` step.
        parallel_mode: ``'ddp'`` (the only mode).
        finetune_ckpt: ``{model: path}`` (``.pt`` state dict or a ``from_pretrained`` stem) loaded, matching keys and
            shapes only, when not resuming.
        i_print, i_log, i_sample, i_save, i_ddpcheck: intervals in steps.
        snapshot_batch_size: samples drawn by :meth:`snapshot`.
        prefetch_data: pin memory and copy batches asynchronously (CUDA).
        num_workers: DataLoader workers per process (default ``ceil(cpu_count / world_size)``, 0 allowed).
        seed: base seed of the data order (the per-rank RNG seeds are set by the launcher).
        device: this process's device.
        use_tensorboard: log to ``tb_logs/`` when TensorBoard is installed.
        wandb: ``None`` or W&B settings (see :class:`~pixal3d.trainers.logger.TrainLogger`).

    Raises:
        ValueError: inconsistent or unknown settings (the message names the key and the fix).
        FileNotFoundError: a resume step whose files are missing.
    """

    def __init__(self, models: Dict[str, nn.Module], dataset, *, output_dir, load_dir=None, step: Optional[int] = None,
                 max_steps: int = 1_000_000, batch_size: Optional[int] = None,
                 batch_size_per_gpu: Optional[int] = None, batch_split: Optional[int] = None,
                 optimizer: Optional[dict] = None, lr_scheduler: Optional[dict] = None, elastic: Optional[dict] = None,
                 grad_clip=None, ema_rate=0.9999, fp16_mode: Optional[str] = None,
                 mix_precision_mode: Optional[str] = None, mix_precision_dtype: str = "bfloat16",
                 fp16_scale_growth: float = 1e-3, parallel_mode: str = "ddp", finetune_ckpt: Optional[dict] = None,
                 i_print: int = 1000, i_log: int = 500, i_sample: int = 10000, i_save: int = 10000,
                 i_ddpcheck: int = 10000, snapshot_batch_size: int = 4, prefetch_data: bool = True,
                 num_workers: Optional[int] = None, seed: int = 0, device="cpu", use_tensorboard: bool = True,
                 wandb: Optional[dict] = None):
        self.models = models
        self.dataset = dataset
        self.output_dir = Path(output_dir)
        self.load_dir = Path(load_dir) if load_dir is not None else self.output_dir
        self.device = torch.device(device)
        self.rank, self.world_size = du.get_rank(), du.get_world_size()
        self.max_steps = int(max_steps)
        if (batch_size is None) == (batch_size_per_gpu is None):
            raise ValueError("set exactly one of trainer.batch_size (global) and trainer.batch_size_per_gpu")
        if batch_size is not None:
            if batch_size % self.world_size:
                raise ValueError(f"batch_size {batch_size} is not divisible by the {self.world_size} processes; "
                                 f"use batch_size_per_gpu")
            batch_size_per_gpu = batch_size // self.world_size
        self.batch_size_per_gpu = int(batch_size_per_gpu)
        self.batch_size = self.batch_size_per_gpu * self.world_size
        self.batch_split = int(batch_split or 1)
        if not 1 <= self.batch_split <= self.batch_size_per_gpu:
            raise ValueError(f"batch_split {batch_split} must be in [1, batch_size_per_gpu={self.batch_size_per_gpu}]")
        if parallel_mode != "ddp":
            raise ValueError(f"parallel_mode {parallel_mode!r} is not supported; use 'ddp'")
        if fp16_mode is not None:
            if mix_precision_mode is not None:
                raise ValueError("set either fp16_mode (legacy) or mix_precision_mode, not both")
            mix_precision_mode, mix_precision_dtype = fp16_mode, "float16"
        if mix_precision_mode not in (None, "amp", "inflat_all"):
            raise ValueError(f"mix_precision_mode must be null, 'amp' or 'inflat_all', got {mix_precision_mode!r}")
        if mix_precision_dtype not in ("bfloat16", "float16"):
            raise ValueError(f"mix_precision_dtype must be 'bfloat16' or 'float16', got {mix_precision_dtype!r}")
        self.mix_precision_mode = mix_precision_mode
        self.mix_precision_dtype = getattr(torch, mix_precision_dtype)
        self.fp16_scale_growth = fp16_scale_growth
        self.i_print, self.i_log, self.i_sample, self.i_save = i_print, i_log, i_sample, i_save
        self.i_ddpcheck, self.snapshot_batch_size = i_ddpcheck, snapshot_batch_size
        self.prefetch_data = prefetch_data and self.device.type == "cuda"
        self.seed = seed
        self.ema_rates = [float(r) for r in (ema_rate if isinstance(ema_rate, (list, tuple)) else [ema_rate])]
        self.step = 0
        self.logger = None
        if du.is_main():
            self.output_dir.mkdir(parents=True, exist_ok=True)
            self.logger = TrainLogger(self.output_dir, use_tensorboard, wandb)

        self._init_models_and_optim(optimizer or {"name": "AdamW", "args": {"lr": 1e-4}}, lr_scheduler, grad_clip,
                                    elastic)
        self._init_data(num_workers)
        if step is not None:
            self.load(step)
        elif finetune_ckpt:
            self.finetune_from(finetune_ckpt)
        self._init_ema()
        self._log_text(f"trainer {type(self).__name__}: {self.world_size} process(es), batch {self.batch_size} "
                       f"({self.batch_size_per_gpu}/process, split {self.batch_split}), "
                       f"{sum(p.numel() for p in self.master_params):,} trainable parameters, "
                       f"{len(self.dataset)} samples, precision {self.mix_precision_mode or 'fp32'}")

    # ------------------------------------------------------------------ setup
    def _log_text(self, line: str) -> None:
        if self.logger is not None:
            self.logger.text(line)

    def _init_models_and_optim(self, optimizer, lr_scheduler, grad_clip, elastic) -> None:
        self.model_names = [n for n, m in self.models.items() if any(p.requires_grad for p in m.parameters())]
        if not self.model_names:
            raise ValueError("no model has trainable parameters")
        if self.mix_precision_mode == "inflat_all":
            for name in self.model_names:
                m = self.models[name]
                if hasattr(m, "convert_to"):
                    m.convert_to(torch.float16)
                else:
                    m.half()
        self.memory_controller = build_memory_controller(elastic)
        if self.memory_controller is not None:
            for name in self.model_names:
                if hasattr(self.models[name], "register_memory_controller"):
                    self.models[name].register_memory_controller(self.memory_controller)
        # model params in a fixed order: models by config order, then named_parameters order
        self.model_params = [p for n in self.model_names for p in self.models[n].parameters() if p.requires_grad]
        if self.mix_precision_mode == "inflat_all":
            self.master_params = [p.detach().float().clone().requires_grad_(True) for p in self.model_params]
            self.log_scale = 20.0
        else:
            self.master_params = self.model_params
        self.training_models = {}
        for name in self.model_names:
            m = self.models[name]
            if du.is_distributed():
                kw = dict(device_ids=[self.device.index]) if self.device.type == "cuda" else {}
                m = nn.parallel.DistributedDataParallel(m, bucket_cap_mb=128, find_unused_parameters=False, **kw)
            self.training_models[name] = m
        if not isinstance(optimizer, dict) or "name" not in optimizer or set(optimizer) - {"name", "args"}:
            raise ValueError(f"trainer.optimizer must be {{'name': <torch.optim class>, 'args': {{...}}}}, "
                             f"got {optimizer!r}")
        opt_cls = getattr(torch.optim, optimizer["name"], None)
        if not (isinstance(opt_cls, type) and issubclass(opt_cls, torch.optim.Optimizer)):
            raise ValueError(f"unknown optimizer {optimizer['name']!r}: use a torch.optim class name such as 'AdamW'")
        self.optimizer = opt_cls(self.master_params, **optimizer.get("args", {}))
        self.lr_scheduler = None
        if lr_scheduler is not None:
            sch_cls = getattr(torch.optim.lr_scheduler, lr_scheduler.get("name", ""), None)
            if sch_cls is None:
                raise ValueError(f"unknown lr_scheduler {lr_scheduler!r}: use a torch.optim.lr_scheduler class name")
            self.lr_scheduler = sch_cls(self.optimizer, **lr_scheduler.get("args", {}))
        self.grad_clip = build_grad_clipper(grad_clip)
        self.scaler = None
        if self.mix_precision_mode == "amp" and self.mix_precision_dtype == torch.float16:
            self.scaler = torch.amp.GradScaler(self.device.type)

    def _init_data(self, num_workers) -> None:
        if len(self.dataset) == 0:
            raise ValueError("the dataset is empty: check --data_dir and the dataset filters")
        self.sampler = ResumableSampler(self.dataset, shuffle=True, seed=self.seed, rank=self.rank,
                                        world_size=self.world_size)
        if num_workers is None:
            num_workers = math.ceil((os.cpu_count() or 1) / self.world_size)
        self.num_workers = int(num_workers)
        collate = getattr(self.dataset, "collate_fn", None)
        if collate is None:
            raise ValueError(f"{type(self.dataset).__name__} has no collate_fn(batch, split_size)")
        self._collate = _SplitCollate(collate, self.batch_split)
        self._data_iter = None
        self.skipped_steps = 0

    def _make_iter(self):
        # one loader for the whole run: the sampler streams (epoch, index) pairs through every epoch, and the workers
        # set each item's epoch themselves (datasets seed their per-item randomness from (seed, epoch, index), so
        # workers need no shared RNG state); a loader per epoch re-forked the workers every few steps on small data
        stream = self.sampler.endless(self.batch_size_per_gpu)
        # a private generator: creating a loader iterator otherwise draws a worker base seed from the global RNG,
        # and a resumed run (which creates one more iterator) would then see different noise
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.sampler.epoch * 101 + self.rank)
        loader = DataLoader(_EpochItems(self.dataset), batch_size=self.batch_size_per_gpu, sampler=_Once(stream),
                            num_workers=self.num_workers, collate_fn=self._collate, drop_last=True,
                            pin_memory=self.prefetch_data, generator=gen)
        return iter(loader)

    def next_batch(self) -> List[dict]:
        """The next list of micro-batches; crosses epoch boundaries; marks the samples consumed.

        Raises:
            ValueError: the dataset holds no full batch for this process.
        """
        if self._data_iter is None:
            self._data_iter = self._make_iter()
        batch = next(self._data_iter)
        self.sampler.advance_batch(self.batch_size_per_gpu)
        return batch

    def _init_ema(self) -> None:
        self.ema_params = {}
        if not du.is_main():
            return
        loaded = getattr(self, "_loaded_ema", {})
        for rate in self.ema_rates:
            self.ema_params[rate] = loaded.get(rate) or [p.detach().float().clone() for p in self.master_params]

    # ------------------------------------------------------------------ fine-tuning
    def finetune_from(self, finetune_ckpt: dict) -> None:
        """Loads matching keys and shapes from ``{model: path}``; reports what was skipped (TRELLIS2_SPEC §5.2).

        A path ending in ``.pt`` is a training checkpoint state dict; otherwise a ``from_pretrained`` stem whose
        ``.safetensors`` is read. TRELLIS.2 cross-attention keys are remapped for Pixal3D proj models.

        Raises:
            KeyError: a model name not in ``models``. FileNotFoundError: a missing file.
        """
        from pixal3d.models.pretrained import remap_cross_attn_keys, resolve_checkpoint
        for name, path in finetune_ckpt.items():
            if name not in self.models:
                raise KeyError(f"finetune_ckpt names model {name!r}; models are {sorted(self.models)}")
            if str(path).endswith(".pt"):
                if not Path(path).exists():
                    raise FileNotFoundError(f"finetune_ckpt[{name!r}]: {path} does not exist")
                sd = torch.load(path, map_location="cpu", weights_only=True)
            else:
                from safetensors.torch import load_file
                sd = load_file(str(resolve_checkpoint(path)[1]))
            model = self.models[name]
            sd = remap_cross_attn_keys(sd, model)
            own = model.state_dict()
            ok = {k: v for k, v in sd.items() if k in own and own[k].shape == v.shape}
            model.load_state_dict(ok, strict=False)
            skipped = sorted(k for k in own if k not in ok)
            self._log_text(f"finetune {name} from {path}: loaded {len(ok)}/{len(own)} entries"
                           + (f"; not in the checkpoint or different shape: {skipped[:20]}" if skipped else ""))
        if self.mix_precision_mode == "inflat_all":
            with torch.no_grad():
                for mp, p in zip(self.master_params, self.model_params):
                    mp.copy_(p.float())

    # ------------------------------------------------------------------ checkpoints
    def _master_state_dict(self, name: str, values: Optional[List[torch.Tensor]] = None) -> dict:
        """State dict of model ``name`` with ``values`` (aligned with ``master_params``) written over its trainable
        parameters, as float32 CPU tensors where they are masters."""
        model = self.models[name]
        sd = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        values = values if values is not None else self.master_params
        by_id = {id(p): v for p, v in zip(self.model_params, values)}
        for k, p in model.named_parameters():
            if id(p) in by_id:
                sd[k] = by_id[id(p)].detach().float().cpu().clone()
        return sd

    def save(self) -> None:
        """Writes the checkpoint of ``self.step`` (all ranks call it; rank 0 writes). The misc file goes last."""
        gathered = du.all_gather_object({"rng": _rng_state(), "sampler": self.sampler.state_dict()})
        if not du.is_main():
            du.barrier()
            return
        ckpt_dir = self.output_dir / "ckpts"
        for name in self.model_names:
            atomic_save(self._master_state_dict(name), model_ckpt_path(ckpt_dir, name, self.step))
            for rate, ema in self.ema_params.items():
                atomic_save(self._master_state_dict(name, ema), ema_ckpt_path(ckpt_dir, name, rate, self.step))
        misc = {"step": self.step, "world_size": self.world_size, "optimizer": self.optimizer.state_dict(),
                "sampler": [g["sampler"] for g in gathered], "rng": [g["rng"] for g in gathered],
                "skipped_steps": self.skipped_steps}
        if self.lr_scheduler is not None:
            misc["lr_scheduler"] = self.lr_scheduler.state_dict()
        if self.scaler is not None:
            misc["scaler"] = self.scaler.state_dict()
        if self.mix_precision_mode == "inflat_all":
            misc["log_scale"] = self.log_scale
        if self.grad_clip is not None:
            misc["grad_clip"] = self.grad_clip.state_dict()
        if self.memory_controller is not None:
            misc["elastic"] = self.memory_controller.state_dict()
        atomic_save(misc, misc_ckpt_path(ckpt_dir, self.step))
        self._log_text(f"saved checkpoint of step {self.step} to {ckpt_dir}")
        du.barrier()

    def load(self, step: int) -> None:
        """Resumes from ``{load_dir}/ckpts/*_step{step}.pt`` (models, EMA, optimiser, sampler, RNG, scaler, clipper).

        Raises:
            FileNotFoundError: a file of that step is missing (names it and the steps available).
        """
        ckpt_dir = self.load_dir / "ckpts"

        def need(path):
            if not path.exists():
                raise FileNotFoundError(f"cannot resume step {step}: {path} is missing (latest complete step in "
                                        f"{ckpt_dir}: {latest_step(ckpt_dir)}); use --ckpt none to start fresh")
            return torch.load(path, map_location="cpu", weights_only=False)

        misc = need(misc_ckpt_path(ckpt_dir, step))
        for name in self.model_names:
            sd = need(model_ckpt_path(ckpt_dir, name, step))
            self.models[name].load_state_dict(sd)
            if self.mix_precision_mode == "inflat_all":
                own = dict(self.models[name].named_parameters())
                by_id = {id(p): mp for p, mp in zip(self.model_params, self.master_params)}
                with torch.no_grad():
                    for k, p in own.items():
                        if id(p) in by_id:
                            by_id[id(p)].copy_(sd[k].float())
        self._loaded_ema = {}
        if du.is_main():
            for rate in self.ema_rates:
                vals = []
                for name in self.model_names:
                    sd = need(ema_ckpt_path(ckpt_dir, name, rate, step))
                    vals += [sd[k].float().to(self.device) for k, p in self.models[name].named_parameters()
                             if p.requires_grad]
                self._loaded_ema[rate] = vals
        self.optimizer.load_state_dict(misc["optimizer"])
        if self.lr_scheduler is not None and "lr_scheduler" in misc:
            self.lr_scheduler.load_state_dict(misc["lr_scheduler"])
        if self.scaler is not None and "scaler" in misc:
            self.scaler.load_state_dict(misc["scaler"])
        if self.mix_precision_mode == "inflat_all":
            self.log_scale = misc.get("log_scale", self.log_scale)
        if self.grad_clip is not None and "grad_clip" in misc:
            self.grad_clip.load_state_dict(misc["grad_clip"])
        if self.memory_controller is not None and "elastic" in misc:
            self.memory_controller.load_state_dict(misc["elastic"])
        self.skipped_steps = misc.get("skipped_steps", 0)
        self.step = int(misc["step"])
        if misc["world_size"] == self.world_size:
            self.sampler.load_state_dict(misc["sampler"][self.rank])
            _set_rng_state(misc["rng"][self.rank])
        else:
            # a different process count cannot replay the same data order; continue at the saved epoch
            self.sampler.load_state_dict({**misc["sampler"][0], "idx": 0})
            warnings.warn(f"resuming a {misc['world_size']}-process checkpoint with {self.world_size} processes: "
                          f"the data order restarts at epoch {self.sampler.epoch}")
        self._log_text(f"resumed from {ckpt_dir} step {self.step} (epoch {self.sampler.epoch}, "
                       f"sample {self.sampler.idx} of the epoch on rank 0)")

    # ------------------------------------------------------------------ one step
    def training_losses(self, **batch):
        """Returns ``(terms, status)``; ``terms['loss']`` is minimised. Implemented by subclasses."""
        raise TypeError(f"{type(self).__name__} must define training_losses(**batch)")

    def _autocast(self):
        enabled = self.mix_precision_mode == "amp"
        return torch.autocast(self.device.type, dtype=self.mix_precision_dtype, enabled=enabled)

    def _check_finite_loss(self, loss: torch.Tensor, ids) -> None:
        local_bad = not bool(torch.isfinite(loss.detach()).all())
        bad = torch.tensor([1.0 if local_bad else 0.0], device=self.device)
        if du.is_distributed():
            # every rank must stop together, or the others would wait forever in the gradient all-reduce
            torch.distributed.all_reduce(bad)
        if bad.item() > 0:
            latest = latest_step(self.output_dir / "ckpts")
            where = f"batch {ids}" if local_bad else "another rank's batch"
            raise NonFiniteLossError(
                f"non-finite loss ({loss.item()}) at step {self.step + 1} on rank {self.rank}, {where}. Stopped; "
                f"the last checkpoint (step {latest}) is kept. Check those samples, lower the learning rate, or use "
                f"bfloat16 instead of float16")

    def run_step(self, micro_batches: List[dict]) -> dict:
        """One optimisation step over ``micro_batches``; returns floats to log.

        Raises:
            NonFiniteLossError: the loss of a micro-batch is NaN/Inf (names the step and the batch ids).
        """
        for p in self.master_params:
            p.grad = None
        for p in self.model_params:
            p.grad = None
        logs = defaultdict(float)
        n = len(micro_batches)
        tokens = 0
        for i, mb in enumerate(micro_batches):
            mb = dict(mb)
            ids = mb.pop("_ids", None)
            mb = to_device(mb, self.device, non_blocking=self.prefetch_data)
            tokens += _count_tokens(mb)
            last = i == n - 1
            with contextlib.ExitStack() as stack:
                if not last and du.is_distributed():
                    for m in self.training_models.values():
                        stack.enter_context(m.no_sync())
                with self._autocast():
                    terms, status = self.training_losses(**mb)
                loss = terms["loss"]
                self._check_finite_loss(loss, ids)
                scaled = loss.float() / n
                if self.scaler is not None:
                    scaled = self.scaler.scale(scaled)
                elif self.mix_precision_mode == "inflat_all":
                    scaled = scaled * (2.0 ** self.log_scale)
                scaled.backward()
            for k, v in {**terms, **status}.items():
                logs[k] += float(v.detach() if isinstance(v, torch.Tensor) else v) / n
        logs.update(self._optimizer_step())
        logs["tokens"] = tokens
        return dict(logs)

    def _optimizer_step(self) -> dict:
        out = {}
        if self.mix_precision_mode == "inflat_all":
            inv = 2.0 ** -self.log_scale
            for mp, p in zip(self.master_params, self.model_params):
                mp.grad = None if p.grad is None else p.grad.float() * inv
            out["log_scale"] = self.log_scale
        elif self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
            out["amp_scale"] = self.scaler.get_scale()
        params = [p for p in self.master_params if p.grad is not None]
        if self.grad_clip is not None:
            norm = self.grad_clip(params)
        else:
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad.float()) for p in params]))
        norm = float(norm)
        out["grad_norm"] = norm
        if not math.isfinite(norm):
            self.skipped_steps += 1
            if self.mix_precision_mode == "inflat_all":
                self.log_scale -= 1
                if self.log_scale < 0:
                    raise FloatingPointError(f"inflat_all loss scale fell below 2^0 at step {self.step + 1}: the "
                                             f"gradients overflow even unscaled; lower the learning rate")
            elif self.scaler is not None:
                self.scaler.update()  # lowers the scale; the step is skipped
            else:
                warnings.warn(f"step {self.step + 1}: non-finite gradient norm, optimiser step skipped")
                self._log_text(f"step {self.step + 1}: non-finite gradient norm ({norm}), step skipped")
            return out
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.mix_precision_mode == "inflat_all":
            self.log_scale += self.fp16_scale_growth
            with torch.no_grad():
                for mp, p in zip(self.master_params, self.model_params):
                    p.copy_(mp.to(p.dtype))
        if self.lr_scheduler is not None:
            self.lr_scheduler.step()
        self._update_ema()
        if self.memory_controller is not None:
            out.update(self.memory_controller.step_done())
        out["lr"] = self.optimizer.param_groups[0]["lr"]
        return out

    @torch.no_grad()
    def _update_ema(self) -> None:
        for rate, ema in self.ema_params.items():
            for e, p in zip(ema, self.master_params):
                e.mul_(rate).add_(p.detach().float(), alpha=1 - rate)

    # ------------------------------------------------------------------ hooks
    def snapshot(self, step: int) -> None:
        """Periodic visual check every ``i_sample`` steps (rank 0; subclasses write files under ``samples/``)."""

    def check_ddp(self) -> None:
        """Raises RuntimeError if the trainable parameters differ between ranks (every ``i_ddpcheck`` steps)."""
        if not du.is_distributed():
            return
        sums = torch.stack([p.detach().double().sum() for p in self.model_params]).cpu()
        allsums = du.all_gather_object(sums)
        for r, s in enumerate(allsums):
            if not torch.equal(s, allsums[0]):
                raise RuntimeError(f"DDP check at step {self.step}: rank {r}'s parameters differ from rank 0's")

    # ------------------------------------------------------------------ loop
    def run(self, max_minutes: Optional[float] = None) -> None:
        """Trains until ``max_steps``; saves every ``i_save`` steps and at the end.

        Args:
            max_minutes: wall-clock budget of this call (e.g. a cluster job's time limit). Once spent, the trainer
                saves a checkpoint and returns early; running the same command again resumes from it exactly.
        """
        for m in self.training_models.values():
            m.train()
        window = defaultdict(list)
        t_window, samples_window, tokens_window = time.time(), 0, 0
        deadline = None if max_minutes is None else time.time() + 60.0 * float(max_minutes)
        while self.step < self.max_steps:
            if deadline is not None and self._past_deadline(deadline):
                self.save()
                self._log_text(f"time budget of {max_minutes} min spent: stopped at step {self.step}/"
                               f"{self.max_steps} with a checkpoint; run the same command again to resume")
                break
            batch = self.next_batch()
            try:
                logs = self.run_step(batch)
            except torch.OutOfMemoryError as e:
                raise torch.OutOfMemoryError(f"{e}\n{_OOM_HINT}") from e
            except RuntimeError as e:
                if "out of memory" in str(e).lower():
                    raise RuntimeError(f"{e}\n{_OOM_HINT}") from e
                raise
            self.step += 1
            samples_window += self.batch_size
            tokens_window += logs.pop("tokens") * self.world_size
            for k, v in logs.items():
                window[k].append(v)
            if self.step % self.i_log == 0 or self.step % self.i_print == 0:
                dt = max(time.time() - t_window, 1e-9)
                values = {k: float(np.mean(v)) for k, v in window.items()}
                values["perf/samples_per_s"] = samples_window / dt
                values["perf/tokens_per_s"] = tokens_window / dt
                values["perf/peak_mem_gb"] = self._peak_memory_gb()
                values["perf/skipped_steps"] = self.skipped_steps
                if self.logger is not None:
                    if self.step % self.i_log == 0:
                        self.logger.scalars(self.step, values)
                    if self.step % self.i_print == 0:
                        self.logger.text(f"step {self.step}/{self.max_steps} " + " ".join(
                            f"{k}={v:.4g}" for k, v in values.items() if not k.startswith("bin")))
                window.clear()
                t_window, samples_window, tokens_window = time.time(), 0, 0
            if self.step % self.i_ddpcheck == 0:
                self.check_ddp()
            if self.step % self.i_sample == 0 and du.is_main():
                self.snapshot(self.step)
            if self.step % self.i_save == 0 or self.step == self.max_steps:
                self.save()
        if self.logger is not None:
            self.logger.text(f"finished at step {self.step}")
            self.logger.close()

    def _past_deadline(self, deadline: float) -> bool:
        """Whether the wall-clock budget is spent, agreed by all ranks (rank 0's clock decides) so that every
        process stops at the same step."""
        flag = torch.tensor([1.0 if time.time() >= deadline else 0.0], device=self.device)
        if self.world_size > 1:
            torch.distributed.broadcast(flag, 0)
        return bool(flag.item())

    def _peak_memory_gb(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 1024 ** 3
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2  # KiB on Linux

    def profile(self, steps: int = 3) -> Path:
        """Runs ``steps`` steps under ``torch.profiler`` and writes a Chrome trace to ``{output_dir}/profile/``."""
        from torch.profiler import ProfilerActivity, profile
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device.type == "cuda" else [])
        out = self.output_dir / "profile" / f"trace_rank{self.rank}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        with profile(activities=acts, record_shapes=True, profile_memory=True) as prof:
            for _ in range(steps):
                self.run_step(self.next_batch())
        prof.export_chrome_trace(str(out))
        self._log_text(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))
        return out


class _EpochItems(torch.utils.data.Dataset):
    """Dataset view indexed by ``(epoch, index)``: sets the item's epoch (in whichever process loads it) first."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, index = key
        if hasattr(self.dataset, "set_epoch") and getattr(self.dataset, "epoch", None) != epoch:
            self.dataset.set_epoch(epoch)
        return self.dataset[index]


class _Once:
    """A ``DataLoader`` sampler over an existing iterator (the loader iterates it exactly once)."""

    def __init__(self, it):
        self.it = it

    def __iter__(self):
        return self.it


class _SplitCollate:
    """Picklable ``collate_fn`` wrapper passing ``split_size`` (DataLoader workers pickle it)."""

    def __init__(self, collate, split_size: int):
        self.collate, self.split_size = collate, split_size

    def __call__(self, batch):
        out = self.collate(batch, split_size=self.split_size)
        return out if isinstance(out, list) else [out]
