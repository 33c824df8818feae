"""The one way every working subcommand starts and ends: compose, validate, hash, snapshot, index."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from spectramind.config import environment, runhash
from spectramind.config.compose import compose, override_keys
from spectramind.config.schema import validate
from spectramind.logs import EventLog, debug_log


@dataclass
class Stage:
    command: str
    cfg: dict
    overrides: list[str]
    run_hash: str
    run_dir: Path
    events: EventLog = field(repr=False)

    @property
    def output_dir(self) -> Path:
        return Path(self.cfg["paths"]["output_dir"])

    def finish(self, status: str, **summary) -> None:
        """Record the outcome in the events, the outputs index and the human log."""
        self.events.emit("stop", status=status, **summary)
        runhash.index_run(self.output_dir, self.run_hash, {"command": self.command, "status": status, **summary})
        detail = ", ".join(f"{k}={v}" for k, v in summary.items())
        debug_log(self.output_dir, self.command, self.run_hash, f"{status}" + (f" ({detail})" if detail else ""))


def data_fingerprint(data: dict) -> str:
    """Simulated data is defined by its config (already hashed); a real folder by its files."""
    if data.get("name") == "synthetic":
        return ""
    return runhash.folder_fingerprint(data["root"])


def resolve(command: str, overrides: list[str] | tuple[str, ...] = ()) -> tuple[dict, str]:
    """The validated config and its run hash; writes nothing."""
    cfg = compose(overrides)
    validate(cfg, prefer=override_keys(overrides))
    return cfg, runhash.run_hash(cfg, command, data_fingerprint(cfg["data"]))


def start(command: str, overrides: list[str] | tuple[str, ...] = (), with_torch: bool = True) -> Stage:
    """Resolve, then snapshot the config into `outputs/runs/<hash>/` and log the start."""
    cfg, hash_ = resolve(command, overrides)
    folder = runhash.snapshot(cfg, list(overrides), command, hash_, environment.describe(with_torch))
    events = EventLog(folder)
    events.emit("start", command=command, run_hash=hash_, overrides=list(overrides))
    return Stage(command, cfg, list(overrides), hash_, folder, events)
