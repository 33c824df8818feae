"""Work over visits or planets: a spawn-started process pool, with the progress bar."""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
from collections.abc import Callable, Iterator

from spectramind.progress import bar


def imap_unordered(
    fn: Callable, items: list, num_workers: int, label: str, progress: bool = True
) -> Iterator[tuple[int, object]]:
    """Yield (index, fn(item)) as each finishes; in-process when num_workers <= 1.

    Spawn, not fork: the parent may hold torch's thread pools, which a forked child can deadlock on.
    A worker's exception (e.g. DataError naming a file) is re-raised here and cancels the rest.
    """
    with bar(label, len(items), progress) as advance:
        if num_workers <= 1 or len(items) <= 1:
            for i, item in enumerate(items):
                yield i, fn(item)
                advance()
            return
        ctx = multiprocessing.get_context("spawn")
        with cf.ProcessPoolExecutor(max_workers=min(num_workers, len(items)), mp_context=ctx) as pool:
            futures = {pool.submit(fn, item): i for i, item in enumerate(items)}
            try:
                for fut in cf.as_completed(futures):
                    yield futures[fut], fut.result()
                    advance()
            except BaseException:
                for fut in futures:
                    fut.cancel()
                raise
