"""``train.py`` logic (TRELLIS2_SPEC §5.1): CLI, config validation, process launch, per-rank setup.

One process per GPU (``torch.multiprocessing.spawn``), or ``--num_gpus`` CPU processes with the gloo backend when
there is no CUDA; under ``torchrun`` (``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` set) nothing is spawned. The config is
``{"models": {name: {"name", "args"}}, "dataset": {"name", "args"}, "trainer": {"name", "args"}}``; unknown keys
anywhere are errors.
"""
import argparse
import inspect
import json
import os
import time
import random
import shlex
import sys
import traceback
from pathlib import Path

import numpy as np
import torch

__all__ = ["ConfigError", "build_parser", "load_config", "validate_config", "main", "worker"]

# trainer arguments the launcher supplies; a config may not set them
_LAUNCHER_ARGS = {"models", "dataset", "output_dir", "load_dir", "step", "device", "wandb"}


class ConfigError(ValueError):
    """A malformed training config (the message names the key and what is allowed)."""


def build_parser() -> argparse.ArgumentParser:
    """The ``train.py`` argument parser (reference option names)."""
    p = argparse.ArgumentParser(description="Train a pixal3d model from a JSON config (TRELLIS2_SPEC §5.1)")
    p.add_argument("--config", required=True, help="JSON config with models / dataset / trainer")
    p.add_argument("--output_dir", required=True, help="run folder (checkpoints, logs)")
    p.add_argument("--load_dir", default=None, help="resume from here (default: output_dir)")
    p.add_argument("--ckpt", default="latest", help="'latest', 'none' or a step number")
    p.add_argument("--data_dir", required=True,
                   help='JSON {"source": {"role": "dir"}} or comma-separated dataset roots')
    p.add_argument("--max_minutes", type=float, default=None,
                   help="wall-clock budget: save a checkpoint and stop once spent (rerun to resume)")
    p.add_argument("--auto_retry", type=int, default=3, help="relaunch from the latest checkpoint after a crash")
    p.add_argument("--tryrun", action="store_true", help="build everything, train nothing")
    p.add_argument("--profile", action="store_true", help="profile a few steps and exit")
    p.add_argument("--num_nodes", type=int, default=1)
    p.add_argument("--node_rank", type=int, default=0)
    p.add_argument("--num_gpus", type=int, default=-1, help="processes per node (default: all visible GPUs, or 1)")
    p.add_argument("--master_addr", default="localhost")
    p.add_argument("--master_port", default="12345")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when available")
    p.add_argument("--deterministic", action="store_true",
                   help="torch deterministic algorithms (bit-exact resume on CPU)")
    p.add_argument("--seed", type=int, default=0, help="base seed; rank r seeds its RNGs with seed + r")
    p.add_argument("--use_wandb", action="store_true")
    p.add_argument("--wandb_project", default="pixal3d")
    p.add_argument("--wandb_name", default=None)
    p.add_argument("--wandb_id", default=None)
    return p


def load_config(path) -> dict:
    """Reads and validates a config file.

    Raises:
        ConfigError: unreadable JSON or an invalid structure (see :func:`validate_config`).
    """
    try:
        cfg = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"cannot read config {path}: {e}") from e
    validate_config(cfg)
    return cfg


def _named_params(cls) -> tuple:
    """Names accepted by ``cls(...)`` gathered through cooperative ``**kwargs`` chains, and whether some class in the
    chain swallows arbitrary keys."""
    names, open_ended = set(), False
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None or klass is object:
            continue
        init = getattr(init, "__wrapped__", init)
        params = list(inspect.signature(init).parameters.values())[1:]
        names |= {p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            return names, False  # the chain ends here: anything else would be a TypeError
        open_ended = True
    return names, open_ended


def _check_args(where: str, cls, args: dict, reserved=()) -> None:
    names, _ = _named_params(cls)
    names -= set(reserved)
    unknown = sorted(set(args) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown argument(s) {unknown} for {cls.__name__}; allowed: {sorted(names)}")


def _check_entry(where: str, entry) -> None:
    if not isinstance(entry, dict) or "name" not in entry or set(entry) - {"name", "args"}:
        raise ConfigError(f"{where} must be {{'name': ..., 'args': {{...}}}}, got keys "
                          f"{sorted(entry) if isinstance(entry, dict) else type(entry).__name__}")
    if not isinstance(entry.get("args", {}), dict):
        raise ConfigError(f"{where}.args must be an object")


def validate_config(cfg: dict) -> None:
    """Checks structure, class names and every argument name against the registries.

    Raises:
        ConfigError: the first problem found (unknown top-level key, unknown class, unknown argument, ...).
    """
    from pixal3d.datasets import get_dataset_class
    from pixal3d.models import get_model_class
    from pixal3d.trainers import get_trainer_class
    if not isinstance(cfg, dict):
        raise ConfigError("the config must be a JSON object with 'models', 'dataset' and 'trainer'")
    unknown = sorted(set(cfg) - {"models", "dataset", "trainer"})
    if unknown:
        raise ConfigError(f"unknown top-level config key(s) {unknown}; allowed: models, dataset, trainer")
    for k in ("models", "dataset", "trainer"):
        if k not in cfg:
            raise ConfigError(f"the config lacks '{k}'")
    if not isinstance(cfg["models"], dict) or not cfg["models"]:
        raise ConfigError("'models' must map model names (e.g. 'denoiser') to {'name', 'args'}")
    for mname, entry in cfg["models"].items():
        _check_entry(f"models.{mname}", entry)
        try:
            cls = get_model_class(entry["name"])
        except KeyError as e:
            raise ConfigError(f"models.{mname}: {e.args[0]}") from e
        _check_args(f"models.{mname}", cls, entry.get("args", {}))
    for sec, getter, reserved in (("dataset", get_dataset_class, ("roots",)),
                                  ("trainer", get_trainer_class, _LAUNCHER_ARGS)):
        _check_entry(sec, cfg[sec])
        try:
            cls = getter(cfg[sec]["name"])
        except KeyError as e:
            raise ConfigError(f"{sec}: {e.args[0]}") from e
        args = cfg[sec].get("args", {})
        bad = sorted(set(args) & set(reserved))
        if bad:
            raise ConfigError(f"{sec}.args may not set {bad}: they come from the command line")
        _check_args(sec, cls, args, reserved)


def _resolve_step(ckpt: str, load_dir: Path):
    from .checkpoint import latest_step
    if ckpt == "none":
        return None
    if ckpt == "latest":
        return latest_step(load_dir / "ckpts")
    try:
        return int(ckpt)
    except ValueError as e:
        raise ConfigError(f"--ckpt must be 'latest', 'none' or a step number, got {ckpt!r}") from e


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2 ** 32)
    random.seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def worker(local_rank: int, args: argparse.Namespace, cfg: dict) -> None:
    """One training process: process group, seeds, dataset, models, trainer, run."""
    import torch.distributed as dist
    from pixal3d.datasets import get_dataset_class
    from pixal3d.models import get_model_class
    from pixal3d.trainers import get_trainer_class

    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and args._torchrun:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
    else:
        rank, world = args.node_rank * args.num_gpus + local_rank, args.num_nodes * args.num_gpus
    if world > 1 and not args._torchrun:
        # spawned children only: an in-process single run must not leave RANK etc. behind for later launches
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(local_rank),
                          MASTER_ADDR=args.master_addr, MASTER_PORT=str(args.master_port))
    device = torch.device(f"cuda:{local_rank}" if args.device == "cuda" else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world)
    try:
        if args.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        _seed_everything(args.seed + rank)
        dataset = get_dataset_class(cfg["dataset"]["name"])(args.data_dir, **cfg["dataset"].get("args", {}))
        models = {}
        for mname, entry in cfg["models"].items():
            models[mname] = get_model_class(entry["name"])(**entry.get("args", {})).to(device)
        wandb = None
        if args.use_wandb:
            wandb = {"project": args.wandb_project, "name": args.wandb_name, "id": args.wandb_id, "config": cfg}
        tcfg = dict(cfg["trainer"].get("args", {}))
        tcfg.setdefault("seed", args.seed)
        trainer = get_trainer_class(cfg["trainer"]["name"])(
            models, dataset, output_dir=args.output_dir, load_dir=args.load_dir or args.output_dir,
            step=args._step, device=device, wandb=wandb, **tcfg)
        if args.tryrun:
            trainer._log_text("tryrun: models, dataset and trainer built; exiting without training")
        elif args.profile:
            trainer.profile()
        else:
            budget = getattr(args, "_deadline", None)
            trainer.run(max_minutes=None if budget is None else max(0.0, (budget - time.time()) / 60.0))
    finally:
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()


_NO_RETRY = ("NonFiniteLossError", "ConfigError", "DatasetError", "FileNotFoundError", "KeyboardInterrupt")


def main(argv=None) -> None:
    """Entry point of ``train.py``.

    Raises:
        ConfigError: invalid config or options (before anything is launched).
        The training error itself once ``--auto_retry`` relaunches are used up (or immediately for NaN losses,
        config and data errors, which a retry cannot fix).
    """
    args = build_parser().parse_args(argv)
    cfg = load_config(args.config)
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda but no CUDA device is visible; use --device cpu")
    args._torchrun = "RANK" in os.environ and "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ
    if args.num_gpus < 0:
        args.num_gpus = torch.cuda.device_count() if args.device == "cuda" else 1
    if args.device == "cuda" and args.num_gpus > torch.cuda.device_count():
        raise ConfigError(f"--num_gpus {args.num_gpus} but only {torch.cuda.device_count()} CUDA devices visible")
    out = Path(args.output_dir)
    load_dir = Path(args.load_dir or args.output_dir)
    is_main_proc = (int(os.environ.get("RANK", 0)) == 0) if args._torchrun else args.node_rank == 0
    if is_main_proc:
        out.mkdir(parents=True, exist_ok=True)
        (out / "command.txt").write_text(shlex.join([sys.executable, *(sys.argv if argv is None else
                                                                        ["train.py", *argv])]) + "\n")
        (out / "config.json").write_text(json.dumps(cfg, indent=4) + "\n")
    ckpt = args.ckpt
    # an absolute deadline, so that --auto_retry relaunches share one budget
    args._deadline = None if args.max_minutes is None else time.time() + 60.0 * args.max_minutes
    for attempt in range(args.auto_retry + 1):
        args._step = _resolve_step(ckpt, load_dir)
        try:
            if args._torchrun or args.num_gpus * args.num_nodes == 1:
                worker(0, args, cfg)
            else:
                import torch.multiprocessing as mp
                mp.spawn(worker, args=(args, cfg), nprocs=args.num_gpus, join=True)
            return
        except BaseException as e:  # noqa: B902 - decide whether a relaunch can help
            text = "".join(traceback.format_exception(e))
            if attempt == args.auto_retry or any(name in text for name in _NO_RETRY):
                raise
            print(f"training failed (attempt {attempt + 1}/{args.auto_retry + 1}); relaunching from the latest "
                  f"checkpoint:\n{text}", file=sys.stderr, flush=True)
            ckpt, load_dir = "latest", out
            args.load_dir = str(out)
