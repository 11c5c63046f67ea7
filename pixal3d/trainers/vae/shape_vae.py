"""``ShapeVaeTrainer``: the shape SC-VAE on flexible dual grids (TRELLIS2_SPEC §5.4, §2.7, §3.3-3.4).

Per micro-batch (SparseTensors from :class:`pixal3d.datasets.FlexiDualGridDataset`)::

    z, μ, logσ² = encoder(vertices, intersected, sample_posterior=True, return_raw=True)
    meshes, v̂, ŝ, subs_gt, subs = decoder(z, gt_intersected=intersected)     # teacher forced through the cache

``z`` carries the encoder's spatial cache, so the decoder rebuilds exactly the input voxels (rows in the input's
order) and ``subs_gt[i]`` are the true child occupancies of level ``i``.

Loss (logged names; λ from the config):

* ``direct/intersected`` BCE-with-logits(ŝ, flags) · ``lambda_intersected`` (0.1)
* ``direct/vertice`` MSE(v̂, local vertices in [0, 1]) · ``lambda_vertice`` (1e-2)
* ``bce_sub{i}`` BCE-with-logits(subs[i], subs_gt[i]) · ``lambda_subdiv`` (0.1 each)
* ``kl`` · ``lambda_kl`` (1e-6)
* ``render/{mask,depth,normal/*}`` with ``lambda_mask`` 1, ``lambda_depth`` 10, ``lambda_normal`` 1 ·
  (l1 + ``lambda_ssim``·(1 − SSIM) + ``lambda_lpips``·LPIPS) — computed only when the mesh renderer propagates
  gradients to vertex positions (probed at start-up, see
  :func:`pixal3d.trainers.vae.losses.differentiable_renderer_status`); otherwise the log says they are off and the
  loss has only the direct terms. LPIPS additionally needs the ``lpips`` package.
"""
from typing import List, Optional

import torch
import torch.nn.functional as F

from .base import VaeTrainerBase
from .losses import differentiable_renderer_status, kl_divergence, lpips_model, sample_training_camera, ssim

__all__ = ["ShapeVaeTrainer"]


class ShapeVaeTrainer(VaeTrainerBase):
    """Trains ``models['encoder']`` (:class:`FlexiDualGridVaeEncoder`) and ``models['decoder']``
    (:class:`FlexiDualGridVaeDecoder`).

    Args:
        lambda_intersected, lambda_vertice, lambda_subdiv, lambda_kl: weights of the direct terms.
        lambda_mask, lambda_depth, lambda_normal, lambda_ssim, lambda_lpips: render-term weights (§5.4).
        render_resolution: render size in pixels (1024 in the reference).
        radius_range: camera distance range of :func:`sample_training_camera`.
        render_loss: ``'auto'`` (render terms when the renderer is differentiable), ``'off'``, or ``'on'``
            (raise if it is not).
        **kwargs: :class:`VaeTrainerBase` / :class:`BasicTrainer` arguments.

    Raises:
        ValueError: unknown ``render_loss``; RuntimeError: ``render_loss='on'`` without a differentiable renderer.
    """

    def __init__(self, *args, lambda_intersected: float = 0.1, lambda_vertice: float = 1e-2,
                 lambda_subdiv: float = 0.1, lambda_kl: float = 1e-6, lambda_mask: float = 1.0,
                 lambda_depth: float = 10.0, lambda_normal: float = 1.0, lambda_ssim: float = 0.2,
                 lambda_lpips: float = 0.2, render_resolution: int = 1024, radius_range=(2.0, 100.0),
                 render_loss: str = "auto", **kwargs):
        if render_loss not in ("auto", "on", "off"):
            raise ValueError(f"render_loss must be 'auto', 'on' or 'off', got {render_loss!r}")
        self.lambda_intersected, self.lambda_vertice = lambda_intersected, lambda_vertice
        self.lambda_subdiv, self.lambda_kl = lambda_subdiv, lambda_kl
        self.lambda_mask, self.lambda_depth, self.lambda_normal = lambda_mask, lambda_depth, lambda_normal
        self.lambda_ssim, self.lambda_lpips = lambda_ssim, lambda_lpips
        self.render_resolution, self.radius_range = int(render_resolution), tuple(radius_range)
        self.render_loss = render_loss
        super().__init__(*args, **kwargs)
        self._setup_render()

    def _setup_render(self) -> None:
        self.render_enabled, self.lpips = False, None
        want = self.render_loss != "off" and (self.lambda_mask or self.lambda_depth or self.lambda_normal)
        if not want:
            self._log_text("render losses: off (render_loss='off' or all render lambdas are 0)")
            return
        ok, reason = differentiable_renderer_status(self.device)
        if not ok:
            if self.render_loss == "on":
                raise RuntimeError(f"render_loss='on' but {reason}")
            self._log_text(f"render losses: OFF — {reason}. Training uses the direct terms only "
                           f"(intersected, vertice, subdivision, KL)")
            return
        self.render_enabled = True
        if self.lambda_normal and self.lambda_lpips:
            self.lpips = lpips_model(self.device)
        self._log_text(f"render losses: ON ({reason}); mask/depth/normal l1+ssim"
                       + ("+lpips" if self.lpips is not None else "; LPIPS off (pip install lpips)"))

    # ------------------------------------------------------------------ loss
    def training_losses(self, vertices, intersected, mesh: Optional[List] = None, **_unused):
        """Loss of one micro-batch.

        Args:
            vertices: SparseTensor feats float32 ``[N, 3]`` (local dual vertices in [0, 1]).
            intersected: SparseTensor feats bool ``[N, 3]`` on the same coords.
            mesh: list of GT :class:`Mesh` (render terms only).

        Returns:
            ``(terms, status)``: ``terms['loss']`` and every logged term; ``status`` holds subdivision accuracies.

        Raises:
            ValueError: the decoder did not reproduce the input voxels (teacher forcing broken), or a level lacks its
                subdivision target (the latent lost the encoder's spatial cache).
        """
        z, mean, logvar = self.encoder(vertices, intersected, sample_posterior=True, return_raw=True)
        meshes, pred_v, pred_logits, subs_gt, subs = self.decoder(z, gt_intersected=intersected)
        if pred_v.coords.shape != vertices.coords.shape or not torch.equal(pred_v.coords, vertices.coords):
            raise ValueError("teacher forcing failed: the decoder's output voxels differ from the input voxels; the "
                             "latent must be the encoder output (or a .replace of it) so that it carries the "
                             "encoder's spatial cache")
        terms, status = {}, {}
        gt_flags = intersected.feats.float()
        terms["direct/intersected"] = F.binary_cross_entropy_with_logits(pred_logits.feats.float(), gt_flags)
        terms["direct/vertice"] = F.mse_loss(pred_v.feats.float(), vertices.feats.float())
        loss = self.lambda_intersected * terms["direct/intersected"] + self.lambda_vertice * terms["direct/vertice"]
        for i, (g, s) in enumerate(zip(subs_gt, subs)):
            if g is None:
                raise ValueError(f"no subdivision target at level {i}: the latent lost the encoder's spatial cache")
            terms[f"bce_sub{i}"] = F.binary_cross_entropy_with_logits(s.feats.float(), g.float())
            loss = loss + self.lambda_subdiv * terms[f"bce_sub{i}"]
            status[f"acc_sub{i}"] = ((s.feats.detach() > 0) == g.bool()).float().mean()
        terms["kl"] = kl_divergence(mean, logvar)
        loss = loss + self.lambda_kl * terms["kl"]
        status["acc_intersected"] = ((pred_logits.feats.detach() > 0) == intersected.feats.bool()).float().mean()
        if self.render_enabled:
            if mesh is None:
                raise ValueError("render losses need the GT meshes: set dataset with_mesh=true")
            rterms = self._render_terms(meshes, mesh)
            terms.update(rterms)
            loss = loss + self.lambda_mask * rterms["render/mask"] + self.lambda_depth * rterms["render/depth"] \
                + self.lambda_normal * rterms["render/normal"]
        terms["loss"] = loss
        return terms, status

    def _render_terms(self, pred_meshes, gt_meshes) -> dict:
        """Mask/depth/normal render terms averaged over the batch (one random camera per sample, §5.4)."""
        from pixal3d.renderers import MeshRenderer, RenderMesh
        renderer = MeshRenderer(self.render_resolution, device=str(self.device))
        acc = {"render/mask": 0.0, "render/depth": 0.0, "render/normal/l1": 0.0, "render/normal/ssim": 0.0,
               "render/normal/lpips": 0.0}
        for pm, gm in zip(pred_meshes, gt_meshes):
            cam = sample_training_camera(self.radius_range)["camera"]
            kinds = ("mask", "depth", "normal")
            p = renderer.render(RenderMesh(pm.vertices, pm.faces), cam, kinds)
            with torch.no_grad():
                g = renderer.render(RenderMesh(gm.vertices, gm.faces), cam, kinds)
            acc["render/mask"] = acc["render/mask"] + (p["mask"] - g["mask"].to(p["mask"])).abs().mean()
            acc["render/depth"] = acc["render/depth"] + (p["depth"] - g["depth"].to(p["depth"])).abs().mean()
            pn = p["normal"].permute(2, 0, 1)[None]
            gn = g["normal"].to(pn).permute(2, 0, 1)[None]
            acc["render/normal/l1"] = acc["render/normal/l1"] + (pn - gn).abs().mean()
            acc["render/normal/ssim"] = acc["render/normal/ssim"] + 1 - ssim(pn, gn)
            if self.lpips is not None:
                acc["render/normal/lpips"] = acc["render/normal/lpips"] + self.lpips(pn * 2 - 1, gn * 2 - 1).mean()
        n = max(len(gt_meshes), 1)
        # the CPU renderer returns CPU images (gradients still flow back to the decoder's device)
        out = {k: (v.to(self.device) / n if isinstance(v, torch.Tensor) else torch.tensor(v, device=self.device))
               for k, v in acc.items()}
        out["render/normal"] = out["render/normal/l1"] + self.lambda_ssim * out["render/normal/ssim"] \
            + self.lambda_lpips * out["render/normal/lpips"]
        return out

    # ------------------------------------------------------------------ snapshots
    @torch.no_grad()
    def snapshot(self, step: int) -> None:
        """Encodes the snapshot batch (posterior mean), decodes it in inference mode (predicted subdivisions,
        predicted flags) and writes ``samples/step{step}/{i}_{rec,gt}.ply`` meshes plus ``metrics.json`` (voxel
        IoU of the predicted structure, flag accuracy)."""
        import json
        import trimesh
        batch = self.snapshot_batch()
        ids = batch.pop("_ids")
        out = self.sample_dir(step)
        with self.eval_models() as (enc, dec):
            z = enc(batch["vertices"], batch["intersected"])
            # drop the cached structure: inference must predict its own subdivisions
            z_free = type(z)(z.feats, z.coords)
            try:
                meshes = dec(z_free)
            except (RuntimeError, ValueError) as e:  # e.g. an untrained subdivision head predicting no children
                self._log_text(f"snapshot of step {step}: inference decode failed ({type(e).__name__}: {e})")
                return
        metrics = {}
        for i, m in enumerate(meshes):
            v = m.vertices.float().cpu().numpy()
            f = m.faces.cpu().numpy()
            trimesh.Trimesh(v, f, process=False).export(out / f"{i}_rec.ply")
            if "mesh" in batch:
                gm = batch["mesh"][i]
                trimesh.Trimesh(gm.vertices.cpu().numpy(), gm.faces.cpu().numpy(), process=False).export(
                    out / f"{i}_gt.ply")
            metrics[ids[i]] = {"rec_vertices": int(v.shape[0]), "rec_faces": int(f.shape[0])}
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        self._log_text(f"snapshot of step {step}: {len(meshes)} meshes in {out}")
