"""Work over visits or planets: a spawn-started process pool, with the progress bar.

The pool's workers never outlive the work: they die with their parent (a parent-death signal, or a
watchdog where the kernel has none), leave SIGTERM/SIGINT to it, and are killed when the work ends
early (a stop request, a worker's error, the consumer breaking off).
"""

from __future__ import annotations

import concurrent.futures as cf
import ctypes
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator

from spectramind import signals
from spectramind.progress import bar

PR_SET_PDEATHSIG = 1  # linux/prctl.h
POLL_S = 0.2          # how often a wait for results looks for a stop request


def imap_unordered(
    fn: Callable, items: list, num_workers: int, label: str, progress: bool = True, unit: str = ""
) -> Iterator[tuple[int, object]]:
    """Yield (index, fn(item)) as each finishes; in-process when num_workers <= 1.

    Spawn, not fork: the parent may hold torch's thread pools, which a forked child can deadlock on.
    A worker's exception (e.g. DataError naming a file) is re-raised here and cancels the rest; a stop
    request (spectramind.signals) raises Stopped between two items, so the consumer is never mid-item.
    """
    with bar(label, len(items), progress, unit) as advance:
        if num_workers <= 1 or len(items) <= 1:
            for i, item in enumerate(items):
                signals.raise_if_requested()
                yield i, fn(item)
                advance()
            return
        ctx = multiprocessing.get_context("spawn")
        pool = cf.ProcessPoolExecutor(max_workers=min(num_workers, len(items)), mp_context=ctx,
                                      initializer=_worker_start, initargs=(os.getpid(),))
        try:
            with signals.deferred():  # the workers start during the submits
                futures = {pool.submit(fn, item): i for i, item in enumerate(items)}
            pending = set(futures)
            while pending:
                signals.raise_if_requested()
                done, pending = cf.wait(pending, timeout=POLL_S, return_when=cf.FIRST_COMPLETED)
                for fut in done:
                    yield futures[fut], fut.result()
                    advance()
        except BaseException:
            _kill(pool)
            raise
        pool.shutdown()


def in_order(results: Iterator[tuple[int, object]]) -> Iterator[tuple[int, object]]:
    """imap_unordered's (index, result) pairs by index, each held only until those before it have come: a
    file written from them has the same bytes whichever worker finished first."""
    held, expected = {}, 0
    for i, result in results:
        held[i] = result
        while expected in held:
            yield expected, held.pop(expected)
            expected += 1


def _kill(pool: cf.ProcessPoolExecutor) -> None:
    """End the pool now: queued work cancelled, running work killed (its result is not wanted)."""
    workers = list((pool._processes or {}).values())  # no public way to stop a running task before 3.14
    pool.shutdown(wait=False, cancel_futures=True)
    for process in workers:
        process.kill()
    for process in workers:
        process.join()
    pool.shutdown()


def _worker_start(parent: int) -> None:
    """Pool worker set-up: SIGTERM/SIGINT left to the parent, and death with the parent."""
    signals.leave_to_parent()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # Linux: the kernel kills us when the parent goes
    except (OSError, AttributeError):
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    if os.getppid() != parent:  # it died before the line above could take effect
        os._exit(1)


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)
