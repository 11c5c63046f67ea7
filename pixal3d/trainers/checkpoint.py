"""Checkpoint files of a training run (TRELLIS2_SPEC §5.2): names, atomic writes, finding the latest step.

Layout under ``{output_dir}/ckpts/``: ``{model}_step{step:07d}.pt``, ``{model}_ema{rate}_step{step:07d}.pt``,
``misc_step{step:07d}.pt``. The misc file is written LAST, so its presence marks a complete checkpoint; a run killed
while saving leaves no misc file for that step and ``latest_step`` picks the previous one.
"""
import os
import re
import tempfile
from pathlib import Path
from typing import Optional

import torch

__all__ = ["atomic_save", "latest_step", "model_ckpt_path", "ema_ckpt_path", "misc_ckpt_path"]

_MISC = re.compile(r"^misc_step(\d{7,})\.pt$")


def atomic_save(obj, path) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then ``os.replace`` onto ``path``.

    A crash at any point leaves either the previous file or the complete new one, never a truncated file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def model_ckpt_path(ckpt_dir, name: str, step: int) -> Path:
    """``{ckpt_dir}/{name}_step{step:07d}.pt``."""
    return Path(ckpt_dir) / f"{name}_step{step:07d}.pt"


def ema_ckpt_path(ckpt_dir, name: str, rate: float, step: int) -> Path:
    """``{ckpt_dir}/{name}_ema{rate}_step{step:07d}.pt`` (rate printed with ``str``, e.g. ``0.9999``)."""
    return Path(ckpt_dir) / f"{name}_ema{rate}_step{step:07d}.pt"


def misc_ckpt_path(ckpt_dir, step: int) -> Path:
    """``{ckpt_dir}/misc_step{step:07d}.pt``."""
    return Path(ckpt_dir) / f"misc_step{step:07d}.pt"


def latest_step(ckpt_dir) -> Optional[int]:
    """Largest step with a ``misc_step*.pt`` file in ``ckpt_dir`` (None when there is none)."""
    d = Path(ckpt_dir)
    if not d.is_dir():
        return None
    steps = [int(m.group(1)) for p in d.iterdir() if (m := _MISC.match(p.name))]
    return max(steps) if steps else None
