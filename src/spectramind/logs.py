"""Lifecycle events as JSON lines in the run folder, and the human log `logs/v50_debug_log.md`."""

from __future__ import annotations

import json
import time
from pathlib import Path

from spectramind import files

DEBUG_LOG = Path("logs") / "v50_debug_log.md"


class EventLog:
    """Appends `{"time", "event", ...}` lines to `<run_dir>/events.jsonl`."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / "events.jsonl"

    def emit(self, event: str, **fields) -> None:
        record = {"time": round(time.time(), 3), "event": event, **fields}
        files.append_line(self.path, json.dumps(record, sort_keys=True, default=str))


def debug_log(output_dir: str | Path, command: str, run_hash: str, message: str) -> None:
    """One Markdown list line per command outcome, readable without tooling."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    files.append_line(Path(output_dir) / DEBUG_LOG, f"- {stamp} `{command}` run `{run_hash}`: {message}")
