"""The model group: every config builds with the trainer's arguments and keeps the (mu, sigma) contract."""

import pytest
import torch
from conftest import make_settings

from spectramind.losses import SpectralLoss
from spectramind.models.baseline import fit_kwargs

N, T, S = 283, 50, 9


def _build(name, *overrides):
    """The model section `name` of the shipped YAML (and `overrides`), built as the trainer builds it."""
    s = make_settings(f"model={name}", *overrides)
    return s.model.instantiate(n_time=T, n_bins=N, n_star=S, **fit_kwargs(s))


def _batch(b=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    flux = 1 + 1e-3 * torch.randn(b, T, N, generator=g)
    flux[:, 18:32] -= 0.015                                    # a box transit
    star = torch.tensor([1.0, 1.0, 5800.0, 1.0, 0.0, 4.0, 10.0, 89.0, 3.0]).repeat(b, 1)
    return {"flux": flux, "flux_err": torch.full((b, T, N), 1e-3), "star": star,
            "time": torch.linspace(0, 7.5, T).repeat(b, 1), "jitter": torch.randn(b, T, 2, generator=g),
            "baseline_mu": 0.015 + 1e-4 * torch.randn(b, N, generator=g),
            "baseline_sigma": torch.full((b, N), 2e-4),
            "target": 0.015 + 1e-4 * torch.randn(b, N, generator=g)}


@pytest.mark.parametrize("name", ["residual", "cnn1d", "transformer"])
def test_each_config_builds_and_returns_positive_sigma(name):
    model = _build(name)
    mu, sigma = model(_batch())
    assert mu.shape == sigma.shape == (4, N)
    assert mu.dtype == sigma.dtype == torch.float32
    assert torch.isfinite(mu).all() and (sigma > 0).all()


def test_fit_config_builds_with_the_trainers_arguments():
    model = _build("fit")
    assert model.settings == make_settings("model=fit").fit and model.n_bins == N


def test_untrained_residual_net_predicts_the_baseline():
    batch = _batch()
    mu, sigma = _build("residual")(batch)
    torch.testing.assert_close(mu, batch["baseline_mu"])
    torch.testing.assert_close(sigma, batch["baseline_sigma"], rtol=2e-4, atol=0)


@pytest.mark.parametrize("fgs1_from_baseline", [True, False])
def test_the_residual_net_leaves_fgs1_to_the_baseline_when_told(fgs1_from_baseline):
    torch.manual_seed(0)
    net = _build("residual", f"model.fgs1_from_baseline={str(fgs1_from_baseline).lower()}")
    torch.nn.init.normal_(net.head.weight, std=0.1)                  # a trained net: it corrects every bin
    batch = _batch()
    mu, sigma = net(batch)
    same = [torch.equal(a[:, 0], batch[f"baseline_{k}"][:, 0]) for a, k in ((mu, "mu"), (sigma, "sigma"))]
    assert same == [fgs1_from_baseline] * 2
    assert not torch.allclose(mu[:, 1:], batch["baseline_mu"][:, 1:])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["residual", "cnn1d", "transformer"])
def test_a_few_steps_lower_the_gll_on_a_fixed_batch(name):
    torch.manual_seed(0)
    model = _build(name)
    model.eval()  # no dropout: the comparison is about the parameters only
    batch, loss_fn = _batch(), SpectralLoss()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = loss_fn(*model(batch), batch["target"])[0].item()
    for _ in range(15):
        loss = loss_fn(*model(batch), batch["target"])[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss_fn(*model(batch), batch["target"])[0].item() < before - 0.1
