"""Checkpoints: atomic writes, `weights_only=True` loading, RNG capture, pruning; and seeding.

Everything in a checkpoint is a tensor or a plain Python value (no numpy objects, no classes), so
`torch.load(..., weights_only=True)` reads it without an allowlist.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

import numpy as np
import torch

from spectramind import files, signals
from spectramind.errors import DataError

FORMAT = 1
_NUMBERED = re.compile(r"^epoch_(\d+)\.pt$")


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed python, numpy and torch (all devices); optionally force deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        # cuBLAS needs a fixed workspace to be deterministic; set before the first CUDA matmul.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def worker_init(worker_id: int) -> None:
    """DataLoader workers: SIGTERM/SIGINT left to the training loop; python and numpy seeds derived from
    the per-worker torch seed."""
    signals.leave_to_parent()
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def rng_state() -> dict:
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(mt), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(path: Path, state: dict) -> int:
    """Write `state` atomically; returns the file size in bytes."""
    with files.atomic_path(path) as tmp:
        torch.save({"format": FORMAT, **state}, tmp)
    return path.stat().st_size


def load(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise DataError(f"{path}: not a loadable checkpoint ({type(e).__name__}: {e}); "
                        "delete it to start over") from e
    if state.get("format") != FORMAT:
        raise DataError(f"{path}: checkpoint format {state.get('format')!r}, expected {FORMAT}")
    return state


def numbered(folder: Path, epoch: int) -> Path:
    return folder / f"epoch_{epoch:04d}.pt"


def prune(folder: Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` numbered checkpoints; last.pt and best.pt are never touched."""
    found = sorted((int(m.group(1)), p) for p in folder.glob("epoch_*.pt") if (m := _NUMBERED.match(p.name)))
    doomed = [p for _, p in found[:-keep]] if keep else [p for _, p in found]
    for p in doomed:
        p.unlink(missing_ok=True)
    return doomed
