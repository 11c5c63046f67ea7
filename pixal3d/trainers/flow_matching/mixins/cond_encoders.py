"""Condition encoders the image-conditioned trainers can build by name (``image_cond_model: {name, args}``).

* ``DinoV3FeatureExtractor`` / ``DinoV3ProjFeatureExtractor`` — the real ones from :mod:`pixal3d.conditioning`
  (TRELLIS2_SPEC §4.4, PIXAL3D_SPEC §3).
* ``TinyImageEncoder`` / ``TinyProjImageEncoder`` — frozen random patch embeddings with the same call signatures, for
  CPU tests and smoke runs; the proj variant back-projects through the real :class:`~pixal3d.conditioning.ProjGrid`.

Encoders are frozen (no gradients), kept outside ``trainer.models`` (no DDP/optimiser/EMA) and never checkpointed.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["TinyImageEncoder", "TinyProjImageEncoder", "build_cond_encoder"]


class TinyImageEncoder(nn.Module):
    """Fixed random patch embedding: ``[B, 3, S, S]`` in [0, 1] → ``[B, num_global + (S/p)², C]`` tokens.

    Args:
        channels: C. patch_size: p. image_size: S. num_global_tokens: pooled tokens in front (like CLS + registers).
        seed: weights are drawn from this seed (identical on every rank, no checkpoint needed).
    """

    def __init__(self, channels: int = 16, patch_size: int = 8, image_size: int = 64, num_global_tokens: int = 5,
                 seed: int = 0):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} must be a multiple of patch_size {patch_size}")
        g = torch.Generator().manual_seed(seed)
        self.image_size, self.patch_size, self.channels = image_size, patch_size, channels
        self.num_global_tokens = num_global_tokens
        self.register_buffer("weight", torch.randn(channels, 3, patch_size, patch_size, generator=g)
                             / (3 * patch_size ** 2) ** 0.5)
        self.register_buffer("global_mix", torch.randn(num_global_tokens, channels, channels, generator=g)
                             / channels ** 0.5)

    def _check(self, image: torch.Tensor) -> torch.Tensor:
        if not isinstance(image, torch.Tensor) or image.dim() != 4 or image.shape[1] != 3:
            raise ValueError(f"image must be [B, 3, S, S] in [0, 1], got {getattr(image, 'shape', type(image))}")
        if image.shape[-1] != self.image_size or image.shape[-2] != self.image_size:
            image = F.interpolate(image, size=(self.image_size,) * 2, mode="bilinear", align_corners=False)
        return image

    def patch_map(self, image: torch.Tensor) -> torch.Tensor:
        """``[B, C, S/p, S/p]`` patch features."""
        return F.conv2d(self._check(image).to(self.weight.dtype) * 2 - 1, self.weight, stride=self.patch_size)

    def global_tokens(self, pmap: torch.Tensor) -> torch.Tensor:
        """``[B, num_global, C]`` tokens pooled from the patch map."""
        pooled = pmap.mean(dim=(2, 3))
        return torch.einsum("bc,gcd->bgd", pooled, self.global_mix)

    @torch.no_grad()
    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """``[B, num_global + (S/p)², C]`` (the TRELLIS.2 cross-attention context layout)."""
        pmap = self.patch_map(image)
        return torch.cat([self.global_tokens(pmap), pmap.flatten(2).transpose(1, 2)], dim=1)


class TinyProjImageEncoder(TinyImageEncoder):
    """:class:`TinyImageEncoder` with Pixal3D's projection outputs (same signature as ``DinoV3ProjFeatureExtractor``).

    Args:
        grid_resolution: G of the projected grid. Other args as :class:`TinyImageEncoder`.
    """

    def __init__(self, channels: int = 16, patch_size: int = 8, image_size: int = 64, num_global_tokens: int = 5,
                 grid_resolution: int = 16, seed: int = 0):
        super().__init__(channels, patch_size, image_size, num_global_tokens, seed)
        from pixal3d.conditioning import ProjGrid
        self.grid_resolution = grid_resolution
        self.proj_grid = ProjGrid(grid_resolution, image_size)
        self.proj_channels = channels

    @torch.no_grad()
    def forward(self, image, camera_angle_x, distance, mesh_scale=1.0, transform_matrix=None):
        """``(global [B, num_global, C], proj [B, G³, C])``."""
        pmap = self.patch_map(image)
        return self.global_tokens(pmap), self.proj_grid(pmap, camera_angle_x, distance, mesh_scale,
                                                        transform_matrix, BHWC=False)

    @torch.no_grad()
    def forward_sparse(self, image, coords, camera_angle_x, distance, mesh_scale=1.0):
        """``(global [B, num_global, C], proj [N, C])`` for the voxels in ``coords`` ``[N, 4]``."""
        pmap = self.patch_map(image)
        return self.global_tokens(pmap), self.proj_grid.project_coords(pmap, coords, camera_angle_x, distance,
                                                                       mesh_scale, BHWC=False)


_ENCODERS = {
    "TinyImageEncoder": lambda: TinyImageEncoder,
    "TinyProjImageEncoder": lambda: TinyProjImageEncoder,
    "DinoV3FeatureExtractor": lambda: __import__("pixal3d.conditioning", fromlist=["x"]).DinoV3FeatureExtractor,
    "DinoV3ProjFeatureExtractor": lambda: __import__("pixal3d.conditioning",
                                                     fromlist=["x"]).DinoV3ProjFeatureExtractor,
}


def build_cond_encoder(spec: dict, device) -> nn.Module:
    """Builds ``{'name', 'args'}`` on ``device``, frozen and in eval mode.

    Raises:
        ValueError: an unknown name or malformed spec (lists the known encoders).
    """
    if not isinstance(spec, dict) or "name" not in spec or set(spec) - {"name", "args"}:
        raise ValueError(f"image_cond_model must be {{'name': ..., 'args': {{...}}}}, got {spec!r}")
    if spec["name"] not in _ENCODERS:
        raise ValueError(f"unknown image_cond_model {spec['name']!r}; known: {sorted(_ENCODERS)}")
    enc = _ENCODERS[spec["name"]]()(**spec.get("args", {}))
    return enc.to(device).eval().requires_grad_(False)
