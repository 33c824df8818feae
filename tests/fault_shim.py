"""`python fault_shim.py <spectramind args>`: the real CLI with every checkpoint write held open.

Each `last.pt` written through files.atomic_path announces itself with a marker file (`save1`, `save2`, ...
in $FAULT_MARKERS) once its temporary file is complete, then waits $FAULT_HOLD_S seconds before the rename:
a signal sent on seeing the marker lands in the middle of a checkpoint write. With $FAULT_FREE_BYTES set,
the disk reports that many bytes free: a full disk, as shutil.disk_usage (statvfs) sees one.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import sys
import time
from pathlib import Path

from spectramind import files
from spectramind.cli import main

_atomic_path = files.atomic_path
_saves = itertools.count(1)


@contextlib.contextmanager
def _held_open(path):
    with _atomic_path(path) as tmp:
        yield tmp
        if Path(path).name == "last.pt":
            (Path(os.environ["FAULT_MARKERS"]) / f"save{next(_saves)}").touch()
            time.sleep(float(os.environ.get("FAULT_HOLD_S", "1")))


def _full_disk(path):
    usage = _disk_usage(path)
    free = int(os.environ["FAULT_FREE_BYTES"])
    return usage._replace(used=usage.total - free, free=free)


_disk_usage = shutil.disk_usage

if __name__ == "__main__":
    files.atomic_path = _held_open
    if "FAULT_FREE_BYTES" in os.environ:
        shutil.disk_usage = _full_disk
    sys.argv[0] = "spectramind"
    main()
