"""Renderers: cameras (OpenCV/GL conventions, Pixal3D front camera), a pure-PyTorch CPU rasteriser with an optional
nvdiffrast backend, mesh G-buffers (mask/depth/normal/position/attr/base_color) and diffuse HDRI lighting
(TRELLIS2_SPEC §4.8, PIXAL3D_SPEC §2.1/§6.6). nvdiffrast is imported lazily, only when that backend is requested."""
from .camera import (Camera, extrinsics_look_at, intrinsics_from_fov, intrinsics_to_projection, front_camera,
                     orbit_cameras, blender_c2w_to_extrinsics)
from .rasterizer import (Fragments, CPURasterizer, NvdiffrastRasterizer, get_rasterizer, interpolate,
                         nvdiffrast_available)
from .envmap import EnvironmentMap, load_hdr, sh_basis
from .mesh_renderer import RenderMesh, MeshRenderer, sample_texture

__all__ = [
    "Camera", "extrinsics_look_at", "intrinsics_from_fov", "intrinsics_to_projection", "front_camera",
    "orbit_cameras", "blender_c2w_to_extrinsics", "Fragments", "CPURasterizer", "NvdiffrastRasterizer",
    "get_rasterizer", "interpolate", "nvdiffrast_available", "EnvironmentMap", "load_hdr", "sh_basis",
    "RenderMesh", "MeshRenderer", "sample_texture",
]
