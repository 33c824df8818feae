"""A tiny in-memory dataset, model and loss for the trainer tests (the trainer imports no data or models)."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import torch

N_BINS = 283
N_FEATURES = 16


class ToyDataset(torch.utils.data.Dataset):
    """Dict items like the light-curve dataset's: features and a (283,) float32 target."""

    def __init__(self, n: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, N_FEATURES, generator=g)
        mixing = torch.randn(N_FEATURES, N_BINS, generator=g) / N_FEATURES**0.5
        self.target = (self.x @ mixing + 0.05 * torch.randn(n, N_BINS, generator=g)).float()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "target": self.target[i]}


class ToyModel(torch.nn.Module):
    """An MLP with dropout (so the RNG state matters for resume) returning (mu, sigma)."""

    def __init__(self, hidden: int = 32, depth: int = 1, dropout: float = 0.1):
        super().__init__()
        layers = [torch.nn.Linear(N_FEATURES, hidden), torch.nn.GELU(), torch.nn.Dropout(dropout)]
        for _ in range(depth - 1):
            layers += [torch.nn.Linear(hidden, hidden), torch.nn.GELU()]
        self.body = torch.nn.Sequential(*layers, torch.nn.Linear(hidden, 2 * N_BINS))

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        mu, raw = self.body(batch["x"]).chunk(2, dim=-1)
        return mu, torch.nn.functional.softplus(raw) + 1e-3


class OomAbove(ToyModel):
    """Raises torch.OutOfMemoryError for micro-batches larger than `limit` (the OOM path without a GPU),
    except for the first `spared` calls: with accumulation, the OOM then comes after a backward has left
    gradients behind, as a real one does."""

    def __init__(self, limit: int, spared: int = 0):
        super().__init__(dropout=0.0)
        self.limit, self.spared = limit, spared
        self.sizes: list[int] = []

    def forward(self, batch):
        n = batch["x"].shape[0]
        self.sizes.append(n)
        if n > self.limit and len(self.sizes) > self.spared:
            raise torch.OutOfMemoryError(f"fake OOM: micro-batch {n} > {self.limit}")
        return super().forward(batch)


def gll(mu: torch.Tensor, sigma: torch.Tensor, target: torch.Tensor):
    """Gaussian negative log-likelihood with its parts, like the project's loss contract."""
    nll = (0.5 * ((target - mu) / sigma) ** 2 + sigma.log()).mean()
    mse = ((target - mu) ** 2).mean()
    return nll, {"gll": nll.detach(), "mse": mse.detach()}


def adam(lr: float = 1e-2):
    return functools.partial(torch.optim.Adam, lr=lr)


@functools.cache
def _ci_fast():
    """The shipped ci_fast profile, composed from the YAML (the one home of every default)."""
    from conftest import make_settings

    return make_settings("trainer=ci_fast").trainer


# Test-sized values on top of ci_fast: the toy runs use every sample, keep no time or disk budget and give
# up after a few non-finite steps. Nested sections are partial: only the keys named change.
TEST_VALUES = dict(name="test", device="cpu", max_epochs=2, batch_size=8, accumulate_grad_batches=1,
                   max_samples=None, precision="fp32", checkpoint_every_n_epochs=1, keep_last_k=1,
                   log_every_n_steps=1, progress_bar=False,
                   early_stopping={"enabled": False, "monitor": "val/loss", "mode": "min", "patience": 3,
                                   "min_delta": 0.0},
                   budgets={"time_min": None, "predict_reserve_min": 0, "gpu_memory_gib": None,
                            "host_memory_gib": None, "min_free_disk_gib": 0.0, "max_nonfinite_steps": 3})


def _replace(settings, changes: dict):
    """dataclasses.replace, recursing into nested dataclasses for dict values."""
    fields = {}
    for key, value in changes.items():
        inner = getattr(settings, key)
        fields[key] = _replace(inner, value) if isinstance(value, dict) and dataclasses.is_dataclass(inner) else value
    return dataclasses.replace(settings, **fields)


def trainer_cfg(**overrides):
    """The ci_fast profile with test-sized values, then `overrides` (a dict for a nested section is partial)."""
    return _replace(_replace(_ci_fast(), TEST_VALUES), overrides)


def toy_script(body: str) -> str:
    """Python source for a subprocess that can import this module."""
    return f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})\n{body}"


def test_toy_model_returns_positive_sigma():
    mu, sigma = ToyModel()({"x": torch.randn(4, N_FEATURES)})
    assert mu.shape == sigma.shape == (4, N_BINS)
    assert (sigma > 0).all()


def test_trainer_cfg_starts_from_the_yaml_and_replaces_nested_sections():
    from spectramind.config.settings import Trainer

    profile = _ci_fast()
    cfg = trainer_cfg(budgets={"time_min": 5}, early_stopping={"enabled": True})
    assert isinstance(cfg, Trainer) and cfg.budgets.time_min == 5 and cfg.early_stopping.enabled
    assert cfg.budgets.max_nonfinite_steps == 3 and cfg.early_stopping.patience == 3
    assert (cfg.loader, cfg.grad_clip, cfg.compile) == (profile.loader, profile.grad_clip, profile.compile)
