"""O-Voxel: mesh <-> flexible dual grid, PBR voxelisation, IO and GLB export (TRELLIS2_SPEC §3).

Names are imported lazily so that ``pixal3d.ovoxel`` costs nothing at import time and only the parts a caller uses
need their dependencies (numba for mesh -> O-Voxel, trimesh/xatlas/OpenCV for loading and export).
"""
import importlib

_EXPORTS = {
    "mesh_to_flexible_dual_grid": ".flexible_dual_grid",
    "flexible_dual_grid_to_mesh": ".flexible_dual_grid",
    "MeshWithVoxel": ".mesh",
    "load_mesh": ".mesh",
    "normalize_scene": ".mesh",
    "normalize_vertices": ".mesh",
    "validate_mesh": ".mesh",
    "export_glb": ".postprocess",
    "to_glb": ".postprocess",
    "textured_mesh_to_volumetric_attr": ".volumetric_attr",
}
__all__ = sorted(_EXPORTS) + ["io"]


def __getattr__(name):
    if name == "io":
        return importlib.import_module(".io", __name__)
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
