"""``SparseStructureVaeTrainer``: the dense sparse-structure VAE (TRELLIS v1 style; TRELLIS2_SPEC §2.4, §5.4).

Per micro-batch (``ss`` float ``[B, 1, r, r, r]`` occupancy from :class:`pixal3d.datasets.SparseStructureDataset`)::

    z, μ, logσ² = encoder(ss, sample_posterior=True, return_raw=True);  logits = decoder(z)

Loss: ``loss_type`` ``'bce'`` (BCE-with-logits), ``'l1'`` (``|sigmoid(logits) − ss|``) or ``'dice'``
(:func:`dice_loss`), plus ``lambda_kl``·KL. The reference reads ``self.lamda_kl`` (a typo that raises
``AttributeError``, TRELLIS2_SPEC §7.10); here the weight is ``lambda_kl`` as configured.
"""
import json

import numpy as np
import torch
import torch.nn.functional as F

from .base import VaeTrainerBase
from .losses import dice_loss, kl_divergence

__all__ = ["SparseStructureVaeTrainer"]


class SparseStructureVaeTrainer(VaeTrainerBase):
    """Trains ``models['encoder']`` (:class:`SparseStructureEncoder`) and ``models['decoder']``
    (:class:`SparseStructureDecoder`).

    Args:
        loss_type: ``'bce'``, ``'l1'`` or ``'dice'``.
        lambda_kl: KL weight (1e-6).
        **kwargs: :class:`VaeTrainerBase` arguments.

    Raises:
        ValueError: unknown ``loss_type``.
    """

    def __init__(self, *args, loss_type: str = "bce", lambda_kl: float = 1e-6, **kwargs):
        if loss_type not in ("bce", "l1", "dice"):
            raise ValueError(f"loss_type must be 'bce', 'l1' or 'dice', got {loss_type!r}")
        self.loss_type, self.lambda_kl = loss_type, float(lambda_kl)
        super().__init__(*args, **kwargs)

    def training_losses(self, ss, **_unused):
        """Loss of one micro-batch.

        Args:
            ss: float ``[B, 1, r, r, r]`` occupancy in {0, 1}.

        Returns:
            ``({'loss', <loss_type>, 'kl'}, {'iou'})`` (IoU of ``logits > 0`` against ``ss``).

        Raises:
            ValueError: ``ss`` is not 5-D.
        """
        if ss.dim() != 5:
            raise ValueError(f"ss must be [B, 1, r, r, r], got {tuple(ss.shape)}")
        ss = ss.float()
        z, mean, logvar = self.encoder(ss, sample_posterior=True, return_raw=True)
        logits = self.decoder(z).float()
        if self.loss_type == "bce":
            rec = F.binary_cross_entropy_with_logits(logits, ss)
        elif self.loss_type == "l1":
            rec = (torch.sigmoid(logits) - ss).abs().mean()
        else:
            rec = dice_loss(logits, ss)
        kl = kl_divergence(mean, logvar)
        pred = logits.detach() > 0
        gt = ss > 0.5
        iou = (pred & gt).sum().float() / (pred | gt).sum().clamp_min(1).float()
        return {"loss": rec + self.lambda_kl * kl, self.loss_type: rec, "kl": kl}, {"iou": iou}

    @torch.no_grad()
    def snapshot(self, step: int) -> None:
        """Reconstructs the snapshot batch (posterior mean) and writes ``samples/step{step}/recon.npz``
        (``gt`` and ``pred`` bool ``[B, r, r, r]``, ``ids``) and ``metrics.json`` (per-asset IoU)."""
        batch = self.snapshot_batch()
        ids = batch.pop("_ids")
        out = self.sample_dir(step)
        with self.eval_models() as (enc, dec):
            logits = dec(enc(batch["ss"].float())).float()
        pred, gt = (logits[:, 0] > 0).cpu().numpy(), (batch["ss"][:, 0] > 0.5).cpu().numpy()
        np.savez_compressed(out / "recon.npz", gt=gt, pred=pred, ids=np.array(ids))
        inter = (pred & gt).reshape(len(gt), -1).sum(1)
        union = np.maximum((pred | gt).reshape(len(gt), -1).sum(1), 1)
        (out / "metrics.json").write_text(json.dumps({i: float(a / b) for i, a, b in zip(ids, inter, union)}))
        self._log_text(f"snapshot of step {step}: {out / 'recon.npz'}")
