"""Training checkpoint → released ``{name}.json`` + ``{name}.safetensors`` (the conversion TRELLIS2_SPEC §5.2 notes is
missing from the reference repo). The model is rebuilt from the run's ``config.json`` and saved with
:func:`pixal3d.models.pretrained.save_pretrained`, so :func:`~pixal3d.models.pretrained.from_pretrained` loads it."""
import argparse
import json
import re
from pathlib import Path
from typing import Optional

import torch

from .checkpoint import ema_ckpt_path, latest_step, model_ckpt_path

__all__ = ["export_checkpoint", "main"]


def export_checkpoint(run_dir, out_stem, model: str = "denoiser", step: Optional[int] = None,
                      ema_rate="auto", dtype: Optional[str] = None):
    """Writes ``{out_stem}.json`` and ``{out_stem}.safetensors`` from a training run.

    Args:
        run_dir: training ``output_dir`` (holds ``config.json`` and ``ckpts/``).
        out_stem: output path without extension.
        model: model name in the config's ``models``.
        step: checkpoint step (default: the latest complete one).
        ema_rate: ``'auto'`` (the first EMA rate found for that step, else the raw weights), a rate, or ``None``
            for the raw (non-EMA) weights.
        dtype: optional torso dtype written into the JSON and used for the tensors (e.g. ``'bfloat16'``).

    Returns:
        ``(json_path, safetensors_path)``.

    Raises:
        FileNotFoundError: no config, no checkpoint, or the requested EMA file is missing.
        KeyError: ``model`` not in the config.
    """
    from pixal3d.models import get_model_class
    from pixal3d.models.pretrained import save_pretrained
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path} is missing: point run_dir at a train.py output_dir")
    cfg = json.loads(cfg_path.read_text())
    if model not in cfg["models"]:
        raise KeyError(f"model {model!r} not in the run's config (models: {sorted(cfg['models'])})")
    ckpt_dir = run_dir / "ckpts"
    step = latest_step(ckpt_dir) if step is None else int(step)
    if step is None:
        raise FileNotFoundError(f"no complete checkpoint (misc_step*.pt) in {ckpt_dir}")
    if ema_rate == "auto":
        pat = re.compile(rf"^{re.escape(model)}_ema(.+)_step{step:07d}\.pt$")
        rates = sorted(m.group(1) for p in ckpt_dir.iterdir() if (m := pat.match(p.name)))
        path = ckpt_dir / f"{model}_ema{rates[0]}_step{step:07d}.pt" if rates else model_ckpt_path(ckpt_dir, model,
                                                                                                     step)
    elif ema_rate is None:
        path = model_ckpt_path(ckpt_dir, model, step)
    else:
        path = ema_ckpt_path(ckpt_dir, model, float(ema_rate), step)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing")
    entry = cfg["models"][model]
    args = dict(entry.get("args", {}))
    if dtype is not None:
        args["dtype"] = dtype
    net = get_model_class(entry["name"])(**args)
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    if dtype is not None and hasattr(net, "convert_to"):
        net.convert_to(dtype)
    return save_pretrained(net, out_stem)


def main(argv=None) -> None:
    """CLI: ``python scripts/export_checkpoint.py RUN_DIR OUT_STEM [--model denoiser] [--step N] [--ema RATE|raw]``."""
    p = argparse.ArgumentParser(description="Export a training checkpoint (EMA weights by default) to "
                                            ".json + .safetensors for from_pretrained")
    p.add_argument("run_dir")
    p.add_argument("out_stem")
    p.add_argument("--model", default="denoiser")
    p.add_argument("--step", type=int, default=None)
    p.add_argument("--ema", default="auto", help="'auto' (first EMA rate), a rate like 0.9999, or 'raw'")
    p.add_argument("--dtype", default=None, help="e.g. bfloat16 (written into the JSON)")
    a = p.parse_args(argv)
    ema = None if a.ema == "raw" else a.ema
    j, s = export_checkpoint(a.run_dir, a.out_stem, a.model, a.step, ema, a.dtype)
    print(f"wrote {j} and {s}")
