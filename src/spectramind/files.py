"""Files: atomic writes (a kill at any moment leaves the previous good file), locks, tolerant reads,
and a content fingerprint of a folder tree with a stat-checked digest cache."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import xxhash

from spectramind.errors import DataError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside `path` (which must be absent or empty); rename it to `path` only if
    the block succeeds, so a failure leaves no folder that looks complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield staging
        staging.chmod(0o755)  # mkdtemp makes it private; results are meant to be shared
        if path.exists():
            path.rmdir()
        os.replace(staging, path)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def locked(path: str | os.PathLike, waiting: Callable[[], None] | None = None) -> Iterator[None]:
    """An exclusive advisory lock on `path`.lock, held for the block (serialises read-modify-write).

    `waiting()` is called once when another process holds the lock, before waiting for it."""
    lock = Path(f"{path}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting is not None:
                waiting()
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def require_free_space(folder: str | os.PathLike, needed_bytes: int, what: str) -> None:
    """Raise DataError when the disk under `folder` has less than `needed_bytes` free for `what`."""
    free = shutil.disk_usage(folder).free
    if free < needed_bytes:
        raise DataError(f"{folder}: the disk is full ({free / 2**20:.1f} MiB free, {what} needs "
                        f"{needed_bytes / 2**20:.1f} MiB); free space or set paths.output_dir elsewhere")


def read_json(path: str | os.PathLike) -> dict:
    """A JSON object from `path`, or {} when the file is missing, unreadable or not an object
    (for reports that list what is there and skip what is not)."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def update_json(path: str | os.PathLike, change: Callable[[dict], None]) -> dict:
    """Read a JSON object, apply `change` in place and write it back atomically, under a lock."""
    path = Path(path)
    with locked(path):
        data = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
        change(data)
        write_json(path, data)
    return data


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append one line with a single write call (O_APPEND keeps concurrent lines whole)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, (line.rstrip("\n") + "\n").encode("utf-8"))
    finally:
        os.close(fd)


CACHE_VERSION = 1
CHUNK = 4 << 20
RACY_NS = 2_000_000_000  # an entry hashed this soon after its mtime could be rewritten within the same tick
_STAT_KEYS = ("size", "mtime_ns", "inode", "device")


def file_digest(path: str | os.PathLike) -> str:
    """xxh3-128 of a file's bytes, read in CHUNK pieces so a multi-GB file never sits in memory."""
    h = xxhash.xxh3_128()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _entries_digest(entries: dict) -> str:
    return xxhash.xxh3_128(json.dumps(entries, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _read_cache(path: Path) -> dict | None:
    """The cache's entries, or None when it is missing, unreadable, of another version or fails its own digest."""
    try:
        data = json.loads(path.read_bytes())
        entries = data["entries"]
        if data["version"] == CACHE_VERSION and data["digest"] == _entries_digest(entries):
            return entries
    except (OSError, ValueError, TypeError, KeyError):
        pass
    return None


def _files_under(root: Path) -> list[tuple[str, Path, os.stat_result]]:
    """(relative POSIX path, path, stat) of every regular file, symlinked files included; symlinked folders
    are not entered, so a link cycle cannot loop."""
    if not root.is_dir():
        return [(root.name, root, root.stat())] if root.is_file() else []
    found = []
    for folder, _, names in os.walk(root):
        for name in names:
            path = Path(folder, name)
            with contextlib.suppress(OSError):  # a dangling link, or a file gone mid-walk
                st = path.stat()
                if stat.S_ISREG(st.st_mode):
                    found.append((path.relative_to(root).as_posix(), path, st))
    return sorted(found, key=lambda item: item[0])


def _merge_cache(cache: Path, changes: dict[str, dict | None]) -> None:
    """Apply `changes` (None drops an entry) to the cache as it is on disk now, so what another process
    wrote since this one read it is kept."""
    with locked(cache):
        current = _read_cache(cache)
        entries = dict(current or {})
        for key, entry in changes.items():
            if entry is None:
                entries.pop(key, None)
            else:
                entries[key] = entry
        if entries != current:
            write_json(cache, {"version": CACHE_VERSION, "digest": _entries_digest(entries), "entries": entries})


def tree_fingerprint(root: str | os.PathLike, cache: str | os.PathLike | None = None) -> str:
    """xxh3-128 over the relative paths and content digests of every regular file under `root`, so any
    changed byte changes it while where the tree lives does not; "absent" when `root` does not exist.

    With `cache`, a file's digest is reused while its size, mtime_ns, inode and device all match, so an
    unchanged tree costs a stat per file. A rewrite that keeps all four (in place, same size, mtime set
    back) goes unseen, as it does for git and DVC; the racy rule (RACY_NS) covers the same-tick case.
    The cache is read without the lock (it is only ever replaced whole) and merged under it, so
    concurrent callers keep each other's entries.
    """
    root = Path(os.path.abspath(root))
    if not root.exists():
        return "absent"
    inside = os.path.join(root, "")
    if cache is not None and os.path.abspath(cache).startswith(inside):
        raise ValueError(f"the cache {cache} lies inside {root}: each write would change the fingerprint")
    loaded = _read_cache(Path(cache)) if cache is not None else None
    entries = loaded or {}
    changes: dict[str, dict | None] = {}
    h = xxhash.xxh3_128()
    found = _files_under(root)
    for rel, path, st in found:
        key = str(path)
        signature = [st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev]
        cached = entries.get(key)
        if isinstance(cached, dict) and [cached.get(k) for k in _STAT_KEYS] == signature:
            digest = cached["digest"]
        else:
            digest = file_digest(path)
            racy = time.time_ns() - st.st_mtime_ns < RACY_NS
            changes[key] = None if racy else dict(zip(_STAT_KEYS, signature, strict=True), digest=digest)
        h.update(os.fsencode(rel) + b"\0" + digest.encode() + b"\n")
    if cache is not None:
        seen = {str(path) for _, path, _ in found}
        changes.update({key: None for key in entries if key.startswith(inside) and key not in seen})
        if changes or loaded is None:
            _merge_cache(Path(cache), changes)
    return h.hexdigest()
