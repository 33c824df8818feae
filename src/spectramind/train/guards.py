"""Guardrails: the wall-clock budget, host memory, disk, non-finite steps and the GPU cap (SIGTERM/SIGINT:
spectramind.signals).

Each guard only observes and answers "stop now?"; the loop decides when to ask (between optimizer
steps) so that a stop always lands on a state that a checkpoint can capture exactly.
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

import psutil
import torch

GIB = 2**30

# Stop reasons raised by guards, by priority: under DDP the ranks agree on the highest code.
GUARD_REASONS = ("", "nonfinite", "time_budget", "host_memory", "disk", "oom", "signal")


def reason_code(reason: str) -> int:
    return GUARD_REASONS.index(reason)


class TimeBudget:
    """A deadline = start + budget - reserve; predicts whether the next piece of work would cross it."""

    def __init__(self, time_min: float | None, predict_reserve_min: float, started_at: float):
        usable_s = math.inf if time_min is None else (time_min - predict_reserve_min) * 60.0
        self.deadline = started_at + usable_s  # time.time() seconds
        self.step_s = 0.0   # recent optimizer-step time (data loading included)
        self.val_s = 0.0    # last validation time
        self.save_s = 0.5   # last checkpoint write time; a guess until the first save is measured
        # After the last checkpoint: summary, loss-curve PNG (0.7 s) and the interpreter's exit with torch
        # loaded (0.8-1.3 s), measured on 2 loaded cores; a 1 s guess made a 20 s budget end at 22 s.
        self.finish_s = 2.0

    def observe_step(self, seconds: float) -> None:
        # Fast to rise, slow to fall: one slow step (a worker stall, a GC) must not be forgotten at once.
        self.step_s = seconds if seconds > self.step_s else 0.9 * self.step_s + 0.1 * seconds

    def remaining(self) -> float:
        return self.deadline - time.time()

    def crosses(self, work_s: float) -> bool:
        """Would `work_s` more seconds, the final checkpoint and the finish (+2%) pass the deadline?"""
        return (work_s + self.save_s + self.finish_s) * 1.02 > self.remaining()


class HostMemory:
    """Polls the resident set size of this process and its children (DataLoader workers)."""

    def __init__(self, limit_gib: float | None, poll_s: float = 1.0):
        total = psutil.virtual_memory().total
        self.limit = limit_gib * GIB if limit_gib is not None else 0.9 * total
        self.poll_s = poll_s
        self.peak = 0
        self.current = 0
        self._last = -math.inf
        self._proc = psutil.Process()

    def over(self) -> bool:
        now = time.monotonic()
        if now - self._last >= self.poll_s:
            self._last = now
            self.current = self.rss()
            self.peak = max(self.peak, self.current)
        return self.current > self.limit

    def rss(self) -> int:
        total = self._proc.memory_info().rss
        for child in self._proc.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.Error:  # a worker that has just exited
                pass
        return total


def disk_shortfall(folder: Path, needed_bytes: int, min_free_gib: float) -> str | None:
    """A one-line reason when writing `needed_bytes` would leave less than `min_free_gib` free."""
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    left = (free - needed_bytes) / GIB
    if left >= min_free_gib:
        return None
    return (f"{folder}: a {needed_bytes / GIB:.3f} GiB checkpoint would leave {left:.2f} GiB free, below "
            f"trainer.budgets.min_free_disk_gib={min_free_gib}; free space or lower the budget")


class NonFinite:
    """Counts skipped steps; trips after `limit` consecutive non-finite steps."""

    def __init__(self, limit: int, skipped: int = 0):
        self.limit = limit
        self.consecutive = 0
        self.skipped = skipped

    def record(self, finite: bool) -> bool:
        """Record one step; True when the run must stop."""
        if finite:
            self.consecutive = 0
            return False
        self.consecutive += 1
        self.skipped += 1
        return self.consecutive >= self.limit


def cap_gpu_memory(device: torch.device, budget_gib: float | None) -> None:
    """Make the caching allocator raise OutOfMemoryError beyond the budget instead of growing past it."""
    if device.type != "cuda" or budget_gib is None:
        return
    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, budget_gib * GIB / total), device)


def gpu_peak_gib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else 0.0
