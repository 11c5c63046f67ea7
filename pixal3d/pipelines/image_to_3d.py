"""Image -> 3D: the cascaded Pixal3D and TRELLIS.2 pipelines (PIXAL3D_SPEC §6, TRELLIS2_SPEC §4.5).

Stages: sparse structure (dense flow -> SS decoder -> occupied latent voxels), shape SLat (one level, or a
low-resolution level upsampled through the shape decoder and resampled on a finer grid), texture SLat (conditioned on
the normalised shape latent), then decoding to a mesh plus PBR voxels.

Both pipelines share this module; they differ only in how the image becomes a condition:

* ``Pixal3DImageTo3DPipeline``: DINOv3 global tokens + per-voxel back-projected features (``{'global', 'proj'}``),
  a camera (``camera_angle_x``, ``distance``, ``mesh_scale``), 1.1x crop, ``round`` re-quantisation of the cascade.
* ``Trellis2ImageTo3DPipeline``: the full DINOv3 token sequence as cross-attention context, 1.0x crop, ``floor``.

Background removal (RGB inputs only): the BiRefNet / RMBG-2.0 network ``pipeline.json``'s ``rembg_model`` names, built
lazily by :class:`LazyBackgroundRemover`; when it cannot be loaded, GrabCut with a warning that says why and how to fix
it. Without a ``rembg_model`` entry, GrabCut (also with a warning).

Resolutions follow the released models (SS occupancy 64³, latent grid = output resolution / 16) but are derived from
the loaded networks (the SS decoder's output size, the shape decoder's number of x2 stages), so smaller models with
the same architecture families run through the same code.
"""
from __future__ import annotations

import abc
import contextlib
import logging
import warnings
from typing import Any, Dict, List, Optional, Union

import torch
from PIL import Image

from ..conditioning.camera import DEFAULT_FOV, distance_from_fov
from ..conditioning.preprocess import PIXAL3D_CROP_SCALE, TRELLIS2_CROP_SCALE, grabcut_foreground, preprocess_image
from ..sparse import SparseTensor
from .base import ModelHolder, PipelineFolder
from .cascade import choose_hr_grid, occupancy_to_coords
from .samplers import FlowEulerCfgSampler, get_sampler, make_negative_cond

__all__ = ["Pixal3DImageTo3DPipeline", "Trellis2ImageTo3DPipeline", "LazyBackgroundRemover", "PIPELINE_TYPES",
           "PBR_LAYOUT", "PIXAL3D_IMAGE_COND_CONFIGS"]

log = logging.getLogger(__name__)

PIPELINE_TYPES = ("512", "1024", "1024_cascade", "1536_cascade")
PBR_LAYOUT = {"base_color": slice(0, 3), "metallic": slice(3, 4), "roughness": slice(4, 5), "alpha": slice(5, 6)}
MODEL_KEYS = ("sparse_structure_flow_model", "sparse_structure_decoder", "shape_slat_flow_model_512",
              "shape_slat_flow_model_1024", "shape_slat_decoder", "tex_slat_flow_model_512",
              "tex_slat_flow_model_1024", "tex_slat_decoder")
_DINOV3 = "facebook/dinov3-vitl16-pretrain-lvd1689m"
# Per-stage extractor settings of the released Pixal3D inference (PIXAL3D_SPEC §3.1). A pipeline.json may override
# them with "image_cond_models": {stage: {"name": ..., "args": {...}}} (our own models do).
PIXAL3D_IMAGE_COND_CONFIGS = {
    "ss": {"name": "DinoV3ProjFeatureExtractor", "args": {"model_name": _DINOV3, "image_size": 512,
                                                           "grid_resolution": 16}},
    "shape_512": {"name": "DinoV3ProjFeatureExtractor", "args": {"model_name": _DINOV3, "image_size": 512,
                  "grid_resolution": 32, "use_naf_upsample": True, "naf_target_size": 512}},
    "shape_1024": {"name": "DinoV3ProjFeatureExtractor", "args": {"model_name": _DINOV3, "image_size": 1024,
                   "grid_resolution": 64, "use_naf_upsample": True, "naf_target_size": 512}},
    "tex_512": {"name": "DinoV3ProjFeatureExtractor", "args": {"model_name": _DINOV3, "image_size": 512,
                "grid_resolution": 32, "use_naf_upsample": True, "naf_target_size": 256}},
    "tex_1024": {"name": "DinoV3ProjFeatureExtractor", "args": {"model_name": _DINOV3, "image_size": 1024,
                 "grid_resolution": 64, "use_naf_upsample": True, "naf_target_size": 1024}},
}
TRELLIS2_IMAGE_COND_CONFIGS = {
    "512": {"name": "DinoV3FeatureExtractor", "args": {"model_name": _DINOV3, "image_size": 512}},
    "1024": {"name": "DinoV3FeatureExtractor", "args": {"model_name": _DINOV3, "image_size": 1024}},
}


def _build_extractor(spec: Dict[str, Any], backbones: Dict[str, torch.nn.Module], folder: Optional[str] = None):
    """Builds a feature extractor from ``{"name", "args"}``, sharing one DINOv3 backbone per ``model_name``.

    A ``model_name`` (or ``naf_weights``) that names a path inside the pipeline folder is resolved against it.
    """
    from pathlib import Path

    from .. import conditioning
    name, args = spec["name"], dict(spec.get("args", {}))
    for key in ("model_name", "naf_weights"):
        if folder is not None and args.get(key) and (Path(folder) / args[key]).exists():
            args[key] = str(Path(folder) / args[key])
    if name not in ("DinoV3ProjFeatureExtractor", "DinoV3FeatureExtractor"):
        raise ValueError(f"unknown image condition model {name!r}; expected DinoV3ProjFeatureExtractor or "
                         "DinoV3FeatureExtractor")
    model_name = args.setdefault("model_name", _DINOV3)
    if model_name not in backbones:
        backbones[model_name] = conditioning.load_dinov3(model_name)
    naf_weights = args.pop("naf_weights", None)
    if naf_weights is not None and args.get("use_naf_upsample"):
        args["naf_model"] = conditioning.NAF.from_pretrained(naf_weights)
    return getattr(conditioning, name)(model=backbones[model_name], **args)


class LazyBackgroundRemover:
    """The pipeline's background remover: a :class:`~pixal3d.conditioning.rembg.BiRefNet` built from ``pipeline.json``'s
    ``rembg_model`` entry the first time an image without transparency needs it.

    In low-VRAM mode the network rests on the CPU and moves to the compute device only while it runs. When it cannot be
    built (offline, gated repo, missing package, bad entry), every call falls back to the classical GrabCut cut-out
    (:func:`~pixal3d.conditioning.preprocess.grabcut_foreground`) and issues a ``RuntimeWarning`` that names the failure
    and the fix; the failure is remembered (no retry per image) and kept in :attr:`error`.
    """

    def __init__(self, spec: Dict[str, Any], device: torch.device, low_vram: bool):
        self.spec = dict(spec)
        self.device = torch.device(device)
        self.low_vram = bool(low_vram)
        self.model_name = self.spec.get("args", {}).get("model_name")
        self.remover = None
        self.error: Optional[str] = None

    def load(self):
        """Builds the remover once; returns it, or None after a failure (then :attr:`error` says why)."""
        if self.remover is None and self.error is None:
            from ..conditioning.rembg import BackgroundRemoverUnavailable, load_background_remover
            try:
                remover = load_background_remover(self.spec)
            except BackgroundRemoverUnavailable as e:
                self.error = str(e)
            else:
                self.remover = remover.to("cpu" if self.low_vram else self.device)
        return self.remover

    def __call__(self, image: Image.Image) -> Image.Image:
        remover = self.load()
        if remover is None:
            warnings.warn(f"background removal model unavailable -> using the classical GrabCut fallback, which fails "
                          f"on cluttered backgrounds. {self.error}. Alternatively pass an RGBA cut-out "
                          "(or --no_rembg for an already clean image).", RuntimeWarning, stacklevel=2)
            return grabcut_foreground(image)
        if not self.low_vram:
            return remover(image)
        remover.to(self.device)
        try:
            return remover(image)
        finally:
            remover.to("cpu")
            if self.device.type == "cuda":
                torch.cuda.empty_cache()


class _ImageTo3DPipeline(abc.ABC):
    """Shared stage logic. Use :class:`Pixal3DImageTo3DPipeline` or :class:`Trellis2ImageTo3DPipeline`."""

    crop_scale: float = 1.0
    hr_quantization: str = "floor"

    def __init__(self, models: Dict[str, torch.nn.Module], pipeline_args: Dict[str, Any], device="cpu",
                 low_vram: Optional[bool] = None, folder: Optional[str] = None):
        self.args = pipeline_args
        self.folder = folder
        low_vram = pipeline_args.get("low_vram", True) if low_vram is None else low_vram
        self.device = torch.device(device)
        self.models = ModelHolder(models, self.device, low_vram)
        self.samplers = {}
        self.sampler_params = {}
        for stage in ("sparse_structure", "shape_slat", "tex_slat"):
            spec = pipeline_args.get(f"{stage}_sampler")
            if spec is None:
                raise ValueError(f"pipeline.json has no '{stage}_sampler' entry")
            self.samplers[stage] = get_sampler(spec["name"], **spec.get("args", {}))
            self.sampler_params[stage] = dict(spec.get("params", {}))
        self.normalization = {}
        for key in ("shape_slat_normalization", "tex_slat_normalization"):
            norm = pipeline_args.get(key)
            if norm is None:
                raise ValueError(f"pipeline.json has no '{key}' entry (per-channel mean/std of the latents)")
            self.normalization[key] = {k: torch.tensor(norm[k], dtype=torch.float32) for k in ("mean", "std")}
        self.default_pipeline_type = pipeline_args.get("default_pipeline_type", "1024_cascade")
        # learned background remover from pipeline.json's rembg_model, built on first use (only RGB inputs need it);
        # assign any ``RGB PIL -> RGBA PIL`` callable to replace it (inference.py --no_rembg does)
        spec = pipeline_args.get("rembg_model")
        self.rembg = LazyBackgroundRemover(spec, self.device, self.models.low_vram) if spec else None
        self._extractors: Dict[str, Any] = {}

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, path: str, config_file: str = "pipeline.json", device: Union[str, torch.device] = "cpu",
                        low_vram: Optional[bool] = None, dtype: Optional[torch.dtype] = None):
        """Loads a pipeline folder (local directory or hub id) and all the checkpoints its ``pipeline.json`` names.

        Args:
            path: folder with ``pipeline.json`` + ``ckpts/``, or a hub id such as ``TencentARC/Pixal3D``.
            device: where the models run (``'cpu'`` or ``'cuda'``).
            low_vram: keep models on the CPU and move each to the GPU only for its stage, and run the two CFG
                passes of a guided step separately instead of as one batch (default from the file).
            dtype: override the checkpoints' compute dtype (e.g. ``torch.float32`` on CPU).

        Raises:
            FileNotFoundError: missing folder / files (names the file); ValueError: a malformed ``pipeline.json`` or
            checkpoint (lists missing/unexpected keys).
        """
        folder = PipelineFolder(path, config_file)
        models = folder.load_models(MODEL_KEYS, dtype=dtype)
        return cls(models, folder.args, device=device, low_vram=low_vram, folder=str(folder.folder))

    # ------------------------------------------------------------------ helpers
    def available_pipeline_types(self) -> List[str]:
        """The pipeline types the loaded checkpoints support."""
        m = self.models
        have = lambda *keys: all(k in m for k in keys)  # noqa: E731
        out = []
        if have("shape_slat_flow_model_512", "tex_slat_flow_model_512"):
            out.append("512")
        if have("shape_slat_flow_model_1024", "tex_slat_flow_model_1024"):
            out.append("1024")
            if "shape_slat_flow_model_512" in m:
                out += ["1024_cascade", "1536_cascade"]
        return out

    def preprocess_image(self, image, crop: bool = True) -> Image.Image:
        """RGBA alpha / background removal, square crop around the object, composite on black (§6.2 / §4.3).

        ``crop=False`` keeps the image's own framing, for a render whose camera is known (``camera_params`` with
        its ``distance`` and ``mesh_scale``): the crop would change that camera. Raises ValueError on a non-square
        uncropped image (see :func:`pixal3d.conditioning.preprocess.preprocess_image`)."""
        return preprocess_image(image, bg_color=(0, 0, 0), crop_scale=self.crop_scale if crop else None,
                                rembg=self.rembg)

    def _place(self, module):
        """Resting place of an auxiliary model: the compute device, or the CPU in low-VRAM mode."""
        return module.to("cpu" if self.models.low_vram else self.device)

    @contextlib.contextmanager
    def _on_device(self, module):
        if self.models.low_vram:
            module.to(self.device)
        try:
            yield module
        finally:
            if self.models.low_vram:
                module.to("cpu")
                torch.cuda.empty_cache()

    def _sample(self, stage: str, model, noise, cond, overrides: Dict[str, Any], desc: str, **kwargs):
        params = {**self.sampler_params[stage], **(overrides or {})}
        sampler = self.samplers[stage]
        if self.models.low_vram and isinstance(sampler, FlowEulerCfgSampler):
            # one batch-2B CFG forward doubles the activation memory; low-VRAM mode keeps the two separate passes
            # (an explicit batch_cfg in the sampler params still wins)
            params.setdefault("batch_cfg", False)
        if stage in ("sparse_structure", "shape_slat"):
            # small forwards are launch-bound: replay them from CUDA graphs. The texture flow (its shape latent
            # concatenated to the input) failed to capture in the GPU tests' tiny models, so it stays eager
            params.setdefault("cuda_graph", "auto")
        neg = make_negative_cond(cond)
        return sampler.sample(model, noise, cond=cond, neg_cond=neg, verbose=True, tqdm_desc=desc, **params,
                              **kwargs).samples

    def _norm(self, key: str, device):
        n = self.normalization[key]
        return n["mean"].to(device), n["std"].to(device)

    # ------------------------------------------------------------------ stages
    def sample_sparse_structure(self, image, camera, num_samples: int, grid: int, params) -> torch.Tensor:
        """Stage 1: ``[N, 4]`` int32 coords ``(b, x, y, z)`` of the occupied ``grid³`` latent voxels."""
        with self.models.use("sparse_structure_flow_model") as flow:
            cond = self._cond("ss", image, camera, num_samples, grid=flow.resolution)
            noise = torch.randn(num_samples, flow.in_channels, flow.resolution, flow.resolution, flow.resolution,
                                device=self.device)
            z = self._sample("sparse_structure", flow, noise, cond, params, "Sampling sparse structure")
        with self.models.use("sparse_structure_decoder") as dec:
            logits = dec(z.to(next(dec.parameters()).dtype)).float()
        coords = occupancy_to_coords(logits, grid)
        if coords.shape[0] == 0:
            raise RuntimeError("the sparse-structure stage produced no occupied voxel; try another seed or image")
        return coords

    def sample_shape_slat(self, model_key: str, image, camera, coords, cond_stage: str, params,
                          grid: int) -> SparseTensor:
        """Shape SLat on ``coords`` (``grid³``), de-normalised with the shape statistics."""
        with self.models.use(model_key) as flow:
            noise = SparseTensor(torch.randn(coords.shape[0], flow.in_channels, device=self.device), coords)
            cond = self._cond(cond_stage, image, camera, int(coords[:, 0].max()) + 1, coords=coords, grid=grid)
            slat = self._sample("shape_slat", flow, noise, cond, params, f"Sampling shape SLat ({model_key[-4:]})")
        mean, std = self._norm("shape_slat_normalization", slat.device)
        return slat * std + mean

    def sample_tex_slat(self, model_key: str, image, camera, shape_slat: SparseTensor, cond_stage: str, params,
                        grid: int) -> SparseTensor:
        """Texture SLat on the shape latent's voxels, conditioned on the normalised shape latent (concat)."""
        mean, std = self._norm("shape_slat_normalization", shape_slat.device)
        shape_n = (shape_slat - mean) / std
        with self.models.use(model_key) as flow:
            noise = shape_n.replace(torch.randn(shape_n.feats.shape[0], flow.in_channels - shape_n.feats.shape[1],
                                                device=self.device))
            cond = self._cond(cond_stage, image, camera, shape_slat.batch_size, coords=shape_slat.coords, grid=grid)
            tex = self._sample("tex_slat", flow, noise, cond, params, "Sampling texture SLat", concat_cond=shape_n)
        tmean, tstd = self._norm("tex_slat_normalization", tex.device)
        return tex * tstd + tmean

    def decode_latent(self, shape_slat: SparseTensor, tex_slat: SparseTensor, resolution: int):
        """Decodes to a list of :class:`~pixal3d.ovoxel.mesh.MeshWithVoxel` (mesh + PBR voxels in [0, 1])."""
        from ..ovoxel.mesh import MeshWithVoxel
        with self.models.use("shape_slat_decoder") as sdec:
            sdec.set_resolution(resolution)
            meshes, subs = sdec(shape_slat, return_subs=True)
        with self.models.use("tex_slat_decoder") as tdec:
            voxels = tdec(tex_slat, guide_subs=subs) * 0.5 + 0.5
        out = []
        for i, mesh in enumerate(meshes):
            v = voxels[i]
            out.append(MeshWithVoxel(vertices=mesh.vertices.detach().float().cpu().numpy(),
                                     faces=mesh.faces.detach().cpu().numpy(),
                                     coords=v.coords[:, 1:].cpu().numpy(), attrs=v.feats.detach().float().cpu().numpy(),
                                     layout=dict(PBR_LAYOUT), voxel_size=1.0 / resolution))
        return out

    # ------------------------------------------------------------------ run
    @torch.no_grad()
    def run(self, image, camera_params: Optional[Dict[str, float]] = None, num_samples: int = 1, seed: int = 42,
            sparse_structure_sampler_params: Optional[dict] = None, shape_slat_sampler_params: Optional[dict] = None,
            tex_slat_sampler_params: Optional[dict] = None, preprocess_image: bool = True,
            return_latent: bool = False, pipeline_type: Optional[str] = None, max_num_tokens: int = 49152,
            crop: bool = True):
        """Generates ``num_samples`` textured assets from one image.

        Args:
            image: a PIL image or a path (RGBA cut-outs are used as they are; RGB goes through background removal).
            camera_params: ``{'camera_angle_x' (rad), 'distance', 'mesh_scale'}`` (Pixal3D); ``None`` -> the default
                FOV and ``distance_from_fov``.
            seed: ``torch.manual_seed(seed)`` before the first stage: same seed + inputs -> same output.
            *_sampler_params: overrides of ``pipeline.json``'s sampler ``params`` per stage (steps,
                guidance_strength, guidance_rescale, guidance_interval, rescale_t).
            pipeline_type: one of :meth:`available_pipeline_types` (default from ``pipeline.json``).
            max_num_tokens: cap on high-resolution tokens; the cascade lowers the resolution in steps to fit.
            crop: with ``preprocess_image``, crop around the object (the default, for photos: the camera then
                follows from the FOV). ``False`` keeps the framing of a render whose ``camera_params`` are known.

        Returns:
            ``list[MeshWithVoxel]`` (Z-up frame of the voxels: for Pixal3D, the view-aligned frame), and with
            ``return_latent`` also ``(shape_slat, tex_slat, resolution)``.

        Raises:
            ValueError: unsupported pipeline type for the loaded weights; RuntimeError: an empty structure.
        """
        pipeline_type = pipeline_type or self.default_pipeline_type
        types = self.available_pipeline_types()
        if pipeline_type not in types:
            raise ValueError(f"pipeline type {pipeline_type!r} is not supported by these weights; available: "
                             f"{', '.join(types) or 'none (missing flow models)'}")
        if preprocess_image:
            image = self.preprocess_image(image, crop=crop)
        camera = self._camera(camera_params)
        torch.manual_seed(seed)
        occ_res = self._occupancy_resolution()
        lr_grid = occ_res if pipeline_type == "1024" else occ_res // 2
        coords = self.sample_sparse_structure(image, camera, num_samples, lr_grid,
                                              sparse_structure_sampler_params)
        up = self.models["shape_slat_decoder"].num_upsamples
        if pipeline_type in ("512", "1024"):
            key = "512" if pipeline_type == "512" else "1024"
            shape = self.sample_shape_slat(f"shape_slat_flow_model_{key}", image, camera, coords, f"shape_{key}",
                                           shape_slat_sampler_params, lr_grid)
            grid, resolution = lr_grid, lr_grid * 2 ** up
        else:
            lr = self.sample_shape_slat("shape_slat_flow_model_512", image, camera, coords, "shape_512",
                                        shape_slat_sampler_params, lr_grid)
            lr_res = lr_grid * 2 ** up
            with self.models.use("shape_slat_decoder") as sdec:
                fine = sdec.upsample(lr, upsample_times=up)
            target = lr_res * (2 if pipeline_type == "1024_cascade" else 3)
            hr_coords, resolution = choose_hr_grid(fine, lr_res, target, max_num_tokens, self.hr_quantization,
                                                   min_resolution=2 * lr_res, step=lr_res // 4, factor=2 ** up)
            grid = resolution // 2 ** up
            shape = self.sample_shape_slat("shape_slat_flow_model_1024", image, camera, hr_coords, "shape_1024",
                                           shape_slat_sampler_params, grid)
            key = "1024"
        tex = self.sample_tex_slat(f"tex_slat_flow_model_{key}", image, camera, shape, f"tex_{key}",
                                   tex_slat_sampler_params, grid)
        meshes = self.decode_latent(shape, tex, resolution)
        if return_latent:
            return meshes, (shape, tex, resolution)
        return meshes

    def _occupancy_resolution(self) -> int:
        dec = self.models["sparse_structure_decoder"]
        flow = self.models["sparse_structure_flow_model"]
        # the dense SS decoder upsamples x2 between its channel stages: 16³ latents -> 64³ occupancy when released
        return flow.resolution * 2 ** (len(dec.channels) - 1)

    def _camera(self, camera_params):
        return None

    @abc.abstractmethod
    def _cond(self, stage: str, image, camera, batch: int, coords=None, grid=None):
        """The condition of ``stage`` ('ss', 'shape_512', 'shape_1024', 'tex_512', 'tex_1024') for ``batch`` samples;
        sparse stages pass the latent ``coords`` ``[N, 4]`` and the latent ``grid``."""


def _repeat(x: torch.Tensor, batch: int) -> torch.Tensor:
    return x.expand(batch, *x.shape[1:]).contiguous() if x.shape[0] == 1 else x


class Pixal3DImageTo3DPipeline(_ImageTo3DPipeline):
    """The Pixal3D pipeline (PIXAL3D_SPEC §6): back-projected DINOv3 features, view-aligned output frame."""

    crop_scale = PIXAL3D_CROP_SCALE
    hr_quantization = "round"

    def _extractor(self, stage: str):
        if stage not in self._extractors:
            configs = {**PIXAL3D_IMAGE_COND_CONFIGS, **self.args.get("image_cond_models", {})}
            backbones = getattr(self, "_backbones", {})
            self._backbones = backbones
            self._extractors[stage] = self._place(_build_extractor(configs[stage], backbones, self.folder).eval())
        return self._extractors[stage]

    def _camera(self, camera_params):
        """``{'camera_angle_x', 'distance', 'mesh_scale'}``, filling the distance from the FOV (§2.3)."""
        cam = dict(camera_params or {})
        fov = float(cam.get("camera_angle_x", DEFAULT_FOV))
        ms = float(cam.get("mesh_scale", 1.0))
        dist = float(cam["distance"]) if cam.get("distance") is not None else distance_from_fov(fov, mesh_scale=ms)
        return {"camera_angle_x": fov, "distance": dist, "mesh_scale": ms}

    def _cond(self, stage, image, camera, batch, coords=None, grid=None):
        ext = self._extractor(stage)
        with self._on_device(ext):
            cam = (camera["camera_angle_x"], camera["distance"], camera["mesh_scale"])
            if coords is None:
                g, proj = ext([image], *cam, grid_resolution_override=grid)
                return {"global": _repeat(g, batch), "proj": _repeat(proj, batch)}
            # every sample sees the same single image: project with batch index 0, keep the latent's row order
            flat = coords.clone()
            flat[:, 0] = 0
            g, proj = ext.forward_sparse([image], flat, *cam, grid_resolution_override=grid)
            return {"global": _repeat(g, batch), "proj": proj}


class Trellis2ImageTo3DPipeline(_ImageTo3DPipeline):
    """The TRELLIS.2 pipeline (TRELLIS2_SPEC §4.5): cross-attention on the DINOv3 token sequence."""

    crop_scale = TRELLIS2_CROP_SCALE
    hr_quantization = "floor"

    def _extractor(self, stage: str):
        size = "512" if stage in ("ss", "shape_512", "tex_512") else "1024"
        if size not in self._extractors:
            configs = {**TRELLIS2_IMAGE_COND_CONFIGS, **self.args.get("image_cond_models", {})}
            if "image_cond_model" in self.args and "image_cond_models" not in self.args:
                spec = self.args["image_cond_model"]
                configs[size] = {"name": "DinoV3FeatureExtractor",
                                 "args": {**spec.get("args", {}), "image_size": int(size)}}
            backbones = getattr(self, "_backbones", {})
            self._backbones = backbones
            self._extractors[size] = self._place(_build_extractor(configs[size], backbones, self.folder).eval())
        return self._extractors[size]

    def _cond(self, stage, image, camera, batch, coords=None, grid=None):
        ext = self._extractor(stage)
        with self._on_device(ext):
            return _repeat(ext([image]), batch)
