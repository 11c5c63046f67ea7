"""Image -> textured GLB with Pixal3D (or TRELLIS.2) weights.

    python inference.py --image IMG --output OUT.glb --model DIR|HUB_ID [--resolution 1024|1536] [--low_vram]
        [--seed N] [--fov RAD] [--steps N] [--ss_guidance G] [--shape_guidance G] [--tex_guidance G]
        [--texture_size N] [--decimation_target N] [--device cpu|cuda] [--overwrite] [--max_num_tokens N]
        [--preview PREVIEW.png|.mp4] [--no_rembg]

The model folder is a released pipeline folder (``TencentARC/Pixal3D``, ``microsoft/TRELLIS.2-4B`` with
``--pipeline trellis2``) or any folder with a compatible ``pipeline.json``.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from pixal3d.pipelines.export import PIXAL3D_EXPORT_ROTATION, mesh_to_glb, stage_params  # noqa: F401

DEMO_MODEL = Path(__file__).resolve().parent / "assets" / "models" / "pixal3d-demo"
log = logging.getLogger("pixal3d.inference")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description="Turn one image into a PBR-textured GLB.")
    ap.add_argument("--image", required=True, help="input image (PNG/JPEG/WebP; RGBA cut-outs are used as they are)")
    ap.add_argument("--output", default="output.glb", help="output .glb path (default: output.glb)")
    ap.add_argument("--model", default=None,
                    help="pipeline folder or hub id (default: the embedded demo model, assets/models/pixal3d-demo)")
    ap.add_argument("--pipeline", choices=["pixal3d", "trellis2"], default="pixal3d",
                    help="conditioning family of the weights (default: pixal3d)")
    ap.add_argument("--resolution", type=int, default=None, choices=[512, 1024, 1536],
                    help="output resolution: 1024 -> 1024_cascade, 1536 -> 1536_cascade, 512 -> 512 "
                         "(default: the pipeline's default type)")
    ap.add_argument("--pipeline_type", default=None, help="explicit pipeline type (overrides --resolution)")
    ap.add_argument("--low_vram", action="store_true", help="keep models on the CPU, move each to the GPU for its stage")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--fov", type=float, default=None,
                    help="horizontal field of view in radians (default: MoGe-2 estimate when installed, else "
                         "2*atan(16/35) = 0.858; try 0.2 for near-orthographic product shots)")
    ap.add_argument("--camera", default=None,
                    help="JSON file with the image's own pinhole camera, for renders: {\"camera_angle_x\": rad, "
                         "\"distance\": camera-to-origin distance, \"mesh_scale\": voxel-frame scale (default 1)}, "
                         "e.g. a data-toolkit render's FOV, ||transform_matrix[:3, 3]|| and view scale. The image is "
                         "then used uncropped (a crop would change the camera); Pixal3D only; excludes --fov")
    ap.add_argument("--steps", type=int, default=None, help="sampling steps for every stage (default: pipeline.json)")
    ap.add_argument("--ss_guidance", type=float, default=None)
    ap.add_argument("--shape_guidance", type=float, default=None)
    ap.add_argument("--tex_guidance", type=float, default=None)
    ap.add_argument("--texture_size", type=int, default=2048)
    ap.add_argument("--decimation_target", type=int, default=500_000)
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--no_rembg", action="store_true",
                    help="do not remove the background of RGB images (use the whole image as foreground)")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    ap.add_argument("--max_num_tokens", type=int, default=49152,
                    help="cap on high-resolution latent tokens; a cascade lowers its resolution to fit (default 49152)")
    ap.add_argument("--preview", default=None,
                    help="also write a turntable preview: .png = grid of the frames (frame 0 = the input view), "
                         ".mp4 = video (needs imageio-ffmpeg)")
    ap.add_argument("--preview_frames", type=int, default=None,
                    help="number of turntable frames (default: 8 for .png, 48 for .mp4)")
    ap.add_argument("--preview_resolution", type=int, default=512, help="side of each preview frame in pixels")
    return ap.parse_args(argv)


def load_camera(path) -> dict:
    """Reads ``--camera``: ``{'camera_angle_x': rad in (0, pi), 'distance': > 0, 'mesh_scale': > 0 (default 1)}``.

    Raises:
        ValueError: unreadable JSON, a missing or unknown key, or a value out of range (the message names it).
    """
    import json
    import math
    try:
        cam = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"--camera {path}: cannot read it as JSON ({e})") from e
    if not isinstance(cam, dict):
        raise ValueError(f"--camera {path}: expected a JSON object, got {type(cam).__name__}")
    allowed = {"camera_angle_x", "distance", "mesh_scale"}
    missing = sorted({"camera_angle_x", "distance"} - cam.keys())
    unknown = sorted(cam.keys() - allowed)
    if missing or unknown:
        raise ValueError(f"--camera {path}: missing keys {missing}, unknown keys {unknown}; expected "
                         f"camera_angle_x (rad), distance and optionally mesh_scale")
    out = {"camera_angle_x": cam["camera_angle_x"], "distance": cam["distance"], "mesh_scale": cam.get("mesh_scale", 1.0)}
    for k, v in out.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise ValueError(f"--camera {path}: {k} must be a positive number, got {v!r}")
    if out["camera_angle_x"] >= math.pi:
        raise ValueError(f"--camera {path}: camera_angle_x is in radians and must be < pi, got {out['camera_angle_x']}")
    return {k: float(v) for k, v in out.items()}


def write_turntable(mesh, path, *, pipeline: str, fov, frames=None, resolution: int = 512, device=None,
                    distance=None) -> Path:
    """Renders the §6.6 turntable of ``mesh`` and writes it to ``path`` (.png grid or .mp4).

    ``fov`` is the conditioning FOV of a Pixal3D result. The camera distance in the voxel frame follows from it
    unless ``distance`` gives it (a known camera: its distance times ``mesh_scale``), so frame 0 reproduces the
    input view; TRELLIS.2 results use a fixed 40° camera at distance 2 looking from the canonical front (-Y).
    """
    from pixal3d.conditioning.camera import distance_from_fov
    from pixal3d.pipelines.preview import (TRELLIS2_PREVIEW_DISTANCE, TRELLIS2_PREVIEW_FOV, render_turntable,
                                           write_preview)
    path = Path(path)
    if frames is None:
        frames = 48 if path.suffix.lower() == ".mp4" else 8
    if pipeline == "pixal3d":
        distance = distance_from_fov(fov) if distance is None else float(distance)
        frame = "pixal3d"
    else:
        fov, distance, frame = TRELLIS2_PREVIEW_FOV, TRELLIS2_PREVIEW_DISTANCE, "trellis2"
    images = render_turntable(mesh, fov, distance, num_frames=frames, resolution=resolution, frame=frame,
                              device=device)
    return write_preview(path, images)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    out = Path(args.output)
    if out.suffix.lower() != ".glb":
        print(f"error: --output must end in .glb, got {out}", file=sys.stderr)
        return 2
    if out.exists() and not args.overwrite:
        print(f"error: {out} exists; pass --overwrite to replace it", file=sys.stderr)
        return 2
    if args.preview is not None:
        from pixal3d.pipelines.preview import check_preview_path
        try:
            check_preview_path(args.preview)  # fail before the expensive generation
        except (ValueError, RuntimeError) as e:
            print(f"error: --preview: {e}", file=sys.stderr)
            return 2
        if args.preview_frames is not None and args.preview_frames < 1:
            print("error: --preview_frames must be >= 1", file=sys.stderr)
            return 2
    known_camera = None
    if args.camera is not None:
        if args.pipeline != "pixal3d":
            print("error: --camera is for the Pixal3D pipeline (TRELLIS.2 has no camera input)", file=sys.stderr)
            return 2
        if args.fov is not None:
            print("error: --camera already gives the FOV (camera_angle_x); drop --fov", file=sys.stderr)
            return 2
        try:
            known_camera = load_camera(args.camera)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    model = args.model or str(DEMO_MODEL)
    if args.model is None and not DEMO_MODEL.exists():
        print("error: the embedded demo model is not in this checkout yet (assets/models/pixal3d-demo).\n"
              "Pass --model with a pipeline folder or hub id, e.g. --model TencentARC/Pixal3D (official weights), "
              "or make a random-weight folder for a smoke test:\n"
              "  python -m pixal3d.pipelines.random_pipeline /tmp/pixal3d-random && "
              "python inference.py --image IMG --model /tmp/pixal3d-random", file=sys.stderr)
        return 2

    import torch

    from pixal3d.conditioning.fov import estimate_fov
    from pixal3d.conditioning.preprocess import load_image
    from pixal3d.pipelines.image_to_3d import Pixal3DImageTo3DPipeline, Trellis2ImageTo3DPipeline

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA device is available; use --device cpu", file=sys.stderr)
        return 2
    try:
        image = load_image(args.image)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    cls = Pixal3DImageTo3DPipeline if args.pipeline == "pixal3d" else Trellis2ImageTo3DPipeline
    t0 = time.time()
    try:
        pipe = cls.from_pretrained(model, device=device, low_vram=args.low_vram,
                                   dtype=torch.float32 if device == "cpu" else None)
    except (FileNotFoundError, ValueError, KeyError, OSError) as e:
        print(f"error: could not load the model {model!r}: {e}", file=sys.stderr)
        return 2
    if args.no_rembg:
        pipe.rembg = lambda img: img.convert("RGBA")
    log.info("loaded %s in %.1f s on %s", model, time.time() - t0, device)
    ptype = args.pipeline_type or {None: None, 512: "512", 1024: "1024_cascade", 1536: "1536_cascade"}[args.resolution]
    try:
        prepared = pipe.preprocess_image(image, crop=known_camera is None)
        camera, fov, preview_distance = None, None, None
        if known_camera is not None:
            camera, fov = known_camera, known_camera["camera_angle_x"]
            # the voxel frame is the world scaled by mesh_scale, so the input view's camera sits this far out
            preview_distance = known_camera["distance"] * known_camera["mesh_scale"]
        elif args.pipeline == "pixal3d":
            # MoGe-2 on the preprocessed crop; without it estimate_fov logs the default it uses
            # (like the reference, a non-positive --fov also means "estimate")
            fov = args.fov if args.fov is not None and args.fov > 0 else estimate_fov(prepared)
            camera = {"camera_angle_x": fov}
        steps = args.steps
        meshes, (_, _, resolution) = pipe.run(
            prepared, camera_params=camera, seed=args.seed, preprocess_image=False, pipeline_type=ptype,
            sparse_structure_sampler_params=stage_params(steps, args.ss_guidance),
            shape_slat_sampler_params=stage_params(steps, args.shape_guidance),
            tex_slat_sampler_params=stage_params(steps, args.tex_guidance), return_latent=True,
            max_num_tokens=args.max_num_tokens)
        mesh = meshes[0]
        log.info("generated %d vertices / %d faces at %d³ in %.1f s", len(mesh.vertices), len(mesh.faces),
                 resolution, time.time() - t0)
        mesh_to_glb(mesh, resolution, out, pixal3d_frame=args.pipeline == "pixal3d",
                    decimation_target=args.decimation_target, texture_size=args.texture_size,
                    overwrite=args.overwrite)
        if args.preview is not None:
            write_turntable(mesh, args.preview, pipeline=args.pipeline, fov=fov, frames=args.preview_frames,
                            resolution=args.preview_resolution, device=device, distance=preview_distance)
            log.info("wrote the turntable preview %s", args.preview)
    except torch.cuda.OutOfMemoryError:
        print("error: the GPU ran out of memory. Try --low_vram, a lower --resolution (1024), or "
              "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True", file=sys.stderr)
        return 3
    except (ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    log.info("wrote %s (%.1f s total)", out, time.time() - t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
