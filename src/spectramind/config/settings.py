"""Typed settings: one frozen dataclass per config section, built once from the validated config.

No field has a default: the YAML under `configs/` is the only home of a default, and a test keeps the
YAML keys, the schema's properties and these fields the same set for every section. Below the CLI no
function takes the raw config dict; each stage takes a `Settings` and its inputs.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any

from spectramind.errors import ConfigError


@dataclass(frozen=True)
class Paths:
    output_dir: str            # root of runs/, logs/ and the run index


@dataclass(frozen=True)
class Simulate:
    n_train: int
    n_test: int
    two_visit_fraction: float
    airs_reads: int
    fgs1_reads: int
    cosmic_ray_rate: float
    jitter_px: float
    star_table: str | None
    full_size: bool            # the real read counts (11,250 AIRS / 135,000 FGS1 reads per visit)
    limb_darkening: str        # claret | quadratic (the fit's own law)
    orbit_sma_sigma: float     # relative scatter of the true a/Rs around the star info's
    orbit_inc_sigma_deg: float
    drift: str                 # nonseparable | separable
    psf: str                   # measured | simple
    nonlinearity: str          # real | weak
    read_noise: str            # measured | simple
    per_visit_maps: bool
    atmosphere: str            # cloudy | simple


@dataclass(frozen=True)
class Calibrate:
    adc_offset_sign: int
    mask_hot: bool
    hot_sigma: float
    linearity: bool
    dark_dt: str
    flat_stage: str
    airs_bin: int
    fgs1_bin: int
    airs_rows: tuple[int, int]
    fgs1_box: tuple[int, int]
    background_rows: int
    cosmic_sigma: float
    fill_masked: bool
    background_window: int
    background_wings: bool
    extraction: str
    profile_smooth: int
    jitter_shape: bool


@dataclass(frozen=True)
class Split:
    val_fraction: float
    test_fraction: float
    folds: int | None          # K >= 2: K-fold cross-validation over the labelled planets; None or 1: one split
    fold: int | None           # under cross-validation, the fold held out as the "test" split (0..K-1)

    def __post_init__(self):
        if self.held_out is None and self.fold is not None:
            raise ConfigError(f"data.split.fold: set only under cross-validation (data.split.folds >= 2), "
                              f"got {self.fold} with data.split.folds={self.folds}")
        if self.held_out is not None and (self.fold is None or self.fold >= self.folds):
            raise ConfigError(f"data.split.fold: expected the fold to hold out, 0 to {self.folds - 1} with "
                              f"data.split.folds={self.folds} (`spectramind cv` runs every fold), got {self.fold}")

    @property
    def held_out(self) -> tuple[int, int] | None:
        """(fold, folds) under cross-validation; None for the single split."""
        return (self.fold, self.folds) if (self.folds or 1) > 1 else None


@dataclass(frozen=True)
class Data:
    name: str
    root: str                  # the raw folder (competition layout)
    store: str                 # the calibrated store
    baseline: str              # the physics baseline's sidecar files for that store
    num_workers: int
    simulate: Simulate | None  # only for the simulated set
    calibrate: Calibrate
    split: Split


@dataclass(frozen=True)
class Fit:
    drift_time_degree: int
    drift_wavelength_degree: int
    use_jitter: bool
    jitter_wavelength_degree: int | None  # None: a free coefficient per bin
    sma_prior_width: float
    inc_prior_width_deg: float
    ld_prior_width: float | None
    outlier_sigma: float
    iterations: int
    t0_grid: int
    red_noise_window: int
    spectral_outlier_sigma: float
    min_transit_snr: float
    edge_margin: float
    max_chi2: float
    fgs1_airs_tolerance: float
    fgs1_airs_sigma: float
    failed_sigma_factor: float
    failed_sigma_min: float
    soft_sigma_factor: float
    sigma_scale: float
    visits_disagree_chi2: float
    calibration_folds: int
    spectral_prior_shrinkage: float | None


@dataclass(frozen=True)
class Target:
    """A section Hydra instantiates (model, loss, optimizer, scheduler): its `_target_`, already checked
    against the schema's allowlist, and the keyword arguments the schema admits for it."""

    target: str
    params: dict[str, Any]

    def instantiate(self, **extra):
        from hydra.utils import instantiate

        from spectramind.config.schema import allowed_targets, check_targets

        node = {"_target_": self.target, **self.params}
        check_targets(node, allowed_targets())  # again here: a Target need not come from a validated config
        return instantiate(node, **extra)


@dataclass(frozen=True)
class GradClip:
    mode: str
    value: float


@dataclass(frozen=True)
class EarlyStopping:
    enabled: bool
    monitor: str
    mode: str
    patience: int
    min_delta: float


@dataclass(frozen=True)
class Loader:
    num_workers: int
    pin_memory: bool
    prefetch_factor: int | None


@dataclass(frozen=True)
class Budgets:
    time_min: float | None
    predict_reserve_min: float
    gpu_memory_gib: float | None
    host_memory_gib: float | None
    min_free_disk_gib: float
    max_nonfinite_steps: int
    min_loss_scale: float


@dataclass(frozen=True)
class Trainer:
    name: str
    device: str
    devices: int | str  # a count, or "auto": every visible GPU (devices.process_count)
    max_epochs: int
    batch_size: int
    accumulate_grad_batches: int
    max_samples: int | None
    precision: str
    grad_clip: GradClip
    val_every_n_epochs: int
    checkpoint_every_n_epochs: int
    keep_last_k: int
    early_stopping: EarlyStopping
    calibrate_outputs: bool    # fit mu/sigma's calibration on the validation split after training
    compile: bool
    deterministic: bool
    log_every_n_steps: int
    progress_bar: bool
    log_every_s: float         # seconds between plain progress lines off a terminal
    loader: Loader
    budgets: Budgets

    @property
    def effective_batch(self) -> int:
        """Samples per optimizer step (per process); fixed for the run, whatever OOM recovery does."""
        return self.batch_size * self.accumulate_grad_batches


@dataclass(frozen=True)
class Predict:
    run: str | None
    split: str
    out: str | None
    batch_size: int
    device: str


@dataclass(frozen=True)
class Evaluate:
    split: str
    plot_planets: int
    out_dir: str | None


@dataclass(frozen=True)
class Reproduce:
    dir: str | None            # where the scratch folder is made (None: the system's temporary folder)
    keep: bool
    rtol: float                # tolerance when either side trained on a GPU (torch.allclose's, the run as reference)
    atol: float


@dataclass(frozen=True)
class JsonlLog:
    """No options: always `metrics.jsonl` in the run folder."""


@dataclass(frozen=True)
class TensorBoardLog:
    """No options: always the run folder's `tensorboard/`."""


@dataclass(frozen=True)
class DvcLiveLog:
    dir: str | None            # None: the run folder's dvclive/; a fixed folder for a DVC stage to declare


@dataclass(frozen=True)
class MlflowLog:
    experiment: str
    tracking_uri: str | None   # None: a file store in the run folder's mlruns/


@dataclass(frozen=True)
class WandbLog:
    project: str
    mode: str                  # offline | online | disabled


@dataclass(frozen=True)
class Logger:
    """The metric backends chosen (`logger=[jsonl,tensorboard]`); None for each one not chosen."""

    jsonl: JsonlLog | None
    tensorboard: TensorBoardLog | None
    dvclive: DvcLiveLog | None
    mlflow: MlflowLog | None
    wandb: WandbLog | None


@dataclass(frozen=True)
class Settings:
    seed: int
    log_every_s: float         # seconds between plain progress lines off a terminal (data stages, fit, predict)
    paths: Paths
    data: Data
    model: Target
    fit: Fit
    loss: Target
    optimizer: Target
    scheduler: Target
    trainer: Trainer
    predict: Predict
    evaluate: Evaluate
    reproduce: Reproduce
    logger: Logger


def build(cfg: dict) -> Settings:
    """Settings from a config the schema has accepted (a mismatch here is a bug, reported by key)."""
    return _build(Settings, cfg, "")


def _build(cls, value, where: str):
    hints = typing.get_type_hints(cls)
    if cls is Target:
        return Target(target=value["_target_"], params={k: v for k, v in value.items() if k != "_target_"})
    names = [f.name for f in dataclasses.fields(cls)]
    if cls is Logger and isinstance(value, dict) and set(value) <= set(names):  # a backend is there when chosen
        value = {n: value.get(n) for n in names}
    if not isinstance(value, dict) or set(value) != set(names):
        got = sorted(value) if isinstance(value, dict) else type(value).__name__
        raise ConfigError(f"{where or '<root>'}: expected the keys {sorted(names)}, got {got}")
    return cls(**{n: _convert(hints[n], value[n], f"{where}.{n}" if where else n) for n in names})


def _convert(hint, value, where: str):
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        hint = options[0]
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    if typing.get_origin(hint) is tuple:
        return tuple(value)
    return value
