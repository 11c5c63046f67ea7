"""Attention backend selection (TRELLIS2_SPEC §1.1).

``ATTN_BACKEND`` picks the kernel for dense attention and ``SPARSE_ATTN_BACKEND`` (falling back to ``ATTN_BACKEND``)
the one for sparse/variable-length attention. Both are read at call time, so a test or a pipeline can switch backends
with an environment variable or with :func:`set_attn_backend` without re-importing anything.

Values: ``sdpa`` (default, ``torch.nn.functional.scaled_dot_product_attention``), ``naive`` (explicit softmax in the
input dtype, the reference for tests), and the GPU-only ``flash_attn``, ``flash_attn_3`` and ``xformers``, which are
imported lazily: naming one whose package is missing is an error, never a silent fallback.
"""
import importlib
import os
from typing import Optional

__all__ = ["VALID_BACKENDS", "DEFAULT_BACKEND", "get_attn_backend", "get_sparse_attn_backend", "set_attn_backend",
           "import_backend"]

VALID_BACKENDS = ("sdpa", "naive", "flash_attn", "flash_attn_3", "xformers")
DEFAULT_BACKEND = "sdpa"
GPU_ONLY_BACKENDS = ("flash_attn", "flash_attn_3", "xformers")

# programmatic overrides; None = use the environment
_override = {"dense": None, "sparse": None}

# module each GPU backend needs (flash-attn 3 ships as ``flash_attn_interface``)
_PACKAGES = {"flash_attn": "flash_attn", "flash_attn_3": "flash_attn_interface", "xformers": "xformers.ops"}


def _validate(name: str, source: str) -> str:
    value = name.strip().lower()
    if value not in VALID_BACKENDS:
        raise ValueError(f"unknown attention backend {name!r} (from {source}); valid values: {', '.join(VALID_BACKENDS)}")
    return value


def get_attn_backend() -> str:
    """The dense attention backend: :func:`set_attn_backend` override, else ``$ATTN_BACKEND``, else ``'sdpa'``.

    Raises:
        ValueError: the configured value is not one of :data:`VALID_BACKENDS`.
    """
    if _override["dense"] is not None:
        return _override["dense"]
    env = os.environ.get("ATTN_BACKEND")
    return _validate(env, "$ATTN_BACKEND") if env else DEFAULT_BACKEND


def get_sparse_attn_backend() -> str:
    """The sparse attention backend: override, else ``$SPARSE_ATTN_BACKEND``, else the dense backend.

    Raises:
        ValueError: the configured value is not one of :data:`VALID_BACKENDS`.
    """
    if _override["sparse"] is not None:
        return _override["sparse"]
    env = os.environ.get("SPARSE_ATTN_BACKEND")
    return _validate(env, "$SPARSE_ATTN_BACKEND") if env else get_attn_backend()


def set_attn_backend(name: Optional[str], sparse: Optional[bool] = None) -> None:
    """Overrides the backend for dense (``sparse=False``), sparse (``sparse=True``) or both (``None``) attention.

    ``name=None`` removes the override (the environment applies again). The package of a GPU backend is checked
    immediately so that a bad choice fails here rather than deep inside a model.

    Raises:
        ValueError: unknown backend name.
        ImportError: a GPU backend whose package is not installed.
    """
    value = None if name is None else _validate(name, "set_attn_backend")
    if value is not None:
        import_backend(value)
    for kind in (("dense", "sparse") if sparse is None else (("sparse",) if sparse else ("dense",))):
        _override[kind] = value


def import_backend(name: str):
    """Imports and returns the package module a backend needs (``None`` for ``sdpa``/``naive``).

    Raises:
        ImportError: the package is missing; the message says how to install it or which backend to use instead.
    """
    if name not in _PACKAGES:
        return None
    try:
        return importlib.import_module(_PACKAGES[name])
    except ImportError as e:
        raise ImportError(
            f"attention backend {name!r} was requested but its package {_PACKAGES[name]!r} cannot be imported ({e}); "
            f"install it, or set ATTN_BACKEND/SPARSE_ATTN_BACKEND to 'sdpa' (default) or 'naive'") from e
