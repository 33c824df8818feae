"""`spectramind train` end to end: ci_fast from nothing, rerun, --plan, and trainer.devices=2 (all slow)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pytest
from conftest import SMALL_SET

from spectramind.config import runhash
from spectramind.pipeline import resolve
from spectramind.train import checkpoint

SMALL = (*SMALL_SET, "data.num_workers=0")


def _spectramind(command: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """The command on the small synthetic set, built in-process (the default set's own tests are
    test_data_pipeline's, the worker pool's test_data_parallel's)."""
    return subprocess.run([sys.executable, "-m", "spectramind", command, *SMALL, *args], capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """One outputs folder for the module: the first train builds the synthetic store, the rest reuse it."""
    return tmp_path_factory.mktemp("outputs")


def _run_dir(outputs, *overrides: str):
    cfg, hash_ = resolve("train", [f"paths.output_dir={outputs}", *SMALL, *overrides])
    return outputs / "runs" / hash_


@pytest.mark.slow
def test_ci_fast_trains_from_nothing_then_reports_complete(outputs):
    # A fresh outputs folder: train simulates and calibrates the data first. The progress intervals change
    # nothing about the run (its hash is the one without them); stderr is a pipe: plain lines, no bar.
    done = _spectramind("train", "trainer=ci_fast", f"paths.output_dir={outputs}", "trainer.log_every_s=0.1")
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith("train: ") and "ETA" in line]
    assert lines and re.match(r"train: (\d+)/\1 steps \(100%\), epoch 2/2, loss ", lines[-1]), done.stderr[-3000:]
    run_dir = _run_dir(outputs, "trainer=ci_fast")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["stop_reason"] == "max_epochs"
    assert summary["epochs"] == 2
    assert summary["best_metric"]["value"] is not None
    assert checkpoint.load(run_dir / "checkpoints" / "best.pt")["progress"]["epoch"] >= 1
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("val/loss" in r for r in records) and any("train/gll" in r for r in records)
    assert (run_dir / "plots" / "loss_curves.png").is_file()

    again = _spectramind("train", "trainer=ci_fast", f"paths.output_dir={outputs}")
    assert again.returncode == 0 and "already complete" in again.stdout


@pytest.mark.slow
def test_a_run_stopped_by_its_budget_is_indexed_as_stopped_and_resumable(outputs):
    # The store exists (previous test); a 3 s budget counted from process start ends before max_epochs.
    overrides = ["trainer=ci_fast", "trainer.max_epochs=50", "trainer.budgets.time_min=0.05",
                 "trainer.budgets.predict_reserve_min=0", f"paths.output_dir={outputs}"]
    done = _spectramind("train", *overrides)
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = _run_dir(outputs, *overrides[:-1])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "stopped" and summary["stop_reason"] == "time_budget"
    index = json.loads((outputs / "run_hash_summary_v50.json").read_text())
    assert index[run_dir.name]["status"] == "stopped"
    assert index[run_dir.name]["stop_reason"] == "time_budget"

    # The same command again (a restarted notebook): it resumes the checkpoint, with a fresh budget.
    again = _spectramind("train", *overrides)
    assert again.returncode == 0, again.stderr[-3000:]
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    resumes = [e for e in events if e["event"] == "resume"]
    assert len(resumes) == 1 and resumes[0]["step"] == summary["global_step"]
    resumed = json.loads((run_dir / "summary.json").read_text())
    assert resumed["global_step"] >= summary["global_step"] and resumed["wall_time_s"] > summary["wall_time_s"]


@pytest.mark.slow
def test_ci_fast_trains_end_to_end_within_60s_once_the_store_exists(outputs):
    _spectramind("train", "trainer=ci_fast", f"paths.output_dir={outputs}", "--plan")  # builds the store
    start = time.time()
    done = _spectramind("train", "trainer=ci_fast", "optimizer=adam", f"paths.output_dir={outputs}")
    elapsed = time.time() - start
    assert done.returncode == 0, done.stderr[-3000:]
    assert elapsed < 60, f"ci_fast took {elapsed:.1f} s"


@pytest.mark.slow
def test_plan_measures_and_projects_without_writing_a_run(outputs):
    runs_before = sorted(p.name for p in (outputs / "runs").glob("*")) if (outputs / "runs").exists() else []
    # 100,000 epochs cannot fit 30 s of training at any step time this machine can reach, idle or loaded.
    done = _spectramind("train", "trainer=kaggle_safe", "trainer.device=cpu", "trainer.budgets.time_min=1",
                        "trainer.budgets.predict_reserve_min=0.5", "trainer.max_epochs=100000",
                        f"paths.output_dir={outputs}", "--plan")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "step time" in done.stdout and "peak host" in done.stdout
    assert "does NOT fit" in done.stdout and "trainer.max_epochs=" in done.stdout
    # It builds the data it measures on when no earlier test here did: those runs are the data stages'.
    index = json.loads((outputs / runhash.INDEX_NAME).read_text())
    new = sorted(p.name for p in (outputs / "runs").glob("*") if p.name not in runs_before)
    assert {index[name]["command"] for name in new} <= {"simulate", "calibrate", "fit"}, new


@pytest.mark.slow
def test_devices_2_launches_two_ddp_processes_itself(outputs):
    overrides = ["trainer=ci_fast", "trainer.devices=2", f"paths.output_dir={outputs}"]
    done = _spectramind("train", *overrides)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((_run_dir(outputs, *overrides[:2]) / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["status"] == "complete"
