"""Learned background removal: a BiRefNet / RMBG-2.0 wrapper (TRELLIS2_SPEC §4.3 step 3, PIXAL3D_SPEC §6.2 step 1).

The released ``pipeline.json`` files name ``{"name": "BiRefNet", "args": {"model_name": "briaai/RMBG-2.0"}}``
(gated on the Hugging Face hub; the class default, also used by community forks, is ``ZhengPeng7/BiRefNet``). Both
are BiRefNet segmentation networks loaded through ``transformers`` with their own remote code:
``AutoModelForImageSegmentation.from_pretrained(name, trust_remote_code=True)``; that remote code needs extra packages
(``timm``, ``kornia``, ``einops``, ``torchvision``, depending on the revision).

Inference follows the reference: resize the RGB image to 1024x1024, scale to [0, 1], ImageNet normalisation,
``model(x)[-1].sigmoid()`` (the network returns a list of side outputs; the last is the finest), 8-bit mask, resize
the mask back to the image size with PIL's default resampling, ``putalpha``.

:func:`load_background_remover` turns a ``pipeline.json`` ``rembg_model`` entry into a :class:`BiRefNet`, raising
:class:`BackgroundRemoverUnavailable` with a message that says what failed and how to fix it.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image
from torch import nn

__all__ = ["BiRefNet", "BackgroundRemoverUnavailable", "load_background_remover", "DEFAULT_REMBG_MODEL",
           "REFERENCE_REMBG_MODEL", "REMBG_INPUT_SIZE", "IMAGENET_MEAN", "IMAGENET_STD"]

#: The class default of the reference wrapper (public, not gated).
DEFAULT_REMBG_MODEL = "ZhengPeng7/BiRefNet"
#: What the released ``pipeline.json`` files name (gated: accept the licence on the hub and log in first).
REFERENCE_REMBG_MODEL = "briaai/RMBG-2.0"
#: Square network input size.
REMBG_INPUT_SIZE = 1024
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Names accepted in ``pipeline.json``'s ``rembg_model.name`` (all BiRefNet-architecture checkpoints).
SUPPORTED_NAMES = ("BiRefNet", "RMBG", "RMBG2")


class BackgroundRemoverUnavailable(RuntimeError):
    """The learned background remover could not be built; the message says why and how to fix it."""


class BiRefNet:
    """Callable ``RGB PIL image -> RGBA PIL image`` (alpha = predicted foreground probability, 8 bit).

    Args:
        model_name: hub id or local folder of a BiRefNet checkpoint (used only when ``model`` is None).
        model: an already built segmentation module; ``model(x)`` with ``x`` ``[1, 3, 1024, 1024]`` (normalised)
            must return a sequence of logit maps whose last element is ``[1, 1, h, w]`` (any ``h, w``).
        input_size: the square network input size (1024 for the released checkpoints).

    Raises:
        BackgroundRemoverUnavailable: (only when ``model`` is None) ``transformers`` or a package the checkpoint's
            remote code needs is missing, the repo is gated or unreachable, or the checkpoint is not loadable.
    """

    def __init__(self, model_name: str = DEFAULT_REMBG_MODEL, model: Optional[nn.Module] = None,
                 input_size: int = REMBG_INPUT_SIZE):
        self.model_name = model_name
        self.input_size = int(input_size)
        if self.input_size <= 0:
            raise ValueError(f"input_size must be a positive pixel count, got {input_size!r}")
        self.model = (_load_segmentation_model(model_name) if model is None else model).eval()

    # ------------------------------------------------------------------ device handling
    def to(self, device: Union[str, torch.device]) -> "BiRefNet":
        """Moves the network (e.g. to the GPU only while it runs in low-VRAM mode); returns ``self``."""
        self.model.to(device)
        return self

    def cpu(self) -> "BiRefNet":
        return self.to("cpu")

    def cuda(self) -> "BiRefNet":
        return self.to("cuda")

    @property
    def device(self) -> torch.device:
        p = next(iter(self.model.parameters()), None)
        return p.device if p is not None else torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        p = next(iter(self.model.parameters()), None)
        return p.dtype if p is not None else torch.float32

    # ------------------------------------------------------------------ processing
    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """``[1, 3, S, S]`` float32 network input: RGB resized to ``S x S`` (bilinear), [0, 1], ImageNet normalised."""
        rgb = image.convert("RGB").resize((self.input_size, self.input_size), Image.BILINEAR)
        x = torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0).permute(2, 0, 1)
        mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(3, 1, 1)
        return ((x - mean) / std)[None]

    @staticmethod
    def postprocess(logits: torch.Tensor, size: Sequence[int]) -> Image.Image:
        """Finest logit map ``[1, 1, h, w]`` (or ``[h, w]``) -> 8-bit ``'L'`` mask of PIL ``size`` ``(W, H)``.

        ``sigmoid``, then ``x * 255`` truncated to uint8 (as ``ToPILImage`` does), then PIL's default resize.
        """
        prob = logits.detach().float().sigmoid().cpu().squeeze()
        if prob.dim() != 2:
            raise ValueError(f"expected a single-channel logit map [1, 1, h, w], got shape {tuple(logits.shape)}")
        mask = Image.fromarray((prob.numpy() * 255).astype(np.uint8), "L")
        return mask.resize(tuple(int(s) for s in size))

    @torch.no_grad()
    def predict_mask(self, image: Image.Image) -> Image.Image:
        """The ``'L'`` foreground mask of ``image`` at its own size."""
        x = self.preprocess(image).to(self.device, self.dtype)
        out = self.model(x)
        if isinstance(out, torch.Tensor):
            raise TypeError("the segmentation model must return a sequence of logit maps (BiRefNet returns a list of "
                            "side outputs, the last being the finest), got a single tensor")
        return self.postprocess(out[-1], image.size)

    def __call__(self, image: Image.Image) -> Image.Image:
        """Returns an RGBA copy of ``image`` (converted to RGB first) with the predicted mask as alpha."""
        rgb = image.convert("RGB")
        rgba = rgb.copy()
        rgba.putalpha(self.predict_mask(rgb))
        return rgba


def _fix_hint(model_name: str, err: BaseException) -> str:
    """A one-line suggestion matching the failure."""
    text = f"{type(err).__name__}: {err}".lower()
    if isinstance(err, ImportError) or "requires the following packages" in text or "no module named" in text:
        return ("install the packages the checkpoint's remote code imports (the error names them; typically "
                "`pip install timm kornia einops`, plus a torchvision matching your torch)")
    if "gated" in text or "401" in text or "403" in text or "access to model" in text or "restricted" in text:
        return (f"{model_name} is gated: accept its licence on https://huggingface.co/{model_name} and log in "
                f"(`hf auth login`), or use the public {DEFAULT_REMBG_MODEL} in pipeline.json's rembg_model")
    if any(k in text for k in ("connect", "offline", "resolve", "timed out", "timeout", "network", "cannot find the "
                                                                                                  "requested files")):
        return (f"the hub is unreachable and {model_name} is not in the local cache: download it once while online "
                f"(`hf download {model_name}`) or point rembg_model.args.model_name at a local folder")
    if model_name.startswith((".", "/", "~")) or model_name.count("/") > 1:
        import os
        if not os.path.exists(os.path.expanduser(model_name)):
            return f"the local folder {model_name!r} does not exist; pass an existing folder or a hub id"
    return (f"check that {model_name!r} is a BiRefNet checkpoint (hub id or local folder with config.json and its "
            "remote code)")


def _load_segmentation_model(model_name: str) -> nn.Module:
    """``AutoModelForImageSegmentation.from_pretrained(model_name, trust_remote_code=True)`` in float32, eval mode.

    Raises:
        BackgroundRemoverUnavailable: with the underlying error and a fix.
    """
    try:
        from transformers import AutoModelForImageSegmentation
    except ImportError as e:
        raise BackgroundRemoverUnavailable(
            f"cannot load background remover {model_name!r}: transformers is not installed ({e}); "
            "`pip install transformers`") from e
    try:
        model = AutoModelForImageSegmentation.from_pretrained(model_name, trust_remote_code=True)
    except Exception as e:  # noqa: BLE001 - hub/remote-code failures come in many types; all mean "unavailable"
        raise BackgroundRemoverUnavailable(
            f"cannot load background remover {model_name!r} ({type(e).__name__}: {e}); fix: "
            f"{_fix_hint(model_name, e)}") from e
    return model.float().eval()


def load_background_remover(spec: Optional[Dict[str, Any]]) -> BiRefNet:
    """Builds the remover a ``pipeline.json`` ``rembg_model`` entry names (``{"name": "BiRefNet", "args": {...}}``).

    Args:
        spec: the entry; ``None`` or a missing ``model_name`` means :data:`DEFAULT_REMBG_MODEL`.

    Raises:
        BackgroundRemoverUnavailable: unsupported ``name`` or a loading failure (the message names the fix).
    """
    spec = dict(spec or {})
    name = spec.get("name", "BiRefNet")
    if name not in SUPPORTED_NAMES:
        raise BackgroundRemoverUnavailable(
            f"unsupported rembg_model name {name!r} in pipeline.json; supported: {', '.join(SUPPORTED_NAMES)} "
            "(BiRefNet-architecture checkpoints such as briaai/RMBG-2.0 or ZhengPeng7/BiRefNet)")
    args = dict(spec.get("args", {}))
    model_name = args.pop("model_name", DEFAULT_REMBG_MODEL)
    unknown = set(args) - {"input_size"}
    if unknown:
        raise BackgroundRemoverUnavailable(f"unsupported rembg_model args {sorted(unknown)} in pipeline.json; "
                                           "BiRefNet takes model_name and input_size")
    return BiRefNet(model_name=model_name, **args)
