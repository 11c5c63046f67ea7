from .flexible_dual_grid import flexible_dual_grid_to_mesh, mesh_to_flexible_dual_grid
from . import io
from .mesh import MeshWithVoxel, load_mesh, normalize_scene, normalize_vertices, validate_mesh
from .postprocess import export_glb, to_glb
from .volumetric_attr import textured_mesh_to_volumetric_attr
