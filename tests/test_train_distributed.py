"""DDP: two CPU processes with the gloo backend under torch.distributed.run (marked slow)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from test_train_fixtures import toy_script

DDP_SCRIPT = """
import json, os, signal, torch
from pathlib import Path
from test_train_fixtures import OomAbove, ToyDataset, ToyModel, adam, gll, trainer_cfg
from spectramind.logs import EventLog
from spectramind.train import distributed
from spectramind.train.metrics import JsonLines
from spectramind.train.trainer import fit

out = {out!r}
dist = distributed.from_env()
distributed.init(dist, torch.device("cpu"))
calls = 0

def loss(mu, sigma, target):
    global calls
    calls += 1
    if dist.rank == 1 and calls == {signal_at}:  # only one rank is told to stop: both must stop together
        os.kill(os.getpid(), signal.SIGTERM)
    return gll(mu, sigma, target)

torch.manual_seed(0)
# Rank 1 alone runs out of memory above {oom_above} samples, after one micro-batch has left gradients behind.
model = OomAbove(limit={oom_above}, spared=1) if dist.rank == 1 else ToyModel(dropout=0.0)
summary = fit(model, loss, ToyDataset(64), ToyDataset(16, seed=1), trainer_cfg(max_epochs=2, batch_size=4,
              accumulate_grad_batches=2), run_dir=out + "/run", optimizer=adam(), seed=3,
              events=EventLog(out + "/run"), dist=dist, loggers=[JsonLines(Path(out) / "run" / "metrics.jsonl")])
torch.save(model.state_dict(), f"{{out}}/rank{{dist.rank}}.pt")
with open(f"{{out}}/summary{{dist.rank}}.json", "w") as f:
    json.dump(summary, f)
distributed.shutdown()
"""


def _torchrun(tmp_path, signal_at: int = 10**9, oom_above: int = 10**9) -> list[dict]:
    script = tmp_path / "ddp_train.py"
    script.write_text(toy_script(DDP_SCRIPT.format(out=str(tmp_path), signal_at=signal_at, oom_above=oom_above)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads((tmp_path / f"summary{r}.json").read_text()) for r in (0, 1)]


@pytest.mark.slow
def test_two_gloo_processes_train_in_lockstep_and_only_rank0_writes(tmp_path):
    s0, s1 = _torchrun(tmp_path)
    assert s0["world_size"] == 2 and s0["stop_reason"] == "max_epochs"
    assert s0["global_step"] == s1["global_step"] == 2 * 4  # 32 samples per rank, 8 per step
    a, b = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert all(torch.equal(a[k], b[k]) for k in a), "DDP replicas diverged"
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    steps = [line for line in lines if "train/loss" in json.loads(line)]
    assert len(steps) == 8  # one writer: one line per step
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["effective_batch"] == 16


@pytest.mark.slow
def test_a_signal_on_one_rank_stops_every_rank_at_the_same_step_and_both_resume(tmp_path):
    s0, s1 = _torchrun(tmp_path, signal_at=4)  # call 1 is the trainer's check of the monitor (no step)
    assert s0["stop_reason"] == s1["stop_reason"] == "signal"
    assert (s0["message"], s1["message"]) == ("signal on another rank", "received SIGTERM")
    assert s0["global_step"] == s1["global_step"] == 2
    assert (tmp_path / "run" / "checkpoints" / "last.pt").exists()
    s0, s1 = _torchrun(tmp_path)  # the same command again resumes both ranks
    assert s0["stop_reason"] == s1["stop_reason"] == "max_epochs"
    assert s0["global_step"] == s1["global_step"] == 8
    a, b = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed DDP replicas diverged"


def _weights(tmp_path) -> list[dict]:
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]


@pytest.mark.slow
def test_an_oom_on_one_rank_halves_the_micro_batch_on_every_rank(tmp_path):
    # Without agreement rank 0 waits in the gradient all-reduce while rank 1 replays its step: a hang.
    s0, s1 = _torchrun(tmp_path, oom_above=2)
    assert s0["stop_reason"] == s1["stop_reason"] == "max_epochs"
    assert s0["micro_batch"] == s1["micro_batch"] == 2 and s0["oom_events"] == s1["oom_events"] == 1
    assert s0["global_step"] == s1["global_step"] == 8 and s0["effective_batch"] == 16
    a, b = _weights(tmp_path)
    assert all(torch.equal(a[k], b[k]) for k in a), "DDP replicas diverged after the OOM"
    plain = tmp_path / "plain"
    plain.mkdir()
    _torchrun(plain)
    reference = _weights(plain)[0]
    for k in a:  # the same samples per step: the same training, up to float summation order
        torch.testing.assert_close(a[k], reference[k], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_an_oom_at_a_micro_batch_of_one_on_one_rank_stops_every_rank(tmp_path):
    s0, s1 = _torchrun(tmp_path, oom_above=0)
    assert s0["stop_reason"] == s1["stop_reason"] == "oom"
    assert s0["global_step"] == s1["global_step"] == 0
    assert "micro-batch of 1 does not fit" in s0["message"] and s0["message"] == s1["message"]
    assert (tmp_path / "run" / "checkpoints" / "last.pt").exists()
