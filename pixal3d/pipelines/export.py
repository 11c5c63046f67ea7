"""Helpers shared by the command line (``inference.py``) and the web demo (``app.py``).

* :func:`stage_params`: per-stage sampler overrides from optional steps / guidance values.
* :func:`mesh_to_glb`: bake a decoded :class:`~pixal3d.ovoxel.mesh.MeshWithVoxel` into a textured ``.glb`` file in the
  frame the released tools use (for Pixal3D: the input view looks at the model from -Z, PIXAL3D_SPEC §6.5).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

__all__ = ["PIXAL3D_EXPORT_ROTATION", "stage_params", "mesh_to_glb"]

# Net axes of the Pixal3D export: to_glb turns Z-up into Y-up, then this 180° turn about +Y makes the input view look
# at the model from -Z (PIXAL3D_SPEC §6.5).
PIXAL3D_EXPORT_ROTATION = [[-1, 0, 0, 0], [0, 0, -1, 0], [0, -1, 0, 0], [0, 0, 0, 1]]


def stage_params(steps: Optional[int] = None, guidance: Optional[float] = None) -> Dict[str, Any]:
    """Sampler overrides for one stage: only the values that are given (``None`` keeps ``pipeline.json``'s)."""
    out: Dict[str, Any] = {}
    if steps is not None:
        out["steps"] = int(steps)
    if guidance is not None:
        out["guidance_strength"] = float(guidance)
    return out


def mesh_to_glb(mesh, resolution: int, path, *, pixal3d_frame: bool = True, decimation_target: int = 500_000,
                texture_size: int = 2048, overwrite: bool = False) -> Path:
    """Bakes one decoded asset into a PBR-textured binary glTF file.

    Args:
        mesh: a :class:`~pixal3d.ovoxel.mesh.MeshWithVoxel` from ``pipeline.run``.
        resolution: the output grid resolution ``pipeline.run(..., return_latent=True)`` returned with it.
        path: the ``.glb`` file to write.
        pixal3d_frame: apply :data:`PIXAL3D_EXPORT_ROTATION` (Pixal3D weights); False for TRELLIS.2 weights.
        decimation_target: face budget; texture_size: side of the square PBR textures in texels.
        overwrite: replace an existing file instead of raising ``FileExistsError``.

    Returns:
        The written path.

    Raises:
        ValueError: an empty/degenerate mesh or bad settings (from ``to_glb``), a non-``.glb`` path;
        FileExistsError: ``path`` exists and ``overwrite`` is False.
    """
    from ..ovoxel.postprocess import export_glb, to_glb

    path = Path(path)
    if path.suffix.lower() != ".glb":
        raise ValueError(f"the output must be a .glb file, got {path.name!r}")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    glb = to_glb(mesh.vertices, mesh.faces, mesh.attrs, mesh.coords, mesh.layout, mesh.aabb, grid_size=resolution,
                 decimation_target=decimation_target, texture_size=texture_size, use_tqdm=True)
    if pixal3d_frame:
        glb.apply_transform(PIXAL3D_EXPORT_ROTATION)
    return export_glb(glb, path, overwrite=overwrite)
