"""Flow-matching trainers (TRELLIS2_SPEC §5.3 and §4.1 for the flow convention).

``x_t = (1 − t)·x_0 + (σ_min + (1 − σ_min)·t)·ε`` (t = 1 is noise), target ``v = (1 − σ_min)·ε − x_0``, MSE over all
elements, the denoiser called with ``1000·t``. The model being trained is ``models['denoiser']``.
"""
from pathlib import Path

import torch

from ..basic import BasicTrainer, to_device
from .. import dist_utils as du

__all__ = ["FlowMatchingTrainer", "SparseFlowMatchingTrainer", "NUM_TIME_BINS"]

NUM_TIME_BINS = 10


def _is_sparse(x) -> bool:
    return hasattr(x, "feats") and hasattr(x, "coords")


class FlowMatchingTrainer(BasicTrainer):
    """Dense flow matching: ``x_0`` is ``[B, C, *spatial]``.

    Args:
        t_schedule: ``{'name': 'uniform'}`` (``t ~ U(0, 1)``) or ``{'name': 'logitNormal', 'args': {'mean', 'std'}}``
            (``t = sigmoid(N(mean, std²))``); one t per sample.
        sigma_min: noise floor σ_min.
        snapshot_steps, snapshot_guidance: Euler steps and CFG strength of :meth:`snapshot` (defaults 50 and 3.0).
        **kwargs: :class:`~pixal3d.trainers.basic.BasicTrainer` arguments.

    Raises:
        ValueError: an unknown t schedule, or no ``denoiser`` among the models.
    """

    default_snapshot_steps = 50

    def __init__(self, *args, t_schedule=None, sigma_min: float = 1e-5, snapshot_steps=None,
                 snapshot_guidance: float = 3.0, **kwargs):
        t_schedule = t_schedule if t_schedule is not None else {"name": "logitNormal",
                                                                "args": {"mean": 0.0, "std": 1.0}}
        if not isinstance(t_schedule, dict) or t_schedule.get("name") not in ("uniform", "logitNormal") \
                or set(t_schedule) - {"name", "args"}:
            raise ValueError(f"t_schedule must be {{'name': 'uniform'}} or {{'name': 'logitNormal', 'args': "
                             f"{{'mean': m, 'std': s}}}}, got {t_schedule!r}")
        t_args = dict(t_schedule.get("args", {}))
        if t_schedule["name"] == "logitNormal":
            unknown = set(t_args) - {"mean", "std"}
            if unknown:
                raise ValueError(f"logitNormal takes 'mean' and 'std', got unknown {sorted(unknown)}")
            t_args = {"mean": float(t_args.get("mean", 0.0)), "std": float(t_args.get("std", 1.0))}
        elif t_args:
            raise ValueError(f"t_schedule 'uniform' takes no args, got {t_args}")
        if not 0 <= sigma_min < 1:
            raise ValueError(f"sigma_min must be in [0, 1), got {sigma_min}")
        self.t_schedule = {"name": t_schedule["name"], "args": t_args}
        self.sigma_min = float(sigma_min)
        self.snapshot_steps = snapshot_steps or self.default_snapshot_steps
        self.snapshot_guidance = snapshot_guidance
        super().__init__(*args, **kwargs)
        if "denoiser" not in self.training_models:
            raise ValueError(f"{type(self).__name__} trains models['denoiser']; the config's models are "
                             f"{sorted(self.models)} (rename the flow model to 'denoiser')")

    # ------------------------------------------------------------------ flow convention
    def sample_t(self, batch_size: int) -> torch.Tensor:
        """``[B]`` float32 times in (0, 1) from the configured schedule (global torch RNG of this rank)."""
        if self.t_schedule["name"] == "uniform":
            return torch.rand(batch_size, device=self.device)
        a = self.t_schedule["args"]
        return torch.sigmoid(torch.randn(batch_size, device=self.device) * a["std"] + a["mean"])

    def diffuse(self, x_0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """``x_t = (1 − t) x_0 + (σ + (1 − σ) t) ε``; ``t`` broadcastable against ``x_0``."""
        s = self.sigma_min
        return (1 - t) * x_0 + (s + (1 - s) * t) * noise

    def get_v(self, x_0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Velocity target ``(1 − σ) ε − x_0``."""
        return (1 - self.sigma_min) * noise - x_0

    def get_cond(self, cond, x_0, extras: dict):
        """Turns the dataset's ``cond`` into the denoiser's condition. Mixins override it and may pop the keys they
        consume from ``extras`` (the rest is passed to the denoiser as keyword arguments)."""
        return cond

    # ------------------------------------------------------------------ loss
    def _time_bins(self, t: torch.Tensor, per_sample_mse: torch.Tensor) -> dict:
        bins = torch.clamp((t * NUM_TIME_BINS).long(), max=NUM_TIME_BINS - 1)
        out = {}
        for b in bins.unique().tolist():
            out[f"bin_{b}/mse"] = float(per_sample_mse[bins == b].mean())
        return out

    def training_losses(self, x_0, cond=None, **extras):
        """Flow-matching loss of one micro-batch.

        Args:
            x_0: ``[B, C, *spatial]`` clean latents.
            cond: dataset condition (image tensor, precomputed features, ...) handled by :meth:`get_cond`.
            **extras: other dataset keys; those not consumed by :meth:`get_cond` go to the denoiser.

        Returns:
            ``({'loss', 'mse'}, {'bin_i/mse': ...})``.
        """
        noise = torch.randn_like(x_0)
        t = self.sample_t(x_0.shape[0])
        x_t = self.diffuse(x_0, t.view(-1, *[1] * (x_0.dim() - 1)), noise)
        cond = self.get_cond(cond, x_0, extras)
        pred = self.training_models["denoiser"](x_t, t * 1000, cond, **extras)
        target = self.get_v(x_0, noise)
        if pred.shape != target.shape:
            raise ValueError(f"denoiser output {tuple(pred.shape)} does not match the target {tuple(target.shape)}")
        err = (pred.float() - target.float()) ** 2
        loss = err.mean()
        status = self._time_bins(t, err.flatten(1).mean(1).detach())
        return {"loss": loss, "mse": loss.detach()}, status

    # ------------------------------------------------------------------ snapshots
    def snapshot_batch(self):
        """The first ``snapshot_batch_size`` dataset items collated as one micro-batch, on the device."""
        n = min(self.snapshot_batch_size, len(self.dataset))
        batch = self.dataset.collate_fn([self.dataset[i] for i in range(n)], split_size=1)
        batch = dict(batch[0] if isinstance(batch, list) else batch)
        batch.pop("_ids", None)
        return to_device(batch, self.device)

    def inference_cond(self, batch: dict):
        """``(cond, neg_cond, extras)`` for sampling (no CFG dropout; negatives are zeros)."""
        x_0, extras = batch.pop("x_0"), batch
        cond = FlowMatchingTrainer.get_cond(self, extras.pop("cond", None), x_0, extras)
        return cond, None, extras

    @torch.no_grad()
    def snapshot(self, step: int) -> None:
        """Samples ``snapshot_batch_size`` latents with the Euler CFG sampler (TRELLIS2_SPEC §4.1) from the current
        weights and saves them with the ground truth to ``samples/step{step:07d}.pt``."""
        from pixal3d.pipelines.samplers import FlowEulerCfgSampler
        model = du.unwrap(self.training_models["denoiser"])
        was_training = model.training
        model.eval()
        batch = self.snapshot_batch()
        x_0 = batch["x_0"]
        cond, neg_cond, extras = self.inference_cond(dict(batch))
        noise = (x_0.replace(torch.randn_like(x_0.feats)) if _is_sparse(x_0) else torch.randn_like(x_0))
        w = self.snapshot_guidance if neg_cond is not None else 1.0
        with self._autocast():
            res = FlowEulerCfgSampler(self.sigma_min).sample(model, noise, cond, neg_cond=neg_cond,
                                                             steps=self.snapshot_steps, guidance_strength=w,
                                                             verbose=False, **extras)
        model.train(was_training)
        out = Path(self.output_dir) / "samples" / f"step{step:07d}.pt"
        out.parent.mkdir(parents=True, exist_ok=True)

        def cpu(x):
            return {"feats": x.feats.float().cpu(), "coords": x.coords.cpu()} if _is_sparse(x) else x.float().cpu()
        torch.save({"sample": cpu(res.samples), "gt": cpu(x_0)}, out)
        self._log_text(f"snapshot of step {step}: {out}")


class SparseFlowMatchingTrainer(FlowMatchingTrainer):
    """Sparse flow matching: ``x_0`` is a :class:`pixal3d.sparse.SparseTensor`; the MSE runs over all tokens ×
    channels of the micro-batch (large assets weigh more, as the reference). Extra dataset keys such as
    ``concat_cond`` go to the denoiser."""

    default_snapshot_steps = 12

    def training_losses(self, x_0, cond=None, **extras):
        """As :meth:`FlowMatchingTrainer.training_losses` with SparseTensor ``x_0``; per-sample MSE (for the time
        bins) averages that sample's tokens."""
        if not _is_sparse(x_0):
            raise TypeError(f"{type(self).__name__} needs a SparseTensor x_0, got {type(x_0).__name__}; use "
                            f"FlowMatchingTrainer for dense latents")
        batch_size = int(x_0.shape[0])
        noise = x_0.replace(torch.randn_like(x_0.feats))
        t = self.sample_t(batch_size)
        bidx = x_0.coords[:, 0].long()
        t_tok = t[bidx].unsqueeze(-1)
        x_t = x_0.replace(self.diffuse(x_0.feats, t_tok, noise.feats))
        cond = self.get_cond(cond, x_0, extras)
        pred = self.training_models["denoiser"](x_t, t * 1000, cond, **extras)
        target = self.get_v(x_0.feats, noise.feats)
        if pred.feats.shape != target.shape:
            raise ValueError(f"denoiser output feats {tuple(pred.feats.shape)} do not match the target "
                             f"{tuple(target.shape)}")
        err = (pred.feats.float() - target.float()) ** 2
        loss = err.mean()
        per_tok = err.mean(1).detach()
        counts = torch.bincount(bidx, minlength=batch_size).clamp(min=1)
        per_sample = torch.zeros(batch_size, device=err.device).index_add_(0, bidx, per_tok) / counts
        return {"loss": loss, "mse": loss.detach()}, self._time_bins(t, per_sample)
