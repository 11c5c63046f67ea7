"""Process-group helpers used by the trainers (TRELLIS2_SPEC §5.1-5.2).

Everything works without an initialised process group (single process): rank 0, world size 1, no-op barriers.
"""
import os
from contextlib import contextmanager

import torch
import torch.distributed as dist

__all__ = ["is_distributed", "get_rank", "get_world_size", "get_local_rank", "is_main", "barrier",
           "all_gather_object", "broadcast_object", "all_reduce_mean", "unwrap", "master_first"]


def is_distributed() -> bool:
    """True when a ``torch.distributed`` process group with more than one member is active."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    """Global rank (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def get_local_rank() -> int:
    """Rank within the node: ``LOCAL_RANK`` (set by the launcher or torchrun), else 0."""
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main() -> bool:
    """True on global rank 0 (the only rank that writes checkpoints and logs)."""
    return get_rank() == 0


def barrier() -> None:
    """Synchronises all ranks; no-op in a single process."""
    if is_distributed():
        dist.barrier()


def all_gather_object(obj) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` (``[obj]`` in a single process)."""
    if not is_distributed():
        return [obj]
    out = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src: int = 0):
    """The value of ``obj`` on rank ``src``, on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean of a tensor over ranks (a copy; the input is unchanged)."""
    t = t.detach().clone()
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= get_world_size()
    return t


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The module inside a ``DistributedDataParallel`` wrapper (or the module itself)."""
    return module.module if hasattr(module, "module") and isinstance(
        module, torch.nn.parallel.DistributedDataParallel) else module


@contextmanager
def master_first():
    """Rank 0 runs the body first (e.g. a download), the others after it finished."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()
