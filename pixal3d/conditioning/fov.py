"""Horizontal field of view of an input image from MoGe-2 (PIXAL3D_SPEC §2.3, "inference, auto" row).

The reference runs ``Ruicheng/moge-2-vitl`` on the **preprocessed** square crop and reads its normalised intrinsics
``K`` (``K[0,0] = fx / W``): ``fov = 2·atan(W / (2·fx)) = 2·atan(1 / (2·K[0,0]))``. The camera distance then follows
from :func:`~pixal3d.conditioning.camera.distance_from_fov`.

MoGe-2 is an optional dependency (the ``moge`` package). Without it, or when its weights cannot be loaded,
:func:`estimate_fov` logs which default it uses (:data:`~pixal3d.conditioning.camera.DEFAULT_FOV`, ``2·atan(16/35)``)
and how to change that, and returns the default.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Optional

import numpy as np
import torch
from PIL import Image

from .camera import DEFAULT_FOV, MANUAL_FOV_HINT, fov_from_normalized_intrinsics

__all__ = ["estimate_fov", "load_moge", "MOGE_MODEL", "MoGeUnavailable"]

log = logging.getLogger(__name__)

#: The checkpoint the reference uses.
MOGE_MODEL = "Ruicheng/moge-2-vitl"


class MoGeUnavailable(RuntimeError):
    """MoGe-2 cannot be used (package missing or weights not loadable); the message says how to fix it."""


def load_moge(name: str = MOGE_MODEL, device: Optional[str] = None):
    """Loads MoGe-2 (``moge.model.v2.MoGeModel.from_pretrained(name)``) in eval mode.

    Raises:
        MoGeUnavailable: the ``moge`` package is missing, or the weights cannot be fetched/loaded.
    """
    try:
        from moge.model.v2 import MoGeModel  # optional dependency
    except ImportError as e:
        raise MoGeUnavailable(f"the MoGe-2 package is not installed ({e}); install it with "
                              "`pip install git+https://github.com/microsoft/MoGe.git`") from e
    try:
        model = MoGeModel.from_pretrained(name).eval()
    except Exception as e:  # noqa: BLE001 - hub/IO errors come in many types; all mean "unavailable"
        raise MoGeUnavailable(f"could not load MoGe-2 weights {name!r} ({type(e).__name__}: {e}); download them "
                              "while online or pass a local checkpoint") from e
    return model.to(device) if device is not None else model


def _image_tensor(image: Image.Image, device) -> torch.Tensor:
    """``[3, H, W]`` float32 in [0, 1] (what ``MoGeModel.infer`` takes)."""
    arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous().to(device)


def _model_device(model: Any) -> torch.device:
    params = getattr(model, "parameters", None)
    if callable(params):
        p = next(iter(params()), None)
        if p is not None:
            return p.device
    return torch.device("cpu")


@torch.no_grad()
def estimate_fov(image: Image.Image, model: Any = None, default: float = DEFAULT_FOV) -> float:
    """Horizontal FOV (radians) of ``image``, as the Pixal3D inference estimates it.

    Args:
        image: the preprocessed crop (PIL; any mode, converted to RGB).
        model: an object with ``infer(image[3, H, W] in [0, 1]) -> {'intrinsics': K [3, 3] normalised, ...}``
            (a loaded ``MoGeModel``). ``None`` loads :data:`MOGE_MODEL` when the ``moge`` package is installed.
        default: returned (with a log line saying so) when MoGe-2 is unavailable.

    Returns:
        ``2·atan(1 / (2·K[0,0]))`` from the model's normalised intrinsics, or ``default``.

    Raises:
        ValueError: the model's output has no usable ``intrinsics`` (wrong shape, non-positive or non-finite focal,
            or a FOV outside (0, π)).
    """
    if model is None:
        try:
            model = load_moge()
        except MoGeUnavailable as e:
            log.warning("FOV: %s. Using the default horizontal FOV %.4f rad (%.1f deg, 2*atan(16/35)); pass "
                        "--fov RAD to set it (try %.1f for near-orthographic product shots).", e, default,
                        math.degrees(default), MANUAL_FOV_HINT)
            return float(default)
    out = model.infer(_image_tensor(image, _model_device(model)))
    if not isinstance(out, dict) or "intrinsics" not in out:
        raise ValueError("the FOV model must return a dict with normalised 'intrinsics' [3, 3] (MoGe-2 infer output)")
    fov = fov_from_normalized_intrinsics(out["intrinsics"])
    if not (math.isfinite(fov) and 0.0 < fov < math.pi):
        raise ValueError(f"the FOV model returned intrinsics giving an invalid FOV {fov!r}")
    log.info("FOV: MoGe-2 estimate %.4f rad (%.1f deg)", fov, math.degrees(fov))
    return fov
