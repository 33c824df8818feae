"""Cost of the content fingerprint of a data folder: cold (every byte hashed), warm (digest cache hit) and
the first call that fills the cache, against the previous stat-only fingerprint (relative paths and sizes,
the removed `runhash.folder_fingerprint`: paths and sizes, no byte read) measured in the same run.

Builds a temporary tree of random files (mtimes an hour back, so the racy-timestamp rule lets them be
cached). The files were just written, so the cold figure reads from the page cache: it is the hashing
cost, not the disk's. Prints one JSON object: medians of --repeats runs, and each as a ratio to the
stat-only walk (the machines are shared, so ratios travel better than seconds).
Usage: python benchmarks/bench_fingerprint.py [--files N] [--mib-per-file M] [--repeats R]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import xxhash

from spectramind import files


def stat_walk(root: Path) -> str:
    """The previous fingerprint, kept as the reference: relative paths and sizes, no file is read."""
    h = xxhash.xxh3_64()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(f"{path.relative_to(root).as_posix()}:{path.stat().st_size}\n".encode())
    return h.hexdigest()

def make_tree(root: Path, n_files: int, size: int) -> int:
    old = time.time_ns() - 3600 * 10**9
    for i in range(n_files):
        path = root / f"part{i % 10}" / f"file{i:04d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))
        os.utime(path, ns=(old, old))
    return n_files * size


def median_s(call: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--mib-per-file", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root, cache = Path(tmp) / "tree", Path(tmp) / "fingerprint-cache.json"
        total = make_tree(root, args.files, int(args.mib_per_file * 2**20))
        stat_walk_s = median_s(lambda: stat_walk(root), args.repeats)
        cold_s = median_s(lambda: files.tree_fingerprint(root), args.repeats)
        started = time.perf_counter()
        filled = files.tree_fingerprint(root, cache)
        fill_s = time.perf_counter() - started
        warm_s = median_s(lambda: files.tree_fingerprint(root, cache), args.repeats)
        assert files.tree_fingerprint(root, cache) == files.tree_fingerprint(root) == filled
        result = {
            "benchmark": "tree_fingerprint of a data folder",
            "cpus": os.cpu_count(),
            "load_average_1m": round(os.getloadavg()[0], 2),
            "files": args.files,
            "bytes": total,
            "repeats": args.repeats,
            "stat_walk_s": round(stat_walk_s, 5),
            "cold_s": round(cold_s, 4),
            "fill_cache_s": round(fill_s, 4),
            "warm_s": round(warm_s, 5),
            "cold_gib_per_s": round(total / cold_s / 2**30, 2),
            "cache_bytes": cache.stat().st_size,
            "warm_over_stat_walk": round(warm_s / stat_walk_s, 2),
            "cold_over_stat_walk": round(cold_s / stat_walk_s, 1),
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
