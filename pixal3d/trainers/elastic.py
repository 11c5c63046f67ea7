"""Elastic memory control (TRELLIS2_SPEC §5.2): ``LinearMemoryController``.

It fits peak memory ≈ ``k·input_size·mem_ratio + b`` from recent steps and picks, per forward, the largest
``mem_ratio`` (fraction of transformer blocks NOT gradient-checkpointed) that keeps the prediction below
``target_ratio`` of the device memory. The model side is
:class:`pixal3d.models.structured_latent_flow.SparseTransformerElasticMixin`.
"""
import numpy as np
import torch

__all__ = ["LinearMemoryController", "build_memory_controller"]


class LinearMemoryController:
    """Chooses ``mem_ratio`` per training forward from a linear memory model.

    Args:
        buffer_size: number of (input_size·mem_ratio, peak GB) samples kept for the fit.
        update_every: refit (``np.polyfit`` degree 1) and raise the cap by 0.1 every this many steps.
        target_ratio: fraction of ``available_memory`` to aim at.
        available_memory: GB; default the total memory of the current CUDA device.
        max_mem_ratio_start: initial cap on ``mem_ratio``.

    Raises:
        RuntimeError: ``available_memory`` not given and no CUDA device (peak memory cannot be measured on CPU).
    """

    def __init__(self, buffer_size: int = 1000, update_every: int = 500, target_ratio: float = 0.8,
                 available_memory: float = None, max_mem_ratio_start: float = 0.1, seed: int = 0):
        if available_memory is None:
            if not torch.cuda.is_available():
                raise RuntimeError("elastic memory control measures CUDA memory; there is no CUDA device. Remove "
                                   "'elastic' from the trainer config to train on CPU")
            available_memory = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory / 1024 ** 3
        self.buffer_size, self.update_every, self.target_ratio = buffer_size, update_every, target_ratio
        self.available_memory = float(available_memory)
        self.max_mem_ratio = max_mem_ratio_start
        self.k, self.b = 0.0, 0.0
        self.samples = []  # (input_size * mem_ratio, peak GB)
        self.steps = 0
        self._last = None
        self._rng = np.random.default_rng(seed)

    def get_mem_ratio(self, input_size: int) -> float:
        """Ratio for a forward over ``input_size`` tokens (random·cap until a slope has been fitted)."""
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        if self.k <= 0:
            r = float(self._rng.random()) * self.max_mem_ratio
        else:
            r = (self.available_memory * self.target_ratio - self.b) / (self.k * input_size)
            r = min(self.max_mem_ratio, max(0.0, r))
        return r

    def update_run_states(self, input_size: int, mem_ratio: float) -> None:
        """Records the exact ratio used; the peak is read in :meth:`step_done` after backward."""
        self._last = (input_size * mem_ratio)

    def step_done(self) -> dict:
        """Called by the trainer after each optimiser step: records the peak and refits every ``update_every``.
        Returns log values."""
        if self._last is not None and torch.cuda.is_available():
            self.samples.append((self._last, torch.cuda.max_memory_allocated() / 1024 ** 3))
            self.samples = self.samples[-self.buffer_size:]
        self._last = None
        self.steps += 1
        if self.steps % self.update_every == 0 and len(self.samples) >= 2:
            x, y = np.array(self.samples).T
            if np.ptp(x) > 0:
                self.k, self.b = (float(v) for v in np.polyfit(x, y, 1))
            self.max_mem_ratio = min(1.0, self.max_mem_ratio + 0.1)
        return {"elastic/max_mem_ratio": self.max_mem_ratio}

    def state_dict(self) -> dict:
        """Fitted parameters, cap and samples."""
        return {"k": self.k, "b": self.b, "max_mem_ratio": self.max_mem_ratio, "samples": list(self.samples),
                "steps": self.steps, "rng": self._rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        """Restores :meth:`state_dict` output."""
        self.k, self.b, self.max_mem_ratio = state["k"], state["b"], state["max_mem_ratio"]
        self.samples, self.steps = [tuple(s) for s in state["samples"]], state["steps"]
        self._rng.bit_generator.state = state["rng"]


def build_memory_controller(spec):
    """``{'name': 'LinearMemoryController', 'args': {...}}`` → controller; ``None`` → None.

    Raises:
        ValueError: unknown name or malformed spec.
    """
    if spec is None:
        return None
    if not isinstance(spec, dict) or spec.get("name") != "LinearMemoryController" or set(spec) - {"name", "args"}:
        raise ValueError(f"elastic must be {{'name': 'LinearMemoryController', 'args': {{...}}}}, got {spec!r}")
    return LinearMemoryController(**spec.get("args", {}))
