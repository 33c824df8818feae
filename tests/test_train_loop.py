"""The loop: accumulation, OOM recovery, non-finite steps, early stopping, checkpoints and exact resume."""

from __future__ import annotations

import json
import os
import random
import signal

import pytest
import torch
from test_train_fixtures import OomAbove, ToyDataset, ToyModel, adam, gll, trainer_cfg

from spectramind.errors import ConfigError
from spectramind.logs import EventLog
from spectramind.train import checkpoint
from spectramind.train.trainer import fit


def _train(tmp_path, make=ToyModel, loss=gll, n=60, name="run", **cfg):
    torch.manual_seed(0)
    model = make()
    run_dir = tmp_path / name
    summary = fit(model, loss, ToyDataset(n), ToyDataset(16, seed=1), trainer_cfg(**cfg), run_dir=run_dir,
                  optimizer=adam(), seed=7, events=EventLog(run_dir))
    return model, summary, run_dir


def _events(run_dir, kind):
    lines = (run_dir / "events.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["event"] == kind]


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module, exact: bool = True):
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        if exact:
            assert torch.equal(x, y), f"{name} differs"
        else:
            torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5, msg=f"{name} differs")


def test_accumulation_equals_one_large_batch_and_flushes_the_remainder(tmp_path):
    # 60 samples, effective batch 24: steps of 24, 24 and a flushed remainder of 12 per epoch.
    small, s1, _ = _train(tmp_path, lambda: ToyModel(dropout=0.0), name="a", batch_size=8,
                          accumulate_grad_batches=3)
    large, s2, _ = _train(tmp_path, lambda: ToyModel(dropout=0.0), name="b", batch_size=24)
    assert s1["global_step"] == s2["global_step"] == 6
    _assert_same_weights(small, large, exact=False)


def test_interrupted_at_a_random_step_resumes_bit_identical(tmp_path):
    reference, done, _ = _train(tmp_path, name="reference", max_epochs=3, accumulate_grad_batches=2)
    assert done["stop_reason"] == "max_epochs"
    calls = 0
    stop_at = random.Random().randrange(1, 24)  # a loss call in any epoch, mid-accumulation or not

    def interrupting_loss(mu, sigma, target):
        nonlocal calls
        calls += 1
        if calls == stop_at:
            os.kill(os.getpid(), signal.SIGTERM)
        return gll(mu, sigma, target)

    _, stopped, run_dir = _train(tmp_path, loss=interrupting_loss, name="resumed", max_epochs=3,
                                 accumulate_grad_batches=2)
    assert stopped["stop_reason"] == "signal", f"stop_at={stop_at}"
    assert stopped["status"] == "stopped"
    def differently_initialised() -> ToyModel:  # everything must come from the checkpoint
        torch.manual_seed(123)
        return ToyModel()

    resumed, final, _ = _train(tmp_path, differently_initialised, name="resumed", max_epochs=3,
                               accumulate_grad_batches=2)
    assert final["stop_reason"] == "max_epochs" and final["global_step"] == done["global_step"]
    assert _events(run_dir, "resume"), "the second run did not resume"
    _assert_same_weights(reference, resumed)


def test_a_finished_run_is_reported_and_left_alone(tmp_path):
    _, first, run_dir = _train(tmp_path)
    last = run_dir / "checkpoints" / "last.pt"
    before = last.stat().st_mtime_ns
    _, again, _ = _train(tmp_path)
    assert again["already_complete"] is True and again["global_step"] == first["global_step"]
    assert last.stat().st_mtime_ns == before


def test_oom_halves_the_micro_batch_and_keeps_the_effective_batch(tmp_path):
    model, summary, run_dir = _train(tmp_path, lambda: OomAbove(limit=3), name="oom", batch_size=8)
    plain, _, _ = _train(tmp_path, lambda: ToyModel(dropout=0.0), name="plain", batch_size=8)
    assert summary["micro_batch"] == 2 and summary["oom_events"] == 2
    assert [e["micro_batch"] for e in _events(run_dir, "oom")] == [4, 2]
    assert [e["accumulation"] for e in _events(run_dir, "oom")] == [2, 4]
    assert summary["global_step"] == 16 and summary["effective_batch"] == 8
    assert max(model.sizes[-10:]) <= 2
    _assert_same_weights(model, plain, exact=False)


def test_oom_at_a_micro_batch_of_one_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="micro-batch of 1 does not fit"):
        _train(tmp_path, lambda: OomAbove(limit=0), batch_size=4)


def test_nonfinite_steps_are_skipped_then_stop_the_run(tmp_path):
    calls = 0

    def sometimes_nan(mu, sigma, target):
        nonlocal calls
        calls += 1
        loss, parts = gll(mu, sigma, target)
        return (loss * float("nan") if calls in (2, 3) else loss), parts

    model, summary, _ = _train(tmp_path, loss=sometimes_nan, name="some")
    assert summary["stop_reason"] == "max_epochs" and summary["nonfinite_skipped"] == 2
    assert all(torch.isfinite(t).all() for t in model.state_dict().values())

    def always_nan(mu, sigma, target):
        loss, parts = gll(mu, sigma, target)
        return loss * float("inf"), parts

    model, summary, run_dir = _train(tmp_path, loss=always_nan, name="always")
    assert summary["stop_reason"] == "nonfinite" and summary["global_step"] == 3
    assert all(torch.isfinite(t).all() for t in model.state_dict().values())
    assert checkpoint.load(run_dir / "checkpoints" / "last.pt")["progress"]["nonfinite_skipped"] == 3


def test_host_memory_guard_stops_cleanly_with_a_checkpoint(tmp_path):
    _, summary, run_dir = _train(tmp_path, budgets={"host_memory_gib": 0.01})
    assert summary["stop_reason"] == "host_memory" and summary["status"] == "stopped"
    assert "above the 0.01 GiB budget" in summary["message"]
    assert checkpoint.load(run_dir / "checkpoints" / "last.pt")["progress"]["global_step"] == 0


def test_disk_guard_stops_with_a_clear_message(tmp_path):
    _, summary, run_dir = _train(tmp_path, budgets={"min_free_disk_gib": 1e9})
    assert summary["stop_reason"] == "disk"
    assert "min_free_disk_gib" in summary["message"]
    assert not (run_dir / "checkpoints" / "last.pt").exists()


def test_early_stopping_and_best_checkpoint(tmp_path):
    es = {"enabled": True, "patience": 2, "min_delta": 1e9}  # only the first validation is an improvement
    _, summary, run_dir = _train(tmp_path, max_epochs=10, early_stopping=es)
    assert summary["stop_reason"] == "early_stopping" and summary["status"] == "complete"
    assert summary["epochs"] == 3 and summary["best_metric"]["epoch"] == 1
    best = checkpoint.load(run_dir / "checkpoints" / "best.pt")
    assert best["progress"]["epoch"] == 1


def test_unknown_monitor_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="trainer.early_stopping.monitor"):
        _train(tmp_path, early_stopping={"monitor": "val/nope"})


def test_numbered_checkpoints_keep_the_last_k_and_load_weights_only(tmp_path):
    _, _, run_dir = _train(tmp_path, max_epochs=4, keep_last_k=2)
    names = sorted(p.name for p in (run_dir / "checkpoints").glob("*.pt"))
    assert names == ["best.pt", "epoch_0003.pt", "epoch_0004.pt", "last.pt"]
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert {"model", "optimizer", "scheduler", "scaler", "progress", "rng", "run_hash"} <= set(state)
    assert not list((run_dir / "checkpoints").glob(".*.tmp"))


def test_deterministic_mode_repeats_exactly(tmp_path):
    a, _, _ = _train(tmp_path, name="a", deterministic=True)
    b, _, _ = _train(tmp_path, name="b", deterministic=True)
    torch.use_deterministic_algorithms(False)
    _assert_same_weights(a, b)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_on_cpu(tmp_path, precision):
    _, summary, run_dir = _train(tmp_path, precision=precision)
    assert summary["stop_reason"] == "max_epochs"
    fallbacks = _events(run_dir, "precision_fallback")
    assert bool(fallbacks) == (precision == "fp16")


@pytest.mark.parametrize("mode", ["norm", "value", "none"])
def test_gradient_clipping_modes(tmp_path, mode):
    _, _, run_dir = _train(tmp_path, grad_clip={"mode": mode, "value": 1e-3})
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "grad_norm" in r]
    assert steps and all(r["grad_norm"] > 0 for r in steps)
    assert {"train/loss", "train/gll", "train/mse", "lr", "samples_per_s", "step_time_s",
            "host_mem_gib", "gpu_mem_gib"} <= set(steps[0])
    assert any("val/loss" in r for r in records)
    assert (run_dir / "plots" / "loss_curves.png").stat().st_size > 1000
