"""Set-up for `spectramind train`: build data, model, loss, optimizer and scheduler from the resolved config.

This is the only trainer module that reads the config dict or calls `hydra.utils.instantiate`; the
loop itself takes the built objects and a TrainerConfig.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch

from spectramind.devices import resolve_device
from spectramind.train import distributed
from spectramind.train.settings import TrainerConfig
from spectramind.train.trainer import completed, fit

__all__ = ["build", "completed", "launch", "plan", "started_at", "summary_line", "train"]

# The wall-clock budget counts from the start of the command; under self-launched DDP from the parent's start.
STARTED_AT_ENV = "SPECTRAMIND_STARTED_AT"


@dataclass
class Parts:
    model: torch.nn.Module
    loss_fn: object
    train_set: torch.utils.data.Dataset
    val_set: torch.utils.data.Dataset
    trainer: TrainerConfig
    optimizer: object
    scheduler: object


def started_at() -> float:
    return float(os.environ.get(STARTED_AT_ENV) or psutil.Process().create_time())


def build(cfg: dict, dist: distributed.Dist) -> Parts:
    """The calibrated store and the model's sidecars (built first when missing), datasets and objects.

    Under DDP rank 0 builds the cached inputs while the others wait, then the others find them.
    """
    from hydra.utils import instantiate

    from spectramind.data.dataset import LightCurveDataset

    device = resolve_device(cfg["trainer"]["device"], "trainer.device", dist.local_rank)
    for builder_turn in (True, False):
        if dist.main == builder_turn:
            store, model, sidecars = _inputs(cfg, device)
        if dist.world > 1:
            torch.distributed.barrier()
    return Parts(model=model, loss_fn=instantiate(cfg["loss"]),
                 train_set=LightCurveDataset(store, "train", sidecars=sidecars),
                 val_set=LightCurveDataset(store, "val", sidecars=sidecars),
                 trainer=TrainerConfig(**cfg["trainer"]), optimizer=instantiate(cfg["optimizer"]),
                 scheduler=instantiate(cfg["scheduler"]))


def _inputs(cfg: dict, device: torch.device) -> tuple[Path, torch.nn.Module, tuple[Path, ...]]:
    """Store (simulated/calibrated when missing), the model sized from its attributes, and its sidecars."""
    from hydra.utils import instantiate

    from spectramind.data.prepare import ensure_store
    from spectramind.data.store import read_store_attrs
    from spectramind.models.baseline import sidecars_for

    store = ensure_store(cfg["data"], cfg["seed"])
    attrs = read_store_attrs(store)
    torch.manual_seed(cfg["seed"])  # the initial weights follow the seed, identical on every rank
    model = instantiate(cfg["model"], n_time=attrs["n_time"], n_bins=attrs["n_bins"],
                        n_star=len(attrs["star_columns"]))
    return store, model, sidecars_for(model, store, device)


def train(cfg: dict, run_dir: Path, run_hash: str, events=None) -> dict:
    """Train (or resume) the run in `run_dir`; a finished run returns its summary with `already_complete`."""
    done = completed(run_dir)
    if done is not None:
        return {**done, "already_complete": True}
    begin = started_at()
    dist = distributed.from_env()
    distributed.init(dist, resolve_device(cfg["trainer"]["device"], "trainer.device", dist.local_rank))
    try:
        parts = build(cfg, dist)
        if events is not None and dist.main:
            events.emit("built", model=type(parts.model).__name__, train_samples=len(parts.train_set),
                        val_samples=len(parts.val_set), setup_s=round(time.time() - begin, 3),
                        parameters=sum(p.numel() for p in parts.model.parameters()))
        return fit(parts.model, parts.loss_fn, parts.train_set, parts.val_set, parts.trainer, run_dir=run_dir,
                   optimizer=parts.optimizer, scheduler=parts.scheduler, seed=cfg["seed"], run_hash=run_hash,
                   events=events, started_at=begin, dist=dist)
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


def plan(cfg: dict, steps: int = 5) -> dict:
    """Measure `steps` real steps of the configured run on this machine and project it (writes no run)."""
    from spectramind.train.plan import measure

    begin = started_at()
    parts = build(cfg, distributed.Dist())
    return measure(parts.model, parts.loss_fn, parts.train_set, parts.val_set, parts.trainer,
                   optimizer=parts.optimizer, scheduler=parts.scheduler, seed=cfg["seed"], steps=steps,
                   started_at=begin)
