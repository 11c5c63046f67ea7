"""Image conditioning: camera model, ProjGrid back-projection, DINOv3 extractors, NAF, preprocessing.

(PIXAL3D_SPEC §2, §3, §6.2; TRELLIS2_SPEC §4.3, §4.4.) Heavy/optional dependencies (transformers, OpenCV, natten) are
imported only when used.
"""
from .camera import (DEFAULT_DISTANCE, DEFAULT_FOV, MANUAL_FOV_HINT, R_BACK, R_BLENDER_FROM_VIEW, distance_from_fov,
                     fov_from_normalized_intrinsics, front_camera_matrix, view_alignment_transform)
from .dinov3 import DEFAULT_DINOV3, DinoV3FeatureExtractor, DinoV3ProjFeatureExtractor, load_dinov3
from .naf import NAF
from .preprocess import PIXAL3D_CROP_SCALE, TRELLIS2_CROP_SCALE, load_image, preprocess_image
from .proj_grid import ProjGrid, gather_grid_features

__all__ = ["DEFAULT_DISTANCE", "DEFAULT_FOV", "MANUAL_FOV_HINT", "R_BACK", "R_BLENDER_FROM_VIEW", "distance_from_fov",
           "fov_from_normalized_intrinsics", "front_camera_matrix", "view_alignment_transform", "DEFAULT_DINOV3",
           "DinoV3FeatureExtractor", "DinoV3ProjFeatureExtractor", "load_dinov3", "NAF", "PIXAL3D_CROP_SCALE",
           "TRELLIS2_CROP_SCALE", "load_image", "preprocess_image", "ProjGrid", "gather_grid_features"]
