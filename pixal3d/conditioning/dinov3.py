"""DINOv3 image conditioning: TRELLIS.2's token extractor and Pixal3D's projected extractor.

* :class:`DinoV3FeatureExtractor` (TRELLIS2_SPEC §4.4): the full normalised token sequence ``[B, 1+R+P, C]``.
* :class:`DinoV3ProjFeatureExtractor` (PIXAL3D_SPEC §3): ``z_global = [CLS, registers]`` ``[B, 1+R, C]`` and the
  patch map back-projected by :class:`~pixal3d.conditioning.proj_grid.ProjGrid` (optionally also its NAF-upsampled
  version), ``z_proj`` ``[B, G^3, C or 2C]``.

Both run the backbone the way the reference does: ``embeddings -> rope_embeddings -> every layer`` followed by a
parameter-free ``F.layer_norm`` (eps 1e-5); the checkpoint's own final norm is not used. ``transformers`` is imported
lazily so that importing :mod:`pixal3d.conditioning` stays cheap.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .proj_grid import ProjGrid

__all__ = ["DEFAULT_DINOV3", "load_dinov3", "DinoV3FeatureExtractor", "DinoV3ProjFeatureExtractor"]

#: The checkpoint the released pipelines use (Pixal3D loads the identical mirror
#: ``camenduru/dinov3-vitl16-pretrain-lvd1689m``).
DEFAULT_DINOV3 = "facebook/dinov3-vitl16-pretrain-lvd1689m"
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)

ImageInput = Union[torch.Tensor, Image.Image, Sequence[Image.Image]]


def load_dinov3(model_name: str = DEFAULT_DINOV3) -> nn.Module:
    """Loads a ``transformers.DINOv3ViTModel`` by hub id or local folder (``config.json`` + weights).

    A local folder works offline; a hub id needs the files in the local HF cache or network access.

    Raises:
        OSError: neither a loadable local folder nor a reachable/cached hub repository; the message says how to fix it.
    """
    from transformers import DINOv3ViTModel
    try:
        return DINOv3ViTModel.from_pretrained(model_name)
    except (OSError, ValueError) as e:
        raise OSError(f"could not load the DINOv3 backbone {model_name!r}: {e}\nPass a local folder holding "
                      "config.json and model.safetensors (e.g. a snapshot of facebook/dinov3-vitl16-pretrain-lvd1689m"
                      ", which is gated: accept its licence and `huggingface-cli login` first), make sure the hub is "
                      "reachable, or give an already built model with model=...") from e


def _encoder_layers(model: nn.Module):
    # transformers 5.x nests the blocks under model.model.layer; 4.x keeps them at model.layer.
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layer", None) if inner is not None else None
    if layers is None:
        layers = getattr(model, "layer", None)
    if layers is None:
        raise TypeError(f"{type(model).__name__} has no DINOv3 encoder layers (.model.layer or .layer); pass a "
                        "transformers DINOv3ViTModel")
    return layers


class _DinoV3Base(nn.Module):
    def __init__(self, model_name: str = DEFAULT_DINOV3, image_size: int = 512, model: Optional[nn.Module] = None):
        super().__init__()
        if int(image_size) <= 0:
            raise ValueError(f"image_size must be a positive pixel count, got {image_size!r}")
        self.model_name = model_name
        self.model = model if model is not None else load_dinov3(model_name)
        self.model.eval()
        self.model.requires_grad_(False)
        cfg = self.model.config
        self.patch_size = int(cfg.patch_size)
        self.embed_dim = int(cfg.hidden_size)
        self.num_register_tokens = int(getattr(cfg, "num_register_tokens", 0))
        self.image_size = int(image_size)
        self.register_buffer("_mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True):
        # The backbone stays in eval mode: its RoPE coordinate augmentation is active in training mode.
        super().train(mode)
        self.model.eval()
        return self

    @property
    def device(self) -> torch.device:
        return self._mean.device

    def _to_unit_tensor(self, image: ImageInput) -> torch.Tensor:
        """PIL image(s) or ``[B,3,H,W]`` in [0, 1] -> float ``[B, 3, S, S]`` in [0, 1] on the backbone's device."""
        s = self.image_size
        if isinstance(image, Image.Image):
            image = [image]
        if torch.is_tensor(image):
            if image.dim() != 4 or image.shape[1] != 3:
                raise ValueError(f"image tensors must be [B, 3, H, W] in [0, 1], got {tuple(image.shape)}")
            if tuple(image.shape[-2:]) != (s, s):
                raise ValueError(f"image tensor is {tuple(image.shape[-2:])} but this extractor expects {s}x{s}; "
                                 "resize it first or pass PIL images (resized with LANCZOS here)")
            if not image.is_floating_point():
                raise TypeError(f"image tensors must be floating point in [0, 1], got {image.dtype}")
            x = image
        elif isinstance(image, (list, tuple)) and len(image) > 0 and all(isinstance(i, Image.Image) for i in image):
            arrs = [np.asarray(i.resize((s, s), Image.LANCZOS).convert("RGB"), dtype=np.float32) / 255.0
                    for i in image]
            x = torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2)
        else:
            raise TypeError("image must be a PIL image, a non-empty list of PIL images, or a [B, 3, H, W] tensor; got "
                            f"{type(image).__name__}")
        dtype = next(self.model.parameters()).dtype
        return x.to(device=self.device, dtype=dtype)

    def _tokens(self, unit_image: torch.Tensor) -> torch.Tensor:
        """``[B,3,S,S]`` in [0,1] -> parameter-free-layer-normed tokens ``[B, 1+R+(S/p)^2, C]``."""
        x = (unit_image - self._mean.to(unit_image.dtype)) / self._std.to(unit_image.dtype)
        m = self.model
        hidden = m.embeddings(x)
        pos = m.rope_embeddings(x)
        for layer in _encoder_layers(m):
            out = layer(hidden, position_embeddings=pos)
            hidden = out[0] if isinstance(out, tuple) else out
        return F.layer_norm(hidden, hidden.shape[-1:])


class DinoV3FeatureExtractor(_DinoV3Base):
    """TRELLIS.2 image condition: the whole DINOv3 token sequence (TRELLIS2_SPEC §4.4).

    Args:
        model_name: hub id or local folder of a DINOv3 ViT (ignored when ``model`` is given).
        image_size: ``S``; PIL inputs are resized to ``S x S`` with LANCZOS (the pipeline sets 512 or 1024).
        model: an already built ``transformers.DINOv3ViTModel`` (frozen and put in eval mode here).

    Call: ``extractor(image) -> [B, 1 + R + (S/16)^2, C]`` float (1029 x 1024 for ViT-L/16 at S = 512).
    """

    @torch.no_grad()
    def forward(self, image: ImageInput) -> torch.Tensor:
        return self._tokens(self._to_unit_tensor(image))


class DinoV3ProjFeatureExtractor(_DinoV3Base):
    """Pixal3D image condition: global tokens plus per-voxel back-projected features (PIXAL3D_SPEC §3).

    Args:
        model_name: hub id or local folder of a DINOv3 ViT (ignored when ``model`` is given).
        image_size: ``S`` (512 or 1024 in the released stages, §3.1); also the ProjGrid's ``image_resolution``.
        grid_resolution: ``G``, the latent grid of the stage (16 / 32 / 64...).
        use_naf_upsample: also sample a NAF-upsampled feature map and concatenate it (SLat stages).
        naf_target_size: NAF output size ``T`` (int or (h, w)); default 128.
        model: an already built ``transformers.DINOv3ViTModel``.
        naf_model: an already built :class:`~pixal3d.conditioning.naf.NAF`; otherwise the released weights are loaded
            lazily on first use (:meth:`NAF.from_pretrained`).

    Attributes:
        proj_channels: ``2 C`` with NAF, else ``C``.
    """

    def __init__(self, model_name: str = DEFAULT_DINOV3, image_size: int = 512, grid_resolution: int = 16,
                 use_naf_upsample: bool = False, naf_target_size=None, model: Optional[nn.Module] = None,
                 naf_model: Optional[nn.Module] = None):
        super().__init__(model_name, image_size, model)
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {image_size} must be a multiple of the patch size {self.patch_size}")
        self.patch_number = self.image_size // self.patch_size
        self.grid_resolution = int(grid_resolution)
        self.proj_grid = ProjGrid(self.grid_resolution, self.image_size)
        self.use_naf_upsample = bool(use_naf_upsample)
        if naf_target_size is None:
            naf_target_size = (128, 128)
        elif isinstance(naf_target_size, int):
            naf_target_size = (naf_target_size, naf_target_size)
        self.naf_target_size = tuple(int(v) for v in naf_target_size)
        self.proj_channels = 2 * self.embed_dim if self.use_naf_upsample else self.embed_dim
        self.naf_model = naf_model
        if naf_model is not None:
            naf_model.eval().requires_grad_(False)

    def _get_naf(self) -> nn.Module:
        if self.naf_model is None:
            from .naf import NAF
            self.naf_model = NAF.from_pretrained().to(self.device).eval().requires_grad_(False)
        return self.naf_model

    def _features(self, image: ImageInput, dense_naf: bool = True):
        """-> ``(z_global [B,1+R,C], patch map [B,C,h,w], NAF map [B,C,T,T] or None, unit image [B,3,S,S])``;
        with ``dense_naf=False`` the NAF map is left to the caller (``None``)."""
        unit = self._to_unit_tensor(image)
        tokens = self._tokens(unit)
        n_prefix = 1 + self.num_register_tokens
        b, c = tokens.shape[0], tokens.shape[-1]
        h, w = unit.shape[-2] // self.patch_size, unit.shape[-1] // self.patch_size
        patch_bchw = tokens[:, n_prefix:].reshape(b, h, w, c).permute(0, 3, 1, 2)
        hr = None
        if self.use_naf_upsample and dense_naf:
            naf = self._get_naf()
            hr = naf(unit.to(next(naf.parameters()).dtype), patch_bchw.to(next(naf.parameters()).dtype),
                     self.naf_target_size).to(tokens.dtype)
        return tokens[:, :n_prefix], patch_bchw, hr, unit

    def _grid(self, grid_resolution_override: Optional[int]) -> ProjGrid:
        if grid_resolution_override is None or int(grid_resolution_override) == self.grid_resolution:
            return self.proj_grid
        return ProjGrid(int(grid_resolution_override), self.image_size).to(self.device)

    @torch.no_grad()
    def forward(self, image: ImageInput, camera_angle_x, distance, mesh_scale=1.0, transform_matrix=None,
                grid_resolution_override: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Computes ``(z_global, z_proj)`` on the dense grid.

        Args:
            image: list of PIL images (resized to ``S`` here) or ``[B, 3, S, S]`` tensor in [0, 1].
            camera_angle_x, distance, mesh_scale: per-image camera (``[B]`` or scalars), §2.3.
            transform_matrix: must be ``None`` (single front view).
            grid_resolution_override: use a ``G``-grid for this call only (HR cascade stages, §6.3).

        Returns:
            ``z_global`` ``[B, 1+R, C]`` and ``z_proj`` ``[B, G^3, proj_channels]`` (``[lr, hr]`` order with NAF).
        """
        z_global, patch, hr, _ = self._features(image)
        grid = self._grid(grid_resolution_override)
        z = grid(patch, camera_angle_x, distance, mesh_scale, transform_matrix, BHWC=False)
        if hr is not None:
            z = torch.cat([z, grid(hr, camera_angle_x, distance, mesh_scale, transform_matrix, BHWC=False)], dim=-1)
        return z_global, z

    @torch.no_grad()
    def forward_sparse(self, image: ImageInput, coords: torch.Tensor, camera_angle_x, distance, mesh_scale=1.0,
                       grid_resolution_override: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Like :meth:`forward` but projects only the voxels in ``coords`` (no ``G^3`` volume; §3.2). NAF features are
        computed only at the pixels the voxels sample (:meth:`NAF.forward_at`), never as a full map.

        Returns:
            ``z_global`` ``[B, 1+R, C]`` and ``[N, proj_channels]`` rows in the order of ``coords`` (wrap them in a
            sparse tensor with the latent's own coords).
        """
        z_global, patch, _, unit = self._features(image, dense_naf=False)
        grid = self._grid(grid_resolution_override)
        z = grid.project_coords(patch, coords, camera_angle_x, distance, mesh_scale, BHWC=False)
        if self.use_naf_upsample:
            # NAF is evaluated only at the bilinear taps of the voxels: a T x T x C map (4 GiB at T = 1024 in fp32)
            # of which a few thousand pixels would be read
            naf = self._get_naf()
            ndt = next(naf.parameters()).dtype
            image_n, patch_n = unit.to(ndt), patch.to(ndt)

            def naf_rows(pixels):
                return naf.forward_at(image_n, patch_n, self.naf_target_size, pixels).to(patch.dtype)

            hr = grid.project_coords_at(naf_rows, coords, camera_angle_x, distance, mesh_scale, patch.shape[0],
                                        self.naf_target_size, patch.dtype, patch.device)
            z = torch.cat([z, hr], -1)
        return z_global, z
