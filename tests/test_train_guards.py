"""Guardrails in a real process: SIGTERM/SIGINT with real signals, and the wall-clock budget."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import group_gone
from test_train_fixtures import toy_script

from spectramind.train import checkpoint
from spectramind.train.guards import NonFinite, TimeBudget

# A job of about `steps` x `sleep_s`: each forward sleeps, as a slow model on a slow machine would.
JOB = """
import time, torch
from pathlib import Path
from test_train_fixtures import ToyDataset, ToyModel, adam, gll, trainer_cfg
from spectramind.logs import EventLog
from spectramind.train.metrics import JsonLines
from spectramind.train.setup import started_at
from spectramind.train.trainer import fit

class Slow(ToyModel):
    def forward(self, batch):
        time.sleep({sleep_s})
        return super().forward(batch)

run_dir = {run_dir!r}
summary = fit(Slow(), gll, ToyDataset({n}), ToyDataset(8, seed=1),
              trainer_cfg(max_epochs=1, batch_size=4, budgets={{"time_min": {time_min}}},
                          loader={{"num_workers": {workers}}}),
              run_dir=run_dir, optimizer=adam(), events=EventLog(run_dir), started_at=started_at(),
              loggers=[JsonLines(Path(run_dir) / "metrics.jsonl")])
print("SUMMARY", summary["stop_reason"], flush=True)
"""


def _start(tmp_path, sleep_s=0.05, n=4000, time_min=None, workers=0):
    """The job in its own process group, as a shell or a scheduler starts one."""
    run_dir = tmp_path / "run"
    script = tmp_path / "job.py"
    script.write_text(toy_script(JOB.format(sleep_s=sleep_s, run_dir=str(run_dir), n=n, time_min=time_min,
                                            workers=workers)))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    return proc, run_dir


def _wait_for_steps(proc, run_dir, steps: int, timeout: float = 60) -> None:
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + timeout
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= steps):
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.time() < deadline, "the job never started stepping"
        time.sleep(0.05)


def _summary(run_dir) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


@pytest.mark.parametrize("sig", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)])
def test_a_signal_finishes_the_step_checkpoints_and_exits_zero(tmp_path, sig):
    proc, run_dir = _start(tmp_path)
    _wait_for_steps(proc, run_dir, 3)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err[-2000:]
    assert "SUMMARY signal" in out
    summary = _summary(run_dir)
    assert summary["stop_reason"] == "signal" and summary["status"] == "stopped"
    state = checkpoint.load(run_dir / "checkpoints" / "last.pt")
    assert state["progress"]["global_step"] == summary["global_step"] >= 3
    assert state["progress"]["position"] == 4 * summary["global_step"]  # mid-epoch, on a step boundary


@pytest.mark.parametrize("sig", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)])
def test_a_signal_to_the_process_group_with_loader_workers_stops_at_a_step_and_saves(tmp_path, sig):
    # Ctrl-C or a scheduler signals every process of the job: the two DataLoader workers as well.
    proc, run_dir = _start(tmp_path, workers=2)
    _wait_for_steps(proc, run_dir, 3)
    os.killpg(proc.pid, sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    summary = _summary(run_dir)
    assert summary["stop_reason"] == "signal" and summary["message"] == f"received {sig.name}"
    state = checkpoint.load(run_dir / "checkpoints" / "last.pt")
    assert state["progress"]["global_step"] == summary["global_step"] >= 3
    assert state["progress"]["position"] == 4 * summary["global_step"]
    assert group_gone(proc.pid), "a loader worker outlived the run"


@pytest.mark.slow
def test_a_second_sigint_aborts_at_once(tmp_path):
    proc, run_dir = _start(tmp_path, sleep_s=0.5)
    _wait_for_steps(proc, run_dir, 1)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode != 0 and "KeyboardInterrupt" in err
    assert not (run_dir / "summary.json").exists()


@pytest.mark.slow
def test_a_20s_budget_on_a_60s_job_ends_within_22s_with_a_checkpoint(tmp_path):
    start = time.time()
    proc, run_dir = _start(tmp_path, sleep_s=0.05, n=4 * 1200, time_min=20 / 60)  # 1200 steps x 50 ms
    out, err = proc.communicate(timeout=90)
    elapsed = time.time() - start
    assert proc.returncode == 0, err[-2000:]
    summary = _summary(run_dir)
    assert summary["stop_reason"] == "time_budget", summary
    assert elapsed <= 22.0, f"took {elapsed:.1f} s"
    assert 15.0 <= elapsed, f"stopped far too early ({elapsed:.1f} s)"
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert 0 < state["progress"]["global_step"] < 1200


def test_time_budget_predicts_the_next_step_and_the_save():
    budget = TimeBudget(time_min=1.0, predict_reserve_min=0.5, started_at=time.time() - 25)  # 5 s left
    budget.save_s = 0.1
    budget.observe_step(1.0)
    assert not budget.crosses(budget.step_s)
    budget.observe_step(6.0)  # a slow step is believed at once
    assert budget.crosses(budget.step_s)
    budget.observe_step(0.1)  # and forgotten slowly
    assert budget.step_s > 5.0
    assert not TimeBudget(None, 0, time.time()).crosses(1e9)


def test_nonfinite_counter_needs_consecutive_failures():
    guard = NonFinite(limit=3)
    assert [guard.record(ok) for ok in (False, False, True, False, False, False)] == [False] * 5 + [True]
    assert guard.skipped == 5
