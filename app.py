"""Pixal3D web demo: upload an image, check the cut-out, generate, orbit the result and download the GLB.

    python app.py --model DIR|HUB_ID [--low_vram] [--pipeline pixal3d|trellis2] [--host 127.0.0.1] [--port 7860]
        [--share] [--device cpu|cuda] [--max_upload_mb 20]

Then open the printed URL. ``--model`` defaults to the embedded demo model (``assets/models/pixal3d-demo``) once the
checkout has it. The page's "Use via API" link documents the ``/preprocess``, ``/generate`` and ``/extract_glb``
endpoints for ``gradio_client``. Outputs live in a temporary folder per browser session, removed when the tab closes
and when the app exits.
"""
from __future__ import annotations

import argparse
import atexit
import logging
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent
DEMO_MODEL = REPO / "assets" / "models" / "pixal3d-demo"
EXAMPLES_DIR = REPO / "assets" / "images"
log = logging.getLogger("pixal3d.app")


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line options of the demo."""
    ap = argparse.ArgumentParser(description="Pixal3D web demo (Gradio): one image in, a PBR-textured GLB out.")
    ap.add_argument("--model", default=None,
                    help="pipeline folder or hub id (default: the embedded demo model, assets/models/pixal3d-demo)")
    ap.add_argument("--pipeline", choices=["pixal3d", "trellis2"], default="pixal3d",
                    help="conditioning family of the weights (default: pixal3d)")
    ap.add_argument("--low_vram", action="store_true",
                    help="start in low-VRAM mode: models wait in CPU memory and move to the GPU for their stage")
    ap.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when available")
    ap.add_argument("--host", default="127.0.0.1",
                    help="address to listen on (default 127.0.0.1; 0.0.0.0 makes it reachable from the network)")
    ap.add_argument("--port", type=int, default=None, help="port (default: 7860, or the next free one)")
    ap.add_argument("--share", action="store_true", help="also create a temporary public gradio.live link")
    ap.add_argument("--max_upload_mb", type=float, default=20.0, help="largest accepted upload (default 20 MB)")
    return ap.parse_args(argv)


def _workdir() -> Path:
    """A fresh temporary folder for this run (sessions' outputs and Gradio's cache), removed at exit."""
    base = Path(tempfile.mkdtemp(prefix="pixal3d-app-"))
    atexit.register(shutil.rmtree, base, True)
    return base


def main(argv=None) -> int:
    """Loads the model, builds the page and serves it until interrupted; returns a process exit code."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # never phone home
    if args.model is None and not DEMO_MODEL.exists():
        print("error: the embedded demo model is not in this checkout yet (assets/models/pixal3d-demo).\n"
              "Pass --model with a pipeline folder or hub id, e.g. --model TencentARC/Pixal3D (official weights), "
              "or make a random-weight folder to try the interface:\n"
              "  python -m pixal3d.pipelines.random_pipeline /tmp/pixal3d-random && "
              "python app.py --model /tmp/pixal3d-random", file=sys.stderr)
        return 2
    model = args.model or str(DEMO_MODEL)
    try:
        import gradio  # noqa: F401
    except ImportError:
        print("error: the web demo needs Gradio: pip install gradio", file=sys.stderr)
        return 2
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA device is available; use --device cpu", file=sys.stderr)
        return 2
    base = _workdir()
    os.environ.setdefault("GRADIO_TEMP_DIR", str(base / "gradio"))  # uploads and served copies, removed at exit

    from pixal3d.app.backend import DemoBackend
    from pixal3d.app.session import SessionFiles
    from pixal3d.app.ui import build_demo, launch_kwargs
    from pixal3d.pipelines.image_to_3d import Pixal3DImageTo3DPipeline, Trellis2ImageTo3DPipeline

    cls = Pixal3DImageTo3DPipeline if args.pipeline == "pixal3d" else Trellis2ImageTo3DPipeline
    try:
        pipe = cls.from_pretrained(model, device=device, low_vram=args.low_vram,
                                   dtype=torch.float32 if device == "cpu" else None)
    except (FileNotFoundError, ValueError, KeyError, OSError) as e:
        print(f"error: could not load the model {model!r}: {e}", file=sys.stderr)
        return 2
    if not pipe.available_pipeline_types():
        print(f"error: {model!r} has no complete set of flow models (no pipeline type can run)", file=sys.stderr)
        return 2
    backend = DemoBackend(pipe, SessionFiles(base / "sessions", cleanup_at_exit=False),
                          pixal3d=args.pipeline == "pixal3d", max_upload_mb=args.max_upload_mb)
    examples = sorted(p for p in EXAMPLES_DIR.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp")) \
        if EXAMPLES_DIR.is_dir() else []
    demo = build_demo(backend, model_name=model, device=device, examples=examples, low_vram=args.low_vram)
    # One generation at a time (one GPU); everyone else waits in the queue and sees their position.
    demo.queue(default_concurrency_limit=1, max_size=64)
    # SIGTERM (service managers, `kill`) exits like Ctrl+C, so the temporary folder is removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    demo.launch(**launch_kwargs(args.host, args.port, args.share, args.max_upload_mb, [EXAMPLES_DIR]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
