"""Counting device-to-host synchronisations, for tests and benchmarks of the GPU speed work (issue 11)."""
import warnings

import torch

__all__ = ["count_cuda_syncs"]


def count_cuda_syncs(fn) -> int:
    """Runs ``fn()`` and returns how many synchronising CUDA calls it made.

    A host read of device memory (``.item()``, ``.tolist()``, a pageable copy, ``nonzero``) makes the CPU wait until
    the GPU queue drains, so the CPU cannot queue the next kernels ahead. PyTorch reports each one as a warning under
    ``torch.cuda.set_sync_debug_mode('warn')``; this counts them. The queue is drained before and after so that only
    ``fn``'s own calls count.

    Raises:
        RuntimeError: no CUDA device.
    """
    if not torch.cuda.is_available():
        raise RuntimeError("count_cuda_syncs needs a CUDA device")
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    return sum("synchronizing" in str(w.message) for w in rec)
