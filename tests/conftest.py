import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REAL_SAMPLE = REPO.parent / "shared" / "ariel-real-sample"


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 600):
    """Run the real `spectramind` entry point in a subprocess."""
    full_env = {**os.environ, **(env or {})}
    full_env.pop("SPECTRAMIND_DEBUG", None) if env is None or "SPECTRAMIND_DEBUG" not in env else None
    return subprocess.run([sys.executable, "-m", "spectramind", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture
def real_sample() -> Path:
    if not REAL_SAMPLE.is_dir():
        pytest.skip(f"real competition sample not found at {REAL_SAMPLE}")
    return REAL_SAMPLE


def make_settings(*overrides: str):
    """Typed settings from the shipped YAML (the one home of every default) plus Hydra overrides."""
    from spectramind.config.stage import load

    return load(list(overrides))[1]
