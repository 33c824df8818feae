"""The one progress bar: rich, on stderr, drawn only on a terminal (logs and CI stay clean)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator


class ProgressBar:
    """A bar over one task at a time; `start` replaces the task (a new epoch), `advance` moves it."""

    def __init__(self, enabled: bool = True):
        self._progress = None
        self._task = None
        if enabled and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
            self._progress = Progress(*columns, console=Console(stderr=True), transient=True)
            self._progress.start()

    def start(self, label: str, total: int, done: int = 0) -> None:
        if self._progress is not None:
            if self._task is not None:
                self._progress.remove_task(self._task)
            self._task = self._progress.add_task(label, total=total, completed=done)

    def advance(self, n: int = 1) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.advance(self._task, n)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()


@contextlib.contextmanager
def bar(label: str, total: int, enabled: bool = True) -> Iterator[Callable[[], None]]:
    """Yield `advance()` over `total` items of one piece of work."""
    progress = ProgressBar(enabled)
    progress.start(label, total)
    try:
        yield progress.advance
    finally:
        progress.close()
