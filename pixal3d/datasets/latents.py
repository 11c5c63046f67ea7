"""Latent datasets of the three flow stages, TRELLIS.2 (TRELLIS2_SPEC §5.5) and Pixal3D per-view (PIXAL3D_SPEC §7.5).

Files (role folders from ``--data_dir``, see :mod:`pixal3d.datasets.base`)::

    ss_latent/{sha}.npz                      {'z': float [8, r, r, r]}
    shape_latent/{sha}.npz, pbr_latent/...   {'feats': float [N, 32], 'coords': int [N, 3]}
    <role>/{sha}/view{VV}.npz                per-view latent (same keys), VV = 00, 01, ...
    <role>/{sha}/view{VV}_scale.json         {'total_scale': float, ...}
    render_cond/{sha}/transforms.json + images

Metadata columns (``metadata.csv``): ``aesthetic_score``, ``cond_rendered``, ``{ss,shape,pbr}_latent_encoded``,
``{shape,pbr}_latent_tokens``; per view ``{ss,shape,pbr}_latent_view{VV}_encoded`` and
``{shape,pbr}_latent_view{VV}_tokens``; with ``full_pbr`` also ``num_{basecolor,metallic,roughness}_tex``.
"""
import json
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from .base import DatasetError, StandardDatasetBase
from .images import frame_camera, load_cond_image_crop, load_cond_image_view, read_transforms

__all__ = ["SparseStructureLatent", "SLatShape", "SLatPbr", "ImageConditionedSparseStructureLatent",
           "ImageConditionedSLatShape", "ImageConditionedSLatPbr", "SparseStructureLatentView", "SLatShapeView",
           "SLatPbrView", "ViewImageConditionedSparseStructureLatentView", "ViewImageConditionedSLatShapeView",
           "ViewImageConditionedSLatPbrView"]


def _norm(spec, channels_name: str):
    if spec is None:
        return None
    if not isinstance(spec, dict) or set(spec) != {"mean", "std"} or len(spec["mean"]) != len(spec["std"]):
        raise DatasetError(f"{channels_name} must be {{'mean': [C floats], 'std': [C floats]}}")
    return (torch.tensor(spec["mean"], dtype=torch.float32), torch.tensor(spec["std"], dtype=torch.float32))


def _load_npz(path: Path, keys) -> dict:
    if not path.is_file():
        raise DatasetError(f"latent file {path} is missing (metadata says it is encoded)")
    with np.load(path) as f:
        missing = [k for k in keys if k not in f.files]
        if missing:
            raise DatasetError(f"{path} lacks keys {missing} (has {f.files})")
        return {k: f[k] for k in keys}


class _LatentBase(StandardDatasetBase):
    """Shared filtering (aesthetic, encoded flag, token budget) and per-view file naming.

    Args:
        roots: ``--data_dir``.
        min_aesthetic_score: keep rows with ``aesthetic_score >= it`` (``None`` disables).
        skip_aesthetic_score_datasets: sources exempt from the aesthetic filter.
        skip_list, seed: see :class:`StandardDatasetBase`.
    """

    prefix = ""          # metadata column prefix and role name without "_latent"
    role = ""
    view_mode = False
    token_column = False

    def __init__(self, roots, min_aesthetic_score: Optional[float] = 5.0, skip_aesthetic_score_datasets=None,
                 skip_list=None, seed: int = 0, num_views: int = 2, max_tokens: Optional[int] = None):
        self.min_aesthetic_score = min_aesthetic_score
        self.skip_aesthetic = set(skip_aesthetic_score_datasets or [])
        self.num_views = int(num_views)
        self.max_tokens = max_tokens
        super().__init__(roots, skip_list=skip_list, seed=seed)

    def _views(self):
        return [f"_view{v:02d}" for v in range(self.num_views)] if self.view_mode else [""]

    def _required(self) -> List[tuple]:
        """``(encoded column, tokens column or None)`` pairs every row must satisfy."""
        out = []
        for v in self._views():
            for p in self.prefixes():
                tok = f"{p}_latent{v}_tokens" if self.token_column and self.max_tokens is not None else None
                out.append((f"{p}_latent{v}_encoded", tok if p == self.prefix else None))
        return out

    def prefixes(self):
        return [self.prefix]

    def extra_filter(self, row: dict) -> bool:
        return True

    def filter_metadata(self, source: str, rows: Dict[str, dict]) -> List[str]:
        req = self._required()
        cols = [c for pair in req for c in pair if c]
        if self.min_aesthetic_score is not None and source not in self.skip_aesthetic:
            cols.append("aesthetic_score")
        self.require_columns(rows, cols + self.extra_columns(), source)
        keep = []
        for sha, row in rows.items():
            if source not in self.skip_aesthetic and not self.aesthetic_ok(row, self.min_aesthetic_score):
                continue
            if not all(row.get(enc) is True for enc, _ in req):
                continue
            if any(tok and (row.get(tok) is None or row[tok] > self.max_tokens) for _, tok in req):
                continue
            if self.extra_filter(row):
                keep.append(sha)
        return keep

    def extra_columns(self) -> List[str]:
        return []

    def latent_path(self, source: str, sha: str, role: str, view: Optional[int]) -> Path:
        """``{role}/{sha}.npz`` or ``{role}/{sha}/view{VV}.npz``."""
        d = self.role_dir(source, role)
        return d / f"{sha}.npz" if view is None else d / sha / f"view{view:02d}.npz"

    def mesh_scale(self, source: str, sha: str, view: int) -> float:
        """``total_scale`` from ``{role}/{sha}/view{VV}_scale.json`` (PIXAL3D_SPEC §7.3).

        Raises:
            DatasetError: file or key missing.
        """
        path = self.role_dir(source, self.role) / sha / f"view{view:02d}_scale.json"
        if not path.is_file():
            raise DatasetError(f"{path} is missing (written next to each per-view latent)")
        meta = json.loads(path.read_text())
        if "total_scale" not in meta:
            raise DatasetError(f"{path} has no 'total_scale'")
        return float(meta["total_scale"])

    def get_instance(self, source: str, sha: str, rng: np.random.Generator) -> dict:
        view = int(rng.integers(self.num_views)) if self.view_mode else None
        item = self.load_latent(source, sha, view)
        item.update(self.condition(source, sha, view, rng))
        return item

    def condition(self, source: str, sha: str, view: Optional[int], rng: np.random.Generator) -> dict:
        """Extra item keys (image condition, camera); none for unconditional datasets."""
        return {}


class SparseStructureLatent(_LatentBase):
    """Sparse-structure latents ``x_0 = z`` ``[C, r, r, r]`` (TRELLIS2_SPEC §5.5; not normalised by default).

    Args:
        normalization: optional ``{'mean', 'std'}`` per channel.
        pretrained_ss_dec, resolution: accepted from the reference configs (the decoder is for visualisation only).
        Other args: :class:`_LatentBase`.
    """

    prefix, role = "ss", "ss_latent"
    roles = ("ss_latent",)

    def __init__(self, roots, normalization=None, pretrained_ss_dec=None, resolution=None, **kwargs):
        self.normalization = _norm(normalization, "normalization")
        self.pretrained_ss_dec, self.resolution = pretrained_ss_dec, resolution
        super().__init__(roots, **kwargs)

    def load_latent(self, source: str, sha: str, view: Optional[int]) -> dict:
        z = torch.from_numpy(_load_npz(self.latent_path(source, sha, self.role, view), ["z"])["z"]).float()
        if z.dim() != 4:
            raise DatasetError(f"{self.latent_path(source, sha, self.role, view)}: z must be [C, r, r, r], "
                               f"got {tuple(z.shape)}")
        if self.normalization is not None:
            mean, std = self.normalization
            z = (z - mean.view(-1, 1, 1, 1)) / std.view(-1, 1, 1, 1)
        return {"x_0": z}


class SLatShape(_LatentBase):
    """Shape structured latents: ``x_0`` sparse (feats ``[N, 32]`` normalised, coords ``[N, 3]``).

    Args:
        resolution: O-Voxel resolution of the latents (coords must be < resolution / 16).
        max_tokens: drop assets with more tokens (``shape_latent_tokens`` column).
        normalization: ``{'mean', 'std'}`` of the shape latent channels (TRELLIS2_SPEC §4.6).
        pretrained_slat_dec: accepted from the reference configs (visualisation only).
    """

    prefix, role = "shape", "shape_latent"
    roles = ("shape_latent",)
    token_column = True
    sparse_keys = ("x_0",)

    def __init__(self, roots, resolution: int = 512, max_tokens: Optional[int] = 8192, normalization=None,
                 pretrained_slat_dec=None, **kwargs):
        self.resolution = int(resolution)
        self.normalization = _norm(normalization, "normalization")
        self.pretrained_slat_dec = pretrained_slat_dec
        super().__init__(roots, max_tokens=max_tokens, **kwargs)

    def _sparse(self, source, sha, role, view, norm):
        path = self.latent_path(source, sha, role, view)
        d = _load_npz(path, ["feats", "coords"])
        feats = torch.from_numpy(d["feats"]).float()
        coords = torch.from_numpy(d["coords"].astype(np.int32))
        if coords.dim() != 2 or coords.shape[1] != 3 or feats.shape[0] != coords.shape[0]:
            raise DatasetError(f"{path}: need feats [N, C] and coords [N, 3], got {tuple(feats.shape)} and "
                               f"{tuple(coords.shape)}")
        grid = self.resolution // 16
        if coords.numel() and (coords.min() < 0 or coords.max() >= grid):
            raise DatasetError(f"{path}: coords outside [0, {grid}) for resolution {self.resolution}; is the "
                               f"dataset 'resolution' right?")
        if norm is not None:
            feats = (feats - norm[0]) / norm[1]
        return feats, coords

    def load_latent(self, source: str, sha: str, view: Optional[int]) -> dict:
        feats, coords = self._sparse(source, sha, self.role, view, self.normalization)
        return {"x_0": feats, "coords": coords}


class SLatPbr(SLatShape):
    """Texture (PBR) latents with the shape latent as ``concat_cond`` (same coords, asserted).

    Args:
        full_pbr: keep only assets with base-colour, metallic and roughness textures.
        pbr_slat_normalization, shape_slat_normalization: ``{'mean', 'std'}`` (TRELLIS2_SPEC §4.6).
        attrs: PBR attributes the latents encode (recorded; the latent files define the channels).
        pretrained_pbr_slat_dec, pretrained_shape_slat_dec: accepted (visualisation only).
    """

    prefix, role = "pbr", "pbr_latent"
    roles = ("pbr_latent", "shape_latent")
    sparse_keys = ("x_0", "concat_cond")

    def __init__(self, roots, resolution: int = 512, max_tokens: Optional[int] = 8192, full_pbr: bool = False,
                 pbr_slat_normalization=None, shape_slat_normalization=None, attrs=None,
                 pretrained_pbr_slat_dec=None, pretrained_shape_slat_dec=None, **kwargs):
        self.full_pbr = bool(full_pbr)
        self.pbr_norm = _norm(pbr_slat_normalization, "pbr_slat_normalization")
        self.shape_norm = _norm(shape_slat_normalization, "shape_slat_normalization")
        self.attrs = attrs
        self.pretrained_pbr_slat_dec, self.pretrained_shape_slat_dec = pretrained_pbr_slat_dec, \
            pretrained_shape_slat_dec
        super().__init__(roots, resolution=resolution, max_tokens=max_tokens, **kwargs)

    def prefixes(self):
        return ["pbr", "shape"]

    _TEX = ("num_basecolor_tex", "num_metallic_tex", "num_roughness_tex")

    def extra_columns(self):
        return list(self._TEX) if self.full_pbr else []

    def extra_filter(self, row: dict) -> bool:
        return not self.full_pbr or all((row.get(c) or 0) > 0 for c in self._TEX)

    def load_latent(self, source: str, sha: str, view: Optional[int]) -> dict:
        pbr, coords = self._sparse(source, sha, "pbr_latent", view, self.pbr_norm)
        shape, shape_coords = self._sparse(source, sha, "shape_latent", view, self.shape_norm)
        if not torch.equal(coords, shape_coords):
            raise DatasetError(f"{sha}: the PBR and shape latents have different coords (re-encode both from the "
                               f"same voxelisation)")
        return {"x_0": pbr, "concat_cond": shape, "coords": coords}


class _ImageCond:
    """TRELLIS.2 image condition: a random view of ``render_cond/{sha}``, cropped to the object (§5.5)."""

    def _init_image(self, image_size: int):
        self.image_size = int(image_size)
        self.roles = tuple(self.roles) + ("render_cond",)

    def extra_columns(self):
        return super().extra_columns() + ["cond_rendered"]

    def extra_filter(self, row):
        return super().extra_filter(row) and row.get("cond_rendered") is True

    def condition(self, source, sha, view, rng):
        folder = self.role_dir(source, "render_cond") / sha
        meta = read_transforms(folder)
        v = int(rng.integers(len(meta["frames"])))
        return {"cond": load_cond_image_crop(folder / meta["frames"][v]["file_path"], self.image_size)}


class _ViewImageCond(_ImageCond):
    """Pixal3D view condition: the render of the chosen view (uncropped) and its camera (PIXAL3D_SPEC §7.5)."""

    def condition(self, source, sha, view, rng):
        folder = self.role_dir(source, "render_cond") / sha
        meta = read_transforms(folder)
        if view >= len(meta["frames"]):
            raise DatasetError(f"{folder}/transforms.json has {len(meta['frames'])} frames; view {view} needed "
                               f"(num_views={self.num_views})")
        out = {"cond": load_cond_image_view(folder / meta["frames"][view]["file_path"], self.image_size)}
        if self.load_camera_info:
            fov, dist = frame_camera(meta, view)
            out.update(camera_angle_x=fov, camera_distance=dist, mesh_scale=self.mesh_scale(source, sha, view))
        return out


class ImageConditionedSparseStructureLatent(_ImageCond, SparseStructureLatent):
    """:class:`SparseStructureLatent` + ``cond`` image ``[3, S, S]`` (``image_size`` S)."""

    def __init__(self, roots, image_size: int = 518, **kwargs):
        self._init_image(image_size)
        super().__init__(roots, **kwargs)


class ImageConditionedSLatShape(_ImageCond, SLatShape):
    """:class:`SLatShape` + ``cond`` image ``[3, S, S]``."""

    def __init__(self, roots, image_size: int = 518, **kwargs):
        self._init_image(image_size)
        super().__init__(roots, **kwargs)


class ImageConditionedSLatPbr(_ImageCond, SLatPbr):
    """:class:`SLatPbr` + ``cond`` image ``[3, S, S]``."""

    def __init__(self, roots, image_size: int = 518, **kwargs):
        self._init_image(image_size)
        super().__init__(roots, **kwargs)


class SparseStructureLatentView(SparseStructureLatent):
    """Per-view SS latents ``ss_latent/{sha}/view{VV}.npz`` (one random view of ``num_views`` per item)."""
    view_mode = True


class SLatShapeView(SLatShape):
    """Per-view shape latents (one random view per item)."""
    view_mode = True


class SLatPbrView(SLatPbr):
    """Per-view PBR + shape latents (one random view per item)."""
    view_mode = True


class _ViewImageInit:
    def __init__(self, roots, image_size: int = 518, load_camera_info: bool = True, **kwargs):
        self._init_image(image_size)
        self.load_camera_info = bool(load_camera_info)
        super().__init__(roots, **kwargs)


class ViewImageConditionedSparseStructureLatentView(_ViewImageInit, _ViewImageCond, SparseStructureLatentView):
    """Pixal3D SS stage: per-view ``x_0``, that view's image as ``cond`` and ``camera_angle_x``,
    ``camera_distance``, ``mesh_scale`` (with ``load_camera_info``)."""


class ViewImageConditionedSLatShapeView(_ViewImageInit, _ViewImageCond, SLatShapeView):
    """Pixal3D shape stage (see :class:`ViewImageConditionedSparseStructureLatentView`)."""


class ViewImageConditionedSLatPbrView(_ViewImageInit, _ViewImageCond, SLatPbrView):
    """Pixal3D texture stage: adds ``concat_cond`` (the same view's shape latent)."""
