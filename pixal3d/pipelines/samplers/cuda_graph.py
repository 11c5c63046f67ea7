"""CUDA-graph replay of a flow model's forward across the steps of one sampling run.

Every Euler step calls the model with inputs of the same shapes, the same condition tensors and, for sparse
latents, the same voxel structure; only the features of ``x_t`` and the timestep change. At the token counts of the
early stages (a few thousand per sample) a forward of the 1.3 B-parameter DiTs is bound by the host launching its
~1,000 kernels, not by the GPU. :class:`GraphedForward` runs the first call of each input signature eagerly (that
result is returned, and the model's caches fill), captures the same call in a ``torch.cuda.CUDAGraph``, and replays
it for later calls after copying the new ``x_t`` features and timestep into the captured buffers. The kernels and
their inputs are the same as in eager mode, so the outputs are too (the GPU tests compare them).
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List

import torch

__all__ = ["GraphedForward", "graph_rows", "use_cuda_graph", "AUTO_MAX_ROWS"]

log = logging.getLogger(__name__)

#: ``cuda_graph="auto"`` graphs a run whose forward has at most this many tokens per sample batch (before CFG
#: doubling): the launch-bound regime. Larger forwards are GPU-bound, and a graph would only hold memory.
AUTO_MAX_ROWS = 4096


def _sparse(x) -> bool:
    return hasattr(x, "feats") and hasattr(x, "coords") and hasattr(x, "replace")


def graph_rows(x) -> int:
    """Tokens of one forward on ``x`` before CFG batching: sparse rows, or ``batch · prod(spatial)`` for a dense
    ``[B, C, *spatial]`` latent (what :data:`AUTO_MAX_ROWS` is compared with)."""
    if _sparse(x):
        return int(x.feats.shape[0])
    return int(x.shape[0] * x[0, 0].numel())


def use_cuda_graph(mode, noise) -> bool:
    """Whether a sampling run on ``noise`` uses :class:`GraphedForward`: ``mode`` True (on CUDA), False, or
    ``'auto'`` (on CUDA with at most :data:`AUTO_MAX_ROWS` tokens).

    Raises:
        ValueError: any other ``mode``.
    """
    if not (mode is True or mode is False or mode == "auto"):  # 1 == True: identity, not equality
        raise ValueError(f"cuda_graph must be true, false or 'auto', got {mode!r}")
    xf = noise.feats if _sparse(noise) else noise
    if mode is False or not xf.is_cuda:
        return False
    return mode is True or graph_rows(noise) <= AUTO_MAX_ROWS


def _leaves(obj, out: List[Any]) -> List[Any]:
    """Objects whose identity a captured call depends on (tensors, sparse tensors and their parts)."""
    if isinstance(obj, dict):
        for k in sorted(obj, key=str):
            _leaves(obj[k], out)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _leaves(v, out)
    elif _sparse(obj):
        out += [obj, obj.feats, obj.coords]
    else:
        out.append(obj)  # tensors and anything else are keyed by identity
    return out


class GraphedForward:
    """``model(x_t, t, cond, **kwargs)`` with later calls of a seen signature replayed from a CUDA graph.

    A signature is ``x_t``'s kind, shape, dtype and device (plus its ``coords`` object when sparse), ``t``'s shape,
    and the identity of every tensor in ``cond`` and ``kwargs``: those are captured by address, so they must not be
    modified in place between calls (the samplers never do). Each graph keeps one forward's activations in its own
    memory pool until this object is dropped (the samplers drop it at the end of the run).

    Calls that cannot be captured (not CUDA, gradients on, a capture error) run eagerly; a capture error is logged
    once per signature with the reason and that signature stays eager. Seen on an H100: a ``SparseTensor`` "proj"
    condition in a batched-CFG call (the pipelines pass a plain tensor), and the texture flow's concatenated shape
    latent in the tests' tiny models. After a failed capture the CUDA random generator is restored (an empty
    capture resets its capture state).

    Args:
        model: the flow model (any callable with the samplers' signature).

    Returns (call): the model's output; replayed outputs are fresh copies, never the graph's own buffers.
    """

    def __init__(self, model: Callable):
        self.model = model
        self._graphs: Dict[tuple, Any] = {}

    def _key(self, x_t, t, cond, kwargs) -> tuple:
        xf = x_t.feats if _sparse(x_t) else x_t
        head = (_sparse(x_t), tuple(xf.shape), xf.dtype, str(xf.device), tuple(t.shape),
                id(x_t.coords) if _sparse(x_t) else None)
        refs = _leaves(cond, []) + _leaves({k: kwargs[k] for k in sorted(kwargs)}, [])
        return head + tuple(id(r) for r in refs), refs

    def __call__(self, x_t, t: torch.Tensor, cond, **kwargs):
        xf = x_t.feats if _sparse(x_t) else x_t
        if not xf.is_cuda or torch.is_grad_enabled():
            return self.model(x_t, t, cond, **kwargs)
        key, refs = self._key(x_t, t, cond, kwargs)
        entry = self._graphs.get(key)
        if entry is None:
            return self._first_call(key, refs, x_t, t, cond, kwargs)
        if entry == "eager":
            return self.model(x_t, t, cond, **kwargs)
        graph, static_x, static_t, static_out, _ = entry
        static_x.copy_(xf)
        static_t.copy_(t)
        graph.replay()
        if _sparse(static_out):
            return x_t.replace(static_out.feats.clone())
        return static_out.clone()

    def _first_call(self, key, refs, x_t, t, cond, kwargs):
        # eager first: lazy initialisation and the model's caches (attention metadata, RoPE phases) happen outside
        # the capture, and this call's result is the step's
        out = self.model(x_t, t, cond, **kwargs)
        xf = x_t.feats if _sparse(x_t) else x_t
        static_x, static_t = xf.clone(), t.clone()
        x_in = x_t.replace(static_x) if _sparse(x_t) else static_x
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                static_out = self.model(x_in, static_t, cond, **kwargs)
        except Exception as e:  # an op that cannot be captured: this signature stays eager, results unchanged
            log.warning("CUDA graph capture failed (%s: %s); this input runs eagerly (pass cuda_graph=False to skip "
                        "the attempt)", type(e).__name__, str(e).splitlines()[0])
            _recover_after_failed_capture(graph)
            self._graphs[key] = "eager"
            return out
        # refs keep the captured inputs alive, so their ids (part of the key) cannot be reused by other objects
        self._graphs[key] = (graph, static_x, static_t, static_out, (refs, x_in))
        return out


def _cuda_rng_works() -> bool:
    try:
        torch.randn(1, device="cuda")
        torch.cuda.synchronize()
        return True
    except RuntimeError:
        return False


def _recover_after_failed_capture(graph) -> None:
    """A capture that fails midway can leave the CUDA generator registered as capturing, and every later
    ``torch.randn`` on the device then fails ("Offset increment outside graph capture"). Undo that, or say how to
    get out.

    Raises:
        RuntimeError: the CUDA random generator could not be restored.
    """
    steps = (lambda: graph.reset(),
             lambda: torch.cuda.set_rng_state(torch.cuda.get_rng_state()),
             _empty_capture)
    for step in steps:
        if _cuda_rng_works():
            return
        try:
            step()
        except Exception:  # the next way is tried; the check below decides
            pass
    if not _cuda_rng_works():
        raise RuntimeError("a failed CUDA graph capture left the CUDA random generator unusable; restart the "
                           "process and sample with cuda_graph=False")


def _empty_capture() -> None:
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        pass
