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

import numpy as np
import psutil
import torch

from spectramind.config.settings import Settings, Trainer
from spectramind.devices import resolve_device
from spectramind.train import distributed, metrics
from spectramind.train.trainer import check_monitor, completed, fit

__all__ = ["MIN_CALIBRATION_PLANETS", "MIN_SCALE_PLANETS", "build", "calibrate_outputs", "check", "complete_outputs",
           "completed", "launch", "plan", "started_at", "summary_line", "train"]

# The wall-clock budget counts from the start of the command; under self-launched DDP from the parent's start.
STARTED_AT_ENV = "SPECTRAMIND_STARTED_AT"
# The output calibration's validation planets: fewer than the first, it is the identity; the AIRS level's
# error (one number) from the first, the per-instrument scale, offset and floor (three each) from the
# second. Errors are shared within a planet, so planets, not bins, are what count: fitted on 9 to 25 held-out
# planets of a net trained on 60, the three lost 0.01-0.02x of the oracle against the level's error alone
# and put planets below 0; from 50 they lost nothing.
MIN_CALIBRATION_PLANETS = 8
MIN_SCALE_PLANETS = 50


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
        complete_outputs(s, run_dir)
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
        summary = fit(parts.model, parts.loss_fn, parts.train_set, parts.val_set, parts.trainer, run_dir=run_dir,
                      optimizer=parts.optimizer, scheduler=parts.scheduler, seed=s.seed, run_hash=run_hash,
                      events=events, started_at=begin, dist=dist,
                      loggers=metrics.build(s.logger, run_dir, run_hash))
        if dist.main and s.trainer.calibrate_outputs:
            steps = calibrate_outputs(parts, run_dir, device)
            if events is not None:
                events.emit("calibrated_outputs", **{k: v for step in steps for k, v in step.as_dict().items()})
        return summary
    finally:
        distributed.shutdown()


def complete_outputs(s: Settings, run_dir: Path) -> None:
    """A complete run whose output calibration is missing (it stopped between its summary and that) gets
    it now, from its checkpoint: nothing is trained."""
    from spectramind.models.calibration import OUTPUTS_FILE

    dist = distributed.from_env()
    if dist.main and s.trainer.calibrate_outputs and not (run_dir / OUTPUTS_FILE).is_file():
        calibrate_outputs(build(s), run_dir, resolve_device(s.trainer.device, "trainer.device", dist.local_rank))


def calibrate_outputs(parts: Parts, run_dir: Path, device: torch.device) -> list:
    """The run's checkpoint predicts its validation split, and the labels fit the error of the AIRS level
    and then a scale and offset of mu and sigma per instrument (models.calibration), written beside the
    checkpoints for predict to apply; returns the steps. A net trained on GLL ends overconfident on planets
    it has not seen (its sigma learns the training planets' residuals); the validation planets are the
    labelled ones it has not seen. Too few of them for a step leave it the identity (MIN_*_PLANETS), and
    FGS1 is left as it is when the net passes the baseline's through (calibrated on labels already, by the
    fit stage). The file is written all the same: predict requires it of a run that asked for it."""
    from spectramind.evaluate.predict import checkpoint_path, predict_visits
    from spectramind.models import calibration as cal
    from spectramind.train import checkpoint

    val = parts.val_set
    labelled = [val[i] for i in range(len(val))]
    planets = len({int(item["planet_id"]) for item in labelled})
    steps = [cal.IDENTITY]
    if planets >= MIN_CALIBRATION_PLANETS:
        parts.model.load_state_dict(checkpoint.load(checkpoint_path(run_dir))["model"])
        _, mu, sigma = predict_visits(parts.model.eval(), val, 64, device, progress=False)
        mu, sigma = mu.astype(np.float64), sigma.astype(np.float64)
        y = np.stack([item["target"].numpy() for item in labelled]).astype(np.float64)
        level = cal.LevelError.learn(mu, sigma, y)
        scale = cal.IDENTITY
        if planets >= MIN_SCALE_PLANETS:
            scale = cal.fit_calibration(*level.apply(mu, sigma), y)
            if getattr(parts.model, "fgs1_from_baseline", False):
                scale = scale.airs_only()
        steps = [level, scale]
    cal.save(run_dir / cal.OUTPUTS_FILE, steps)
    return steps


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
