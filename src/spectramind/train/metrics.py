"""Observability: the metric backends the loop logs to (`logger=[...]`), and the loss-curve PNG.

A backend meets the loop through `MetricsLogger` (log_metrics, close); nothing is opened before the first
record, so a backend costs nothing on a run that finds itself complete or fails at set-up. The optional
ones are imported only then; `check` refuses a chosen one whose package is missing before any work starts.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from spectramind import files
from spectramind.config.settings import Logger, MlflowLog, WandbLog
from spectramind.errors import ConfigError

# The backend's module, for the check that it is installed (each is an extra: pip install 'spectramind[<name>]').
OPTIONAL = {"tensorboard": "tensorboard", "dvclive": "dvclive", "mlflow": "mlflow", "wandb": "wandb"}


class MetricsLogger(Protocol):
    def log_metrics(self, metrics: dict, step: int) -> None: ...

    def close(self) -> None: ...


class MetricsLog:
    """The loop's one call site: each record (`step` plus metrics) goes to every backend; all are closed."""

    def __init__(self, loggers: Sequence[MetricsLogger] = ()):
        self.loggers = list(loggers)

    def log(self, record: dict) -> None:
        metrics = {k: v for k, v in record.items() if k != "step"}
        for logger in self.loggers:
            logger.log_metrics(metrics, record["step"])

    def close(self) -> None:
        with contextlib.ExitStack() as stack:  # every backend is closed even when one of them fails
            for logger in self.loggers:
                stack.callback(logger.close)


def check(chosen: Logger) -> None:
    """Refuse a chosen backend whose package is not installed, naming the extra that brings it."""
    for name, module in OPTIONAL.items():
        if getattr(chosen, name) is not None and importlib.util.find_spec(module) is None:
            raise ConfigError(f"logger: {name} needs the {module} package, which is not installed; "
                              f"pip install 'spectramind[{name}]', or leave it out of logger=[...]")


def build(chosen: Logger, run_dir: Path, run_hash: str) -> list[MetricsLogger]:
    """The chosen backends of one run, writing into its folder."""
    run_dir = Path(run_dir)
    backends: list[MetricsLogger] = []
    if chosen.jsonl is not None:
        backends.append(JsonLines(run_dir / "metrics.jsonl"))
    if chosen.tensorboard is not None:
        backends.append(TensorBoard(run_dir / "tensorboard"))
    if chosen.dvclive is not None:
        folder = Path(chosen.dvclive.dir) if chosen.dvclive.dir else run_dir / "dvclive"
        backends.append(DvcLive(folder, run_hash))
    if chosen.mlflow is not None:
        backends.append(Mlflow(chosen.mlflow, run_dir, run_hash))
    if chosen.wandb is not None:
        backends.append(Wandb(chosen.wandb, run_dir, run_hash))
    return backends


def _scalars(metrics: dict) -> dict[str, float]:
    """The finite numbers of a record: what the optional backends can plot."""
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


class JsonLines:
    """`metrics.jsonl`: every record whole, non-finite values included (they say a step was skipped)."""

    def __init__(self, path: Path):
        self.path = path

    def log_metrics(self, metrics: dict, step: int) -> None:
        files.append_line(self.path, json.dumps({"step": step, **metrics}, sort_keys=True, allow_nan=True))

    def close(self) -> None:
        pass  # each line is appended and closed as it is written


class TensorBoard:
    def __init__(self, folder: Path):
        self.folder = folder

    @functools.cached_property
    def _writer(self):
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(str(self.folder))

    def log_metrics(self, metrics: dict, step: int) -> None:
        for key, value in _scalars(metrics).items():
            self._writer.add_scalar(key, value, step)

    def close(self) -> None:
        if "_writer" in vars(self):
            self._writer.close()


class DvcLive:
    """DVCLive's files in `folder`, with the run hash as its one param (params.yaml): a resumed run appends
    to its own curves, and any other run wipes the folder first, since a fixed folder (logger.dvclive.dir)
    is shared by every run that names it and holds the latest one's curves."""

    def __init__(self, folder: Path, run_hash: str):
        self.folder, self.run_hash = folder, run_hash

    @functools.cached_property
    def _live(self):
        import yaml
        from dvclive import Live

        params = self.folder / "params.yaml"
        mine = params.is_file() and (yaml.safe_load(params.read_text(encoding="utf-8")) or {}).get(
            "run_hash") == self.run_hash
        # No dvc.yaml and no experiment of its own: a run folder can lie inside a DVC stage's outputs, where
        # DVC refuses a stage file, and `dvc exp run` records the experiment itself.
        live = Live(str(self.folder), resume=mine, save_dvc_exp=False, dvcyaml=False)
        live.log_param("run_hash", self.run_hash)
        return live

    def log_metrics(self, metrics: dict, step: int) -> None:
        self._live.step = step
        for key, value in _scalars(metrics).items():
            self._live.log_metric(key, value)
        self._live.sync()  # metrics.json holds the latest values even if the run is killed

    def close(self) -> None:
        if "_live" in vars(self):
            self._live.end()


class Mlflow:
    """One MLflow run per training run (tagged with its run hash, so a resumed run goes on logging to it)."""

    def __init__(self, options: MlflowLog, run_dir: Path, run_hash: str):
        self.uri = options.tracking_uri or (run_dir / "mlruns").resolve().as_uri()
        self.experiment, self.run_hash = options.experiment, run_hash

    @functools.cached_property
    def _run(self):
        from mlflow import MlflowClient

        if self.uri.startswith("file:"):  # MLflow 3 refuses its file store (maintenance mode) unless opted in
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        client = MlflowClient(self.uri)
        experiment = client.get_experiment_by_name(self.experiment)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(self.experiment)
        found = client.search_runs([experiment_id], f"tags.run_hash = '{self.run_hash}'", max_results=1)
        run = found[0] if found else client.create_run(experiment_id, run_name=self.run_hash,
                                                         tags={"run_hash": self.run_hash})
        return client, run.info.run_id

    def log_metrics(self, metrics: dict, step: int) -> None:
        from mlflow.entities import Metric

        client, run_id = self._run
        now_ms = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(k, v, now_ms, step) for k, v in _scalars(metrics).items()])

    def close(self) -> None:
        if "_run" in vars(self):
            client, run_id = self._run
            client.set_terminated(run_id)


class Wandb:
    """A W&B run with the run hash as its id (a resumed run continues it), files in the run folder's wandb/."""

    def __init__(self, options: WandbLog, run_dir: Path, run_hash: str):
        self.options, self.run_dir, self.run_hash = options, run_dir, run_hash

    @functools.cached_property
    def _run(self):
        import wandb

        self.run_dir.mkdir(parents=True, exist_ok=True)
        # console off: W&B would otherwise wrap stdout and stderr, where the progress lines go.
        return wandb.init(project=self.options.project, mode=self.options.mode, dir=str(self.run_dir),
                          id=self.run_hash, name=self.run_hash, resume="allow",
                          settings=wandb.Settings(console="off", silent=True))

    def log_metrics(self, metrics: dict, step: int) -> None:
        self._run.log(_scalars(metrics), step=step)

    def close(self) -> None:
        if "_run" in vars(self):
            self._run.finish()


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
    with files.atomic_path(png) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return png
