"""Precision helpers shared by the networks (TRELLIS2_SPEC §2.1 "Precision").

The released checkpoints keep a float32 "skin" (embedders, input/output layers, norms, modulation offsets) around a
half-precision torso. These helpers implement the reference's rules for which parameters are converted and when
activations are cast.
"""
from typing import Union

import torch
import torch.nn as nn

__all__ = ["str_to_dtype", "dtype_to_str", "manual_cast", "convert_module_to", "mix_precision_types"]

_DTYPES = {
    "f16": torch.float16, "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "f32": torch.float32, "fp32": torch.float32, "float32": torch.float32, "float": torch.float32,
}


def str_to_dtype(dtype: Union[str, torch.dtype]) -> torch.dtype:
    """Maps a dtype name (``'float32'``, ``'fp16'``, ``'bfloat16'``, ...) or a ``torch.dtype`` to a ``torch.dtype``.

    Raises:
        ValueError: the name is not one of the supported floating-point dtypes.
    """
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.float16, torch.bfloat16, torch.float32):
            raise ValueError(f"unsupported model dtype {dtype}; use float32, float16 or bfloat16")
        return dtype
    if not isinstance(dtype, str) or dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; valid names: {', '.join(sorted(_DTYPES))}")
    return _DTYPES[dtype]


def dtype_to_str(dtype: torch.dtype) -> str:
    """Inverse of :func:`str_to_dtype` for the canonical names (``'float32'``, ``'float16'``, ``'bfloat16'``)."""
    return {torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float32: "float32"}[str_to_dtype(dtype)]


def _autocast_on(device_type: str = "cuda") -> bool:
    return torch.is_autocast_enabled(device_type) or torch.is_autocast_enabled("cpu")


def manual_cast(x, dtype: torch.dtype):
    """Casts ``x`` to ``dtype`` unless autocast is active (then autocast decides precision, as in the reference).

    ``x`` may be a ``torch.Tensor`` or any object with a ``.type(dtype)`` method (``SparseTensor``/``VarLenTensor``),
    or ``None`` (returned unchanged).
    """
    if x is None:
        return None
    if _autocast_on():
        return x
    if isinstance(x, torch.Tensor):
        return x.to(dtype) if x.is_floating_point() and x.dtype != dtype else x
    return x.type(dtype)


def mix_precision_types() -> tuple:
    """The module types whose parameters ``convert_to`` converts: torch Linear/Conv layers and the sparse convs.

    ``SparseLinear`` subclasses ``nn.Linear`` and is covered by it; sparse convolutions are included when
    ``pixal3d.sparse`` provides them (looked up lazily so this module has no hard dependency on it).
    """
    types = [nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d]
    try:
        from pixal3d import sparse as sp
        for name in ("SparseConv3d", "SparseInverseConv3d", "SparseLinear"):
            cls = getattr(sp, name, None)
            if isinstance(cls, type):
                types.append(cls)
    except ImportError:
        pass
    return tuple(types)


def convert_module_to(module: nn.Module, dtype: torch.dtype) -> None:
    """Converts, in place, the parameters of every Linear/Conv (dense or sparse) submodule of ``module`` to ``dtype``.

    Norms, RMS-norm gammas and bare ``nn.Parameter``s (e.g. block ``modulation``) are left untouched: this is the
    reference ``convert_module_to`` applied with ``module.apply`` (TRELLIS2_SPEC §2.1).
    """
    types = mix_precision_types()
    for m in module.modules():
        if isinstance(m, types):
            for p in m.parameters():
                p.data = p.data.to(dtype)
