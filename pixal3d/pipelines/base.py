"""Loading a pipeline folder: ``pipeline.json`` + the checkpoints it names (TRELLIS2_SPEC §4.2, PIXAL3D_SPEC §6.1).

A pipeline folder is either a local directory or a Hugging Face repo id (``TencentARC/Pixal3D``,
``microsoft/TRELLIS.2-4B``). ``pipeline.json`` is ``{"name": ..., "args": {"models": {key: ckpt_path}, ...}}``;
each model path is tried as ``{folder}/{path}`` first and then as a full path (a local stem or a hub path such as
``microsoft/TRELLIS-image-large/ckpts/ss_dec_conv3d_16l8_fp16``), as the reference does.
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterable, Optional

import torch
from torch import nn

__all__ = ["PipelineFolder", "resolve_pipeline_folder", "load_pipeline_json", "ModelHolder"]


def _is_local(path: str) -> bool:
    return os.path.exists(path)


def resolve_pipeline_folder(path: str, config_file: str = "pipeline.json") -> Path:
    """Returns a local folder holding ``config_file``: ``path`` itself, or a hub snapshot of it.

    Raises:
        FileNotFoundError: a local folder without ``config_file``, or a hub id that cannot be fetched (offline,
            missing ``huggingface_hub``, unknown repo); the message says what to pass instead.
    """
    p = Path(path)
    if p.is_dir():
        if not (p / config_file).exists():
            raise FileNotFoundError(f"{p} has no {config_file}; a pipeline folder needs {config_file} next to its "
                                    "ckpts/ (see docs/MODELS.md)")
        return p
    if p.exists():
        raise FileNotFoundError(f"{p} is a file, not a pipeline folder (expected a directory with {config_file})")
    if str(path).count("/") != 1:
        raise FileNotFoundError(f"pipeline folder {path!r} does not exist (a hub id looks like 'owner/repo')")
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise FileNotFoundError(f"{path!r} is not a local folder and huggingface_hub is not installed; "
                                "`pip install huggingface_hub` or pass a local folder") from e
    try:
        cfg = hf_hub_download(path, config_file)
    except Exception as e:  # noqa: BLE001 - the hub raises many types; all mean "not available"
        raise FileNotFoundError(f"could not fetch {config_file} of {path!r} from the Hugging Face hub ({e}); "
                                "download the repo and pass its local folder instead") from e
    return Path(cfg).parent


def load_pipeline_json(folder: Path, config_file: str = "pipeline.json") -> dict:
    """Reads and minimally validates ``pipeline.json``.

    Raises:
        ValueError: invalid JSON or missing ``args.models``.
    """
    try:
        cfg = json.loads((folder / config_file).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{folder / config_file} is not valid JSON: {e}") from e
    args = cfg.get("args", cfg)
    if "models" not in args or not isinstance(args["models"], dict):
        raise ValueError(f"{folder / config_file} has no 'args.models' mapping of model keys to checkpoint paths")
    return cfg


def resolve_model_path(folder: Path, ckpt: str) -> str:
    """``{folder}/{ckpt}`` when its ``.json`` exists locally, else ``ckpt`` as given (local stem or hub path)."""
    local = folder / ckpt
    if Path(str(local) + ".json").exists():
        return str(local)
    return ckpt


class PipelineFolder:
    """A resolved pipeline folder and its parsed ``pipeline.json``."""

    def __init__(self, path: str, config_file: str = "pipeline.json"):
        self.folder = resolve_pipeline_folder(path, config_file)
        self.config = load_pipeline_json(self.folder, config_file)
        self.args = self.config.get("args", self.config)

    def load_models(self, keys: Iterable[str], dtype: Optional[torch.dtype] = None) -> Dict[str, nn.Module]:
        """Loads the checkpoints of ``keys`` that ``pipeline.json`` lists (others are skipped, like the reference).

        Raises:
            FileNotFoundError / ValueError: from ``from_pretrained``, naming the checkpoint and what is wrong.
        """
        from ..models.pretrained import from_pretrained

        models = {}
        for key in keys:
            if key not in self.args["models"]:
                continue
            path = resolve_model_path(self.folder, self.args["models"][key])
            kwargs = {} if dtype is None else {"dtype": dtype}
            models[key] = from_pretrained(path, **kwargs).eval()
        return models


class ModelHolder:
    """Keeps models on ``storage`` and moves each to ``device`` only while it runs (low-VRAM mode, §6.4)."""

    def __init__(self, models: Dict[str, nn.Module], device: torch.device, low_vram: bool):
        self.models = models
        self.device = torch.device(device)
        self.low_vram = bool(low_vram) and self.device.type == "cuda"
        storage = torch.device("cpu") if self.low_vram else self.device
        for m in models.values():
            m.to(storage)

    def __contains__(self, key: str) -> bool:
        return key in self.models

    def __getitem__(self, key: str) -> nn.Module:
        return self.models[key]

    @contextmanager
    def use(self, key: str):
        """Context manager yielding model ``key`` on the compute device (moved back afterwards in low-VRAM mode)."""
        if key not in self.models:
            raise KeyError(f"this pipeline has no {key!r} model; loaded: {', '.join(sorted(self.models))}")
        model = self.models[key]
        if self.low_vram:
            model.to(self.device)
        try:
            yield model
        finally:
            if self.low_vram:
                model.to("cpu")
                torch.cuda.empty_cache()
