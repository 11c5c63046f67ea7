"""``PbrVaeTrainer``: the texture SC-VAE on sparse PBR voxels (TRELLIS2_SPEC §5.4, §2.6).

Per micro-batch (``x`` from :class:`pixal3d.datasets.SparseVoxelPbrDataset`, 6 channels in [−1, 1])::

    z, μ, logσ² = encoder(x, sample_posterior=True, return_raw=True)
    y = decoder(z)                    # guided decoder (pred_subdiv=False) rebuilds x's voxels from z's spatial cache

Loss: ``l1(x, y)`` (``loss_type='l1'``; ``'l2'`` → MSE; ``'l1+l2'`` → their sum) + ``lambda_kl``·KL +
``lambda_render``·(render terms).
Render terms (``lambda_render > 0``): for one random camera per sample, the GT mesh is rendered with the decoded
attributes (``y·0.5 + 0.5``) and compared, per the reference, by ``lambda_ssim``·(1 − SSIM) + ``lambda_lpips``·LPIPS
on the base colour and on the (metallic, roughness, alpha) images. They need a renderer that propagates gradients to
the voxel attributes; that is probed at start-up and, when absent, the log says the render terms are off.
Deviation (documented): the reference's target is the textured GT mesh (``MeshWithPbrMaterial``); here the target
is the GT mesh carrying the GT voxel attributes, since no textured-mesh renderer for PBR dumps is wired in.
"""
import json
from typing import List, Optional

import numpy as np
import torch

from .base import VaeTrainerBase
from .losses import kl_divergence, lpips_model, sample_training_camera, ssim

__all__ = ["PbrVaeTrainer"]

_LAYOUT = {"base_color": slice(0, 3), "metallic": slice(3, 4), "roughness": slice(4, 5), "alpha": slice(5, 6)}


def _attr_renderer_status(device) -> tuple:
    """Whether rendering voxel attributes on a mesh keeps gradients to the attributes."""
    try:
        from pixal3d.renderers import Camera, MeshRenderer, RenderMesh, extrinsics_look_at, intrinsics_from_fov
        attrs = torch.full((8, 6), 0.5, requires_grad=True)
        coords = torch.tensor([[i, j, k] for i in range(2) for j in range(2) for k in range(2)])
        v = torch.tensor([[-0.3, -0.3, 0.0], [0.3, -0.3, 0.0], [0.0, 0.3, 0.0]])
        m = RenderMesh(v, torch.tensor([[0, 1, 2]]), voxel_coords=coords, voxel_attrs=attrs, voxel_size=0.5,
                       layout=dict(_LAYOUT))
        cam = Camera(extrinsics_look_at([0, 0, 2.0], [0, 0, 0], [0, 1, 0]), intrinsics_from_fov(0.8, 0.8), 1.0, 3.0)
        out = MeshRenderer(8, device=str(device)).render(m, cam, ("attr",))
    except Exception as e:  # noqa: BLE001
        return False, f"the mesh renderer failed on a probe ({type(e).__name__}: {e})"
    if out["attr"].grad_fn is None:
        return False, ("pixal3d.renderers.MeshRenderer detaches voxel attributes (RenderMesh copies them), so "
                       "rendered PBR images carry no gradient")
    return True, "MeshRenderer keeps gradients to voxel attributes"


class PbrVaeTrainer(VaeTrainerBase):
    """Trains ``models['encoder']`` (:class:`SparseUnetVaeEncoder`, 6 in) and ``models['decoder']``
    (:class:`SparseUnetVaeDecoder`, 6 out, ``pred_subdiv=False``).

    Args:
        loss_type: ``'l1'``, ``'l2'`` or ``'l1+l2'`` (the sum: the squared term pulls large colour errors down
            first, which shortened the "one mean colour" plateau of the small demo VAE, docs/DEMO_MODEL.md).
        lambda_kl: KL weight (1e-6).
        lambda_render, lambda_ssim, lambda_lpips: render-term weights (0 / 0.2 / 0.2 in the base config).
        render_resolution, radius_range: render size and camera distances (§5.4).
        **kwargs: :class:`VaeTrainerBase` arguments.

    Raises:
        ValueError: unknown ``loss_type``.
    """

    def __init__(self, *args, loss_type: str = "l1", lambda_kl: float = 1e-6, lambda_render: float = 0.0,
                 lambda_ssim: float = 0.2, lambda_lpips: float = 0.2, render_resolution: int = 512,
                 radius_range=(2.0, 100.0), **kwargs):
        if loss_type not in ("l1", "l2", "l1+l2"):
            raise ValueError(f"loss_type must be 'l1', 'l2' or 'l1+l2', got {loss_type!r}")
        self.loss_type, self.lambda_kl = loss_type, lambda_kl
        self.lambda_render, self.lambda_ssim, self.lambda_lpips = lambda_render, lambda_ssim, lambda_lpips
        self.render_resolution, self.radius_range = int(render_resolution), tuple(radius_range)
        super().__init__(*args, **kwargs)
        self.render_enabled, self.lpips = False, None
        if self.lambda_render > 0:
            ok, reason = _attr_renderer_status(self.device)
            if ok:
                self.render_enabled = True
                self.lpips = lpips_model(self.device) if self.lambda_lpips else None
            self._log_text(f"render losses: {'ON' if ok else 'OFF'} — {reason}"
                           + ("" if ok else "; training uses the voxel reconstruction and KL terms only"))
        else:
            self._log_text("render losses: off (lambda_render = 0)")

    def training_losses(self, x, mesh: Optional[List] = None, **_unused):
        """Loss of one micro-batch.

        Args:
            x: SparseTensor feats float32 ``[N, 6]`` in [−1, 1].
            mesh: GT meshes (render terms only).

        Returns:
            ``({'loss', 'l1' | 'l2' | 'l1+l2', 'kl', ['render/*']}, {'psnr'})`` (PSNR of the [0, 1] attributes).

        Raises:
            ValueError: the decoder output is not on the input voxels (teacher forcing broken).
        """
        z, mean, logvar = self.encoder(x, sample_posterior=True, return_raw=True)
        y = self.decoder(z)
        if y.coords.shape != x.coords.shape or not torch.equal(y.coords, x.coords):
            raise ValueError("teacher forcing failed: the decoder's output voxels differ from the input voxels; the "
                             "latent must carry the encoder's spatial cache")
        terms = {}
        diff = y.feats.float() - x.feats.float()
        l1, l2 = diff.abs().mean(), (diff ** 2).mean()
        rec = {"l1": l1, "l2": l2, "l1+l2": l1 + l2}[self.loss_type]
        terms[self.loss_type] = rec
        terms["kl"] = kl_divergence(mean, logvar)
        loss = rec + self.lambda_kl * terms["kl"]
        if self.render_enabled:
            if mesh is None:
                raise ValueError("render losses need the GT meshes: set dataset with_mesh=true")
            r = self._render_terms(x, y, mesh)
            terms.update(r)
            loss = loss + self.lambda_render * r["render"]
        terms["loss"] = loss
        mse01 = ((diff.detach() * 0.5) ** 2).mean().clamp_min(1e-12)
        return terms, {"psnr": -10 * torch.log10(mse01)}

    def _render_terms(self, x, y, meshes) -> dict:
        from pixal3d.renderers import MeshRenderer, RenderMesh
        renderer = MeshRenderer(self.render_resolution, device=str(self.device))
        res = int(x.spatial_shape[0]) if hasattr(x, "spatial_shape") else None
        ssim_t, lp_t = 0.0, 0.0
        for b, (sx, sy) in enumerate(zip(x.layout, y.layout)):
            cam = sample_training_camera(self.radius_range)["camera"]
            coords = x.coords[sx, 1:]
            grid = max(res or 0, int(coords.max()) + 1)
            common = dict(voxel_coords=coords, voxel_size=1.0 / grid, layout=dict(_LAYOUT))
            gm = meshes[b]
            with torch.no_grad():
                g = renderer.render(RenderMesh(gm.vertices, gm.faces, voxel_attrs=x.feats[sx] * 0.5 + 0.5, **common),
                                    cam, ("attr",))["attr"]
            p = renderer.render(RenderMesh(gm.vertices, gm.faces, voxel_attrs=y.feats[sy] * 0.5 + 0.5, **common),
                                cam, ("attr",))["attr"]
            for sl in (slice(0, 3), slice(3, 6)):
                pi, gi = p[..., sl].permute(2, 0, 1)[None], g[..., sl].to(p).permute(2, 0, 1)[None]
                ssim_t = ssim_t + 1 - ssim(pi, gi)
                if self.lpips is not None:
                    lp_t = lp_t + self.lpips(pi * 2 - 1, gi * 2 - 1).mean()
        n = max(len(x.layout), 1)
        out = {"render/ssim": ssim_t / n}
        out["render/lpips"] = lp_t / n if isinstance(lp_t, torch.Tensor) else torch.zeros((), device=self.device)
        out["render"] = self.lambda_ssim * out["render/ssim"] + self.lambda_lpips * out["render/lpips"]
        return out

    @torch.no_grad()
    def snapshot(self, step: int) -> None:
        """Reconstructs the snapshot batch (posterior mean, structure from the encoder) and writes
        ``samples/step{step}/{i}_{rec,gt}.ply`` (voxels with u8 PBR attributes, :func:`pixal3d.ovoxel.io.write_ply`)
        and ``metrics.json`` (per-asset PSNR of the [0, 1] attributes)."""
        from pixal3d.ovoxel.io import write_ply
        batch = self.snapshot_batch()
        ids = batch.pop("_ids")
        out = self.sample_dir(step)
        with self.eval_models() as (enc, dec):
            x = batch["x"]
            y = dec(enc(x))
        metrics = {}
        for i, (sx, sy) in enumerate(zip(x.layout, y.layout)):
            for tag, t, s in (("gt", x, sx), ("rec", y, sy)):
                a = ((t.feats[s].float().clamp(-1, 1) * 0.5 + 0.5) * 255).round().byte().cpu().numpy()
                write_ply(out / f"{i}_{tag}.ply", t.coords[s, 1:].cpu().numpy(),
                          {k: a[:, v] for k, v in _LAYOUT.items()} if a.shape[1] == 6 else {"attr": a})
            mse = float((((y.feats[sy] - x.feats[sx]) * 0.5) ** 2).mean())
            metrics[ids[i]] = {"psnr": float(-10 * np.log10(max(mse, 1e-12))), "voxels": int(sx.stop - sx.start)}
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        self._log_text(f"snapshot of step {step}: {len(metrics)} assets in {out}")
