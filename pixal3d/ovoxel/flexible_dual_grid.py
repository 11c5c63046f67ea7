"""Mesh <-> flexible dual grid (O-Voxel geometry), TRELLIS2_SPEC §3.1-3.4.

``flexible_dual_grid_to_mesh`` (O-Voxel -> mesh) is pure torch (``_fdg_extract``) and needs no numba;
``mesh_to_flexible_dual_grid`` (mesh -> O-Voxel) runs numba kernels on the CPU (``_fdg_voxelize``,
``_fdg_kernels``), compiled on first use and cached on disk.
"""
from ._fdg_extract import find_dual_quads, flexible_dual_grid_to_mesh


def __getattr__(name):
    # mesh -> O-Voxel needs numba; O-Voxel -> mesh (used by the decoders) is pure torch, so import lazily
    if name == "mesh_to_flexible_dual_grid":
        from ._fdg_voxelize import mesh_to_flexible_dual_grid
        return mesh_to_flexible_dual_grid
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["flexible_dual_grid_to_mesh", "mesh_to_flexible_dual_grid", "find_dual_quads"]
