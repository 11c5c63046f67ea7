"""Training logs (TRELLIS2_SPEC §5.2): ``log.txt`` and ``metrics.jsonl`` always, TensorBoard and W&B when available.

Only rank 0 creates a :class:`TrainLogger`. TensorBoard is used when ``torch.utils.tensorboard`` imports (it needs the
``tensorboard`` package); W&B only when asked for, and then its absence is an error.
"""
import json
import time
from pathlib import Path
from typing import Dict, Optional

__all__ = ["TrainLogger"]


class TrainLogger:
    """Writes scalar dicts per step.

    Args:
        output_dir: run folder (``log.txt``, ``metrics.jsonl``, ``tb_logs/``).
        use_tensorboard: try TensorBoard (silently skipped when not installed; a line in ``log.txt`` says so).
        wandb: ``None`` or ``{'project', 'name', 'id', 'config'}`` to log to Weights & Biases.

    Raises:
        ImportError: W&B requested but ``wandb`` is not installed.
    """

    def __init__(self, output_dir, use_tensorboard: bool = True, wandb: Optional[dict] = None):
        self.dir = Path(output_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._text = open(self.dir / "log.txt", "a", buffering=1)
        self._jsonl = open(self.dir / "metrics.jsonl", "a", buffering=1)
        self._tb = None
        if use_tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self._tb = SummaryWriter(str(self.dir / "tb_logs"))
            except ImportError:
                self.text("TensorBoard not installed (pip install tensorboard); logging to log.txt/metrics.jsonl")
        self._wandb = None
        if wandb is not None:
            try:
                import wandb as wb
            except ImportError as e:
                raise ImportError("--use_wandb needs the 'wandb' package (pip install wandb)") from e
            self._wandb = wb.init(project=wandb.get("project"), name=wandb.get("name"), id=wandb.get("id"),
                                  resume="allow", config=wandb.get("config"), dir=str(self.dir))

    def text(self, line: str) -> None:
        """Appends a time-stamped line to ``log.txt`` and prints it."""
        line = f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {line}"
        print(line, flush=True)
        self._text.write(line + "\n")

    def scalars(self, step: int, values: Dict[str, float]) -> None:
        """Logs ``values`` at ``step``: one JSON line (full float precision), TensorBoard scalars, W&B."""
        self._jsonl.write(json.dumps({"step": step, **values}) + "\n")
        if self._tb is not None:
            for k, v in values.items():
                self._tb.add_scalar(k, v, step)
        if self._wandb is not None:
            self._wandb.log(values, step=step)

    def close(self) -> None:
        """Flushes and closes every sink."""
        self._text.close()
        self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
