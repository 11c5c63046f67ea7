"""Backend selection for the sparse operators (TRELLIS2_SPEC.md §1.1).

The reference picks its sparse-conv implementation from ``SPARSE_CONV_BACKEND``; the checkpoints use the
``flex_gemm`` parameter layout. This package implements that layout with a pure-PyTorch kernel (``torch``) that runs
anywhere; GPU kernels can be registered later under other names without changing the module interface.

``SPARSE_DEBUG=1`` turns on the expensive consistency checks (full coordinate equality in elementwise ops,
duplicate detection on every constructor).
"""
import os

#: Backends the conv dispatcher knows: the portable gather-GEMM-scatter kernel (``torch``) and the Triton
#: implicit-GEMM kernel (``triton``, ``conv_triton.py``); ``auto`` (the default) picks ``triton`` for CUDA tensors when
#: triton imports and the dtype is fp16/bf16/fp32, else ``torch``. A backend is added by registering its name here and
#: in ``conv._KERNELS`` / ``conv._MAPS``.
VALID_CONV_BACKENDS = ("auto", "torch", "triton")


def conv_backend() -> str:
    """The requested sparse-conv backend, read from ``SPARSE_CONV_BACKEND`` at call time (default ``auto``).

    ``auto`` is resolved per call by ``conv.resolve_backend`` (device, dtype, triton availability).

    Raises:
        ValueError: the variable names a backend that does not exist here.
    """
    name = os.environ.get("SPARSE_CONV_BACKEND", "auto").strip().lower() or "auto"
    if name not in VALID_CONV_BACKENDS:
        raise ValueError(
            f"SPARSE_CONV_BACKEND={name!r} is not a known sparse-conv backend; valid values are "
            f"{', '.join(VALID_CONV_BACKENDS)} (unset it to use the default 'auto')")
    return name


def debug() -> bool:
    """True when ``SPARSE_DEBUG`` is set to a truthy value (enables O(N log N) consistency checks)."""
    return os.environ.get("SPARSE_DEBUG", "0").strip().lower() not in ("", "0", "false", "no")
