"""The training loop: set up, train epoch by epoch under the guardrails, checkpoint, summarise.

Units of work: a *micro-batch* goes through forward and backward; a *step* is one optimizer update
over the effective batch (batch_size x accumulate_grad_batches samples, the last one of an epoch
shorter). Guards are asked between steps only, so every stop lands on a state that a checkpoint
captures exactly: resuming replays the same samples, in the same order, with the same RNG.
On resume the checkpoint wins for all state; the config cannot differ because the run folder is
named by the config's hash.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from spectramind import files, signals
from spectramind.config.settings import Trainer as TrainerSettings
from spectramind.devices import resolve_device
from spectramind.errors import ConfigError
from spectramind.progress import ProgressBar
from spectramind.train import checkpoint, guards
from spectramind.train.distributed import Dist, agree_max, all_sum
from spectramind.train.metrics import MetricsLog, MetricsLogger, plot_losses

COMPLETE_REASONS = ("max_epochs", "early_stopping")

Batch = dict[str, torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, dict[str, torch.Tensor]]]


@dataclass
class Progress:
    """Where the run is: everything besides model/optimizer/scheduler/scaler/RNG that a resume needs."""

    epoch: int = 0              # the epoch in progress (0-based)
    position: int = 0           # samples of this epoch's per-rank order already consumed
    global_step: int = 0        # optimizer steps taken (skipped non-finite steps included)
    micro_batch: int = 0        # current micro-batch size (halved by OOM recovery)
    best: float | None = None   # best value of the monitored metric
    best_epoch: int = -1
    bad_epochs: int = 0         # validations since the last improvement
    elapsed_s: float = 0.0      # training wall time of earlier sessions
    nonfinite_skipped: int = 0  # steps not applied: NaN/Inf loss or gradients, fp16 overflow included
    overflow_skipped: int = 0   # of those, steps the GradScaler skipped (its scale went down)
    oom_events: int = 0
    epoch_loss_sum: float = 0.0  # sum of step loss x samples over the epoch so far
    peak_host_gib: float = 0.0
    peak_gpu_gib: float = 0.0


def completed(run_dir: Path) -> dict | None:
    """The summary of a run that already finished (max_epochs or early stopping), else None."""
    path = Path(run_dir) / "summary.json"
    if not path.exists():
        return None
    summary = json.loads(path.read_text(encoding="utf-8"))
    return summary if summary.get("status") == "complete" else None


def check_monitor(monitor: str, loss_fn: LossFn, target: torch.Tensor) -> None:
    """Refuse a monitored metric that validation will not log, before anything runs (not after an epoch).

    `target`: one (1, n_bins) target; the loss's part names come from one call on it against itself,
    with no model and no RNG, so nothing of a run is touched.
    """
    target = target.float()
    _, parts = loss_fn(target, torch.ones_like(target), target)
    names = ["val/loss", *(f"val/{k}" for k in sorted(parts))]
    if monitor not in names:
        raise ConfigError(f"trainer.early_stopping.monitor: expected one of {', '.join(names)}, got {monitor!r}")


def fit(model: torch.nn.Module, loss_fn: LossFn, train_set: Dataset, val_set: Dataset | None,
        trainer: TrainerSettings, *, run_dir: str | Path, optimizer: Callable,
        scheduler: Callable | None = None, seed: int = 0, run_hash: str = "", events=None,
        started_at: float | None = None, dist: Dist | None = None, loggers: Sequence[MetricsLogger] = ()) -> dict:
    """Train `model` (resuming `run_dir`'s last checkpoint) and return the run summary.

    `optimizer(params)` and `scheduler(optimizer)` build torch objects (Hydra partials);
    `started_at` (time.time()) is when the time budget began, by default now; `loggers` are the metric
    backends (train.metrics.build), which the main process logs to and closes.
    """
    done = completed(run_dir)
    if done is not None:
        return {**done, "already_complete": True}
    loop = Trainer(model, loss_fn, train_set, val_set, trainer, run_dir=Path(run_dir), optimizer=optimizer,
                   scheduler=scheduler, seed=seed, run_hash=run_hash, events=events,
                   started_at=started_at or time.time(), dist=dist or Dist(), loggers=loggers)
    return loop.run()


class Trainer:
    """One run's objects and its loop; `fit` is the way in, `plan.measure` borrows `step`."""

    def __init__(self, model, loss_fn, train_set, val_set, cfg: TrainerSettings, *, run_dir: Path, optimizer,
                 scheduler, seed: int, run_hash: str, events, started_at: float, dist: Dist,
                 loggers: Sequence[MetricsLogger] = ()):
        self.cfg, self.run_dir, self.seed, self.run_hash, self.dist = cfg, run_dir, seed, run_hash, dist
        self.events = events if (events is not None and dist.main) else None
        self.session_start = time.time()
        checkpoint.seed_everything(seed + dist.rank, cfg.deterministic)
        self.device = resolve_device(cfg.device, "trainer.device", dist.local_rank)
        self.amp_dtype, use_scaler = self._precision(cfg.precision)
        self.model = model.to(self.device)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        if not self.params:
            raise ConfigError(f"model: {type(model).__name__} has no trainable parameters; it needs no "
                              "training (predict with it directly)")
        self.net = torch.compile(self.model) if cfg.compile else self.model
        if dist.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            # The buffers are constants (wavelength grids); broadcasting them in every forward would be a
            # collective that a rank's OOM mid-step leaves unmatched.
            self.net = torch.nn.parallel.DistributedDataParallel(self.net, device_ids=ids,
                                                             broadcast_buffers=False)
        self.loss_fn = loss_fn
        if cfg.max_samples is not None and cfg.max_samples < len(train_set):
            train_set = Subset(train_set, range(cfg.max_samples))
        self.train_set, self.val_set = train_set, val_set
        if val_set is not None and len(val_set):
            check_monitor(cfg.early_stopping.monitor, loss_fn, torch.as_tensor(val_set[0]["target"])[None])
        self.optimizer = optimizer(self.params)
        self.scheduler = scheduler(self.optimizer) if scheduler is not None else None
        self.scaler = torch.amp.GradScaler(self.device.type) if use_scaler else None
        self.loss_scale = math.inf  # the GradScaler's scale after the last step (inf: no scaler)
        self.p = Progress(micro_batch=cfg.batch_size)
        self.clock = guards.TimeBudget(cfg.budgets.time_min, cfg.budgets.predict_reserve_min, started_at)
        self.host = guards.HostMemory(cfg.budgets.host_memory_gib)
        self.nonfinite = guards.NonFinite(cfg.budgets.max_nonfinite_steps)
        guards.cap_gpu_memory(self.device, cfg.budgets.gpu_memory_gib)
        self.ckpt_dir = run_dir / "checkpoints"
        self.ckpt_bytes = 0
        self.metrics = MetricsLog(loggers if dist.main else ())
        self.message = ""
        self.out_of_memory = False  # nothing fits any more, even a micro-batch of 1: the run stops ('oom')

    # ----------------------------------------------------------------------------------------- set-up
    def _precision(self, precision: str) -> tuple[torch.dtype | None, bool]:
        """Autocast dtype and whether to use a GradScaler; fp16 needs CUDA, bf16 a GPU that has it."""
        if precision == "fp16":
            if self.device.type == "cuda":
                return torch.float16, True
            self._emit("precision_fallback", requested="fp16", used="fp32", why="fp16 autocast needs CUDA")
            return None, False
        if precision == "bf16":
            if self.device.type == "cuda" and not torch.cuda.is_bf16_supported():
                raise ConfigError("trainer.precision: this GPU has no bf16 support; expected fp16 or fp32, "
                                  "got 'bf16'")
            return torch.bfloat16, False
        return None, False

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _emit(self, event: str, **fields) -> None:
        if self.events is not None:
            self.events.emit(event, **fields)

    # ----------------------------------------------------------------------------------------- data
    def order(self, epoch: int) -> list[int]:
        """This rank's sample order for `epoch`: a pure function of (seed, epoch), so a resume replays it."""
        sampler = DistributedSampler(self.train_set, num_replicas=self.dist.world, rank=self.dist.rank,
                                     shuffle=True, seed=self.seed, drop_last=False)
        sampler.set_epoch(epoch)
        return list(sampler)

    def batches(self, order: list[int], start: int, epoch: int) -> Iterator[Batch]:
        """Micro-batches of `order[start:]`; effective batches start at multiples of effective_batch."""
        eff, micro = self.cfg.effective_batch, self.p.micro_batch
        chunks = [order[j:min(j + micro, g + eff, len(order))]
                  for g in range(start, len(order), eff) for j in range(g, min(g + eff, len(order)), micro)]
        return _started(self._loader(self.train_set, chunks, seed=self.seed * 1_000_003 + epoch * 7919 + start))

    def _loader(self, dataset: Dataset, chunks: list[list[int]], seed: int) -> DataLoader:
        lc = self.cfg.loader
        workers = lc.num_workers
        return DataLoader(dataset, batch_sampler=chunks, num_workers=workers,
                          pin_memory=lc.pin_memory and self.device.type == "cuda",
                          prefetch_factor=lc.prefetch_factor if workers else None,
                          worker_init_fn=checkpoint.worker_init if workers else None,
                          generator=torch.Generator().manual_seed(seed))

    def _to_device(self, batch: Batch) -> Batch:
        if self.device.type == "cpu":
            return batch
        return {k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v
                for k, v in batch.items()}

    # ----------------------------------------------------------------------------------------- one step
    def step(self, order: list[int], batches: Iterator[Batch],
             log: bool) -> tuple[Iterator[Batch], dict | None]:
        """One optimizer step over the next effective batch at `self.p.position`.

        Returns the (possibly rebuilt) micro-batch iterator and, when `log`, the step's metrics.
        """
        group = min(self.cfg.effective_batch, len(order) - self.p.position)
        while True:
            try:
                loss, parts = self._accumulate(batches, group, log)
                oom = False
            except torch.OutOfMemoryError:
                oom = True  # leave the except block first so the traceback's tensors can be freed
            # Every rank takes the same decision: one rank's OOM replays the step on all, at the same size.
            if not agree_max([int(oom)], self.dist, self.device)[0]:
                break
            if not self._shrink():
                return batches, None
            batches = self.batches(order, self.p.position, self.p.epoch)
        self._average_gradients()
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        loss_v, norm_v = self._read_and_clip(loss)
        # With a GradScaler, inf gradients are its business (it skips the step and lowers the scale).
        finite = math.isfinite(loss_v) and (self.scaler is not None or math.isfinite(norm_v))
        finite = not agree_max([int(not finite)], self.dist, self.device)[0]
        overflow = False
        if self.scaler is not None:
            overflow = self._scaler_step(finite)
        elif finite:
            self._optimizer_step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.out_of_memory:  # the step was not taken: the run stops on the boundary before it
            return batches, None
        self.p.position += group
        self.p.global_step += 1
        if finite:
            self.p.epoch_loss_sum += loss_v * group
        if not finite or overflow:
            self._emit("nonfinite", step=self.p.global_step, loss=loss_v, grad_norm=norm_v,
                       cause="fp16 overflow" if overflow else "loss or gradient",
                       **({"loss_scale": self.loss_scale} if self.scaler is not None else {}))
        tripped = self.nonfinite.record(finite and not overflow)
        self.p.nonfinite_skipped = self.nonfinite.skipped
        if tripped:
            self.message = f"{self.nonfinite.consecutive} consecutive non-finite steps"
        record = None
        if log:
            record = {"train/loss": loss_v, "grad_norm": norm_v, "lr": self.optimizer.param_groups[0]["lr"],
                      **{f"train/{k}": v.item() for k, v in parts.items()}}
        return batches, record

    def _scaler_step(self, finite: bool) -> bool:
        """The step through the GradScaler (update only when the loss is not finite); True when the
        scaler skipped a finite-loss step for inf/NaN gradients, which it says only by lowering its scale."""
        before = self.scaler.get_scale()
        if finite:
            self._optimizer_step()
        self.scaler.update()
        self.loss_scale = self.scaler.get_scale()
        overflow = finite and self.loss_scale < before
        self.p.overflow_skipped += overflow
        return overflow

    def _optimizer_step(self) -> None:
        """optimizer.step(), through the GradScaler when there is one. Adam allocates its state on the first
        step: an OOM there is retried once with the allocator's cache emptied, then stops the run ('oom')."""
        step = (lambda: self.scaler.step(self.optimizer)) if self.scaler is not None else self.optimizer.step
        for attempt in range(2):
            try:
                step()
                return
            except torch.OutOfMemoryError:
                pass
            _free_memory(self.device)
            if attempt:
                self.out_of_memory = True
                self.message = (f"the optimizer's state does not fit in memory on {self.device} (budget "
                                f"{self.cfg.budgets.gpu_memory_gib} GiB); expected a smaller model or a larger "
                                "trainer.budgets.gpu_memory_gib")

    def _average_gradients(self) -> None:
        """Average the gradients over ranks in one all-reduce, once every rank has fitted its share.

        DDP's own reduction runs inside backward and cannot be taken back when one rank runs out of memory
        mid-step (the others would wait in it for ever), so every micro-batch runs under no_sync.
        """
        if self.dist.world == 1:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        flat = all_sum(torch.cat([g.reshape(-1) for g in grads]), self.dist) / self.dist.world
        for p, g in zip(self.params, flat.split([g.numel() for g in grads]), strict=True):
            p.grad = g.view_as(p)

    def _accumulate(self, batches: Iterator[Batch], group: int, log: bool):
        """Forward and backward over micro-batches until `group` samples; the loss is their sample mean."""
        total: torch.Tensor | None = None
        parts_sum: dict[str, torch.Tensor] = {}
        seen = 0
        while seen < group:
            batch = self._to_device(next(batches))
            n = batch["target"].shape[0]
            weight = n / group
            with self.net.no_sync() if self.dist.world > 1 else contextlib.nullcontext():
                with self._autocast():
                    mu, sigma = self.net(batch)
                loss, parts = self.loss_fn(mu.float(), sigma.float(), batch["target"])
                scaled = loss * weight if n != group else loss  # one micro-batch per step: no weight
                (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            total = scaled.detach() if total is None else total + scaled.detach()
            if log:
                for k, v in parts.items():
                    parts_sum[k] = parts_sum.get(k, 0.0) + v.detach().float() * weight
            seen += n
        return total, parts_sum

    def _read_and_clip(self, loss: torch.Tensor) -> tuple[float, float]:
        """The step's loss and total gradient norm (before clipping) in one device sync; then clip.

        Per-tensor norms come from the kernel clip_grad_norm_ uses; summing their squares on the host
        saves a stack and a reduction per step, which is most of the loop's overhead on small models.
        """
        grads = [p.grad for p in self.params if p.grad is not None]
        norms = torch._foreach_norm(grads) if grads else []
        values = torch.stack([loss.float(), *(n.float() for n in norms)]).tolist()
        total = math.sqrt(sum(v * v for v in values[1:]))
        clip = self.cfg.grad_clip
        if math.isfinite(total):
            if clip.mode == "norm" and total > clip.value:
                torch._foreach_mul_(grads, clip.value / (total + 1e-6))
            elif clip.mode == "value":
                torch.nn.utils.clip_grad_value_(self.params, clip.value, foreach=True)
        return values[0], total

    def _shrink(self) -> bool:
        """After an OOM: free, halve the micro-batch; the effective batch (samples per step) stays.

        False at a micro-batch of 1: nothing smaller can be tried, and the run stops ('oom')."""
        self.optimizer.zero_grad(set_to_none=True)
        _free_memory(self.device)
        if self.p.micro_batch == 1:
            self.out_of_memory = True
            self.message = (f"a micro-batch of 1 does not fit in memory on {self.device} (budget "
                            f"{self.cfg.budgets.gpu_memory_gib} GiB); expected a smaller model or a larger "
                            "trainer.budgets.gpu_memory_gib")
            return False
        self.p.micro_batch //= 2
        self.p.oom_events += 1
        accumulation = math.ceil(self.cfg.effective_batch / self.p.micro_batch)
        self._emit("oom", step=self.p.global_step, micro_batch=self.p.micro_batch, accumulation=accumulation)
        return True

    # ----------------------------------------------------------------------------------------- guards
    def _guard(self) -> str:
        """The stop reason before the next step ('' to go on), agreed by all ranks."""
        reason = "oom" if self.out_of_memory else ""
        if self.nonfinite.consecutive >= self.nonfinite.limit:
            reason = "nonfinite"
        if self.loss_scale < self.cfg.budgets.min_loss_scale:  # fp16 cannot hold these gradients any more
            reason = "nonfinite"
            self.message = (f"the fp16 loss scale fell to {self.loss_scale:g}, below "
                            f"trainer.budgets.min_loss_scale={self.cfg.budgets.min_loss_scale:g}")
        if self.clock.crosses(self.clock.step_s):
            reason = "time_budget"
        if self.host.over():
            reason = "host_memory"
            self.message = (f"resident memory {self.host.current / guards.GIB:.2f} GiB above the "
                            f"{self.host.limit / guards.GIB:.2f} GiB budget")
        if signals.requested():
            reason = "signal"
            self.message = f"received {signals.requested()}"
        agreed = guards.GUARD_REASONS[agree_max([guards.reason_code(reason)], self.dist, self.device)[0]]
        if agreed != reason:  # this rank stops for another's reason: say so in its summary
            self.message = f"{agreed} on another rank"
        return agreed

    # ----------------------------------------------------------------------------------------- epochs
    def train_epoch(self, bar) -> str:
        """Steps until the epoch's order is used up or a guard says stop; returns the stop reason or ''."""
        self.model.train()
        order = self.order(self.p.epoch)
        batches = self.batches(order, self.p.position, self.p.epoch)
        every = self.cfg.log_every_n_steps
        while self.p.position < len(order):
            reason = self._guard()
            if reason:
                return reason
            start = time.perf_counter()
            samples = min(self.cfg.effective_batch, len(order) - self.p.position)
            log = (self.p.global_step + 1) % every == 0
            batches, record = self.step(order, batches, log)
            seconds = time.perf_counter() - start
            self.clock.observe_step(seconds)
            shown = self._log_step(record, seconds, samples) if record is not None else {}
            bar.advance(1, epoch=f"{self.p.epoch + 1}/{self.cfg.max_epochs}", **shown)
        return ""

    def _log_step(self, record: dict, seconds: float, samples: int) -> dict:
        """Log a step's metrics; returns what the progress display shows of them."""
        self.p.peak_gpu_gib = max(self.p.peak_gpu_gib, guards.gpu_peak_gib(self.device))
        throughput = samples * self.dist.world / seconds
        self.metrics.log({"step": self.p.global_step, "epoch": self.p.epoch, **record,
                          "step_time_s": seconds, "samples_per_s": throughput,
                          "micro_batch": self.p.micro_batch, "host_mem_gib": self.host.current / guards.GIB,
                          "gpu_mem_gib": self.p.peak_gpu_gib})
        peak = f"host {self.host.peak / guards.GIB:.2f} GiB"
        if self.device.type == "cuda":
            peak += f" / GPU {self.p.peak_gpu_gib:.2f} GiB"
        return {"loss": record["train/loss"], "lr": record["lr"], "samples/s": throughput, "peak mem": peak}

    def end_epoch(self) -> str:
        """Validate, schedule, early-stop and checkpoint at an epoch boundary; returns a stop reason or ''."""
        epoch = self.p.epoch + 1  # 1-based count of finished epochs
        metrics = {}
        due = epoch % self.cfg.val_every_n_epochs == 0 or epoch == self.cfg.max_epochs
        if self.val_set is not None and due:
            if agree_max([int(self.clock.crosses(self.clock.val_s))], self.dist, self.device)[0]:
                return "time_budget"
            start = time.time()
            metrics = self.validate()
            self.clock.val_s = time.time() - start
            if self.out_of_memory:
                return "oom"
        improved, stop = self._early_stopping(metrics)
        self._schedule(metrics)
        n = len(self.order(self.p.epoch))
        self.metrics.log({"step": self.p.global_step, "epoch": self.p.epoch,
                          "train/epoch_loss": self.p.epoch_loss_sum / max(n, 1),
                          "lr": self.optimizer.param_groups[0]["lr"], **metrics})
        self.p.epoch, self.p.position, self.p.epoch_loss_sum = epoch, 0, 0.0
        if not self.save(best=improved, numbered=epoch % self.cfg.checkpoint_every_n_epochs == 0):
            return "disk"
        return "early_stopping" if stop else ""

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Sample-weighted mean loss and parts over the validation split (all ranks summed).

        An OOM on any rank halves the micro-batch on all of them and validates again; {} when even a
        micro-batch of 1 does not fit (the run then stops, 'oom')."""
        self.model.eval()
        order = list(DistributedSampler(self.val_set, num_replicas=self.dist.world, rank=self.dist.rank,
                                        shuffle=False))
        while True:
            try:
                names, sums = self._validation_sums(order)
                oom = False
            except torch.OutOfMemoryError:
                oom = True
            if not agree_max([int(oom)], self.dist, self.device)[0]:
                break
            if not self._shrink():
                self.model.train()
                return {}
        self.model.train()
        if sums is None:
            return {}
        return dict(zip(["val/loss", *(f"val/{k}" for k in names)], _mean(sums, self.dist), strict=True))

    def _validation_sums(self, order: list[int]) -> tuple[list[str], torch.Tensor | None]:
        """This rank's sums of loss x n, parts x n and n over `order`, at the current micro-batch."""
        chunks = [order[i:i + self.p.micro_batch] for i in range(0, len(order), self.p.micro_batch)]
        names: list[str] = []
        sums = None
        for batch in _started(self._loader(self.val_set, chunks, seed=self.seed)):
            batch = self._to_device(batch)
            with self._autocast():
                mu, sigma = self.model(batch)
            loss, parts = self.loss_fn(mu.float(), sigma.float(), batch["target"])
            names = names or sorted(parts)
            n = batch["target"].shape[0]
            row = torch.stack([loss.detach().float(), *(parts[k].detach().float() for k in names),
                               torch.ones((), device=self.device)]) * n
            sums = row if sums is None else sums + row
        return names, sums

    def _early_stopping(self, metrics: dict) -> tuple[bool, bool]:
        """(improved, stop) from the monitored metric; tracks best.pt even when early stopping is off."""
        es = self.cfg.early_stopping
        if not metrics:
            return False, False
        value = metrics[es.monitor]
        best = self.p.best
        if best is None:
            improved = True
        else:
            improved = value < best - es.min_delta if es.mode == "min" else value > best + es.min_delta
        if improved:
            self.p.best, self.p.best_epoch, self.p.bad_epochs = value, self.p.epoch + 1, 0
        else:
            self.p.bad_epochs += 1
        stop = es.enabled and self.p.bad_epochs >= es.patience
        if stop:
            self.message = f"{es.monitor} did not improve for {es.patience} validations"
        return improved, stop

    def _schedule(self, metrics: dict) -> None:
        if self.scheduler is None:
            return
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            if self.cfg.early_stopping.monitor in metrics:
                self.scheduler.step(metrics[self.cfg.early_stopping.monitor])
        else:
            self.scheduler.step()

    # ----------------------------------------------------------------------------------------- checkpoints
    def state(self) -> dict:
        self.p.elapsed_s = self.p.elapsed_s + time.time() - self.session_start
        self.session_start = time.time()
        return {"run_hash": self.run_hash, "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "progress": asdict(self.p), "rng": checkpoint.rng_state(), "world": self.dist.world}

    def save(self, best: bool = False, numbered: bool = False) -> bool:
        """last.pt (+ best.pt, + epoch_NNNN.pt); False when the disk guard refuses the write."""
        if not self.dist.main:
            return agree_max([0], self.dist, self.device)[0] == 0
        start = time.time()
        # Before the first save: weights plus two optimizer moments is what Adam's checkpoint holds.
        weights = sum(t.numel() * t.element_size() for t in self.model.state_dict().values())
        needed = self.ckpt_bytes or 3 * weights
        shortfall = guards.disk_shortfall(self.ckpt_dir, needed * (1 + best + numbered),
                                          self.cfg.budgets.min_free_disk_gib)
        if agree_max([int(shortfall is not None)], self.dist, self.device)[0]:
            self.message = shortfall
            return False
        last = self.ckpt_dir / "last.pt"
        self.ckpt_bytes = checkpoint.save(last, self.state())
        copies = ([self.ckpt_dir / "best.pt"] if best else []) + \
                 ([checkpoint.numbered(self.ckpt_dir, self.p.epoch)] if numbered else [])
        for target in copies:
            with files.atomic_path(target) as tmp:
                shutil.copyfile(last, tmp)
        # Only now that the new checkpoints are in place: a refused or killed save keeps the old ones.
        checkpoint.prune(self.ckpt_dir, self.cfg.keep_last_k)
        self.clock.save_s = time.time() - start
        self._emit("checkpoint", path=str(last), epoch=self.p.epoch, step=self.p.global_step,
                   best=best, numbered=numbered, seconds=round(self.clock.save_s, 3))
        return True

    def restore(self, path: Path) -> None:
        state = checkpoint.load(path)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])
        self.p = Progress(**state["progress"])
        self.nonfinite.skipped = self.p.nonfinite_skipped
        if self.dist.world == 1 and state["world"] == 1:
            checkpoint.set_rng_state(state["rng"])
        else:  # one saved RNG cannot serve N ranks: reseed each rank, offset by the step reached
            reseed = self.seed + self.dist.rank + 7919 * self.p.global_step
            checkpoint.seed_everything(reseed, self.cfg.deterministic)
        self._emit("resume", path=str(path), epoch=self.p.epoch, position=self.p.position,
                   step=self.p.global_step, rule="the checkpoint wins for all state")

    # ----------------------------------------------------------------------------------------- the run
    def run(self) -> dict:
        last = self.ckpt_dir / "last.pt"
        if last.exists():
            self.restore(last)
        reason = ""
        bar = ProgressBar(self.cfg.progress_bar and self.dist.main, every_s=self.cfg.log_every_s)
        steps_per_epoch = math.ceil(len(self.order(self.p.epoch)) / self.cfg.effective_batch)  # every epoch's
        bar.start("train", steps_per_epoch * self.cfg.max_epochs, self.p.global_step, unit="steps")
        try:
            with signals.handling():
                while not reason and self.p.epoch < self.cfg.max_epochs:
                    reason = self.train_epoch(bar) or self.end_epoch()
                if reason and reason not in ("disk", "early_stopping"):
                    self._emit("guard", reason=reason, message=self.message, step=self.p.global_step)
                    self.save()
        finally:
            bar.close()
            self.metrics.close()
        return self._finish(reason or "max_epochs")

    def _finish(self, reason: str) -> dict:
        host_peak = max(self.host.peak, self.host.rss()) / guards.GIB
        self.p.peak_host_gib = max(self.p.peak_host_gib, host_peak)
        self.p.peak_gpu_gib = max(self.p.peak_gpu_gib, guards.gpu_peak_gib(self.device))
        summary = {
            "status": "complete" if reason in COMPLETE_REASONS else "stopped", "stop_reason": reason,
            "message": self.message, "profile": self.cfg.name, "epochs": self.p.epoch,
            "global_step": self.p.global_step,
            "best_metric": {"monitor": self.cfg.early_stopping.monitor, "value": self.p.best,
                            "epoch": self.p.best_epoch},
            "wall_time_s": round(self.p.elapsed_s + time.time() - self.session_start, 3),
            "peak_host_gib": round(self.p.peak_host_gib, 3), "peak_gpu_gib": round(self.p.peak_gpu_gib, 3),
            "nonfinite_skipped": self.p.nonfinite_skipped, "overflow_skipped": self.p.overflow_skipped,
            "oom_events": self.p.oom_events,
            "micro_batch": self.p.micro_batch, "effective_batch": self.cfg.effective_batch * self.dist.world,
            "world_size": self.dist.world, "run_hash": self.run_hash,
        }
        if self.dist.main:
            files.write_json(self.run_dir / "summary.json", summary)
            plot_losses(self.run_dir / "metrics.jsonl", self.run_dir / "plots" / "loss_curves.png")
        return summary


def _started(loader: DataLoader) -> Iterator[Batch]:
    """The loader's iterator, its workers started with SIGTERM/SIGINT held back: they come to ignore
    both (checkpoint.worker_init), so a signal to the process group leaves them to the loop, which stops
    at a step boundary and ends them itself instead of finding them dead at the next batch."""
    with signals.deferred():
        return iter(loader)


def _free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _mean(sums: torch.Tensor, dist: Dist) -> list[float]:
    sums = all_sum(sums, dist)
    return (sums[:-1] / sums[-1]).tolist()


