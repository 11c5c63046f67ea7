"""Gradient clipping (TRELLIS2_SPEC §5.2): a fixed-norm clipper and ``AdaptiveGradClipper``."""
from typing import Iterable

import numpy as np
import torch

__all__ = ["AdaptiveGradClipper", "build_grad_clipper"]


class AdaptiveGradClipper:
    """Clips the global L2 gradient norm to a threshold that follows the recent norms.

    The threshold starts at ``max_norm``. Every finite norm goes into a ring buffer of ``buffer_size``; once the buffer
    is full the threshold becomes ``min(percentile(buffer, clip_percentile), max_norm)``.

    Args:
        max_norm: upper bound of the threshold (``None`` = no bound, the percentile alone).
        clip_percentile: percentile of the buffered norms, in (0, 100].
        buffer_size: number of recent norms kept.

    Raises:
        ValueError: non-positive ``buffer_size`` or a percentile outside (0, 100].
    """

    def __init__(self, max_norm=None, clip_percentile: float = 95.0, buffer_size: int = 1000):
        if not 0 < clip_percentile <= 100:
            raise ValueError(f"clip_percentile must be in (0, 100], got {clip_percentile}")
        if buffer_size <= 0:
            raise ValueError(f"buffer_size must be positive, got {buffer_size}")
        self.max_norm = max_norm
        self.clip_percentile = clip_percentile
        self.buffer_size = buffer_size
        self._grad_norm = np.zeros(buffer_size, dtype=np.float32)
        self._max_norm = max_norm
        self._buffer_ptr = 0
        self._buffer_length = 0

    def state_dict(self) -> dict:
        """Threshold and ring buffer (saved in ``misc_step*.pt``)."""
        return {"grad_norm": self._grad_norm.copy(), "max_norm": self._max_norm, "buffer_ptr": self._buffer_ptr,
                "buffer_length": self._buffer_length}

    def load_state_dict(self, state: dict) -> None:
        """Restores :meth:`state_dict` output."""
        self._grad_norm = np.asarray(state["grad_norm"], dtype=np.float32).copy()
        self._max_norm = state["max_norm"]
        self._buffer_ptr = int(state["buffer_ptr"])
        self._buffer_length = int(state["buffer_length"])

    def __call__(self, parameters: Iterable[torch.nn.Parameter]) -> torch.Tensor:
        """Clips the gradients of ``parameters`` in place; returns the total norm BEFORE clipping (a 0-d tensor,
        possibly non-finite: such norms are not recorded and the caller should skip the step)."""
        max_norm = self._max_norm if self._max_norm is not None else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(list(parameters), max_norm=max_norm)
        value = float(norm)
        if np.isfinite(value):
            self._grad_norm[self._buffer_ptr] = value
            self._buffer_ptr = (self._buffer_ptr + 1) % self.buffer_size
            self._buffer_length = min(self._buffer_length + 1, self.buffer_size)
            if self._buffer_length == self.buffer_size:
                p = float(np.percentile(self._grad_norm, self.clip_percentile))
                self._max_norm = p if self.max_norm is None else min(p, self.max_norm)
        return norm


class _FixedClipper:
    def __init__(self, max_norm: float):
        self.max_norm = float(max_norm)

    def __call__(self, parameters):
        return torch.nn.utils.clip_grad_norm_(list(parameters), max_norm=self.max_norm)

    def state_dict(self):
        return {"max_norm": self.max_norm}

    def load_state_dict(self, state):
        self.max_norm = float(state["max_norm"])


def build_grad_clipper(spec):
    """``None`` → no clipping; a number → fixed-norm clipping; ``{'name': 'AdaptiveGradClipper', 'args': {...}}``.

    Raises:
        ValueError: an unknown clipper name or a malformed spec.
    """
    if spec is None:
        return None
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        return _FixedClipper(spec)
    if isinstance(spec, dict) and set(spec) <= {"name", "args"} and "name" in spec:
        if spec["name"] != "AdaptiveGradClipper":
            raise ValueError(f"unknown grad_clip name {spec['name']!r}; use 'AdaptiveGradClipper' or a number")
        return AdaptiveGradClipper(**spec.get("args", {}))
    raise ValueError(f"grad_clip must be null, a number, or {{'name': 'AdaptiveGradClipper', 'args': {{...}}}}; "
                     f"got {spec!r}")
