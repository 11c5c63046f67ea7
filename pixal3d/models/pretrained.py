"""Loading and saving checkpoints in the released ``name.json`` + ``name.safetensors`` format (TRELLIS2_SPEC §2).

``from_pretrained`` builds the model on the ``meta`` device (no random init, no memory), checks the file's keys and
shapes against the model strictly, then materialises the parameters straight from the file in the model's dtypes
(``load_state_dict(assign=True)``) and recomputes buffers the file lacks (``rope_phases``). ``save_pretrained`` writes
the pair back; a save/load round trip is bit-exact.

Unlike the reference loader (``strict=False``), a mismatch is an error by default. The TRELLIS.2 → Pixal3D
cross-attention key rename (PIXAL3D_SPEC §4.7) is available as the explicit :func:`remap_cross_attn_keys`.
"""
import inspect
import json
import os
from pathlib import Path
from typing import Dict, Tuple, Union

import torch
import torch.nn as nn

from pixal3d.modules.utils import str_to_dtype

from .base import jsonable_args

__all__ = ["from_pretrained", "save_pretrained", "resolve_checkpoint", "remap_cross_attn_keys",
           "load_state_dict_checked", "StateDictMismatchError"]


class StateDictMismatchError(RuntimeError):
    """A checkpoint whose keys or shapes do not match the model (the message lists every problem)."""


def resolve_checkpoint(path: Union[str, os.PathLike]) -> Tuple[Path, Path]:
    """Finds ``(json_path, safetensors_path)`` for a checkpoint stem.

    ``path`` is a local stem (``dir/name`` → ``dir/name.json`` + ``dir/name.safetensors``) or a Hugging Face path
    ``owner/repo/sub/path`` (downloaded with ``huggingface_hub.hf_hub_download``, imported only then).

    Raises:
        FileNotFoundError: no local files and the path cannot be a hub path (fewer than 3 components).
        ImportError: a hub path but ``huggingface_hub`` is not installed.
    """
    stem = str(path)
    for suffix in (".json", ".safetensors"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
    local_json, local_st = Path(stem + ".json"), Path(stem + ".safetensors")
    if local_json.exists() and local_st.exists():
        return local_json, local_st
    parts = stem.replace("\\", "/").split("/")
    if local_json.exists() or local_st.exists() or len(parts) < 3 or os.path.isabs(stem):
        raise FileNotFoundError(f"checkpoint {stem!r} needs both {local_json} and {local_st} (local), or a "
                                f"Hugging Face path 'owner/repo/sub/path'")
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as e:
        raise ImportError(f"{stem!r} is not a local checkpoint, and loading it from the Hugging Face Hub needs the "
                          f"'huggingface_hub' package (pip install huggingface_hub)") from e
    repo_id, sub = "/".join(parts[:2]), "/".join(parts[2:])
    return (Path(hf_hub_download(repo_id, sub + ".json")), Path(hf_hub_download(repo_id, sub + ".safetensors")))


def _expected_entries(model: nn.Module) -> Dict[str, torch.Tensor]:
    return dict(model.state_dict(keep_vars=True))


def _compare(model: nn.Module, shapes: Dict[str, Tuple[int, ...]]):
    expected = _expected_entries(model)
    optional = {k for k in expected if k.rsplit(".", 1)[-1] in getattr(model, "_derived_buffers", ())}
    missing = sorted(k for k in expected if k not in shapes and k not in optional)
    unexpected = sorted(k for k in shapes if k not in expected)
    mismatched = sorted(f"{k}: file {tuple(shapes[k])} vs model {tuple(expected[k].shape)}"
                        for k in shapes if k in expected and k not in optional
                        and tuple(shapes[k]) != tuple(expected[k].shape))
    return missing, unexpected, mismatched


def _mismatch_message(name: str, missing, unexpected, mismatched) -> str:
    lines = [f"checkpoint does not match {name}:"]
    for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched)):
        if items:
            shown = items if len(items) <= 40 else items[:40] + [f"... and {len(items) - 40} more"]
            lines.append(f"  {title} ({len(items)}): " + ", ".join(shown))
    if any(".cross_attn." in k for k in missing + unexpected):
        lines.append("  (TRELLIS.2 cross-attention weights in a Pixal3D proj model? see remap_cross_attn_keys)")
    return "\n".join(lines)


def load_state_dict_checked(model: nn.Module, state_dict: Dict[str, torch.Tensor], strict: bool = True,
                            assign: bool = False) -> None:
    """``load_state_dict`` that, when ``strict``, raises one :class:`StateDictMismatchError` listing every missing
    key, unexpected key and shape mismatch. Buffers in ``model._derived_buffers`` may be absent. Tensors are cast to
    the dtype of the model entry they replace (so a float32 file fills a bfloat16 torso).

    With ``strict=False`` only matching keys with matching shapes are loaded (others are skipped).
    """
    missing, unexpected, mismatched = _compare(model, {k: tuple(v.shape) for k, v in state_dict.items()})
    if strict and (missing or unexpected or mismatched):
        raise StateDictMismatchError(_mismatch_message(type(model).__name__, missing, unexpected, mismatched))
    expected = _expected_entries(model)
    bad = {m.split(":")[0] for m in mismatched}
    sd = {}
    for k, v in state_dict.items():
        if k not in expected or k in bad:
            continue
        ref = expected[k]
        if v.is_floating_point() and ref.is_floating_point():
            v = v.to(ref.dtype)
        sd[k] = v
    result = model.load_state_dict(sd, strict=False, assign=assign)
    leftover = [k for k in result.missing_keys if k in sd]
    if leftover:
        raise StateDictMismatchError(f"keys present but not loaded: {leftover}")


def _read_state_dict(st_path: Path, model: nn.Module, device) -> Dict[str, torch.Tensor]:
    """Reads tensors one at a time, casting each to its model dtype on ``device`` to bound peak memory."""
    from safetensors import safe_open
    expected = _expected_entries(model)
    out = {}
    with safe_open(str(st_path), framework="pt", device="cpu") as f:
        for k in f.keys():
            v = f.get_tensor(k)
            ref = expected.get(k)
            dtype = ref.dtype if ref is not None and v.is_floating_point() and ref.is_floating_point() else v.dtype
            out[k] = v.to(device=device, dtype=dtype)
    return out


def _shapes_in_file(st_path: Path) -> Dict[str, Tuple[int, ...]]:
    from safetensors import safe_open
    with safe_open(str(st_path), framework="pt", device="cpu") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


def _apply_dtype(cls, args: dict, dtype) -> dict:
    params = inspect.signature(cls.__init__).parameters
    if "dtype" in params:
        return {**args, "dtype": str(str_to_dtype(dtype)).replace("torch.", "")}
    if "use_fp16" in params and str_to_dtype(dtype) in (torch.float16, torch.float32):
        return {**args, "use_fp16": str_to_dtype(dtype) == torch.float16}
    raise ValueError(f"{cls.__name__} has no 'dtype' argument; cannot load it as {dtype}")


def from_pretrained(path: Union[str, os.PathLike], *, strict: bool = True, dtype=None,
                    device: Union[str, torch.device] = "cpu") -> nn.Module:
    """Loads a released checkpoint (``name.json`` + ``name.safetensors``).

    Args:
        path: local stem ``dir/name`` or hub path ``owner/repo/sub/path`` (see :func:`resolve_checkpoint`).
        strict: raise :class:`StateDictMismatchError` (listing all problems) on missing/unexpected keys or shape
            mismatches; with ``strict=False`` mismatching entries are skipped and keep their meta-built values only
            if none remain on ``meta`` (otherwise an error is raised).
        dtype: torso dtype overriding the config's ``dtype`` (``'float32'``, ``'float16'``, ``'bfloat16'``); norms,
            embedders and globals stay float32 as the model's ``convert_to`` defines.
        device: where the parameters are materialised.

    Returns:
        The model in ``eval()`` mode.

    Raises:
        FileNotFoundError/ImportError: see :func:`resolve_checkpoint`. KeyError: unknown class name in the JSON.
        ValueError: malformed JSON, or a dtype override the class cannot honour.
    """
    from . import get_model_class
    json_path, st_path = resolve_checkpoint(path)
    try:
        cfg = json.loads(Path(json_path).read_text())
        name, args = cfg["name"], dict(cfg.get("args", {}))
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{json_path} is not a checkpoint config {{'name': ..., 'args': {{...}}}}: {e}") from e
    cls = get_model_class(name)
    if dtype is not None:
        args = _apply_dtype(cls, args, dtype)
    with torch.device("meta"):
        model = cls(**args)
    missing, unexpected, mismatched = _compare(model, _shapes_in_file(st_path))
    if strict and (missing or unexpected or mismatched):
        raise StateDictMismatchError(_mismatch_message(name, missing, unexpected, mismatched))
    state = _read_state_dict(st_path, model, device)
    load_state_dict_checked(model, state, strict=False, assign=True)
    if hasattr(model, "rebuild_derived_buffers"):
        model.rebuild_derived_buffers(torch.device(device))
    still_meta = [k for k, v in model.state_dict(keep_vars=True).items() if v.device.type == "meta"]
    if still_meta:
        raise StateDictMismatchError(f"{name}: the checkpoint does not provide {len(still_meta)} entries and they "
                                     f"cannot be recomputed: {still_meta[:20]}")
    return model.eval()


def save_pretrained(model: nn.Module, path: Union[str, os.PathLike]) -> Tuple[Path, Path]:
    """Writes ``{path}.json`` (``{"name", "args"}`` as recorded at construction) and ``{path}.safetensors``.

    Tensors are saved in their in-memory dtypes (complex buffers included), contiguous, on CPU.

    Returns:
        ``(json_path, safetensors_path)``.

    Raises:
        TypeError: the model was not built through ``ConfigMixin`` or has non-JSON constructor args.
    """
    from safetensors.torch import save_file
    if not hasattr(type(model), "config_json"):
        raise TypeError(f"{type(model).__name__} does not record its constructor args (inherit "
                        f"pixal3d.models.base.ConfigMixin)")
    stem = str(path)
    json_path, st_path = Path(stem + ".json"), Path(stem + ".safetensors")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    text = json.dumps({"name": cfg["name"], "args": jsonable_args(cfg["args"])}, indent=4) + "\n"
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(st_path))
    json_path.write_text(text)
    return json_path, st_path


def remap_cross_attn_keys(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """Renames TRELLIS.2 cross-attention keys for a Pixal3D proj-mode model (PIXAL3D_SPEC §4.7).

    Any key containing ``.cross_attn.`` that the model does not have is retried as
    ``….cross_attn.cross_attn_block.…`` (the trainer's ``_remap_checkpoint_keys``). The ``proj_linear`` weights are
    not invented: a strict load afterwards still reports them missing. Returns a new dict; the input is unchanged.
    """
    expected = set(model.state_dict().keys())
    out = {}
    for k, v in state_dict.items():
        if k not in expected and ".cross_attn." in k:
            alt = k.replace(".cross_attn.", ".cross_attn.cross_attn_block.", 1)
            if alt in expected:
                out[alt] = v
                continue
        out[k] = v
    return out
