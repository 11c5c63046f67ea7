"""O-Voxel datasets of the SC-VAE stages: flexible dual grids (shape) and sparse PBR voxels (texture)
(TRELLIS2_SPEC §5.5, §3.3, §3.6; Pixal3D view-aligned variants PIXAL3D_SPEC §7.3).

Files (role folders from ``--data_dir``; see :mod:`pixal3d.datasets.base` for the roots and metadata merge)::

    dual_grid/{sha}.vxz                  coords [N,3]; 'vertices' u8 [N,3] (offset in the voxel ·255, truncated),
                                         'intersected' u8 [N,1] (= ix + 2·iy + 4·iz)       (data_toolkit dual_grid.py)
    pbr_voxel/{sha}.vxz                  coords [N,3]; 'base_color' u8 [N,3], 'metallic', 'roughness', 'alpha' u8 [N,1]
    mesh_dump/{sha}.pickle               {'objects': [{'vertices': f32 [V,3], 'faces': i32 [F,3]}], ...}
    dual_grid_view/{sha}/view{VV}.vxz    per-view dual grid (PIXAL3D_SPEC §7.3) + view{VV}_scale.json
    pbr_voxel_view/{sha}/view{VV}.vxz    per-view PBR voxels + view{VV}_scale.json

The role names are what ``--data_dir`` maps to the toolkit's folders, e.g.
``{"objxl": {"dual_grid": ".../dual_grid_256", "mesh_dump": ".../mesh_dumps", "base": ".../"}}``.

Metadata columns (``metadata.csv`` of each role folder, merged on ``sha256``):

* shape: ``dual_grid_converted`` (bool), ``dual_grid_size`` (active voxels), optional ``num_faces`` (asset_stats),
  ``aesthetic_score``; view variant: ``dual_grid_view{VV}_converted_{R}``, ``dual_grid_view{VV}_size_{R}``.
* PBR: ``pbr_voxelized``, ``num_pbr_voxels``; view variant: ``pbr_voxelized_view_fix{VV}_{R}``,
  ``num_pbr_voxels_view_fix{VV}_{R}``.

Items (collated by :meth:`StandardDatasetBase.collate_fn` into SparseTensor micro-batches sharing one ``coords``):

* :class:`FlexiDualGridDataset`: ``vertices`` float32 ``[N, 3]`` in [0, 1] (``u8/255``), ``intersected`` bool
  ``[N, 3]``, ``coords`` int32 ``[N, 3]`` (sorted lexicographically by (x, y, z)), optional ``mesh``
  (:class:`pixal3d.models.sc_vaes.mesh.Mesh`, float32 vertices in the ``[-0.5, 0.5]³`` frame).
* :class:`SparseVoxelPbrDataset`: ``x`` float32 ``[N, C]`` = ``concat(attrs)/255·2 − 1``, ``coords``, optional
  ``mesh``.
* view variants add ``view`` (int) and ``mesh_scale`` (``total_scale`` of the scale json, float).

``loads`` (per instance, in instance order) is the active-voxel count from the metadata, used by
:class:`pixal3d.trainers.sampler.BalancedResumableSampler` to balance ranks.
"""
import json
import pickle
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from .base import DatasetError, StandardDatasetBase

__all__ = ["FlexiDualGridDataset", "SparseVoxelPbrDataset", "FlexiDualGridViewDataset", "SparseVoxelPbrViewDataset",
           "SparseStructureDataset", "SparseStructureViewDataset", "PBR_ATTR_CHANNELS", "load_mesh_dump"]

#: channels of each PBR attribute in ``pbr_voxel`` files (TRELLIS2_SPEC §3.5).
PBR_ATTR_CHANNELS = {"base_color": 3, "metallic": 1, "roughness": 1, "alpha": 1}


def _sorted_rows(coords: np.ndarray) -> np.ndarray:
    """Row order sorting ``coords [N, 3]`` lexicographically by (x, y, z)."""
    return np.lexsort((coords[:, 2], coords[:, 1], coords[:, 0]))


def _read_voxels(path: Path, keys: Sequence[str]):
    from pixal3d.ovoxel.io import read_vxz
    if not path.is_file():
        raise DatasetError(f"voxel file {path} is missing (metadata says it was converted)")
    coords, attrs = read_vxz(path)
    missing = [k for k in keys if k not in attrs]
    if missing:
        raise DatasetError(f"{path} lacks attributes {missing} (has {sorted(attrs)})")
    order = _sorted_rows(coords)
    return coords[order].astype(np.int32), {k: attrs[k][order] for k in keys}


def load_mesh_dump(path) -> "object":
    """``mesh_dump/{sha}.pickle`` → :class:`pixal3d.models.sc_vaes.mesh.Mesh` (all objects concatenated).

    Returns:
        Mesh with float32 vertices ``[V, 3]`` (the dump's normalised ``[-0.5, 0.5]³`` frame) and int64 faces.

    Raises:
        DatasetError: missing file, no objects, or malformed arrays.
    """
    from pixal3d.models.sc_vaes.mesh import Mesh
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"mesh dump {path} is missing")
    with open(path, "rb") as f:
        dump = pickle.load(f)
    objs = dump.get("objects") if isinstance(dump, dict) else None
    if not objs:
        raise DatasetError(f"{path} has no 'objects' list")
    verts, faces, off = [], [], 0
    for o in objs:
        v = np.asarray(o["vertices"], np.float32)
        fc = np.asarray(o["faces"], np.int64)
        if v.ndim != 2 or v.shape[1] != 3 or fc.ndim != 2 or fc.shape[1] != 3:
            raise DatasetError(f"{path}: object arrays must be vertices [V, 3] and faces [F, 3], got {v.shape}, "
                               f"{fc.shape}")
        verts.append(v)
        faces.append(fc + off)
        off += len(v)
    return Mesh(torch.from_numpy(np.concatenate(verts)), torch.from_numpy(np.concatenate(faces)))


class _VoxelBase(StandardDatasetBase):
    """Shared filtering (converted flag, size budget, faces, aesthetic) and view handling.

    Args:
        roots: ``--data_dir``.
        resolution: grid size R of the files (coords must be < R).
        min_aesthetic_score: keep ``aesthetic_score >= it`` (``None`` disables).
        max_num_faces: drop assets with more faces (``num_faces`` column; ``None`` disables).
        with_mesh: also load ``mesh_dump/{sha}.pickle`` as ``mesh`` (needed by render losses).
        skip_aesthetic_score_datasets: sources exempt from the aesthetic filter.
        num_views: view variants: views per asset; one is drawn per item.
        skip_list, seed: see :class:`StandardDatasetBase`.

    Raises:
        DatasetError: missing columns/folders, no instance passing the filters, files with coords outside the grid.
    """

    voxel_role = ""
    mesh_role = "mesh_dump"
    view_mode = False

    def __init__(self, roots, resolution: int, min_aesthetic_score: Optional[float] = 5.0,
                 max_num_faces: Optional[int] = None, with_mesh: bool = False, skip_aesthetic_score_datasets=None,
                 num_views: int = 2, skip_list=None, seed: int = 0):
        if not isinstance(resolution, int) or resolution < 1:
            raise DatasetError(f"resolution must be a positive int (grid size of the voxel files), got {resolution!r}")
        self.resolution = resolution
        self.min_aesthetic_score = min_aesthetic_score
        self.max_num_faces = max_num_faces
        self.with_mesh = bool(with_mesh)
        self.skip_aesthetic = set(skip_aesthetic_score_datasets or [])
        self.num_views = int(num_views)
        self.roles = (self.voxel_role,) + ((self.mesh_role,) if self.with_mesh else ())
        self._loads: Dict[tuple, float] = {}
        super().__init__(roots, skip_list=skip_list, seed=seed)
        self.loads = [self._loads[inst] for inst in self.instances]

    @property
    def file_resolution(self) -> int:
        """Grid size of the voxel files read (the column names' ``R``)."""
        return self.resolution

    # ---- per-subclass column names
    def converted_column(self, view: Optional[int]) -> str:
        raise TypeError

    def size_column(self, view: Optional[int]) -> str:
        raise TypeError

    max_active_voxels: Optional[float] = None  # subclasses take it as an argument

    @property
    def max_size(self) -> Optional[float]:
        """Largest size-column value kept (``None``: no limit)."""
        return self.max_active_voxels

    def _views(self) -> List[Optional[int]]:
        return list(range(self.num_views)) if self.view_mode else [None]

    def filter_metadata(self, source: str, rows: Dict[str, dict]) -> List[str]:
        views = self._views()
        cols = [self.converted_column(v) for v in views] + [self.size_column(v) for v in views]
        if self.min_aesthetic_score is not None and source not in self.skip_aesthetic:
            cols.append("aesthetic_score")
        if self.max_num_faces is not None:
            cols.append("num_faces")
        self.require_columns(rows, cols, source)
        keep = []
        for sha, row in rows.items():
            if source not in self.skip_aesthetic and not self.aesthetic_ok(row, self.min_aesthetic_score):
                continue
            if not all(row.get(self.converted_column(v)) is True for v in views):
                continue
            sizes = [row.get(self.size_column(v)) for v in views]
            if any(s is None for s in sizes):
                continue
            if self.max_size is not None and any(s > self.max_size for s in sizes):
                continue
            if self.max_num_faces is not None and (row.get("num_faces") is None
                                                   or row["num_faces"] > self.max_num_faces):
                continue
            self._loads[(source, sha)] = float(max(sizes))
            keep.append(sha)
        return keep

    def voxel_path(self, source: str, sha: str, view: Optional[int]) -> Path:
        """``{role}/{sha}.vxz`` or ``{role}/{sha}/view{VV}.vxz``."""
        d = self.role_dir(source, self.voxel_role)
        return d / f"{sha}.vxz" if view is None else d / sha / f"view{view:02d}.vxz"

    def mesh_scale(self, source: str, sha: str, view: int) -> float:
        """``total_scale`` of ``{role}/{sha}/view{VV}_scale.json`` (PIXAL3D_SPEC §7.3).

        Raises:
            DatasetError: file or key missing.
        """
        path = self.role_dir(source, self.voxel_role) / sha / f"view{view:02d}_scale.json"
        if not path.is_file():
            raise DatasetError(f"{path} is missing (written next to each per-view voxel file)")
        meta = json.loads(path.read_text())
        if "total_scale" not in meta:
            raise DatasetError(f"{path} has no 'total_scale'")
        return float(meta["total_scale"])

    def _check_coords(self, path: Path, coords: np.ndarray) -> None:
        if coords.size and (coords.min() < 0 or coords.max() >= self.resolution):
            raise DatasetError(f"{path}: coords outside [0, {self.resolution}); is the dataset 'resolution' right?")

    def get_instance(self, source: str, sha: str, rng: np.random.Generator) -> dict:
        view = int(rng.integers(self.num_views)) if self.view_mode else None
        item = self.load_voxels(source, sha, view)
        if self.with_mesh:
            item["mesh"] = load_mesh_dump(self.role_dir(source, self.mesh_role) / f"{sha}.pickle")
        if view is not None:
            item["view"] = view
            item["mesh_scale"] = self.mesh_scale(source, sha, view)
        return item

    def load_voxels(self, source: str, sha: str, view: Optional[int]) -> dict:
        raise TypeError


class FlexiDualGridDataset(_VoxelBase):
    """Flexible dual grids for the shape SC-VAE (TRELLIS2_SPEC §5.5; module docstring for files and items).

    Args:
        resolution: grid size R (``dual_grid_{R}``).
        max_active_voxels: drop assets with ``dual_grid_size`` above it (the token budget of the encoder input).
        Other args: :class:`_VoxelBase`.
    """

    voxel_role = "dual_grid"
    sparse_keys = ("vertices", "intersected")

    def __init__(self, roots, resolution: int, max_active_voxels: Optional[float] = 1_000_000, **kwargs):
        self.max_active_voxels = max_active_voxels
        super().__init__(roots, resolution, **kwargs)

    def converted_column(self, view):
        return "dual_grid_converted"

    def size_column(self, view):
        return "dual_grid_size"

    def load_voxels(self, source: str, sha: str, view: Optional[int]) -> dict:
        from pixal3d.ovoxel.io import unpack_intersected
        path = self.voxel_path(source, sha, view)
        coords, attrs = _read_voxels(path, ["vertices", "intersected"])
        self._check_coords(path, coords)
        v, it = attrs["vertices"], attrs["intersected"]
        if v.shape[1] != 3 or it.shape[1] != 1:
            raise DatasetError(f"{path}: need 'vertices' [N, 3] and 'intersected' [N, 1], got {v.shape}, {it.shape}")
        return {"coords": torch.from_numpy(coords),
                "vertices": torch.from_numpy(v.astype(np.float32) / np.float32(255.0)),
                "intersected": torch.from_numpy(unpack_intersected(it))}


class SparseVoxelPbrDataset(_VoxelBase):
    """Sparse PBR voxels for the texture SC-VAE (TRELLIS2_SPEC §5.5; module docstring for files and items).

    Args:
        resolution: grid size R (``pbr_voxels_{R}``).
        max_active_voxels: drop assets with ``num_pbr_voxels`` above it.
        attrs: attribute names concatenated into ``x`` (order kept), from :data:`PBR_ATTR_CHANNELS`.
        Other args: :class:`_VoxelBase`.
    """

    voxel_role = "pbr_voxel"
    sparse_keys = ("x",)

    def __init__(self, roots, resolution: int, max_active_voxels: Optional[float] = 1_000_000,
                 attrs: Sequence[str] = ("base_color", "metallic", "roughness", "alpha"), **kwargs):
        unknown = [a for a in attrs if a not in PBR_ATTR_CHANNELS]
        if unknown or not attrs:
            raise DatasetError(f"unknown PBR attrs {unknown}; choose from {list(PBR_ATTR_CHANNELS)}")
        self.attrs = list(attrs)
        self.channels = sum(PBR_ATTR_CHANNELS[a] for a in self.attrs)
        self.max_active_voxels = max_active_voxels
        super().__init__(roots, resolution, **kwargs)

    def converted_column(self, view):
        return "pbr_voxelized"

    def size_column(self, view):
        return "num_pbr_voxels"

    def load_voxels(self, source: str, sha: str, view: Optional[int]) -> dict:
        path = self.voxel_path(source, sha, view)
        coords, attrs = _read_voxels(path, self.attrs)
        self._check_coords(path, coords)
        for a in self.attrs:
            if attrs[a].shape[1] != PBR_ATTR_CHANNELS[a]:
                raise DatasetError(f"{path}: {a!r} must have {PBR_ATTR_CHANNELS[a]} channels, got {attrs[a].shape}")
        x = np.concatenate([attrs[a] for a in self.attrs], 1).astype(np.float32) / np.float32(255.0) * 2 - 1
        return {"coords": torch.from_numpy(coords), "x": torch.from_numpy(x)}


class FlexiDualGridViewDataset(FlexiDualGridDataset):
    """View-aligned dual grids ``dual_grid_view/{sha}/view{VV}.vxz`` (PIXAL3D_SPEC §7.3): one random view of
    ``num_views`` per item; columns ``dual_grid_view{VV}_converted_{R}`` / ``dual_grid_view{VV}_size_{R}``; adds
    ``view`` and ``mesh_scale``. ``mesh`` (with ``with_mesh``) is the un-rotated dump, so render losses should not
    be used with this variant."""

    voxel_role = "dual_grid_view"
    view_mode = True

    def converted_column(self, view):
        return f"dual_grid_view{view:02d}_converted_{self.file_resolution}"

    def size_column(self, view):
        return f"dual_grid_view{view:02d}_size_{self.file_resolution}"


class SparseVoxelPbrViewDataset(SparseVoxelPbrDataset):
    """View-aligned PBR voxels ``pbr_voxel_view/{sha}/view{VV}.vxz`` (PIXAL3D_SPEC §7.3, the ``view_fix`` folders):
    columns ``pbr_voxelized_view_fix{VV}_{R}`` / ``num_pbr_voxels_view_fix{VV}_{R}``; adds ``view``, ``mesh_scale``."""

    voxel_role = "pbr_voxel_view"
    view_mode = True

    def converted_column(self, view):
        return f"pbr_voxelized_view_fix{view:02d}_{self.resolution}"

    def size_column(self, view):
        return f"num_pbr_voxels_view_fix{view:02d}_{self.resolution}"


class SparseStructureDataset(_VoxelBase):
    """Dense occupancy grids for the sparse-structure VAE (TRELLIS v1 style, TRELLIS2_SPEC §2.4/§5.4), built from the
    dual-grid voxels: voxel ``c`` of a ``voxel_resolution`` grid marks cell ``c·resolution // voxel_resolution``.

    Args:
        resolution: occupancy grid size r (64 in TRELLIS.2's SS stage).
        voxel_resolution: grid size of the ``dual_grid`` files (a multiple of ``resolution``).
        max_active_voxels: drop assets with ``dual_grid_size`` above it.
        Other args: :class:`_VoxelBase` (``with_mesh`` is not used).

    Item: ``ss`` float32 ``[1, r, r, r]`` in {0, 1}.

    Raises:
        DatasetError: ``voxel_resolution`` not a multiple of ``resolution``.
    """

    voxel_role = "dual_grid"

    def __init__(self, roots, resolution: int = 64, voxel_resolution: int = 256,
                 max_active_voxels: Optional[float] = None, **kwargs):
        if not isinstance(voxel_resolution, int) or voxel_resolution % resolution:
            raise DatasetError(f"voxel_resolution ({voxel_resolution}) must be a multiple of resolution "
                               f"({resolution})")
        self.voxel_resolution = voxel_resolution
        self.max_active_voxels = max_active_voxels
        super().__init__(roots, resolution, **kwargs)

    @property
    def file_resolution(self) -> int:
        return self.voxel_resolution

    def converted_column(self, view):
        return "dual_grid_converted"

    def size_column(self, view):
        return "dual_grid_size"

    def load_voxels(self, source: str, sha: str, view: Optional[int]) -> dict:
        from pixal3d.ovoxel.io import read_vxz
        path = self.voxel_path(source, sha, view)
        if not path.is_file():
            raise DatasetError(f"voxel file {path} is missing (metadata says it was converted)")
        coords, _ = read_vxz(path)
        if coords.size and (coords.min() < 0 or coords.max() >= self.voxel_resolution):
            raise DatasetError(f"{path}: coords outside [0, {self.voxel_resolution}); check voxel_resolution")
        # numpy, not torch: on the demo data torch's CPU integer floor-divide + index_put took 19 of the 32 ms per item
        r = self.resolution
        c = coords.astype(np.int64) * r // self.voxel_resolution
        ss = np.zeros(r ** 3, np.float32)
        ss[(c[:, 0] * r + c[:, 1]) * r + c[:, 2]] = 1.0
        return {"ss": torch.from_numpy(ss.reshape(1, r, r, r))}


class SparseStructureViewDataset(SparseStructureDataset):
    """Occupancy grids of the view-aligned dual grids ``dual_grid_view/{sha}/view{VV}.vxz`` (PIXAL3D_SPEC §7.3): the
    frame in which Pixal3D's sparse-structure latents live. One random view of ``num_views`` per item; columns as
    :class:`FlexiDualGridViewDataset`."""

    voxel_role = "dual_grid_view"
    view_mode = True

    # the same files and columns as FlexiDualGridViewDataset, at this dataset's voxel_resolution
    converted_column = FlexiDualGridViewDataset.converted_column
    size_column = FlexiDualGridViewDataset.size_column
