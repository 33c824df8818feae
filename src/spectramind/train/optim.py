"""Schedulers that torch composes from its own classes but that a flat config cannot express."""

from __future__ import annotations

import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_epochs: int, max_epochs: int,
                  start_factor: float = 0.1, eta_min: float = 0.0) -> torch.optim.lr_scheduler.LRScheduler:
    """Linear warm-up for `warmup_epochs`, then cosine decay to `eta_min` at `max_epochs` (per epoch)."""
    warmup = min(warmup_epochs, max_epochs - 1)  # a run shorter than the warm-up still ends on the cosine
    cosine = CosineAnnealingLR(optimizer, T_max=max(1, max_epochs - warmup), eta_min=eta_min)
    if warmup == 0:
        return cosine
    linear = LinearLR(optimizer, start_factor=start_factor, end_factor=1.0, total_iters=warmup)
    return SequentialLR(optimizer, schedulers=[linear, cosine], milestones=[warmup])
