"""The trainer profile as typed values: field names are the keys of `configs/trainer/*.yaml`, one to one."""

from __future__ import annotations

from dataclasses import dataclass, field, fields


@dataclass
class GradClip:
    mode: str = "norm"       # norm, value or none; applied after unscaling
    value: float = 1.0       # max total norm, or max absolute gradient


@dataclass
class EarlyStopping:
    enabled: bool = True
    monitor: str = "val/loss"  # val/loss or val/<loss part>; also picks best.pt
    mode: str = "min"
    patience: int = 10         # validations without improvement before stopping
    min_delta: float = 0.0


@dataclass
class Loader:
    num_workers: int = 0
    pin_memory: bool = False
    prefetch_factor: int | None = None


@dataclass
class Budgets:
    time_min: float | None = None
    predict_reserve_min: float = 0.0
    gpu_memory_gib: float | None = None
    host_memory_gib: float | None = None
    min_free_disk_gib: float = 1.0
    max_nonfinite_steps: int = 20


@dataclass
class TrainerConfig:
    name: str = "custom"
    device: str = "auto"
    devices: int = 1
    max_epochs: int = 1
    batch_size: int = 32
    accumulate_grad_batches: int = 1
    max_samples: int | None = None
    precision: str = "fp32"
    grad_clip: GradClip = field(default_factory=GradClip)
    val_every_n_epochs: int = 1
    checkpoint_every_n_epochs: int = 1
    keep_last_k: int = 1
    early_stopping: EarlyStopping = field(default_factory=EarlyStopping)
    compile: bool = False
    deterministic: bool = False
    log_every_n_steps: int = 10
    progress_bar: bool = True
    loader: Loader = field(default_factory=Loader)
    budgets: Budgets = field(default_factory=Budgets)

    def __post_init__(self):
        # A yaml section arrives as plain dicts; nested ones become their dataclasses.
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, dict):
                setattr(self, f.name, {"grad_clip": GradClip, "early_stopping": EarlyStopping,
                                       "loader": Loader, "budgets": Budgets}[f.name](**value))

    @property
    def effective_batch(self) -> int:
        """Samples per optimizer step (per process); fixed for the run, whatever OOM recovery does."""
        return self.batch_size * self.accumulate_grad_batches
