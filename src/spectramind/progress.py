"""The one progress display of every long stage, on stderr.

On a terminal: a rich bar (done/total, the caller's fields such as the loss, ETA). Anywhere else (a log
file, CI, a Kaggle notebook's saved output) a bar would be noise, so: one plain line every `every_s`
seconds and one when the work ends, each with done/total, the fields, the rate and the ETA.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator

_every_s: float | None = None  # set by the command line (config `log_every_s`); None: no plain lines


def configure(every_s: float | None) -> None:
    """The interval of plain lines for the bars that are given none (the data stages, fit, predict)."""
    global _every_s
    _every_s = every_s


class ProgressBar:
    """A bar over one task at a time; `start` replaces the task, `advance` moves it and updates its fields
    (they stay until given again: a loss logged every N steps shows until the next one)."""

    def __init__(self, enabled: bool = True, every_s: float | None = None):
        self._progress = None
        self._task = None
        self._every_s = None
        self._label, self._unit, self._total, self._done, self._fields = "", "", 0, 0, {}
        self._first = self._printed = 0
        self._started = self._last_line = 0.0
        if not enabled:
            return
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
            from rich.table import Column

            console = Console(stderr=True)
            # The fields last and cut to what the line has left (~50 columns go to the label, the bar, the
            # count and the time remaining); left to rich, long fields squeeze those out instead.
            info = Column(no_wrap=True, overflow="ellipsis", max_width=max(console.width - 50, 10))
            columns = (TextColumn("{task.description}"), BarColumn(bar_width=20), MofNCompleteColumn(),
                       TimeRemainingColumn(), TextColumn("{task.fields[info]}", table_column=info))
            self._progress = Progress(*columns, console=console, transient=True)
            self._progress.start()
        else:
            self._every_s = every_s if every_s is not None else _every_s

    def start(self, label: str, total: int, done: int = 0, unit: str = "") -> None:
        self._end_task()
        self._label, self._unit, self._total, self._done, self._fields = label, unit, total, done, {}
        self._first = self._printed = done
        self._started = self._last_line = time.monotonic()
        if self._progress is not None:
            if self._task is not None:
                self._progress.remove_task(self._task)
            self._task = self._progress.add_task(label, total=total, completed=done, info="")

    def advance(self, n: int = 1, **fields) -> None:
        self._done += n
        self._fields.update(fields)
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, advance=n, info=self._info())
        elif self._every_s is not None and time.monotonic() - self._last_line >= self._every_s:
            self._line()

    def close(self) -> None:
        self._end_task()
        if self._progress is not None:
            self._progress.stop()

    def _end_task(self) -> None:
        if self._every_s is not None and self._done != self._printed:
            self._line()

    def _info(self) -> str:
        return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in self._fields.items())

    def _line(self) -> None:
        now = time.monotonic()
        elapsed = now - self._started
        rate = (self._done - self._first) / elapsed if elapsed > 0 else 0.0
        eta = _clock((self._total - self._done) / rate) if rate > 0 else "?"
        unit = f" {self._unit}" if self._unit else ""
        percent = f" ({100 * self._done / self._total:.0f}%)" if self._total else ""
        parts = [f"{self._done}/{self._total}{unit}{percent}", self._info(), f"{rate:.3g}{unit}/s",
                 f"elapsed {_clock(elapsed)}", f"ETA {eta}"]
        print(f"{self._label}: " + ", ".join(p for p in parts if p), file=sys.stderr, flush=True)
        self._last_line, self._printed = now, self._done


def _clock(seconds: float) -> str:
    minutes, s = divmod(int(round(seconds)), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{s:02d}"


@contextlib.contextmanager
def bar(label: str, total: int, enabled: bool = True, unit: str = "") -> Iterator[Callable[[], None]]:
    """Yield `advance()` over `total` items of one piece of work."""
    progress = ProgressBar(enabled)
    progress.start(label, total, unit=unit)
    try:
        yield progress.advance
    finally:
        progress.close()
