"""The pre-run plan: real steps measured, the run projected against the profile's budgets."""

from __future__ import annotations

import torch
from test_train_fixtures import OomAbove, ToyDataset, ToyModel, adam, gll, trainer_cfg

from spectramind.train.plan import measure, render


def _plan(model=None, **cfg) -> dict:
    torch.manual_seed(0)
    return measure(model or ToyModel(), gll, ToyDataset(400), ToyDataset(40, seed=1), trainer_cfg(**cfg),
                   optimizer=adam(), steps=4)


def test_a_run_that_fits_says_so():
    report = _plan(max_epochs=2, budgets={"time_min": 60})
    assert report["fits"] and report["advice"] == []
    assert report["steps_per_epoch"] == 50 and report["measured_steps"] == 4
    assert 0 < report["step_time_s"] < 1 and report["peak_host_gib"] > 0
    expected = report["setup_time_s"] + 2 * report["epoch_time_s"]
    assert abs(report["projected_total_s"] - expected) < 1e-6
    assert "fits the profile's budgets" in render(report)


def test_a_run_over_its_time_budget_says_what_to_change():
    report = _plan(max_epochs=100_000, budgets={"time_min": 1, "predict_reserve_min": 0.5})
    assert not report["fits_time"] and not report["fits"]
    text = render(report)
    assert "does NOT fit" in text and "trainer.max_epochs=" in text
    epochs = int(report["advice"][0].split("trainer.max_epochs=")[1].split()[0])
    assert epochs * report["epoch_time_s"] + report["setup_time_s"] <= 30


def test_the_plan_finds_the_micro_batch_that_fits_and_says_so():
    report = _plan(OomAbove(limit=3), batch_size=8)
    assert report["micro_batch"] == 2
    assert any("trainer.batch_size=2 trainer.accumulate_grad_batches=4" in a for a in report["advice"])
