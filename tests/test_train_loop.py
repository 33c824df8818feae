"""The loop: accumulation, OOM recovery, non-finite steps, early stopping, checkpoints and exact resume."""

from __future__ import annotations

import functools
import json
import os
import random
import signal

import pytest
import torch
from test_train_fixtures import OomAbove, ToyDataset, ToyModel, adam, gll, trainer_cfg

from spectramind.errors import ConfigError
from spectramind.logs import EventLog
from spectramind.train import checkpoint, guards
from spectramind.train.metrics import JsonLines
from spectramind.train.trainer import Trainer, fit


def _train(tmp_path, make=ToyModel, loss=gll, n=60, name="run", optimizer=None, **cfg):
    torch.manual_seed(0)
    model = make()
    run_dir = tmp_path / name
    summary = fit(model, loss, ToyDataset(n), ToyDataset(16, seed=1), trainer_cfg(**cfg), run_dir=run_dir,
                  optimizer=optimizer or adam(), seed=7, events=EventLog(run_dir),
                  loggers=[JsonLines(run_dir / "metrics.jsonl")])
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


# Loss calls in any epoch, mid-accumulation or not (24 in all); seeded, so a failure names its case.
@pytest.mark.parametrize("stop_at", sorted(random.Random(14).sample(range(1, 24), 4)))
def test_interrupted_at_a_seeded_step_resumes_bit_identical(tmp_path, stop_at):
    reference, done, _ = _train(tmp_path, name="reference", max_epochs=3, accumulate_grad_batches=2)
    assert done["stop_reason"] == "max_epochs"
    calls = 0

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
    # The first micro-batch of 8 passes forward and backward, the second runs out of memory: the gradients
    # already accumulated must be dropped before the step is replayed with smaller micro-batches.
    model, summary, run_dir = _train(tmp_path, lambda: OomAbove(limit=3, spared=1), name="oom", batch_size=8,
                                     accumulate_grad_batches=2)
    plain, _, _ = _train(tmp_path, lambda: ToyModel(dropout=0.0), name="plain", batch_size=16)
    assert model.sizes[:3] == [8, 8, 4], "the OOM did not come mid-accumulation"
    assert summary["micro_batch"] == 2 and summary["oom_events"] == 2
    assert [e["micro_batch"] for e in _events(run_dir, "oom")] == [4, 2]
    assert [e["accumulation"] for e in _events(run_dir, "oom")] == [4, 8]
    assert summary["global_step"] == 8 and summary["effective_batch"] == 16
    assert max(model.sizes[-10:]) <= 2
    _assert_same_weights(model, plain, exact=False)


def test_oom_at_a_micro_batch_of_one_stops_the_run_with_a_checkpoint(tmp_path):
    _, summary, run_dir = _train(tmp_path, lambda: OomAbove(limit=0), batch_size=4)
    assert summary["stop_reason"] == "oom" and summary["status"] == "stopped"
    assert "a micro-batch of 1 does not fit" in summary["message"]
    assert checkpoint.load(run_dir / "checkpoints" / "last.pt")["progress"]["global_step"] == 0


class OomInEval(ToyModel):
    """Fits any training micro-batch, but validation runs out of memory above `limit` samples."""

    def __init__(self, limit: int):
        super().__init__(dropout=0.0)
        self.limit = limit

    def forward(self, batch):
        if not self.training and batch["x"].shape[0] > self.limit:
            raise torch.OutOfMemoryError("fake OOM in validation")
        return super().forward(batch)


def test_oom_in_validation_halves_the_micro_batch_and_validates_every_sample(tmp_path):
    _, summary, run_dir = _train(tmp_path, lambda: OomInEval(limit=2), name="oom", batch_size=8)
    _, plain, plain_dir = _train(tmp_path, lambda: ToyModel(dropout=0.0), name="plain", batch_size=8)
    assert summary["stop_reason"] == "max_epochs" and summary["micro_batch"] == 2
    assert [e["micro_batch"] for e in _events(run_dir, "oom")] == [4, 2]

    def val_losses(folder):
        lines = map(json.loads, (folder / "metrics.jsonl").read_text().splitlines())
        return [r["val/loss"] for r in lines if "val/loss" in r]

    torch.testing.assert_close(val_losses(run_dir), val_losses(plain_dir), rtol=1e-5, atol=1e-6)


class FlakyAdam(torch.optim.Adam):
    """Adam whose first `failures` steps run out of memory, as allocating its state can."""

    def __init__(self, params, lr: float, failures: int):
        super().__init__(params, lr=lr)
        self.failures = failures

    def step(self, closure=None):
        if self.failures:
            self.failures -= 1
            raise torch.OutOfMemoryError("fake OOM allocating Adam's state")
        return super().step(closure)


def test_an_oom_in_the_first_optimizer_step_is_retried_once(tmp_path):
    flaky, summary, _ = _train(tmp_path, name="flaky", optimizer=functools.partial(FlakyAdam, lr=1e-2, failures=1))
    plain, _, _ = _train(tmp_path, name="plain")
    assert summary["stop_reason"] == "max_epochs"
    _assert_same_weights(flaky, plain)


def test_an_optimizer_state_that_never_fits_stops_the_run_before_its_first_step(tmp_path):
    _, summary, run_dir = _train(tmp_path, optimizer=functools.partial(FlakyAdam, lr=1e-2, failures=99))
    assert summary["stop_reason"] == "oom" and "optimizer's state does not fit" in summary["message"]
    assert summary["global_step"] == 0
    assert checkpoint.load(run_dir / "checkpoints" / "last.pt")["progress"]["position"] == 0


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


def test_a_refused_save_keeps_the_previous_checkpoints(tmp_path, monkeypatch):
    # The first save fits, the second would not: pruning must wait until a new checkpoint is written.
    answers = iter([None, "no room for the next checkpoint"])
    monkeypatch.setattr(guards, "disk_shortfall", lambda *a: next(answers))
    _, summary, run_dir = _train(tmp_path, max_epochs=3, keep_last_k=1, checkpoint_every_n_epochs=1)
    assert summary["stop_reason"] == "disk" and summary["message"] == "no room for the next checkpoint"
    folder = run_dir / "checkpoints"
    assert sorted(p.name for p in folder.glob("*.pt")) == ["best.pt", "epoch_0001.pt", "last.pt"]
    assert checkpoint.load(folder / "epoch_0001.pt")["progress"]["epoch"] == 1
    assert checkpoint.load(folder / "last.pt")["progress"]["epoch"] == 1


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


class Counting(ToyModel):
    calls = 0

    def forward(self, batch):
        Counting.calls += 1
        return super().forward(batch)


def test_unknown_monitor_is_refused_before_any_step(tmp_path):
    with pytest.raises(ConfigError, match="monitor: expected one of val/loss, val/gll, val/mse, got 'val/nope'"):
        _train(tmp_path, Counting, early_stopping={"monitor": "val/nope"})
    assert Counting.calls == 0 and not (tmp_path / "run").exists()


def test_unknown_monitor_stops_the_command_before_the_data_is_built(cli, tmp_path):
    done = cli("train", "trainer=ci_fast", "trainer.early_stopping.monitor=val/los", f"paths.output_dir={tmp_path}")
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        "error: trainer.early_stopping.monitor: expected one of val/loss, val/gll, got 'val/los'"]
    assert not list(tmp_path.iterdir()), "something was built or written"


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


class RecordingAdam(torch.optim.Adam):
    """Adam that records the gradients it is handed: the total norm and the largest magnitude per step."""

    def __init__(self, params, lr=1e-2):
        super().__init__(params, lr=lr)
        self.norms: list[float] = []
        self.largest: list[float] = []

    def step(self, closure=None):
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        self.norms.append(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item())
        self.largest.append(max(g.abs().max().item() for g in grads))
        return super().step(closure)


@pytest.mark.parametrize("mode", ["norm", "value", "none"])
def test_gradient_clipping_modes(tmp_path, mode):
    built = []
    _, _, run_dir = _train(tmp_path, grad_clip={"mode": mode, "value": 1e-3},
                           optimizer=lambda params: built.append(RecordingAdam(params)) or built[-1])
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "grad_norm" in r]
    seen = built[0]
    assert steps and len(seen.norms) == len(steps) and all(r["grad_norm"] > 1e-3 for r in steps)
    if mode == "norm":
        assert max(seen.norms) <= 1e-3 * (1 + 1e-4)
    elif mode == "value":
        assert max(seen.largest) <= 1e-3 * (1 + 1e-6)  # float32 rounds 1e-3 up by 5e-11
    else:  # grad_norm is logged before clipping: with no clipping the optimizer sees exactly that norm
        assert seen.norms == pytest.approx([r["grad_norm"] for r in steps], rel=1e-4)
    assert {"train/loss", "train/gll", "train/mse", "lr", "samples_per_s", "step_time_s",
            "host_mem_gib", "gpu_mem_gib"} <= set(steps[0])
    assert any("val/loss" in r for r in records)
    assert (run_dir / "plots" / "loss_curves.png").stat().st_size > 1000


class Overflowing(ToyModel):
    """Its gradients are infinite on the calls `overflows(call)` picks, as an fp16 backward that overflows."""

    def __init__(self, overflows):
        super().__init__(dropout=0.0)
        self.overflows, self.calls = overflows, 0

    def forward(self, batch):
        mu, sigma = super().forward(batch)
        if self.training:  # counts training calls only, validation has no backward
            self.calls += 1
            if self.overflows(self.calls):
                    mu.register_hook(lambda g: g * float("inf"))
        return mu, sigma


@pytest.fixture
def with_scaler(monkeypatch):
    """The fp16 path's GradScaler on the CPU (fp16 autocast itself needs CUDA), over fp32 compute."""
    monkeypatch.setattr(Trainer, "_precision", lambda self, precision: (None, True))


def test_fp16_overflow_skips_are_counted(tmp_path, with_scaler):
    model, summary, run_dir = _train(tmp_path, lambda: Overflowing(lambda call: call % 3 == 0))
    assert summary["stop_reason"] == "max_epochs" and summary["global_step"] == 16
    assert summary["overflow_skipped"] == summary["nonfinite_skipped"] == 5  # calls 3, 6, ..., 15
    events = _events(run_dir, "nonfinite")
    assert [e["step"] for e in events] == [3, 6, 9, 12, 15]
    assert {e["cause"] for e in events} == {"fp16 overflow"}
    assert [e["loss_scale"] for e in events] == [2.0**15, 2.0**14, 2.0**13, 2.0**12, 2.0**11]


def test_persistent_fp16_overflow_stops_the_run(tmp_path, with_scaler):
    torch.manual_seed(0)
    initial = Overflowing(lambda call: True).state_dict()
    model, summary, run_dir = _train(tmp_path, lambda: Overflowing(lambda call: True))  # 3 allowed in a row
    assert summary["stop_reason"] == "nonfinite" and summary["global_step"] == 3
    assert summary["overflow_skipped"] == 3 and summary["message"] == "3 consecutive non-finite steps"
    for name, value in model.state_dict().items():
        assert torch.equal(value, initial[name]), f"{name} changed in a skipped step"
    assert checkpoint.load(run_dir / "checkpoints" / "last.pt")["progress"]["overflow_skipped"] == 3


def test_a_collapsed_fp16_loss_scale_stops_the_run(tmp_path, with_scaler):
    _, summary, _ = _train(tmp_path, lambda: Overflowing(lambda call: call > 2),
                           budgets={"max_nonfinite_steps": 100, "min_loss_scale": 5000.0})
    # 65536 halves on every overflow from step 3: 32768, 16384, 8192, then 4096 < 5000 after step 6.
    assert summary["stop_reason"] == "nonfinite" and summary["global_step"] == 6
    assert summary["overflow_skipped"] == 4
    assert summary["message"] == "the fp16 loss scale fell to 4096, below trainer.budgets.min_loss_scale=5000"
