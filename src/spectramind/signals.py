"""SIGTERM/SIGINT as a request to stop at the next safe boundary, and child processes that leave both
to their parent.

One request per process: nested `handling()` contexts (the command, each stage, the training loop)
share it, so a signal that comes between two stages is seen by the next one; the handlers in place
before the outermost context come back when it exits, and the request is then forgotten. Work that
polls `requested()` stops where it stands cleanly (between two items, at a step boundary). A second
SIGINT aborts at once.

Children (DataLoader workers, the process pool) ignore both signals, so a signal to the whole process
group (Ctrl-C, a scheduler's SIGTERM) reaches the parent alone, which stops them itself. They start
with both blocked (`deferred`) and ignore them before unblocking (`leave_to_parent`): no window in which
one could kill a child that has just been started.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

from spectramind.errors import Stopped

STOP = (signal.SIGTERM, signal.SIGINT)

_received: str | None = None  # the first stop signal's name while a context is open
_depth = 0
_previous: dict[int, object] = {}


def requested() -> str | None:
    """The name of the stop signal received (SIGTERM, SIGINT), None when none came."""
    return _received


def raise_if_requested() -> None:
    if _received is not None:
        raise Stopped(f"received {_received}")


@contextlib.contextmanager
def handling() -> Iterator[None]:
    """Turn SIGTERM/SIGINT into a stop request for the duration (handlers live in the main thread only)."""
    global _depth, _received
    if _depth == 0:
        _received = None
        if threading.current_thread() is threading.main_thread():
            _previous.update({sig: signal.signal(sig, _handle) for sig in STOP})
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0:
            for sig, handler in _previous.items():
                signal.signal(sig, handler)
            _previous.clear()
            _received = None


def _handle(signum: int, frame) -> None:
    global _received
    if _received is not None and signum == signal.SIGINT:
        raise KeyboardInterrupt("second SIGINT: aborting without a checkpoint")
    _received = signal.Signals(signum).name


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold SIGTERM/SIGINT back in this thread while it starts child processes: they inherit the block
    (through fork and exec alike) until `leave_to_parent`; this process gets its own ones afterwards."""
    if not hasattr(signal, "pthread_sigmask"):  # not POSIX: no masks to inherit
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, STOP)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def leave_to_parent() -> None:
    """In a child process: ignore SIGTERM/SIGINT (a pending one is discarded), then unblock them."""
    for sig in STOP:
        signal.signal(sig, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP)
