"""`spectramind train --plan`: measure a few real steps here, project the run, compare with the budgets.

Nothing is written to the run folder: the measuring trainer lives in a temporary directory that is
deleted afterwards, and its model is a throw-away copy of the configured one.
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from pathlib import Path

from torch.utils.data import Subset

from spectramind.config.settings import Trainer as TrainerSettings
from spectramind.errors import ConfigError
from spectramind.train import guards
from spectramind.train.distributed import Dist
from spectramind.train.trainer import Trainer

WARMUP_STEPS = 2   # first steps pay for allocator growth, lazy init and (with compile) compilation
VAL_BATCHES = 3


def measure(model, loss_fn, train_set, val_set, trainer: TrainerSettings, *, optimizer, scheduler=None,
            seed: int = 0, steps: int = 5, started_at: float | None = None) -> dict:
    """Run `steps` real optimizer steps (after a warm-up) and a few validation batches; project the run."""
    started_at = started_at or time.time()
    with tempfile.TemporaryDirectory(prefix="spectramind-plan-") as tmp:
        loop = Trainer(model, loss_fn, train_set, val_set, trainer, run_dir=Path(tmp), optimizer=optimizer,
                       scheduler=scheduler, seed=seed, run_hash="", events=None, started_at=time.time(),
                       dist=Dist())
        order = loop.order(0)
        batches = loop.batches(order, 0, 0)
        times = []
        for _ in range(min(WARMUP_STEPS + steps, math.ceil(len(order) / trainer.effective_batch))):
            begin = time.perf_counter()
            batches, _ = loop.step(order, batches, log=False)
            if loop.out_of_memory:  # a plan has no run to stop: the configured run cannot fit
                raise ConfigError(f"trainer.batch_size: {loop.message}")
            times.append(time.perf_counter() - begin)
        val_batch_s = _time_validation(loop) if val_set is not None else 0.0
        host_gib = max(loop.host.peak, loop.host.rss()) / guards.GIB
        gpu_gib = guards.gpu_peak_gib(loop.device)
        micro = loop.p.micro_batch
    measured = times[WARMUP_STEPS:] or times
    return _projection(trainer, statistics.median(measured), len(measured), len(order), val_batch_s,
                       len(val_set) if val_set is not None else 0, micro, host_gib, gpu_gib,
                       time.time() - started_at, loop.host.limit / guards.GIB)


def _time_validation(loop: Trainer) -> float:
    """Seconds per validation micro-batch, measured on a few batches."""
    n = min(len(loop.val_set), VAL_BATCHES * loop.p.micro_batch)
    begin = time.perf_counter()
    loop.val_set, full = Subset(loop.val_set, range(n)), loop.val_set
    loop.validate()
    loop.val_set = full
    return (time.perf_counter() - begin) / max(1, math.ceil(n / loop.p.micro_batch))


def _projection(cfg: TrainerSettings, step_s: float, measured: int, n_train: int, val_batch_s: float,
                n_val: int, micro: int, host_gib: float, gpu_gib: float, setup_s: float,
                host_limit_gib: float) -> dict:
    steps_per_epoch = math.ceil(n_train / cfg.effective_batch)
    val_s = math.ceil(n_val / micro) * val_batch_s
    validations = sum(1 for e in range(1, cfg.max_epochs + 1)
                      if e % cfg.val_every_n_epochs == 0 or e == cfg.max_epochs)
    train_s = cfg.max_epochs * steps_per_epoch * step_s + validations * val_s
    b = cfg.budgets
    usable_s = None if b.time_min is None else (b.time_min - b.predict_reserve_min) * 60.0
    epoch_s = steps_per_epoch * step_s + val_s
    report = {
        "profile": cfg.name, "measured_steps": measured, "step_time_s": step_s,
        "samples_per_s": cfg.effective_batch / step_s, "steps_per_epoch": steps_per_epoch,
        "epoch_time_s": epoch_s, "validation_time_s": val_s, "setup_time_s": setup_s,
        "projected_total_s": setup_s + train_s, "max_epochs": cfg.max_epochs, "micro_batch": micro,
        "peak_host_gib": host_gib, "host_budget_gib": host_limit_gib, "peak_gpu_gib": gpu_gib,
        "gpu_budget_gib": b.gpu_memory_gib, "time_budget_s": usable_s,
    }
    advice = []
    report["fits_time"] = usable_s is None or setup_s + train_s <= usable_s
    if not report["fits_time"]:
        epochs = max(0, int((usable_s - setup_s) // epoch_s))
        advice.append(f"time: projected {_hms(setup_s + train_s)} > budget {_hms(usable_s)}; set "
                      f"trainer.max_epochs={epochs} (or lower trainer.max_samples, or raise "
                      "trainer.budgets.time_min)")
    report["fits_host_memory"] = host_gib <= host_limit_gib
    if not report["fits_host_memory"]:
        advice.append(f"host memory: {host_gib:.2f} GiB > {host_limit_gib:.2f} GiB; lower "
                      "trainer.batch_size or trainer.loader.num_workers")
    report["fits_gpu_memory"] = b.gpu_memory_gib is None or gpu_gib <= b.gpu_memory_gib
    if micro < cfg.batch_size:
        advice.append(f"gpu memory: micro-batch shrank to {micro} after out-of-memory; set "
                      f"trainer.batch_size={micro} "
                      f"trainer.accumulate_grad_batches={cfg.effective_batch // micro} to start there")
    report["fits"] = report["fits_time"] and report["fits_host_memory"] and report["fits_gpu_memory"]
    report["advice"] = advice
    return report


def render(report: dict) -> str:
    """The plan as lines a person reads before spending the budget."""
    budget = "none" if report["time_budget_s"] is None else _hms(report["time_budget_s"])
    gpu_budget = "none" if report["gpu_budget_gib"] is None else f"{report['gpu_budget_gib']:.1f} GiB"
    lines = [
        f"plan for trainer={report['profile']} ({report['measured_steps']} measured steps on this machine)",
        f"  step time      {report['step_time_s'] * 1000:.1f} ms  ({report['samples_per_s']:.0f} samples/s, "
        f"micro-batch {report['micro_batch']})",
        f"  epoch          {_hms(report['epoch_time_s'])}  ({report['steps_per_epoch']} steps + validation "
        f"{_hms(report['validation_time_s'])})",
        f"  total          {_hms(report['projected_total_s'])}  ({report['max_epochs']} epochs, set-up "
        f"{_hms(report['setup_time_s'])})  budget {budget}",
        f"  peak host      {report['peak_host_gib']:.2f} GiB of {report['host_budget_gib']:.2f} GiB",
        f"  peak GPU       {report['peak_gpu_gib']:.2f} GiB of {gpu_budget}",
        "  verdict        " + ("fits the profile's budgets" if report["fits"] else "does NOT fit"),
    ]
    lines += [f"  change         {a}" for a in report["advice"]]
    return "\n".join(lines) + "\n"


def _hms(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
