"""Observability: JSON-lines metrics, TensorBoard when installed, the loss-curve PNG."""

from __future__ import annotations

import json
import math
from pathlib import Path

from spectramind import files


class MetricsLog:
    """`metrics.jsonl` (one object per logged step or epoch) plus optional TensorBoard scalars."""

    def __init__(self, run_dir: Path, enabled: bool = True):
        self.path = run_dir / "metrics.jsonl"
        self.enabled = enabled
        self._tb = _tensorboard(run_dir / "tensorboard") if enabled else None

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        files.append_line(self.path, json.dumps(record, sort_keys=True, allow_nan=True))
        if self._tb is not None:
            step = record.get("step", 0)
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                    self._tb.add_scalar(key, value, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _tensorboard(folder: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional: `pip install tensorboard` turns the event files on
        return None
    return SummaryWriter(str(folder))


def read(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def plot_losses(metrics_path: Path, png: Path) -> Path | None:
    """Training loss per logged step and validation loss per epoch, against the optimizer step."""
    records = read(metrics_path)
    train = [(r["step"], r["train/loss"]) for r in records if "train/loss" in r]
    val = [(r["step"], r["val/loss"]) for r in records if "val/loss" in r]
    if not train and not val:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for points, label, style in ((train, "train loss", "-"), (val, "val loss", "o-")):
        if points:
            ax.plot(*zip(*points, strict=True), style, label=label, markersize=3)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with files.atomic_path(png) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return png
