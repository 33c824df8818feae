"""Set-up for `spectramind train`: data, model, loss, optimizer and scheduler from the typed settings.

This is the only trainer module that instantiates the configured classes; the loop itself takes the
built objects and the Trainer settings. It reads only declared inputs: the calibrated store and, for a
model on the physics baseline, the fit stage's sidecar (a missing one is one line naming its command).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch

from spectramind.config.settings import Settings, Trainer
from spectramind.devices import resolve_device
from spectramind.train import distributed, metrics
from spectramind.train.trainer import check_monitor, completed, fit

__all__ = ["build", "check", "completed", "launch", "plan", "started_at", "summary_line", "train"]

# The wall-clock budget counts from the start of the command; under self-launched DDP from the parent's start.
STARTED_AT_ENV = "SPECTRAMIND_STARTED_AT"


@dataclass
class Parts:
    model: torch.nn.Module
    loss_fn: object
    train_set: torch.utils.data.Dataset
    val_set: torch.utils.data.Dataset
    trainer: Trainer
    optimizer: object
    scheduler: object


def started_at() -> float:
    return float(os.environ.get(STARTED_AT_ENV) or psutil.Process().create_time())


def check(s: Settings) -> None:
    """What the settings alone can refuse, before any input is built: the monitored metric's name, a chosen
    metric backend that is not installed."""
    from spectramind.metric import N_BINS

    check_monitor(s.trainer.early_stopping.monitor, s.loss.instantiate(), torch.zeros(1, N_BINS))
    metrics.check(s.logger)


def build(s: Settings) -> Parts:
    """The datasets over the store (with the model's sidecars) and the configured objects."""
    from spectramind.data.dataset import LightCurveDataset
    from spectramind.data.prepare import require_store
    from spectramind.data.store import read_store_attrs
    from spectramind.models.baseline import fit_kwargs, require_baseline

    store = require_store(s, ("train",))
    sidecars = require_baseline(s)
    attrs = read_store_attrs(store)
    torch.manual_seed(s.seed)  # the initial weights follow the seed, identical on every rank
    model = s.model.instantiate(n_time=attrs["n_time"], n_bins=attrs["n_bins"], n_star=len(attrs["star_columns"]),
                                **fit_kwargs(s))
    return Parts(model=model, loss_fn=s.loss.instantiate(),
                 train_set=LightCurveDataset(store, "train", sidecars=sidecars, held_out=s.data.split.held_out),
                 val_set=LightCurveDataset(store, "val", sidecars=sidecars, held_out=s.data.split.held_out),
                 trainer=s.trainer, optimizer=s.optimizer.instantiate(), scheduler=s.scheduler.instantiate())


def train(s: Settings, run_dir: Path, run_hash: str, events=None) -> dict:
    """Train (or resume) the run in `run_dir`; a finished run returns its summary with `already_complete`."""
    done = completed(run_dir)
    if done is not None:
        return {**done, "already_complete": True}
    begin = started_at()
    dist = distributed.from_env()
    device = resolve_device(s.trainer.device, "trainer.device", dist.local_rank)
    distributed.init(dist, device)
    try:
        parts = build(s)
        if events is not None and dist.main:
            events.emit("built", model=type(parts.model).__name__, device=str(device),
                        train_samples=len(parts.train_set), val_samples=len(parts.val_set),
                        setup_s=round(time.time() - begin, 3),
                        parameters=sum(p.numel() for p in parts.model.parameters()))
        return fit(parts.model, parts.loss_fn, parts.train_set, parts.val_set, parts.trainer, run_dir=run_dir,
                   optimizer=parts.optimizer, scheduler=parts.scheduler, seed=s.seed, run_hash=run_hash,
                   events=events, started_at=begin, dist=dist, loggers=metrics.build(s.logger, run_dir, run_hash))
    finally:
        distributed.shutdown()


def summary_line(summary: dict) -> str:
    """One human line: why it stopped, how far it got, the best monitored value, the time spent."""
    best = summary["best_metric"]
    text = (f"stop_reason {summary['stop_reason']}, {summary['epochs']} epochs, best {best['monitor']}="
            f"{best['value']}, {summary['wall_time_s']:.1f} s")
    return text + (f" ({summary['message']})" if summary.get("message") else "")


def launch(devices: int, argv: list[str]) -> int:
    """`trainer.devices=N`: start N local DDP processes running the same command (torch.distributed.run)."""
    os.environ.setdefault(STARTED_AT_ENV, str(started_at()))
    return distributed.launch(devices, argv)


def plan(s: Settings, steps: int = 5) -> dict:
    """Measure `steps` real steps of the configured run on this machine and project it (writes no run)."""
    from spectramind.train.plan import measure

    begin = started_at()
    parts = build(s)
    return measure(parts.model, parts.loss_fn, parts.train_set, parts.val_set, parts.trainer,
                   optimizer=parts.optimizer, scheduler=parts.scheduler, seed=s.seed, steps=steps,
                   started_at=begin)
