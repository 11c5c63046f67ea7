"""Per-session temporary folders for the web demo's outputs.

Every browser tab (and every ``gradio_client`` connection) has a Gradio ``session_hash``; its outputs go to
``<root>/<session_hash>/``. Folders are removed when the tab closes (``demo.unload``), when they have been idle longer
than ``max_age_s`` (swept on each new output), and all together when the app exits. The root is created by the app
in the system temporary directory: users never choose where files are written.
"""
from __future__ import annotations

import atexit
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional

__all__ = ["SessionFiles"]

_SAFE = re.compile(r"[^A-Za-z0-9_-]")


class SessionFiles:
    """Owns one temporary root folder with one sub-folder per session.

    Args:
        root: an existing folder to use (tests); default: a fresh ``tempfile.mkdtemp(prefix="pixal3d-app-")``.
        max_age_s: session folders untouched for longer than this are removed by :meth:`sweep`.
        cleanup_at_exit: remove the whole root when the interpreter exits.
    """

    def __init__(self, root: Optional[Path] = None, max_age_s: float = 6 * 3600, cleanup_at_exit: bool = True):
        self.root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="pixal3d-app-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_age_s = float(max_age_s)
        self._lock = threading.Lock()
        self._counter = 0
        if cleanup_at_exit:
            atexit.register(self.cleanup_all)

    def folder(self, session_hash: Optional[str]) -> Path:
        """The (created) folder of one session; a missing hash (direct Python calls) maps to ``_local``."""
        name = _SAFE.sub("_", session_hash or "")[:64] or "_local"
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        path.touch()  # refresh the mtime used by sweep()
        return path

    def new_path(self, session_hash: Optional[str], stem: str, suffix: str) -> Path:
        """A fresh, unused file path in the session's folder: ``<stem>_<n><suffix>`` (``stem`` is sanitised)."""
        with self._lock:
            self._counter += 1
            n = self._counter
        stem = _SAFE.sub("_", stem)[:48] or "file"
        return self.folder(session_hash) / f"{stem}_{n:04d}{suffix}"

    def cleanup(self, session_hash: Optional[str]) -> None:
        """Removes one session's folder (called when its tab closes)."""
        name = _SAFE.sub("_", session_hash or "")[:64] or "_local"
        shutil.rmtree(self.root / name, ignore_errors=True)

    def sweep(self, now: Optional[float] = None) -> int:
        """Removes session folders idle for more than ``max_age_s``; returns how many were removed."""
        now = time.time() if now is None else now
        removed = 0
        for sub in list(self.root.iterdir()) if self.root.exists() else []:
            try:
                idle = now - sub.stat().st_mtime
            except FileNotFoundError:
                continue
            if sub.is_dir() and idle > self.max_age_s:
                shutil.rmtree(sub, ignore_errors=True)
                removed += 1
        return removed

    def cleanup_all(self) -> None:
        """Removes the whole root folder (at exit)."""
        shutil.rmtree(self.root, ignore_errors=True)
