"""The one way every working subcommand starts and ends: compose, validate, type, hash, snapshot, index."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from spectramind.config import environment, provenance, runhash
from spectramind.config.compose import compose, override_keys
from spectramind.config.schema import validate
from spectramind.config.settings import Settings, build
from spectramind.errors import ConfigError
from spectramind.logs import EventLog, debug_log

PIPELINE = "pipeline"          # configs/pipeline.yaml: the DVC pipeline's primary config
EXPERIMENT_ENV = "DVC_EXP_NAME"  # set by `dvc exp run`, which has just composed params.yaml itself


@dataclass
class Stage:
    command: str
    cfg: dict
    settings: Settings
    overrides: list[str]
    run_hash: str
    run_dir: Path
    events: EventLog = field(repr=False)

    @property
    def output_dir(self) -> Path:
        return Path(self.settings.paths.output_dir)

    def finish(self, status: str, **summary) -> None:
        """Record the outcome in the events, the outputs index and the human log."""
        self.events.emit("stop", status=status, **summary)
        runhash.index_run(self.output_dir, self.run_hash, {"command": self.command, "status": status, **summary})
        detail = ", ".join(f"{k}={v}" for k, v in summary.items())
        debug_log(self.output_dir, self.command, self.run_hash, f"{status}" + (f" ({detail})" if detail else ""))


def load(overrides: list[str] | tuple[str, ...] = (), params: str | None = None) -> tuple[dict, Settings]:
    """The validated config and its typed settings; writes nothing.

    params: a composed config file (DVC's params.yaml) to run instead of composing `configs/config.yaml`;
    `overrides` are then plain key=value changes on top of it. Outside `dvc exp run` the file must equal a
    fresh composition of configs/pipeline.yaml, so an edit under configs/ cannot run with stale values.
    """
    if params is None:
        cfg = compose(overrides)
        validate(cfg, prefer=override_keys(overrides))
        return cfg, build(cfg)
    import yaml
    from omegaconf import OmegaConf

    try:
        cfg = yaml.safe_load(Path(params).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{params}: cannot read a composed config ({str(e).splitlines()[0]})") from e
    if not isinstance(cfg, dict):
        raise ConfigError(f"{params}: expected a mapping of config sections, got {type(cfg).__name__}")
    if EXPERIMENT_ENV not in os.environ:
        fresh = compose((), config_name=PIPELINE)
        stale = next((k for k in sorted(set(fresh) | set(cfg)) if fresh.get(k) != cfg.get(k)), None)
        if stale is not None:
            raise ConfigError(f"{params}: section '{stale}' differs from configs/{PIPELINE}.yaml; recompose it "
                              f"with `spectramind config params --out {params}`")
    merged = OmegaConf.merge(OmegaConf.create(cfg), OmegaConf.from_dotlist(list(overrides)))
    cfg = OmegaConf.to_container(merged, resolve=True)
    validate(cfg, prefer=tuple(o.split("=", 1)[0] for o in overrides))
    return cfg, build(cfg)


def start(command: str, cfg: dict, settings: Settings, overrides: list[str], data_fingerprint: str,
          with_torch: bool = True) -> Stage:
    """Snapshot the config into `outputs/runs/<hash>/` and log the start."""
    hash_ = run_hash(command, cfg, data_fingerprint)
    env = {**environment.describe(with_torch),
           "code": {"version": provenance.__version__, "digest": provenance.code_digest(command),
                    "files": len(provenance.stage_sources(command))},
           "data_fingerprint": data_fingerprint}  # what `spectramind reproduce` compares the rebuilt inputs with
    folder = runhash.snapshot(cfg, list(overrides), command, hash_, env)
    events = EventLog(folder)
    events.emit("start", command=command, run_hash=hash_, overrides=list(overrides))
    return Stage(command, cfg, settings, list(overrides), hash_, folder, events)


def run_hash(command: str, cfg: dict, data_fingerprint: str) -> str:
    return runhash.run_hash(cfg, command, data_fingerprint, provenance.code_digest(command))
