"""The GLL loss agrees with the metric's GLL; each physics term responds to what it penalises."""

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from spectramind import losses, metric
from spectramind.errors import ConfigError
from spectramind.physics.wavelengths import target_wavelengths_um

N = 283
REAL = Path(__file__).resolve().parents[2] / "shared" / "ariel-real-sample"


def _all_terms(weight=1.0, enabled=True, **only):
    return {t: {"weight": weight, "enabled": only.get(t, enabled)} for t in losses.TERMS}


def _smooth_batch(b=3):
    wl = torch.from_numpy(target_wavelengths_um(N)).float()
    mu = 0.02 + 1e-3 * torch.sin(wl)[None].repeat(b, 1)
    return mu, torch.full((b, N), 1e-4), mu.clone()


def test_wavelength_grid_matches_the_competition_file():
    if not REAL.is_dir():
        pytest.skip("real sample files absent")
    real = pd.read_csv(REAL / "wavelengths.csv").to_numpy()[0]
    assert np.abs(target_wavelengths_um(N) - real).max() < 1e-9


def test_gll_equals_the_metrics_weighted_negative_log_likelihood():
    rng = np.random.default_rng(0)
    y = 0.02 + 1e-3 * rng.standard_normal((4, N))
    mu = y + 1e-4 * rng.standard_normal((4, N))
    sigma = 1e-4 * (1 + rng.random((4, N)))
    w = metric.bin_weights(N)
    expected = -(metric.gll(y, mu, sigma) * w).sum() / (w.sum() * 4)
    got = losses.gaussian_nll(*(torch.tensor(a) for a in (mu, sigma, y)))
    assert got.item() == pytest.approx(expected, rel=1e-10)


def test_gll_ignores_unknown_targets_and_gives_them_no_gradient():
    mu, sigma, y = _smooth_batch(2)
    mu.requires_grad_(True)
    y[1] = float("nan")
    loss, parts = losses.SpectralLoss()(mu, sigma, y)
    loss.backward()
    assert math.isfinite(loss.item()) and set(parts) == {"gll"}
    assert mu.grad[1].abs().sum() == 0 and mu.grad[0].abs().sum() == 0  # mu == y: zero gradient on mu too
    assert losses.SpectralLoss()(mu + 1e-4, sigma, y)[0] > loss


def test_gll_config_and_disabled_terms_give_the_same_loss():
    mu, sigma, y = _smooth_batch()
    mu = mu + 3e-4 * torch.randn_like(mu)
    plain = losses.SpectralLoss()(mu, sigma, y)[0]
    off = losses.SpectralLoss(composite=_all_terms(enabled=False))(mu, sigma, y)
    assert off[0] == plain and set(off[1]) == {"gll"}


@pytest.mark.parametrize("term, spoil", [
    ("smoothness", lambda mu: mu + 5e-4 * (torch.arange(N) % 2)),              # zig-zag
    ("fft", lambda mu: mu + 5e-4 * (torch.arange(N) % 2)),
    ("nonnegativity", lambda mu: mu - 0.05),
    ("asymmetry", lambda mu: mu + 3e-4),                                       # whole spectrum shifted up
    ("molecular", lambda mu: mu - 2e-3 * (losses.band_masks(
        torch.from_numpy(target_wavelengths_um(N)), 0.1)[0].any(0).float())),      # bands dug below the flanks
])
def test_each_term_is_logged_weighted_and_penalises_its_defect(term, spoil):
    mu, sigma, y = _smooth_batch()
    loss = losses.SpectralLoss(composite={term: {"weight": 2.0, "enabled": True}})
    good_total, good = loss(mu, sigma, y)
    bad_total, bad = loss(spoil(mu), sigma, y)
    assert set(bad) == {"gll", term}
    assert bad[term] > 10 * good[term] + 1e-3
    assert bad_total.item() == pytest.approx((bad["gll"] + 2.0 * bad[term]).item(), rel=1e-6)


def test_all_terms_together_are_differentiable():
    mu, sigma, y = _smooth_batch()
    mu = (mu + 1e-4 * torch.randn_like(mu)).requires_grad_(True)
    sigma = sigma.clone().requires_grad_(True)
    total, parts = losses.SpectralLoss(composite=_all_terms(0.1))(mu, sigma, y)
    total.backward()
    assert set(parts) == {"gll", *losses.TERMS}
    assert torch.isfinite(mu.grad).all() and torch.isfinite(sigma.grad).all()


def test_unknown_term_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown term"):
        losses.SpectralLoss(composite={"smoothnes": {"weight": 1.0, "enabled": True}})


def test_loss_configs_build_with_their_switches():
    from hydra.utils import instantiate

    from spectramind.config.compose import compose
    from spectramind.config.schema import validate

    plain = instantiate(compose(["loss=gll"])["loss"])
    assert plain.weights == {}
    cfg = compose(["loss=composite", "loss.composite.smoothness.weight=0.05",
                   "loss.composite.fft.enabled=false"])
    validate(cfg)
    composite = instantiate(cfg["loss"])
    assert composite.weights["smoothness"] == 0.05 and "fft" not in composite.weights
    mu, sigma, y = _smooth_batch()
    assert set(composite(mu, sigma, y)[1]) == {"gll", *composite.weights}


def test_a_negative_weight_is_refused_by_the_schema():
    from spectramind.config.compose import compose
    from spectramind.config.schema import validate

    with pytest.raises(ConfigError, match="loss.composite.fft.weight"):
        validate(compose(["loss=composite", "loss.composite.fft.weight=-1"]))
