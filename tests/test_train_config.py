"""Trainer profiles, optimizer and scheduler groups: composed from the real config tree and built."""

from __future__ import annotations

import pytest
import torch
from conftest import make_settings
from hydra.utils import instantiate

from spectramind.config.compose import compose, config_dir
from spectramind.config.schema import validate
from spectramind.errors import ConfigError

SCHEDULERS = sorted(p.stem for p in (config_dir() / "scheduler").glob("*.yaml"))
OPTIMIZERS = sorted(p.stem for p in (config_dir() / "optimizer").glob("*.yaml"))


def _cfg(*overrides: str) -> dict:
    cfg = compose(list(overrides))
    validate(cfg)
    return cfg


def test_profiles_carry_their_budgets():
    full = make_settings("trainer=defaults").trainer
    assert (full.max_epochs, full.batch_size, full.accumulate_grad_batches) == (50, 64, 2)
    assert full.checkpoint_every_n_epochs == 10 and full.precision == "fp16"
    kaggle = make_settings("trainer=kaggle_safe").trainer
    assert (kaggle.max_epochs, kaggle.batch_size, kaggle.precision) == (30, 32, "fp16")
    assert kaggle.budgets.time_min == 540 and 0 < kaggle.budgets.predict_reserve_min < 540
    assert kaggle.budgets.gpu_memory_gib <= 15 and kaggle.budgets.host_memory_gib < 31
    assert not kaggle.loader.pin_memory and kaggle.loader.num_workers <= 2
    ci = make_settings("trainer=ci_fast").trainer
    assert (ci.max_epochs, ci.batch_size, ci.device) == (2, 8, "cpu") and ci.max_samples <= 64
    assert make_settings("trainer=ablation").trainer.name == "ablation"


@pytest.mark.parametrize("name", SCHEDULERS)
def test_every_scheduler_builds_on_torch_and_steps(name):
    assert len(SCHEDULERS) == 7
    cfg = _cfg(f"scheduler={name}", "trainer.max_epochs=12")
    optimizer = instantiate(cfg["optimizer"])([torch.nn.Parameter(torch.zeros(2))])
    scheduler = instantiate(cfg["scheduler"])(optimizer)
    schedulers = torch.optim.lr_scheduler
    assert isinstance(scheduler, (schedulers.LRScheduler, schedulers.ReduceLROnPlateau))
    lrs = []
    for _ in range(12):
        optimizer.step()
        scheduler.step(1.0) if name == "plateau" else scheduler.step()
        lrs.append(optimizer.param_groups[0]["lr"])
    assert all(lr >= 0 for lr in lrs) and len(set(lrs)) > 1


def test_cosine_warms_up_then_decays():
    cfg = _cfg("scheduler=cosine", "trainer.max_epochs=10", "scheduler.warmup_epochs=3")
    optimizer = instantiate(cfg["optimizer"])([torch.nn.Parameter(torch.zeros(2))])
    scheduler = instantiate(cfg["scheduler"])(optimizer)
    lrs = [optimizer.param_groups[0]["lr"]]
    for _ in range(9):
        optimizer.step()
        scheduler.step()
        lrs.append(optimizer.param_groups[0]["lr"])
    peak = cfg["optimizer"]["lr"]
    assert lrs[0] == pytest.approx(0.1 * peak) and lrs[3] == pytest.approx(peak)
    assert lrs[:4] == sorted(lrs[:4]) and lrs[3:] == sorted(lrs[3:], reverse=True)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_builds(name):
    cfg = _cfg(f"optimizer={name}")
    optimizer = instantiate(cfg["optimizer"])([torch.nn.Parameter(torch.zeros(2))])
    assert type(optimizer).__name__.lower() == name


@pytest.mark.parametrize("override, key", [
    ("optimizer._target_=os.system", "optimizer._target_"),
    ("scheduler._target_=builtins.eval", "scheduler._target_"),
    ("optimizer.lr=0", "optimizer.lr"),
    ("trainer.precision=fp8", "trainer.precision"),
])
def test_bad_values_are_one_line_config_errors(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        _cfg(override)
