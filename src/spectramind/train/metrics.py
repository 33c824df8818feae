"""Observability: JSON-lines metrics, TensorBoard when installed, the loss-curve PNG, a progress bar."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from spectramind import io


class MetricsLog:
    """`metrics.jsonl` (one object per logged step or epoch) plus optional TensorBoard scalars."""

    def __init__(self, run_dir: Path, enabled: bool = True):
        self.path = run_dir / "metrics.jsonl"
        self.enabled = enabled
        self._tb = _tensorboard(run_dir / "tensorboard") if enabled else None

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        io.append_line(self.path, json.dumps(record, sort_keys=True, allow_nan=True))
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
    with io.atomic_path(png) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return png


class ProgressBar:
    """A rich progress bar over an epoch's samples, only on a terminal."""

    def __init__(self, enabled: bool):
        self._progress = None
        if enabled and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import Progress as RichProgress

            self._progress = RichProgress(console=Console(stderr=True), transient=True)
            self._progress.start()
        self._task = None

    def start(self, epoch: int, total: int, done: int) -> None:
        if self._progress is not None:
            if self._task is not None:
                self._progress.remove_task(self._task)
            self._task = self._progress.add_task(f"epoch {epoch + 1}", total=total, completed=done)

    def advance(self, n: int) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, n)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
