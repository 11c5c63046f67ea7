"""Shared plumbing of the VAE trainers (TRELLIS2_SPEC §5.4): the ``encoder``/``decoder`` model pair, float16
conversion of the SC-VAEs under ``inflat_all``, the load-balanced sampler for multi-process runs, and snapshot batches.
"""
import types
from pathlib import Path

import torch

from .. import dist_utils as du
from ..basic import BasicTrainer, to_device
from ..sampler import BalancedResumableSampler

__all__ = ["VaeTrainerBase"]


def _fp16_shim(model):
    """Gives SC-VAE / SS-VAE models (``convert_to_fp16``/``convert_to_fp32``, float32 "skin") the ``convert_to(dtype)``
    hook that :class:`BasicTrainer` calls under ``inflat_all`` (otherwise it would ``.half()`` the whole model)."""
    if hasattr(model, "convert_to") or not hasattr(model, "convert_to_fp16"):
        return

    def convert_to(self, dtype):
        if dtype == torch.float16:
            self.convert_to_fp16()
        elif dtype == torch.float32:
            self.convert_to_fp32()
        else:
            raise ValueError(f"{type(self).__name__} stores its stages in float16 or float32, not {dtype}")
    model.convert_to = types.MethodType(convert_to, model)


class VaeTrainerBase(BasicTrainer):
    """:class:`BasicTrainer` for an ``encoder`` + ``decoder`` pair.

    Args:
        balanced_sampler: with several processes and a dataset exposing ``loads`` (per-instance token counts), use
            :class:`BalancedResumableSampler` so every rank gets a similar number of voxels per step (default True).
        **kwargs: :class:`BasicTrainer` arguments.

    Raises:
        ValueError: the models are not named ``encoder`` and ``decoder``.
    """

    def __init__(self, models, dataset, *args, balanced_sampler: bool = True, **kwargs):
        missing = [k for k in ("encoder", "decoder") if k not in models]
        if missing:
            raise ValueError(f"{type(self).__name__} trains models 'encoder' and 'decoder'; the config's models are "
                             f"{sorted(models)} (missing {missing})")
        for m in models.values():
            _fp16_shim(m)
        self.balanced_sampler = bool(balanced_sampler)
        super().__init__(models, dataset, *args, **kwargs)

    def _init_data(self, num_workers) -> None:
        super()._init_data(num_workers)
        loads = getattr(self.dataset, "loads", None)
        if self.balanced_sampler and self.world_size > 1 and loads is not None:
            self.sampler = BalancedResumableSampler(self.dataset, batch_size=self.batch_size_per_gpu, seed=self.seed,
                                                    rank=self.rank, world_size=self.world_size)
            self._log_text("data order: BalancedResumableSampler (greedy LPT over per-instance voxel counts)")

    @property
    def encoder(self):
        return self.training_models["encoder"]

    @property
    def decoder(self):
        return self.training_models["decoder"]

    def snapshot_batch(self) -> dict:
        """The first ``snapshot_batch_size`` items collated as one micro-batch, on the device (``_ids`` kept)."""
        n = min(self.snapshot_batch_size, len(self.dataset))
        batch = self.dataset.collate_fn([self.dataset[i] for i in range(n)], split_size=1)
        batch = dict(batch[0] if isinstance(batch, list) else batch)
        ids = batch.pop("_ids", None)
        batch = to_device(batch, self.device)
        batch["_ids"] = ids
        return batch

    def sample_dir(self, step: int) -> Path:
        """``{output_dir}/samples/step{step:07d}/`` (created)."""
        d = Path(self.output_dir) / "samples" / f"step{step:07d}"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def eval_models(self):
        """Context: unwrapped encoder/decoder in eval mode, restored afterwards."""
        trainer = self

        class _Ctx:
            def __enter__(self_):
                self_.mods = [du.unwrap(trainer.training_models[k]) for k in ("encoder", "decoder")]
                self_.modes = [m.training for m in self_.mods]
                for m in self_.mods:
                    m.eval()
                return self_.mods

            def __exit__(self_, *exc):
                for m, t in zip(self_.mods, self_.modes):
                    m.train(t)
                return False
        return _Ctx()
