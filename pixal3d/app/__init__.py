"""The Gradio web demo (``python app.py``): image upload -> cut-out preview -> generation -> GLB viewer/download.

Modules: :mod:`.session` (per-session temporary folders), :mod:`.state` (the ``.npz`` hand-over between
``/generate`` and ``/extract_glb``), :mod:`.backend` (the handlers, UI-independent), :mod:`.ui` (the Gradio Blocks).
Gradio is imported only by :mod:`.ui` and :mod:`.backend`, so the rest of the package never needs it.
"""
