"""Evaluation: geometry metrics (Chamfer, F-score, normal consistency, volume IoU), image metrics (PSNR, SSIM,
normal-map PSNR, optional LPIPS / CLIP score) and the protocols behind ``eval.py``."""
from .geometry import (sample_surface, chamfer_distance, nearest_distances, f_score, normal_consistency, volume_iou,
                       occupancy, winding_number, normalize_to_unit_cube, align_to_frame, evaluate_geometry)
from .image import (psnr, ssim, gaussian_window, normal_psnr, normal_angular_error, lpips_distance, clip_score,
                    LPIPSUnavailable)

__all__ = [
    "sample_surface", "chamfer_distance", "nearest_distances", "f_score", "normal_consistency", "volume_iou",
    "occupancy", "winding_number", "normalize_to_unit_cube", "align_to_frame", "evaluate_geometry",
    "psnr", "ssim", "gaussian_window", "normal_psnr", "normal_angular_error", "lpips_distance", "clip_score",
    "LPIPSUnavailable",
]
