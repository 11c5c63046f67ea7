"""Euler samplers for rectified-flow models, with classifier-free guidance (TRELLIS2_SPEC §4.1).

Flow convention (shared with training): ``x_t = (1 - t) x_0 + (sigma_min + (1 - sigma_min) t) eps``, ``t = 1`` is pure
noise, and the model predicts ``v = (1 - sigma_min) eps - x_0``. Models are called as ``model(x_t, 1000 * t, cond,
**kwargs)`` with a ``[B]`` float32 timestep tensor.

Latents may be dense tensors ``[B, ...]`` or sparse tensors (anything exposing ``.feats [N, C]``, ``.coords [N, 4]``
with the batch index in column 0, and ``.replace(feats)``, such as :class:`pixal3d.sparse.SparseTensor`). All sampler
arithmetic on sparse tensors is done on ``.feats`` so it does not depend on the sparse type's operator overloads.

Guided steps run the conditional and unconditional passes as one forward of batch 2B by default (``batch_cfg``, see
:class:`FlowEulerCfgSampler`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ...sparse import SparseTensor, VarLenTensor, varlen_cat
from .cuda_graph import GraphedForward, use_cuda_graph

__all__ = ["SamplerOutput", "FlowEulerSampler", "FlowEulerCfgSampler", "FlowEulerGuidanceIntervalSampler",
           "get_sampler", "timestep_schedule"]


def _is_sparse(x) -> bool:
    return hasattr(x, "feats") and hasattr(x, "coords") and hasattr(x, "replace")


def _batch_size(x) -> int:
    if _is_sparse(x):
        if x.coords.shape[0] == 0:
            raise ValueError("the sparse latent has no tokens")
        layout = getattr(x, "layout", None)
        if isinstance(layout, (list, tuple)):
            # pixal3d's SparseTensor keeps its per-sample slices on the host (cached and shared by every replace()
            # copy), so no device read per model call; coords[:, 0].max() would be one (a GPU sync) every step
            return len(layout)
        return int(x.coords[:, 0].max().item()) + 1
    return int(x.shape[0])


def _apply(fn: Callable, x, *others):
    """``fn`` on dense tensors, or on ``.feats`` of sparse ones (same coords/row order as ``x``) re-wrapped like ``x``."""
    if _is_sparse(x):
        return x.replace(fn(x.feats, *(o.feats for o in others)))
    return fn(x, *others)


def _feats(x):
    return x.feats if _is_sparse(x) else x


def timestep_schedule(steps: int, rescale_t: float = 1.0) -> List[float]:
    """The ``steps + 1`` sampling times, from 1 (noise) to 0 (TRELLIS2_SPEC §4.1).

    ``t = linspace(1, 0, steps + 1)`` warped by ``t' = r t / (1 + (r - 1) t)``, computed in float64 like the reference
    (numpy). ``r > 1`` puts more steps near ``t = 1``.

    Raises:
        ValueError: ``steps < 1`` or ``rescale_t <= 0``.
    """
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if not rescale_t > 0:
        raise ValueError(f"rescale_t must be > 0, got {rescale_t!r}")
    t = np.linspace(1, 0, int(steps) + 1)
    t = rescale_t * t / (1 + (rescale_t - 1) * t)
    return t.tolist()


@dataclass
class SamplerOutput:
    """Result of :meth:`FlowEulerSampler.sample`.

    Attributes:
        samples: the final ``x`` at ``t = 0`` (same type and shape as the noise).
        pred_x_t: ``x`` after each Euler step (``steps`` entries; the last one is ``samples``).
        pred_x_0: the model's clean-sample estimate at each step.
    """

    samples: Any = None
    pred_x_t: List[Any] = field(default_factory=list)
    pred_x_0: List[Any] = field(default_factory=list)

    def __getitem__(self, key):  # the reference returns an EasyDict; keep ``out['samples']`` working
        return getattr(self, key)


class FlowEulerSampler:
    """First-order Euler sampler of the flow ODE, no guidance (TRELLIS2_SPEC §4.1).

    Args:
        sigma_min: the noise floor of the flow convention (released pipelines: 1e-5).
    """

    def __init__(self, sigma_min: float = 1e-5):
        if not 0 <= sigma_min < 1:
            raise ValueError(f"sigma_min must lie in [0, 1), got {sigma_min!r}")
        self.sigma_min = float(sigma_min)

    # -- conversions between the flow parameterisations (t is the Python float time in [0, 1]) --
    def _pred_to_xstart(self, x_t, t: float, v):
        """``x_0 = (1 - s) x_t - (s + (1 - s) t) v``."""
        s = self.sigma_min
        return _apply(lambda xt, vv: (1 - s) * xt - (s + (1 - s) * t) * vv, x_t, v)

    def _xstart_to_pred(self, x_t, t: float, x_0):
        """``v = ((1 - s) x_t - x_0) / (s + (1 - s) t)``."""
        s = self.sigma_min
        return _apply(lambda xt, x0: ((1 - s) * xt - x0) / (s + (1 - s) * t), x_t, x_0)

    def _call_model(self, model: Callable, x_t, t: float, cond, **kwargs):
        b = _batch_size(x_t)
        # filled on the device (same float32 rounding as torch.tensor): a host list copied to a GPU would block
        t_tensor = torch.full((b,), 1000 * t, device=_feats(x_t).device, dtype=torch.float32)
        return model(x_t, t_tensor, cond, **kwargs)

    def _inference_model(self, model, x_t, t: float, cond, **kwargs):
        return self._call_model(model, x_t, t, cond, **kwargs)

    def _check_prediction(self, x_t, v):
        if _is_sparse(x_t):
            if not _is_sparse(v) or v.feats.shape != x_t.feats.shape:
                raise ValueError(f"the model returned {type(v).__name__} with feats "
                                 f"{tuple(getattr(getattr(v, 'feats', None), 'shape', ()))}; expected a sparse tensor "
                                 f"with feats {tuple(x_t.feats.shape)} in the input's row order")
        elif not torch.is_tensor(v) or v.shape != x_t.shape:
            raise ValueError(f"the model returned shape {tuple(getattr(v, 'shape', ()))}, expected {tuple(x_t.shape)}")

    @torch.no_grad()
    def sample_once(self, model, x_t, t: float, t_prev: float, cond=None, **kwargs):
        """One Euler step from ``t`` to ``t_prev``: ``x <- x - (t - t_prev) v``.

        Returns:
            ``(x_prev, pred_x_0)``.
        """
        v = self._inference_model(model, x_t, t, cond, **kwargs)
        self._check_prediction(x_t, v)
        pred_x_0 = self._pred_to_xstart(x_t, t, v)
        x_prev = _apply(lambda xt, vv: xt - (t - t_prev) * vv, x_t, v)
        return x_prev, pred_x_0

    def _validate_noise(self, noise):
        if _is_sparse(noise):
            if not noise.feats.is_floating_point():
                raise TypeError(f"noise feats must be floating point, got {noise.feats.dtype}")
        elif not torch.is_tensor(noise) or not noise.is_floating_point():
            raise TypeError("noise must be a floating-point torch tensor or a sparse tensor with .feats/.coords")

    @torch.no_grad()
    def sample(self, model, noise, cond=None, steps: int = 50, rescale_t: float = 1.0, verbose: bool = True,
               tqdm_desc: str = "Sampling", cuda_graph=False, **kwargs) -> SamplerOutput:
        """Integrates the flow ODE from ``t = 1`` (``noise``) to ``t = 0``.

        Args:
            model: callable ``model(x_t, t[B] in [0, 1000], cond, **kwargs) -> v`` (same type/shape as ``x_t``).
            noise: dense ``[B, ...]`` tensor or sparse tensor.
            cond: anything the model accepts (tensor, or a dict such as Pixal3D's ``{'global', 'proj'}``).
            steps: number of Euler steps.
            rescale_t: time-warp factor ``r`` of :func:`timestep_schedule`.
            verbose: show a tqdm progress bar.
            tqdm_desc: its label.
            cuda_graph: replay the model's forward from CUDA graphs after its first call
                (:class:`~pixal3d.pipelines.samplers.cuda_graph.GraphedForward`): ``False`` (default), ``True`` or
                ``'auto'`` (CUDA and at most ``AUTO_MAX_ROWS`` = 4,096 tokens, where a forward is launch-bound).
                Same outputs. The model's warm forward must make no host synchronisation (the pipelines turn it
                on for the stages whose models qualify).
            **kwargs: forwarded to the model (e.g. ``concat_cond``).

        Raises:
            ValueError: a bad ``cuda_graph``.

        Returns:
            :class:`SamplerOutput`.
        """
        self._validate_noise(noise)
        if use_cuda_graph(cuda_graph, noise):
            model = GraphedForward(model)  # dropped with this run, and its graphs' memory with it
        t_seq = timestep_schedule(steps, rescale_t)
        out = SamplerOutput()
        x = noise
        for t, t_prev in tqdm(list(zip(t_seq[:-1], t_seq[1:])), desc=tqdm_desc, disable=not verbose):
            x, pred_x_0 = self.sample_once(model, x, t, t_prev, cond, **kwargs)
            out.pred_x_t.append(x)
            out.pred_x_0.append(pred_x_0)
        out.samples = x
        return out


def _per_sample_std(x) -> torch.Tensor:
    """Std over all non-batch dims, broadcastable against ``x`` (dense) or ``x.feats`` (sparse).

    Dense: torch's unbiased std, ``[B, 1, ..., 1]``. Sparse: per-sample population std over tokens x channels, ``[N, 1]``
    (one value per row, taken from the row's sample). This mirrors the reference (TRELLIS2_SPEC §7 item 9).
    """
    if _is_sparse(x):
        feats = x.feats
        b = _batch_size(x)
        bidx = x.coords[:, 0].long().to(feats.device)
        count = torch.bincount(bidx, minlength=b).to(feats.dtype) * feats.shape[1]
        mean = torch.zeros(b, dtype=feats.dtype, device=feats.device).index_add_(0, bidx, feats.sum(1)) / count
        sq = ((feats - mean[bidx, None]) ** 2).sum(1)
        var = torch.zeros(b, dtype=feats.dtype, device=feats.device).index_add_(0, bidx, sq) / count
        return var.sqrt()[bidx, None]
    return x.std(dim=list(range(1, x.dim())), keepdim=True)


def _scale(x, factor):
    return x.replace(x.feats * factor) if _is_sparse(x) else x * factor


class _Unbatchable(Exception):
    """An input :class:`_CfgBatch` cannot stack; the step runs two separate passes instead (same result)."""


class _CfgBatch:
    """Stacks a guided step's two passes into one model call of batch 2B (conditional samples first) and splits the
    output back. One instance serves one sampling run.

    What stays the same from step to step is built at the first guided step and reused: the stacked conditions and
    model kwargs (keyed on the identity of the objects passed in) and, for sparse latents, the doubled structure
    (keyed on the identity of ``x_t.coords``, which every step's ``replace`` keeps). Each step then only concatenates
    ``x_t``'s features, and the doubled structure's spatial cache keeps the attention metadata / RoPE phases of the
    2B batch across steps. Nothing here reads device memory on the host: layouts and sizes are host-side Python ints.
    """

    def __init__(self):
        self._doubled = {}  # id(coords) -> (coords, SparseTensor of 2B samples on [coords; coords + B in column 0])
        self._stacked = None  # (key objects, (cond2, kwargs2) or None when something cannot be stacked)

    def _double(self, s: SparseTensor) -> SparseTensor:
        """``s``'s structure twice, the copy's batch indices offset by B, with its layout set from the host."""
        hit = self._doubled.get(id(s.coords))
        if hit is not None and hit[0] is s.coords:
            return hit[1]
        layout, n = s.layout, s.feats.shape[0]
        shifted = s.coords.clone()
        shifted[:, 0] += len(layout)
        d = SparseTensor(torch.cat([s.feats, s.feats]), torch.cat([s.coords, shifted]),
                         torch.Size([2 * len(layout), *s.feats.shape[1:]]), scale=s._scale, check=False)
        d.register_spatial_cache("layout", list(layout) + [slice(sl.start + n, sl.stop + n) for sl in layout])
        self._doubled[id(s.coords)] = (s.coords, d)
        return d

    def _stack(self, a, b, x, batch: int):
        """``a`` (conditional) and ``b`` (unconditional) concatenated along the batch, structure kept.

        Dense tensors ``[B, ...]`` (or ``[N, ...]`` rows of a sparse ``x``) are concatenated along dim 0, which is the
        sample order of the doubled ``x`` in both cases; sparse tensors on ``x``'s coords are rebuilt on the doubled
        structure so the model's coords check is an identity test (no device compare).

        Raises:
            _Unbatchable: a type or shape this does not know how to stack.
        """
        if a is None and b is None:
            return None
        if isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys():
            return {k: self._stack(a[k], b[k], x, batch) for k in a}
        if type(a) in (tuple, list) and type(a) is type(b) and len(a) == len(b):
            if len(a) == batch and all(torch.is_tensor(p) and p.dim() == 2 for p in (*a, *b)):
                return type(a)([*a, *b])  # B per-sample token sequences [L_b, C] (a cross-attention context)
            return type(a)(self._stack(p, q, x, batch) for p, q in zip(a, b))
        if isinstance(a, SparseTensor) and isinstance(b, SparseTensor):
            # make_negative_cond keeps the coords object; other coords might differ and comparing them would sync
            if not isinstance(x, SparseTensor) or a.coords is not b.coords or a.feats.shape != b.feats.shape:
                raise _Unbatchable
            return self._double(a).replace(torch.cat([a.feats, b.feats]))
        if isinstance(a, VarLenTensor) and type(a) is type(b):
            if len(a.layout) != batch or len(b.layout) != batch or a.feats.shape[1:] != b.feats.shape[1:]:
                raise _Unbatchable
            return varlen_cat([a, b])
        if torch.is_tensor(a) and torch.is_tensor(b):
            rows = (batch, x.feats.shape[0]) if isinstance(x, SparseTensor) else (batch,)
            if a.shape != b.shape or a.dtype != b.dtype or a.device != b.device or a.dim() == 0 \
                    or a.shape[0] not in rows:
                raise _Unbatchable
            return torch.cat([a, b])
        raise _Unbatchable

    def _inputs(self, x, cond, neg_cond, kwargs: dict):
        """``(cond2, kwargs2)`` for this step, cached while the same objects come in; None if not stackable."""
        names = tuple(sorted(kwargs))
        key = (x.coords if isinstance(x, SparseTensor) else None, cond, neg_cond, *(kwargs[k] for k in names))
        batch = _batch_size(x)
        if self._stacked is not None:
            (old_names, old_batch, old_key), value = self._stacked
            if old_names == names and old_batch == batch and all(p is q for p, q in zip(old_key, key)):
                return value
        try:
            value = (self._stack(cond, neg_cond, x, batch), {k: self._stack(kwargs[k], kwargs[k], x, batch)
                                                             for k in names})
        except _Unbatchable:
            value = None
        self._stacked = ((names, batch, key), value)
        return value

    def __call__(self, call_model: Callable, model, x_t, t: float, cond, neg_cond, **kwargs):
        """``(v_cond, v_uncond)`` from one ``call_model(model, x2, t, cond2, **kwargs2)``, or None when some input
        cannot be stacked (the caller then runs the two passes).

        Raises:
            ValueError: the model's output is not ``x2``-shaped (a model that is not batch-consistent).
        """
        if not (torch.is_tensor(x_t) or isinstance(x_t, SparseTensor)):
            return None
        stacked = self._inputs(x_t, cond, neg_cond, kwargs)
        if stacked is None:
            return None
        cond2, kwargs2 = stacked
        if isinstance(x_t, SparseTensor):
            n = x_t.feats.shape[0]
            v2 = call_model(model, self._double(x_t).replace(torch.cat([x_t.feats, x_t.feats])), t, cond2, **kwargs2)
            feats = getattr(v2, "feats", None)
            if not torch.is_tensor(feats) or feats.shape[0] != 2 * n:
                raise ValueError(f"the batched CFG forward returned {type(v2).__name__} with feats "
                                 f"{tuple(getattr(feats, 'shape', ()))}, expected {2 * n} rows (2 x {n} voxels); "
                                 "run the sampler with batch_cfg=False for a model that cannot take the 2B batch")
            # samples are contiguous in batch order, so the conditional half is the first n rows; x_t.replace keeps
            # x_t's coords and spatial cache, as a model output on x_t would
            return x_t.replace(feats[:n]), x_t.replace(feats[n:])
        b = x_t.shape[0]
        v2 = call_model(model, torch.cat([x_t, x_t]), t, cond2, **kwargs2)
        if not torch.is_tensor(v2) or v2.shape[0] != 2 * b:
            raise ValueError(f"the batched CFG forward returned shape {tuple(getattr(v2, 'shape', ()))}, expected "
                             f"batch {2 * b}; run the sampler with batch_cfg=False for models that cannot take it")
        return v2[:b], v2[b:]


class FlowEulerCfgSampler(FlowEulerSampler):
    """Euler sampler with classifier-free guidance and optional guidance rescale (TRELLIS2_SPEC §4.1).

    ``v = w v_cond + (1 - w) v_uncond``; ``w == 1`` runs only the conditional pass, ``w == 0`` only the unconditional
    one. With ``guidance_rescale = phi > 0`` the guided clean estimate is pulled towards the conditional one's std:
    ``x0 = phi x0_cfg std(x0_cond)/std(x0_cfg) + (1 - phi) x0_cfg``.

    Args:
        sigma_min: as :class:`FlowEulerSampler`.
        batch_cfg: run the two passes of a guided step as ONE model call on a batch of 2B samples (``x_t`` twice,
            ``cond`` stacked on ``neg_cond``, per-sample kwargs such as ``concat_cond`` twice), then split the
            output. At inference sizes a batch-1 forward of the 1.3 B-parameter DiTs is launch-bound (H100: ~50 ms
            at batch 1, ~54 ms at batch 2), so this nearly halves the time of guided steps. Cost: twice the
            activation memory of one pass (low-VRAM pipelines turn it off). The result equals two passes up to
            floating-point batch effects; inputs it cannot stack (anything but tensors, ``SparseTensor``,
            ``VarLenTensor``, ``None`` and dicts/tuples/lists of them) fall back to two passes.
            ``sample(..., batch_cfg=...)`` overrides it per run.

    Raises:
        TypeError: ``batch_cfg`` is not a bool.
    """

    def __init__(self, sigma_min: float = 1e-5, batch_cfg: bool = True):
        super().__init__(sigma_min)
        if not isinstance(batch_cfg, bool):
            raise TypeError(f"batch_cfg must be true or false, got {batch_cfg!r}")
        self.batch_cfg = batch_cfg

    def _inference_model(self, model, x_t, t, cond, neg_cond=None, guidance_strength: float = 3.0,
                         guidance_rescale: float = 0.0, _cfg_batch: Optional[_CfgBatch] = None, **kwargs):
        if guidance_strength == 1:
            return self._call_model(model, x_t, t, cond, **kwargs)
        if neg_cond is None:
            raise ValueError("classifier-free guidance with guidance_strength != 1 needs neg_cond (the pipelines pass "
                             "zeros_like(cond) / make_negative_cond(cond))")
        if guidance_strength == 0:
            return self._call_model(model, x_t, t, neg_cond, **kwargs)
        pair = None if _cfg_batch is None else _cfg_batch(self._call_model, model, x_t, t, cond, neg_cond, **kwargs)
        if pair is None:
            pair = (self._call_model(model, x_t, t, cond, **kwargs),
                    self._call_model(model, x_t, t, neg_cond, **kwargs))
        v_pos, v_neg = pair
        w = guidance_strength
        v = _apply(lambda vp, vn: w * vp + (1 - w) * vn, v_pos, v_neg)
        if guidance_rescale > 0:
            x0_pos = self._pred_to_xstart(x_t, t, v_pos)
            x0_cfg = self._pred_to_xstart(x_t, t, v)
            ratio = _per_sample_std(x0_pos) / _per_sample_std(x0_cfg)
            phi = guidance_rescale
            x0 = _apply(lambda xr, xc: phi * xr + (1 - phi) * xc, _scale(x0_cfg, ratio), x0_cfg)
            v = self._xstart_to_pred(x_t, t, x0)
        return v

    @torch.no_grad()
    def sample(self, model, noise, cond=None, neg_cond=None, steps: int = 50, rescale_t: float = 1.0,
               guidance_strength: float = 3.0, guidance_rescale: float = 0.0, verbose: bool = True,
               tqdm_desc: str = "Sampling", batch_cfg: Optional[bool] = None, **kwargs) -> SamplerOutput:
        """As :meth:`FlowEulerSampler.sample`, plus ``neg_cond``, ``guidance_strength`` (w), ``guidance_rescale`` and
        ``batch_cfg`` (None: the constructor's choice; see the class docstring).

        Raises:
            ValueError: ``guidance_rescale`` outside [0, 1], or CFG requested without ``neg_cond``.
            TypeError: ``batch_cfg`` is not a bool or None.
        """
        if not 0 <= guidance_rescale <= 1:
            raise ValueError(f"guidance_rescale must lie in [0, 1], got {guidance_rescale!r}")
        if batch_cfg is None:
            batch_cfg = self.batch_cfg
        elif not isinstance(batch_cfg, bool):
            raise TypeError(f"batch_cfg must be true, false or None, got {batch_cfg!r}")
        return super().sample(model, noise, cond, steps=steps, rescale_t=rescale_t, verbose=verbose,
                              tqdm_desc=tqdm_desc, neg_cond=neg_cond, guidance_strength=guidance_strength,
                              guidance_rescale=guidance_rescale, _cfg_batch=_CfgBatch() if batch_cfg else None,
                              **kwargs)


class FlowEulerGuidanceIntervalSampler(FlowEulerCfgSampler):
    """CFG sampler that guides only while ``interval[0] <= t <= interval[1]`` (TRELLIS2_SPEC §4.1).

    ``t`` is the current (larger) time of each step; outside the interval a single conditional pass is used
    (``guidance_strength = 1``). This is the sampler of every released TRELLIS.2 / Pixal3D stage.
    """

    def _inference_model(self, model, x_t, t, cond, neg_cond=None, guidance_strength: float = 3.0,
                         guidance_interval: Sequence[float] = (0.0, 1.0), **kwargs):
        if guidance_interval[0] <= t <= guidance_interval[1]:
            return super()._inference_model(model, x_t, t, cond, neg_cond, guidance_strength, **kwargs)
        return super()._inference_model(model, x_t, t, cond, neg_cond, 1, **kwargs)

    @torch.no_grad()
    def sample(self, model, noise, cond=None, neg_cond=None, steps: int = 50, rescale_t: float = 1.0,
               guidance_strength: float = 3.0, guidance_rescale: float = 0.0,
               guidance_interval: Sequence[float] = (0.0, 1.0), verbose: bool = True,
               tqdm_desc: str = "Sampling", **kwargs) -> SamplerOutput:
        """As :meth:`FlowEulerCfgSampler.sample` (``batch_cfg`` included), plus ``guidance_interval = (lo, hi)`` in
        t units.

        Raises:
            ValueError: the interval is not two numbers with ``lo <= hi``.
        """
        try:
            lo, hi = (float(v) for v in guidance_interval)
        except (TypeError, ValueError):
            raise ValueError(f"guidance_interval must be two numbers (lo, hi), got {guidance_interval!r}") from None
        if lo > hi:
            raise ValueError(f"guidance_interval must satisfy lo <= hi, got {guidance_interval!r}")
        return super().sample(model, noise, cond, neg_cond, steps=steps, rescale_t=rescale_t,
                              guidance_strength=guidance_strength, guidance_rescale=guidance_rescale,
                              verbose=verbose, tqdm_desc=tqdm_desc, guidance_interval=(lo, hi), **kwargs)


_SAMPLERS = {cls.__name__: cls for cls in (FlowEulerSampler, FlowEulerCfgSampler, FlowEulerGuidanceIntervalSampler)}


def get_sampler(name: str, **args):
    """Builds a sampler from its ``pipeline.json`` entry (``{"name": ..., "args": {...}}``).

    Raises:
        KeyError: unknown sampler name (the message lists the known ones).
    """
    if name not in _SAMPLERS:
        raise KeyError(f"unknown sampler {name!r}; known: {', '.join(sorted(_SAMPLERS))}")
    return _SAMPLERS[name](**args)


def make_negative_cond(cond):
    """Zeros shaped like ``cond`` (tensor, sparse tensor or dict of those): the reference's unconditional input."""
    if isinstance(cond, dict):
        return {k: make_negative_cond(v) for k, v in cond.items()}
    if _is_sparse(cond):
        return cond.replace(torch.zeros_like(cond.feats))
    if torch.is_tensor(cond):
        return torch.zeros_like(cond)
    raise TypeError(f"cannot build a negative condition from {type(cond).__name__}; expected a tensor, a sparse "
                    "tensor or a dict of them")


__all__.append("make_negative_cond")
