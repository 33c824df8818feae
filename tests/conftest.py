import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# A synthetic set that simulates, calibrates and fits in seconds (10 planets, 16 time bins, a short physics
# fit): for the slow tests that run whole commands but test no property of the default set.
SMALL_SET = ("data.simulate.n_train=8", "data.simulate.n_test=2", "data.simulate.two_visit_fraction=0",
             "data.simulate.airs_reads=100", "data.simulate.fgs1_reads=400", "fit.iterations=8")
REAL_SAMPLE = REPO.parent / "shared" / "ariel-real-sample"


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 600):
    """Run the real `spectramind` entry point in a subprocess."""
    full_env = {**os.environ, **(env or {})}
    full_env.pop("SPECTRAMIND_DEBUG", None) if env is None or "SPECTRAMIND_DEBUG" not in env else None
    return subprocess.run([sys.executable, "-m", "spectramind", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def group_gone(pgid: int, timeout: float = 10) -> bool:
    """Whether every process of the process group `pgid` has exited within `timeout` seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


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


# The fault-injection suite's summary line: trials marked `fault` survived, bad inputs (`bad_input`) clean.
_TALLY = {"fault": [0, 0], "bad_input": [0, 0]}


def pytest_runtest_logreport(report):
    if report.when == "call" or (report.when == "setup" and not report.passed):
        for marker, tally in _TALLY.items():
            if marker in report.keywords and not report.skipped:
                tally[0] += report.passed
                tally[1] += 1


def pytest_terminal_summary(terminalreporter):
    (survived, faults), (clean, inputs) = _TALLY["fault"], _TALLY["bad_input"]
    if faults or inputs:
        terminalreporter.write_line(f"faults: {survived}/{faults} survived; bad inputs: {clean}/{inputs} clean")
