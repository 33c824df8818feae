"""Fault injection on the real command: `spectramind train` from an empty outputs folder, two DataLoader
workers and the calibration pool, signalled at seeded moments (while the data is built, between steps,
in the middle of a checkpoint write); SIGKILL; two trains on one outputs folder. Bad inputs are in
test_faults_inputs.py. conftest prints `faults: X/Y survived; bad inputs: A/B clean` from their results.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import SMALL_SET, group_gone

from spectramind.config import runhash
from spectramind.train import checkpoint

pytestmark = [pytest.mark.slow, pytest.mark.fault]

SHIM = Path(__file__).with_name("fault_shim.py")
# A data set small enough to build in seconds, and about 12 steps of training over 4 epochs.
SMALL = ("trainer=ci_fast", "trainer.loader.num_workers=2", "trainer.max_epochs=4", "trainer.batch_size=2",
         *SMALL_SET)
DATA_PHASES = ("simulate", "calibrate", "fit")


def _moments(seed: int, kinds: list[str]) -> list[tuple[str, float]]:
    """(kind, parameter) per trial, drawn from `seed`: a delay (s) after a data stage starts, a training step
    to wait for (distinct ones), or the checkpoint write to interrupt (the 2nd or 3rd of the 4 epochs' saves:
    one before it stands, and one after it is still to come)."""
    rng = random.Random(seed)
    longest = {"simulate": 0.6, "calibrate": 0.8, "fit": 1.5}
    steps = iter(rng.sample(range(1, 9), kinds.count("step")))
    saves = iter(rng.sample((2, 3), kinds.count("checkpoint")))
    return [(kind, round(rng.uniform(0.0, longest[kind]), 2) if kind in longest
             else next(steps if kind == "step" else saves)) for kind in kinds]


SIGTERM_MOMENTS = _moments(2026, [*DATA_PHASES, "step", "step", "step", "step", "step", "checkpoint", "checkpoint"])
SIGKILL_MOMENTS = _moments(2027, ["calibrate", "fit", "step", "step", "checkpoint"])


class Job:
    """One `spectramind train` in its own session, as a shell or a scheduler starts it; its output
    (stdout and stderr) is collected line by line as it comes."""

    def __init__(self, out: Path, *, shim: bool = False):
        self.out, self.markers = out, out.parent / "markers"
        self.markers.mkdir(parents=True, exist_ok=True)
        head = [sys.executable, str(SHIM)] if shim else [sys.executable, "-m", "spectramind"]
        env = {**os.environ, "FAULT_MARKERS": str(self.markers), "FAULT_HOLD_S": "0.3"}
        self.proc = subprocess.Popen([*head, "train", *SMALL, f"paths.output_dir={out}"], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True)
        self._reader.start()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, kind: str, parameter: float, timeout: float = 180) -> None:
        """Return at the moment named by (kind, parameter)."""
        deadline = time.time() + timeout
        while not self._reached(kind, parameter):
            assert self.proc.poll() is None, f"ended before {kind} {parameter}:\n{self.output[-3000:]}"
            assert time.time() < deadline, f"{kind} {parameter} never came:\n{self.output[-3000:]}"
            time.sleep(0.02)
        if kind in DATA_PHASES:
            time.sleep(parameter)

    def _reached(self, kind: str, parameter: float) -> bool:
        if kind in DATA_PHASES:
            return any(line.startswith(f"{kind}: run ") for line in list(self.lines))
        if kind == "checkpoint":
            return (self.markers / f"save{parameter}").exists()
        return steps_done(self.out) >= parameter

    def finish(self, timeout: float = 180) -> int:
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return code


def steps_done(out: Path) -> int:
    lines = [p.read_text() for p in out.glob("runs/*/metrics.jsonl")]
    return sum(text.count('"train/loss"') for text in lines)


def train_run(out: Path) -> Path | None:
    runs = [p.parent for p in out.glob("runs/*/checkpoints")]
    assert len(runs) <= 1, runs
    return runs[0] if runs else None


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    run = train_run(out)
    assert run is not None and json.loads((run / "summary.json").read_text())["status"] == "complete"
    return checkpoint.load(run / "checkpoints" / "last.pt")["model"]


def complete_again(out: Path) -> str:
    """The same command, run again to the end: it must resume (or rebuild) and finish."""
    job = Job(out)
    code = job.finish()
    assert code == 0, job.output[-3000:]
    return job.output


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """An uninterrupted run from an empty outputs folder: its data (copied into trials that start later)
    and its final weights."""
    out = tmp_path_factory.mktemp("reference") / "out"
    complete_again(out)
    return out, final_weights(out)


def _trial_folder(tmp_path: Path, reference_out: Path, kind: str) -> Path:
    """An empty outputs folder for a data-building moment, else one holding the reference's built data."""
    out = tmp_path / "out"
    if kind not in DATA_PHASES:
        shutil.copytree(reference_out / "data", out / "data")
    return out


def _assert_same(weights: dict, reference: dict) -> None:
    assert weights.keys() == reference.keys()
    different = [k for k in weights if not torch.equal(weights[k], reference[k])]
    assert not different, f"not bit-identical to the uninterrupted run: {different}"


@pytest.mark.parametrize(("kind", "parameter"), SIGTERM_MOMENTS, ids=[f"{k}-{p}" for k, p in SIGTERM_MOMENTS])
def test_sigterm_to_the_process_group_stops_cleanly_and_the_rerun_is_bit_identical(tmp_path, reference,
                                                                                 kind, parameter):
    reference_out, reference_weights = reference
    out = _trial_folder(tmp_path, reference_out, kind)
    job = Job(out, shim=kind == "checkpoint")
    job.wait_for(kind, parameter)
    os.killpg(job.proc.pid, signal.SIGTERM)
    code = job.finish()
    assert code == 0, job.output[-3000:]
    assert "Traceback" not in job.output, job.output[-3000:]
    assert group_gone(job.proc.pid), "a worker outlived the command"
    run = train_run(out)
    if kind in DATA_PHASES:  # at the stage's next boundary: between visits, or once the stage is done
        assert "stopped" in job.output.splitlines()[-1], job.output[-3000:]
        data = out / "data" / "synthetic"
        assert not list(data.glob("raw?*")) and not list(data.glob("store/.*.tmp")), "a partial folder was left"
        statuses = [e["status"] for e in json.loads((out / runhash.INDEX_NAME).read_text()).values()]
        # the stage signalled is stopped, or it finished and the next one never started
        assert set(statuses) <= {"complete", "stopped"} and statuses.count("stopped") <= 1, statuses
    else:
        summary = json.loads((run / "summary.json").read_text())
        assert summary["stop_reason"] == "signal", summary
        state = checkpoint.load(run / "checkpoints" / "last.pt")
        assert state["progress"]["global_step"] == summary["global_step"]
    complete_again(out)
    _assert_same(final_weights(out), reference_weights)


@pytest.mark.parametrize(("kind", "parameter"), SIGKILL_MOMENTS, ids=[f"{k}-{p}" for k, p in SIGKILL_MOMENTS])
def test_sigkill_leaves_no_orphan_and_the_previous_checkpoint_resumes(tmp_path, reference, kind, parameter):
    # Only the main process is killed: its loader workers and calibration processes must notice alone.
    reference_out, reference_weights = reference
    out = _trial_folder(tmp_path, reference_out, kind)
    job = Job(out, shim=kind == "checkpoint")
    job.wait_for(kind, parameter)
    os.kill(job.proc.pid, signal.SIGKILL)
    assert job.finish() == -signal.SIGKILL
    assert group_gone(job.proc.pid, timeout=30), "a worker outlived its killed parent"
    run = train_run(out)
    last = run / "checkpoints" / "last.pt" if run is not None else None
    if kind == "checkpoint":  # killed between the new file's write and its rename: the previous one stands
        assert last.exists() and list(last.parent.glob(".last.pt.*.tmp"))
    if last is not None and last.exists():
        checkpoint.load(last)
    again = complete_again(out)
    if kind == "checkpoint" or (kind == "step" and last is not None and last.exists()):
        assert _resumed(run), again[-2000:]
    _assert_same(final_weights(out), reference_weights)


def _resumed(run: Path) -> bool:
    events = map(json.loads, (run / "events.jsonl").read_text().splitlines())
    return any(e["event"] == "resume" for e in events)


def test_two_trains_on_one_outputs_folder_both_succeed_and_the_index_keeps_every_run(tmp_path, reference):
    reference_out, reference_weights = reference
    out = tmp_path / "out"
    first, second = Job(out), Job(out)
    assert first.finish() == 0, first.output[-3000:]
    assert second.finish() == 0, second.output[-3000:]
    _assert_same(final_weights(out), reference_weights)
    index = json.loads((out / runhash.INDEX_NAME).read_text())
    folders = {p.name for p in (out / "runs").iterdir() if p.is_dir()}
    assert folders <= set(index), f"runs missing from the index: {folders - set(index)}"
    assert {entry["command"] for entry in index.values()} == {"simulate", "calibrate", "fit", "train"}
    assert all(entry["status"] == "complete" for entry in index.values()), index
