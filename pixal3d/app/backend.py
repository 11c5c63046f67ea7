"""The web demo's handlers: preprocess, generate, extract_glb (independent of the page layout in :mod:`.ui`).

Every handler validates its inputs and turns expected failures (bad image, unsupported setting, out of GPU memory,
an empty generation) into :class:`gradio.Error` with a message a user can act on; anything unexpected is logged with
its traceback on the server and reported in the page as one line, never as a stack trace.
"""
from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import gradio as gr
import torch
from PIL import Image

from ..conditioning.camera import DEFAULT_FOV
from ..conditioning.preprocess import load_image
from ..conditioning.fov import MoGeUnavailable, estimate_fov, load_moge
from ..pipelines.export import mesh_to_glb, stage_params
from .session import SessionFiles
from .state import load_generation, save_generation

__all__ = ["DemoBackend", "PIPELINE_TYPE_LABELS", "IMAGE_SUFFIXES", "MAX_SEED", "HISTORY_SIZE", "STAGES"]

log = logging.getLogger("pixal3d.app")

#: Friendly names of the pipeline types offered in the resolution selector.
PIPELINE_TYPE_LABELS = {
    "512": "512³ · fast preview",
    "1024": "1024³ · single stage",
    "1024_cascade": "1024³ cascade · balanced",
    "1536_cascade": "1536³ cascade · high quality",
}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
MAX_SEED = 2 ** 31 - 1
HISTORY_SIZE = 8
#: Sampler stages in pipeline.json order, with the labels the UI uses.
STAGES = (("sparse_structure", "Sparse structure"), ("shape_slat", "Shape"), ("tex_slat", "Texture"))
TEXTURE_SIZE_RANGE = (64, 8192)
FACE_BUDGET_RANGE = (1_000, 2_000_000)


def _user_error(message: str) -> gr.Error:
    """A :class:`gradio.Error` for an expected problem (shown in the page; no traceback in the server log)."""
    return gr.Error(message, print_exception=False)


def _session(request: Optional[gr.Request]) -> Optional[str]:
    return getattr(request, "session_hash", None) if request is not None else None


def _in_range(name: str, value, lo, hi, cast=float):
    if value is None:
        raise _user_error(f"{name} is missing")
    try:
        v = cast(value)
    except (TypeError, ValueError):
        raise _user_error(f"{name} must be a number, got {value!r}") from None
    if not (lo <= v <= hi) or (isinstance(v, float) and not math.isfinite(v)):
        raise _user_error(f"{name} must be between {lo} and {hi}, got {value!r}")
    return v


class DemoBackend:
    """Handlers of the web demo around one loaded pipeline.

    Args:
        pipe: a loaded :class:`~pixal3d.pipelines.image_to_3d.Pixal3DImageTo3DPipeline` (or the TRELLIS.2 one).
        files: where outputs go (one temporary folder per session).
        pixal3d: True for Pixal3D weights (camera/FOV input, Pixal3D export frame), False for TRELLIS.2 weights.
        max_upload_mb: largest accepted upload; max_megapixels: largest accepted image.
    """

    def __init__(self, pipe, files: SessionFiles, *, pixal3d: bool = True, max_upload_mb: float = 20.0,
                 max_megapixels: float = 40.0):
        self.pipe = pipe
        self.files = files
        self.pixal3d = pixal3d
        self.max_upload_mb = float(max_upload_mb)
        self.max_megapixels = float(max_megapixels)
        self._moge = None  # MoGe-2 for FOV 'Auto': None = not tried yet, False = unavailable

    # ------------------------------------------------------------------ settings shown in the UI
    def pipeline_types(self) -> List[Tuple[str, str]]:
        """``(label, value)`` pairs of the pipeline types the loaded weights support."""
        return [(PIPELINE_TYPE_LABELS.get(t, t), t) for t in self.pipe.available_pipeline_types()]

    def default_pipeline_type(self) -> Optional[str]:
        """The pipeline.json default when these weights support it, else the first supported type."""
        types = self.pipe.available_pipeline_types()
        if not types:
            return None
        return self.pipe.default_pipeline_type if self.pipe.default_pipeline_type in types else types[0]

    def sampler_default(self, stage: str) -> Tuple[int, float]:
        """``(steps, guidance_strength)`` of one stage from the loaded ``pipeline.json`` (12 / 7.5 if absent)."""
        params = self.pipe.sampler_params.get(stage, {})
        return int(params.get("steps", 12)), float(params.get("guidance_strength", 7.5))

    def low_vram_available(self) -> bool:
        """Low-VRAM mode only changes anything on a CUDA device."""
        return self.pipe.models.device.type == "cuda"

    # ------------------------------------------------------------------ validation
    def check_upload(self, path, name: Optional[str] = None) -> Path:
        """Checks an uploaded file's type (by ``name``, default the path's) and size before it is decoded.

        Returns:
            ``path`` as a Path.

        Raises:
            gradio.Error: unsupported extension, over the size limit, empty.
        """
        path = Path(path)
        name = Path(name).name if name else path.name
        if Path(name).suffix.lower() not in IMAGE_SUFFIXES:
            raise _user_error(f"'{name}' is not a supported image type. Upload a PNG, JPEG or WebP image "
                              "(an RGBA cut-out with a transparent background works best).")
        size = path.stat().st_size if path.exists() else 0
        if size == 0:
            raise _user_error(f"'{name}' is empty. Upload a PNG, JPEG or WebP image.")
        if size > self.max_upload_mb * 2 ** 20:
            raise _user_error(f"'{name}' is {size / 2 ** 20:.1f} MB; the limit is {self.max_upload_mb:g} MB. "
                              "Downscale or compress the image.")
        return path

    def open_image(self, path) -> Image.Image:
        """Opens an uploaded image after :meth:`check_upload`, with a clear message for non-images and huge images."""
        path = self.check_upload(path)
        try:
            with Image.open(path) as probe:
                w, h = probe.size
        except Exception:  # PIL raises several types for non-images; all mean the same to a user
            raise _user_error(f"'{path.name}' is not a readable image. Upload a PNG, JPEG or WebP image.") from None
        if w * h > self.max_megapixels * 1e6:
            raise _user_error(f"'{path.name}' is {w}×{h} pixels ({w * h / 1e6:.0f} MP); the limit is "
                              f"{self.max_megapixels:g} MP. Downscale it first (1024 px on the long side is plenty).")
        try:
            return load_image(path)
        except (ValueError, OSError) as e:
            raise _user_error(f"Could not read the image: {e}") from None

    # ------------------------------------------------------------------ handlers
    def preprocess(self, image_path: Optional[str]) -> Optional[Image.Image]:
        """Cut-out (alpha or background removal), square crop around the object and black background.

        Args:
            image_path: the uploaded file (``None`` when the input is cleared: returns ``None``).

        Returns:
            The image the generation will see (RGB, object centred).
        """
        if image_path is None:
            return None
        image = self.open_image(image_path)
        try:
            return self.pipe.preprocess_image(image)
        except (ValueError, TypeError) as e:
            raise _user_error(f"Could not cut out the object: {e}") from None
        except Exception as e:
            log.exception("preprocess failed")
            raise _user_error(f"Preprocessing failed unexpectedly ({type(e).__name__}: {e}). "
                              "The server log has the details.") from None

    def _auto_fov(self, image: Image.Image) -> Tuple[float, str]:
        """``(fov in radians, note for the status line)`` from MoGe-2, loaded once; the default FOV without it."""
        if self._moge is None:
            try:
                self._moge = load_moge(device=str(self.pipe.device))
            except MoGeUnavailable as e:
                log.warning("FOV 'Auto' uses the default %.1f° (%s)", math.degrees(DEFAULT_FOV), e)
                self._moge = False  # do not retry on every generation
        if self._moge is False:
            return DEFAULT_FOV, f"{math.degrees(DEFAULT_FOV):.1f}° (default: MoGe-2 is not available)"
        try:
            fov = estimate_fov(image, model=self._moge)
        except ValueError as e:
            raise _user_error(f"The FOV estimate failed ({e}); choose 'Manual' and set the field of view.") from None
        return fov, f"{math.degrees(fov):.1f}° (MoGe-2 estimate)"

    def _set_low_vram(self, flag: bool) -> None:
        """Switches low-VRAM mode between generations (keeps models on the CPU, moving each to the GPU to run)."""
        holder = self.pipe.models
        flag = bool(flag) and holder.device.type == "cuda"
        if flag == holder.low_vram:
            return
        holder.low_vram = flag
        storage = torch.device("cpu") if flag else holder.device
        for model in holder.models.values():
            model.to(storage)
        if flag:
            torch.cuda.empty_cache()

    @contextlib.contextmanager
    def _report_stages(self, progress, pipeline_type: str):
        """Reports ``Stage k/n: …`` through ``progress`` as the pipeline enters each stage.

        The pipeline's stage methods are shadowed by instance attributes for the duration of one run (generations
        run one at a time, see the queue settings in :mod:`.ui`) and restored afterwards.
        """
        cascade = pipeline_type.endswith("_cascade")
        total = 5 if cascade else 4
        done = [0]

        def label(name, args):
            if name == "sample_shape_slat":
                return "shape (coarse)" if cascade and str(args[0]).endswith("512") else \
                    ("shape (fine)" if cascade else "shape")
            return {"sample_sparse_structure": "sparse structure", "sample_tex_slat": "texture",
                    "decode_latent": "decoding mesh and PBR voxels"}[name]

        def wrap(name):
            original = getattr(self.pipe, name)

            def staged(*args, **kwargs):
                done[0] += 1
                progress((done[0] - 1, total), desc=f"Stage {done[0]}/{total}: {label(name, args)}", unit="stages")
                return original(*args, **kwargs)
            return staged

        names = ("sample_sparse_structure", "sample_shape_slat", "sample_tex_slat", "decode_latent")
        for name in names:
            setattr(self.pipe, name, wrap(name))
        try:
            yield
        finally:
            for name in names:
                self.pipe.__dict__.pop(name, None)

    def generate(self, image: Optional[Image.Image], seed, randomize_seed: bool, pipeline_type: Optional[str],
                 fov_mode: str, fov_degrees, ss_steps, ss_guidance, shape_steps, shape_guidance, tex_steps,
                 tex_guidance, low_vram: bool = False, request: gr.Request = None,
                 progress=gr.Progress(track_tqdm=True)) -> Tuple[str, int, str]:
        """Runs the cascade on a preprocessed image and stores the decoded asset for :meth:`extract_glb`.

        Args:
            image: the output of :meth:`preprocess`.
            seed / randomize_seed: the seed, or draw a new one.
            pipeline_type: one of :meth:`pipeline_types` (``None``: the default).
            fov_mode: ``"Auto"`` (MoGe-2 when installed, else the default FOV) or ``"Manual"``.
            fov_degrees: horizontal field of view in degrees for ``"Manual"`` (sent to the pipeline in radians).
            *_steps / *_guidance: sampler steps and guidance strength per stage.
            low_vram: keep models on the CPU between stages (CUDA only).

        Returns:
            ``(generation .npz path, seed used, status text)``.
        """
        if image is None:
            raise _user_error("Upload an image or pick an example first, and wait for the cut-out preview.")
        ptype = pipeline_type or self.default_pipeline_type()
        types = self.pipe.available_pipeline_types()
        if ptype not in types:
            raise _user_error(f"Resolution {ptype!r} is not available with these weights; choose one of: "
                              f"{', '.join(types) or 'none'}.")
        seed = random.randint(0, MAX_SEED) if randomize_seed else _in_range("Seed", seed, 0, MAX_SEED, int)
        params = {}
        for (stage, title), steps, guidance in zip(STAGES, (ss_steps, shape_steps, tex_steps),
                                                   (ss_guidance, shape_guidance, tex_guidance)):
            params[stage] = stage_params(_in_range(f"{title} steps", steps, 1, 100, int),
                                         _in_range(f"{title} guidance", guidance, 0.0, 30.0))
        camera, fov_note = None, "not used (TRELLIS.2 weights)"
        if self.pixal3d:
            if fov_mode == "Manual":
                fov = math.radians(_in_range("Field of view", fov_degrees, 1.0, 150.0))
                fov_note = f"{math.degrees(fov):.1f}° (manual)"
            elif fov_mode in ("Auto", None):
                progress(0.0, desc="Estimating the field of view")
                fov, fov_note = self._auto_fov(image)
            else:
                raise _user_error(f"Field of view mode must be 'Auto' or 'Manual', got {fov_mode!r}")
            camera = {"camera_angle_x": fov}
        image = image.convert("RGB")
        t0 = time.time()
        try:
            self._set_low_vram(low_vram)
            with self._report_stages(progress, ptype):
                meshes, (_, _, resolution) = self.pipe.run(
                    image, camera_params=camera, seed=seed, preprocess_image=False, pipeline_type=ptype,
                    sparse_structure_sampler_params=params["sparse_structure"],
                    shape_slat_sampler_params=params["shape_slat"], tex_slat_sampler_params=params["tex_slat"],
                    return_latent=True)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            raise _user_error("The GPU ran out of memory. Tick 'Low-VRAM mode', or pick a lower resolution "
                              "(1024³ cascade).") from None
        except (ValueError, RuntimeError) as e:
            log.warning("generation failed: %s", e)
            raise _user_error(f"Generation failed: {e}") from None
        except Exception as e:
            log.exception("generation failed unexpectedly")
            raise _user_error(f"Generation failed unexpectedly ({type(e).__name__}: {e}). "
                              "The server log has the details.") from None
        mesh = meshes[0]
        elapsed = time.time() - t0
        session = _session(request)
        self.files.sweep()
        meta = {"seed": seed, "pipeline_type": ptype, "fov": fov_note, "pixal3d_frame": self.pixal3d,
                "seconds": round(elapsed, 2)}
        state = save_generation(self.files.new_path(session, f"generation_seed{seed}", ".npz"), mesh, resolution, meta)
        status = (f"**Generated** in {elapsed:.1f} s · seed {seed} · {PIPELINE_TYPE_LABELS.get(ptype, ptype)} "
                  f"(grid {resolution}³) · FOV {fov_note} · {len(mesh.faces):,} faces before simplification")
        log.info("generated seed=%d type=%s res=%d faces=%d in %.1f s", seed, ptype, resolution, len(mesh.faces),
                 elapsed)
        return str(state), seed, status

    def extract_glb(self, state_path: Optional[str], decimation_target, texture_size, request: gr.Request = None,
                    progress=gr.Progress()) -> Tuple[str, str]:
        """Bakes the GLB (UV unwrap, PBR textures, face budget) from a :meth:`generate` result.

        Args:
            state_path: the ``.npz`` that :meth:`generate` returned.
            decimation_target: face budget of the GLB.
            texture_size: side of the square PBR textures in texels.

        Returns:
            ``(glb path, glb path)``: one for the 3D viewer, one for the download button.
        """
        if state_path is None:
            raise _user_error("Nothing to export yet: generate a model first.")
        faces = _in_range("Face budget", decimation_target, *FACE_BUDGET_RANGE, cast=int)
        tex = _in_range("Texture size", texture_size, *TEXTURE_SIZE_RANGE, cast=int)
        progress(0.05, desc="Reading the generation")
        try:
            mesh, resolution, meta = load_generation(state_path)
        except ValueError as e:
            raise _user_error(str(e)) from None
        progress(0.2, desc=f"Baking the GLB: simplifying to {faces:,} faces, UV unwrap, {tex}px PBR textures")
        seed = meta.get("seed", "x")
        out = self.files.new_path(_session(request), f"pixal3d_seed{seed}", ".glb")
        t0 = time.time()
        try:
            mesh_to_glb(mesh, resolution, out, pixal3d_frame=bool(meta.get("pixal3d_frame", True)),
                        decimation_target=faces, texture_size=tex)
        except ValueError as e:
            raise _user_error(f"GLB export failed: {e}") from None
        except Exception as e:
            log.exception("GLB export failed unexpectedly")
            raise _user_error(f"GLB export failed unexpectedly ({type(e).__name__}: {e}). "
                              "The server log has the details.") from None
        log.info("exported %s (%.1f MB) in %.1f s", out.name, out.stat().st_size / 2 ** 20, time.time() - t0)
        return str(out), str(out)

    def add_to_history(self, history: Optional[List[Dict[str, Any]]], glb_path: Optional[str],
                       image: Optional[Image.Image], seed, pipeline_type: Optional[str],
                       request: gr.Request = None) -> Tuple[List[Dict[str, Any]], List[Tuple[str, str]]]:
        """Prepends the latest result to this session's history (at most :data:`HISTORY_SIZE` entries).

        Returns:
            ``(history, gallery items)`` with gallery items ``(thumbnail path, caption)``.
        """
        history = list(history or [])
        if glb_path:
            thumb = self.files.new_path(_session(request), "thumb", ".png")
            if image is not None:
                small = image.convert("RGB").copy()
                small.thumbnail((256, 256))
                small.save(thumb)
            else:
                Image.new("RGB", (64, 64)).save(thumb)
            n = history[0].get("n", 0) + 1 if history else 1
            history.insert(0, {"glb": glb_path, "thumb": str(thumb), "n": n,
                               "caption": f"#{n} · seed {seed} · {pipeline_type}"})
        history = history[:HISTORY_SIZE]
        return history, self.gallery_items(history)

    @staticmethod
    def gallery_items(history: Sequence[Dict[str, Any]]) -> List[Tuple[str, str]]:
        """Gallery value for a history list."""
        return [(h["thumb"], h["caption"]) for h in history]

    @staticmethod
    def pick_from_history(history: Optional[List[Dict[str, Any]]], evt: gr.SelectData) -> Tuple[str, str]:
        """The GLB of the clicked history entry, for the viewer and the download button."""
        history = history or []
        if evt is None or not (0 <= evt.index < len(history)):
            raise _user_error("That result is no longer in this session's history.")
        glb = history[evt.index]["glb"]
        if not Path(glb).exists():
            raise _user_error("That result's file was cleaned up; generate it again.")
        return glb, glb

    def end_session(self, request: gr.Request = None) -> None:
        """Removes a closed tab's output folder."""
        session = _session(request)
        if session:
            self.files.cleanup(session)
