"""What a run ran on: interpreter, libraries, accelerator and source revision."""

from __future__ import annotations

import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

_PACKAGES = ("spectramind", "torch", "numpy", "hydra-core", "omegaconf", "h5py", "pandas", "polars",
             "typer", "jsonschema", "xxhash")


def describe(with_torch: bool = True) -> dict:
    env = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "executable": sys.executable,
        "argv": sys.argv,
        "packages": {name: _version(name) for name in _PACKAGES},
        "git_commit": _git_commit(),
    }
    if with_torch:
        env.update(_torch_facts())
    return env


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _torch_facts() -> dict:
    import torch

    # threads: CPU kernels may split a reduction by thread, so the count can change the last bits of a result.
    facts = {"torch": torch.__version__, "cuda": torch.version.cuda, "threads": torch.get_num_threads(), "gpus": []}
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            facts["gpus"].append({"name": p.name, "memory_gib": round(p.total_memory / 2**30, 2)})
    return facts
