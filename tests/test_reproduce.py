"""`spectramind reproduce RUN`: a ci_fast run re-created from its folder is bit-identical on CPU; a run whose raw
data changed afterwards is re-created from that data and reported as differing (exit 4); other runs are refused
with one line; the GPU tolerance path on fake tensors."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import run_cli
from test_faults import SMALL

from spectramind.config.settings import Reproduce
from spectramind.config.stage import load, start
from spectramind.errors import ConfigError
from spectramind.train import reproduce

TRAIN = (*SMALL, "trainer.max_epochs=2")  # the last value of a key wins: 2 epochs, about 6 steps
ROW = re.compile(r"^  (same|differs) +(\S.*?)  +(.*)$")


def _train(*overrides: str) -> Path:
    done = run_cli("train", *TRAIN, *overrides)
    assert done.returncode == 0, done.stderr[-3000:]
    return Path(done.stdout.strip().splitlines()[-1].rsplit(" in ", 1)[1])  # "train: complete, ... in <run>"


def _rows(stdout: str) -> dict[str, str]:
    """The report's rows: item -> 'same ...' or 'differs ...'."""
    return {m[2]: f"{m[1]} {m[3]}" for m in map(ROW.match, stdout.splitlines()) if m}


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """A ci_fast run from an empty outputs folder (simulate, calibrate, fit, train): the outputs and the run."""
    out = tmp_path_factory.mktemp("reproduce") / "out"
    return out, _train(f"paths.output_dir={out}")


@pytest.mark.slow
def test_a_ci_fast_run_recreated_from_its_folder_is_bit_identical_on_cpu(trained, tmp_path):
    out, run = trained
    before = _files(run)
    done = run_cli("reproduce", run.name, f"paths.output_dir={out}", f"reproduce.dir={tmp_path}")
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    rows = _rows(done.stdout)
    for item in ("checkpoint model", "checkpoint optimizer", "metrics", "data", "data now", "run hash", "code",
                 "torch", "device"):
        assert rows[item].startswith("same"), done.stdout
    assert "simulated again with seed" in rows["data"] and "device" in rows and "cpu" in rows["device"]
    assert done.stdout.strip().splitlines()[-1].endswith("checkpoint and metrics bit-identical on CPU")
    assert list(tmp_path.iterdir()) == [], "the scratch folder outlived the command"
    assert _files(run) == before, "the run's own folder was written into"


@pytest.mark.slow
def test_a_run_whose_raw_data_changed_afterwards_is_recreated_from_it_and_reported_as_differing(trained, tmp_path):
    out, _ = trained
    raw = tmp_path / "raw"
    shutil.copytree(out / "data" / "synthetic" / "raw", raw)
    # The simulated planets as real data (nothing to simulate): the run's store is the one already calibrated,
    # cnn1d needs no physics baseline, and no worker processes start, so the run and its re-creation are cheap.
    run = _train("data.simulate=null", f"data.root={raw}", "model=cnn1d", "data.num_workers=1",
                 "trainer.loader.num_workers=0", f"paths.output_dir={out}")
    stars = pd.read_csv(raw / "train_star_info.csv")
    stars.loc[0, "Ts"] += 300.0  # one star 300 K hotter: a changed value, not only changed bytes
    stars.to_csv(raw / "train_star_info.csv", index=False)
    done = run_cli("reproduce", str(run), f"reproduce.dir={tmp_path / 'scratch'}")
    assert done.returncode == 4, done.stdout + done.stderr[-3000:]
    rows = _rows(done.stdout)
    assert rows["data"].startswith("differs") and f"calibrated again from {raw} as it is now" in rows["data"]
    assert rows["data now"].startswith("same"), "the store the run read is still there, unchanged"
    assert rows["checkpoint model"].startswith("differs") and rows["metrics"].startswith("differs")
    assert rows["code"].startswith("same") and rows["torch"].startswith("same")
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith(f"error: run {run.name}: the re-creation's checkpoint model"), error
    assert error.endswith("changed since the run: data"), error


def test_runs_of_other_commands_and_unfinished_runs_are_refused_with_one_line(tmp_path):
    cfg, s = load([f"paths.output_dir={tmp_path}"])
    simulated = start("simulate", cfg, s, [], "", with_torch=False)  # a run folder as the stage writes it
    done = run_cli("reproduce", simulated.run_hash, f"paths.output_dir={tmp_path}")
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0, done.stderr
    assert "is a simulate run; only train runs are re-created" in done.stderr
    unfinished = start("train", cfg, s, [], "", with_torch=False)
    with pytest.raises(ConfigError, match="is not finished: `spectramind train` with its overrides resumes it"):
        reproduce.find(s, str(unfinished.run_dir))


GPU = Reproduce(dir=None, keep=False, rtol=1e-3, atol=1e-6)


def test_cpu_compares_bits_and_a_gpu_compares_within_the_configured_tolerance():
    run = {"w": torch.tensor([1.0, -2.0, 0.0]), "step": torch.tensor(6), "lr": 1e-3}
    close = {"w": torch.tensor([1.0 + 1e-5, -2.0, 0.0]), "step": torch.tensor(6), "lr": 1e-3}
    far = {"w": torch.tensor([1.01, -2.0, 0.0]), "step": torch.tensor(6), "lr": 1e-3}
    signed_zero = {"w": torch.tensor([1.0, -2.0, -0.0]), "step": torch.tensor(6), "lr": 1e-3}
    assert reproduce.compare_values("model", run, dict(run), None, "values").same
    line = reproduce.compare_values("model", run, close, None, "values")
    assert not line.same and "first w: max |diff|" in line.detail
    assert reproduce.compare_values("model", run, close, GPU, "values").same
    assert not reproduce.compare_values("model", run, far, GPU, "values").same
    assert not reproduce.compare_values("model", run, signed_zero, None, "values").same  # bits, not values
    assert not reproduce.compare_values("model", run, {**run, "step": torch.tensor(7)}, GPU, "values").same
    assert not reproduce.compare_values("model", run, {**run, "lr": 1.1e-3}, GPU, "values").same


def test_the_tolerance_applies_when_either_run_trained_on_a_gpu_and_comes_from_the_config():
    r = load(["reproduce.rtol=0.01", "reproduce.atol=0"])[1].reproduce
    assert reproduce.tolerance(["cpu", "cpu"], r) is None
    assert reproduce.tolerance(["cuda:0", "cpu"], r) is r and reproduce.tolerance(["cpu", "cuda:0"], r) is r
    assert reproduce.matches(torch.tensor([100.0]), torch.tensor([100.9]), r)
    assert not reproduce.matches(torch.tensor([100.0]), torch.tensor([101.1]), r)


def test_metrics_leave_out_the_timing_fields_and_keep_the_last_record_of_a_resumed_step(tmp_path):
    def write(name: str, rows: list[dict]) -> Path:
        path = tmp_path / name
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return path

    step = {"step": 1, "epoch": 0, "train/loss": 0.5, "lr": 1e-3, "micro_batch": 2}
    timing = {"step_time_s": 0.1, "samples_per_s": 20.0, "host_mem_gib": 1.1, "gpu_mem_gib": 0.0}
    resumed = write("run.jsonl", [{**step, "train/loss": float("nan"), **timing}, {**step, **timing}])
    again = write("again.jsonl", [{**step, **{k: v * 3 for k, v in timing.items()}}])
    assert reproduce.compare_values("metrics", reproduce.records(resumed), reproduce.records(again), None,
                                    "values").same
    other = write("other.jsonl", [{**step, "train/loss": 0.25, **timing}])
    line = reproduce.compare_values("metrics", reproduce.records(resumed), reproduce.records(other), None, "values")
    assert not line.same and "step 1.train/loss" in line.detail
