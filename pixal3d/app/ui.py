"""The Gradio page of the web demo and its named API endpoints.

Endpoints (usable with ``gradio_client``; the page's "Use via API" link lists them with types):

* ``/preprocess(image) -> image``: cut-out, square crop, black background (what the model sees).
* ``/generate(image, seed, randomize_seed, pipeline_type, fov_mode, fov_degrees, ss_steps, ss_guidance,
  shape_steps, shape_guidance, tex_steps, tex_guidance, low_vram) -> (generation .npz, seed used, status)``:
  ``image`` is the output of ``/preprocess``.
* ``/extract_glb(generation, decimation_target, texture_size) -> (glb, glb)``: bakes the textured GLB.

Generation and export run through Gradio's queue, one job at a time each (one GPU), and waiting users see their
position in the queue.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence

import gradio as gr
from PIL import UnidentifiedImageError

from ..conditioning.camera import DEFAULT_FOV, MANUAL_FOV_HINT
from .backend import DemoBackend

__all__ = ["build_demo", "ImageUpload", "TEXTURE_SIZES"]

TEXTURE_SIZES = [512, 1024, 2048, 4096]
MANUAL_FOV_DEFAULT_DEG = round(math.degrees(MANUAL_FOV_HINT), 1)  # the official app's manual default

INTRO = """# Pixal3D · image to 3D
1. **Upload** a picture of one object, or click an example. A cut-out with a transparent background works best;
   otherwise the background is removed automatically. Check the **cut-out preview**: it is exactly what the model sees.
2. Choose a **resolution** and press **Generate**. The result appears in the 3D viewer (drag to orbit, scroll to zoom)
   and can be downloaded as a **GLB** with PBR materials (base colour, metallic, roughness).
"""

CSS = """
#pixal3d-generate {min-height: 52px; font-size: 1.1em}
#pixal3d-status {min-height: 2.5em}
#pixal3d-history .grid-container {grid-template-columns: repeat(4, minmax(0, 1fr)) !important}
"""


class ImageUpload(gr.Image):
    """``gr.Image`` that rejects non-images and oversized files with a readable message.

    Plain ``gr.Image`` decodes the upload before any event handler runs, so a renamed text file would only produce a
    generic error; this checks the file first through :meth:`DemoBackend.check_upload`. It renders with the standard
    image component.
    """

    #: set after construction (the constructor keeps :class:`gradio.Image`'s signature, which Gradio reads to build
    #: the browser-side configuration)
    backend: Optional[DemoBackend] = None

    def get_block_name(self) -> str:
        """Use the stock image widget in the browser."""
        return "image"

    def preprocess(self, payload):
        """Validates then decodes the upload (see :class:`gradio.Image`)."""
        if payload is None:
            return None
        if payload.path is not None and self.backend is not None:
            self.backend.check_upload(payload.path, name=payload.orig_name)
        try:
            return super().preprocess(payload)
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
            raise gr.Error(f"'{Path(payload.orig_name or payload.path or 'upload').name}' is not a readable image. "
                           "Upload a PNG, JPEG or WebP image.", print_exception=False) from None


def build_demo(backend: DemoBackend, *, model_name: str, device: str, examples: Sequence[str] = (),
               low_vram: bool = False) -> gr.Blocks:
    """Builds the page.

    Args:
        backend: the handlers around the loaded pipeline.
        model_name: shown in the header (folder or hub id).
        device: shown in the header.
        examples: image paths offered as clickable examples.
        low_vram: initial state of the low-VRAM checkbox.
    """
    types = backend.pipeline_types()
    with gr.Blocks(title="Pixal3D · image to 3D", delete_cache=(1800, 6 * 3600), analytics_enabled=False) as demo:
        gr.Markdown(INTRO)
        gr.Markdown(f"Model: `{model_name}` · device: `{device}`", elem_id="pixal3d-model-info")
        history = gr.State([])
        with gr.Row(equal_height=False):
            with gr.Column(scale=5):
                with gr.Row():
                    image_in = ImageUpload(label="Input image", type="filepath", image_mode=None, height=300,
                                           sources=["upload", "clipboard"], elem_id="pixal3d-input")
                    image_in.backend = backend
                    prepared = gr.Image(label="Cut-out preview (what the model sees)", type="pil", format="png",
                                        image_mode="RGB", interactive=False, height=300, elem_id="pixal3d-prepared")
                if examples:
                    gr.Examples(examples=[[str(p)] for p in examples], inputs=[image_in], outputs=[prepared],
                                # a lambda, so that this hidden event does not take the name /preprocess
                                fn=lambda path: backend.preprocess(path), run_on_click=True, cache_examples=False,
                                label="Examples", examples_per_page=8, api_visibility="private",
                                elem_id="pixal3d-examples")
                pipeline_type = gr.Radio(types, value=backend.default_pipeline_type(), label="Resolution",
                                         info="Higher resolutions take longer and need more GPU memory.",
                                         elem_id="pixal3d-resolution")
                with gr.Row():
                    seed = gr.Number(42, label="Seed", precision=0, minimum=0, maximum=2 ** 31 - 1,
                                     elem_id="pixal3d-seed")
                    randomize = gr.Checkbox(False, label="Random seed each time",
                                            info="The seed used is shown after generating.")
                with gr.Row():
                    fov_mode = gr.Radio(["Auto", "Manual"], value="Auto", label="Camera field of view",
                                        info=f"Auto: estimated with MoGe-2 when installed, else "
                                             f"{math.degrees(DEFAULT_FOV):.0f}°.", visible=backend.pixal3d)
                    fov_deg = gr.Slider(1, 120, value=MANUAL_FOV_DEFAULT_DEG, step=0.5, label="Manual FOV (degrees)",
                                        info="~10° for product shots and renders, ~50° for phone photos.",
                                        interactive=False, visible=backend.pixal3d)
                with gr.Accordion("Advanced sampler settings", open=False):
                    gr.Markdown("Defaults come from the model's `pipeline.json`. More steps: slower, a little "
                                "cleaner. Higher guidance: follows the image more closely, can over-saturate.")
                    stage_inputs = []
                    for stage, title in (("sparse_structure", "Sparse structure"), ("shape_slat", "Shape"),
                                         ("tex_slat", "Texture")):
                        steps0, guidance0 = backend.sampler_default(stage)
                        with gr.Row():
                            stage_inputs.append(gr.Slider(1, 50, value=steps0, step=1, label=f"{title} steps"))
                            stage_inputs.append(gr.Slider(0.0, 15.0, value=guidance0, step=0.1,
                                                          label=f"{title} guidance"))
                with gr.Accordion("GLB export", open=False):
                    with gr.Row():
                        texture_size = gr.Dropdown(TEXTURE_SIZES, value=2048, label="Texture size (px)",
                                                   elem_id="pixal3d-texture-size")
                        face_budget = gr.Slider(10_000, 1_000_000, value=500_000, step=10_000,
                                                label="Face budget", info="The GLB is simplified to at most this "
                                                                          "many triangles.")
                    reexport = gr.Button("Re-export GLB with these settings", size="sm")
                low_vram_box = gr.Checkbox(low_vram, label="Low-VRAM mode",
                                           info="Keep models in CPU memory and move each to the GPU for its stage "
                                                "(slower, for GPUs under ~24 GB)." if backend.low_vram_available()
                                           else "Only matters on a GPU (this server runs on the CPU).",
                                           interactive=backend.low_vram_available())
                generate_btn = gr.Button("Generate 3D model", variant="primary", elem_id="pixal3d-generate")
            with gr.Column(scale=6):
                viewer = gr.Model3D(label="3D result (drag to orbit, scroll to zoom)", height=480, interactive=False,
                                    clear_color=(0.16, 0.16, 0.18, 1.0), elem_id="pixal3d-viewer")
                download = gr.DownloadButton("Download GLB", value=None, interactive=False, variant="primary",
                                             elem_id="pixal3d-download")
                status = gr.Markdown("", label="status", elem_id="pixal3d-status")
                gallery = gr.Gallery(label="This session's results (click to view again)", columns=4, rows=1,
                                     height=170, object_fit="contain", allow_preview=False,
                                     elem_id="pixal3d-history")
                generation = gr.File(label="Generation (.npz)", visible=False)
        gr.Markdown(f"Files are kept only for this browser session. Uploads: PNG, JPEG or WebP up to "
                    f"{backend.max_upload_mb:g} MB. API: see *Use via API* below (`/preprocess`, `/generate`, "
                    f"`/extract_glb`).")

        # ------------------------------------------------------------------ events
        image_in.upload(backend.preprocess, inputs=[image_in], outputs=[prepared], api_name="preprocess",
                        concurrency_id="preprocess", concurrency_limit=2)
        image_in.clear(lambda: None, outputs=[prepared], queue=False, api_visibility="private")
        fov_mode.change(lambda mode: gr.Slider(interactive=mode == "Manual"), inputs=[fov_mode], outputs=[fov_deg],
                        queue=False, api_visibility="private")
        gen_inputs = [prepared, seed, randomize, pipeline_type, fov_mode, fov_deg, *stage_inputs, low_vram_box]
        export_inputs = [generation, face_budget, texture_size]
        (generate_btn.click(lambda: (gr.Button(interactive=False), gr.DownloadButton(interactive=False)),
                            outputs=[generate_btn, download], queue=False, api_visibility="private")
         .then(backend.generate, inputs=gen_inputs, outputs=[generation, seed, status], api_name="generate",
               concurrency_id="gpu", concurrency_limit=1, show_progress_on=[viewer])
         .success(backend.extract_glb, inputs=export_inputs, outputs=[viewer, download], api_name="extract_glb",
                  concurrency_id="export", concurrency_limit=1)
         .success(backend.add_to_history, inputs=[history, viewer, prepared, seed, pipeline_type],
                  outputs=[history, gallery], api_visibility="private")
         .then(lambda path: (gr.Button(interactive=True), gr.DownloadButton(interactive=path is not None)),
               inputs=[viewer], outputs=[generate_btn, download], queue=False, api_visibility="private"))
        reexport.click(backend.extract_glb, inputs=export_inputs, outputs=[viewer, download],
                       concurrency_id="export", api_visibility="private").success(
            backend.add_to_history, inputs=[history, viewer, prepared, seed, pipeline_type],
            outputs=[history, gallery], api_visibility="private")
        gallery.select(backend.pick_from_history, inputs=[history], outputs=[viewer, download],
                       api_visibility="private")
        demo.unload(backend.end_session)
    return demo


def launch_kwargs(host: str, port: Optional[int], share: bool, max_upload_mb: float, allowed: Sequence[str]) -> dict:
    """Arguments for ``demo.launch`` shared by ``app.py`` and the tests."""
    return dict(server_name=host, server_port=port, share=share, max_file_size=f"{int(max_upload_mb)}mb",
                allowed_paths=[str(p) for p in allowed], css=CSS, show_error=True)
