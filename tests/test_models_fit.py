"""The physics baseline on light curves made here with known depths, drift, jitter and noise."""

from dataclasses import replace
from functools import lru_cache

import pytest
import torch
from conftest import make_settings

from spectramind.models.fit import PhysicsFit
from spectramind.physics.transit import quadratic_ld_coefficients, transit_flux
from spectramind.physics.wavelengths import target_wavelengths_um

N = 283


@lru_cache
def _yaml_fit():
    return make_settings().fit


def fit_settings(**changes):
    """The `fit` section of the shipped YAML, with `changes`."""
    return replace(_yaml_fit(), **changes)


def make_visits(b=2, t=120, noise=3e-4, seed=0, red=0.0, jitter_amp=5e-4, cosmic=0, transit=True, n=32,
                separable=True):
    """A batch as the dataset yields it (n bins: FGS1 and the first AIRS bins), and true depths (b, n)."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.rand(*shape, generator=g, dtype=torch.float64)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    time_h = torch.linspace(0, 7.5, t, dtype=torch.float64)[None].repeat(b, 1)
    star = torch.zeros(b, 9, dtype=torch.float64)
    star[:, 0], star[:, 1] = 1.0, 1.0
    star[:, 2], star[:, 5] = 4500 + 2000 * rand(b), 3 + 4 * rand(b)
    star[:, 6], star[:, 7] = 6 + 10 * rand(b), 88 + 2 * rand(b)
    wl = torch.from_numpy(target_wavelengths_um(n))
    depth = (0.01 + 0.02 * rand(b, 1)) * (1 + 0.05 * torch.sin(5 * wl + 6 * rand(b, 1)))
    u1, u2 = quadratic_ld_coefficients(wl, star[:, 2:3])
    t0 = 3.75 + 0.6 * (rand(b) - 0.5)
    rp = depth.sqrt() if transit else torch.zeros_like(depth)
    tr = transit_flux(time_h[:, None], t0[:, None], star[:, 5:6], star[:, 6:7], star[:, 7:8], rp, u1, u2)
    tn = (time_h[:, None] - 3.75) / 3.75
    jitter = randn(b, t, 2)
    colour = 1 + 0.3 * (wl[None, :, None] - 2.5) if separable else 1 + wl[None, :, None] * tn / tn.abs().max()
    baseline = (1 + (2e-3 * tn + 1e-3 * tn**2) * colour        # gain drift 1 + f(t) g(lambda) when separable
                + jitter_amp * jitter[:, None, :, 0] * wl[None, :, None] / 3)
    sigma = torch.full((n,), noise, dtype=torch.float64)
    sigma[0] = noise / 5
    flux = tr * baseline + sigma[None, :, None] * randn(b, n, t)
    if red:  # per-bin smooth noise on the transit's time scale
        walk = torch.nn.functional.avg_pool1d(randn(b * n, 1, t + 19), 20, stride=1).reshape(b, n, t)
        flux = flux + red * noise * walk / walk.std(-1, keepdim=True)
    for _ in range(cosmic):
        i, j, k = (int(torch.randint(0, n, (1,), generator=g)) for n in (b, n, t))
        flux[i, j, k] += 0.05
    batch = {"flux": flux.transpose(1, 2).float(), "flux_err": sigma.expand(b, t, n).float(),
             "time": time_h.float(), "jitter": jitter.float(), "star": star.float()}
    return batch, depth.expand(b, n).float()


@pytest.fixture(scope="module")
def clean():
    batch, depth = make_visits(b=2)
    return batch, depth, PhysicsFit(fit_settings(), n_bins=32).fit(batch)


def test_depths_are_recovered_with_an_honest_sigma(clean):
    batch, depth, out = clean
    z = (out["mu"] - depth) / out["sigma"]
    assert not out["failed"].any()
    assert 0.58 < (z.abs() < 1).float().mean() < 0.78         # 68% expected
    assert (z.abs() < 3).float().mean() > 0.98
    assert (out["sigma"] < 3e-4).all()                        # near the white-noise limit, not widened
    assert ((out["mu"][:, 0] - depth[:, 0]).abs() < 3 * out["sigma"][:, 0]).all()   # FGS1 too


def test_forward_returns_float_mu_and_positive_sigma(clean):
    batch, _, _ = clean
    mu, sigma = PhysicsFit(fit_settings(), n_time=120, n_bins=32, n_star=9)(batch)
    assert mu.shape == sigma.shape == (2, 32) and mu.dtype == torch.float32 and (sigma > 0).all()


@pytest.mark.slow
def test_red_noise_widens_sigma_towards_the_real_error():
    # Noise correlated over ~1 h, as strong as the white noise: the formal error would be ~2.5x too small.
    batch, depth = make_visits(red=1.0, seed=1)
    out = PhysicsFit(fit_settings(), n_bins=32).fit(batch)
    z = (out["mu"] - depth) / out["sigma"]
    assert out["beta"][:, 1:].median() > 1.5
    assert z.pow(2).mean().sqrt() < 2.0
    assert (z.abs() < 2).float().mean() > 0.7


@pytest.mark.slow
def test_cosmic_rays_are_rejected():
    batch, depth = make_visits(b=2, cosmic=30, seed=2)
    kept = PhysicsFit(fit_settings(), n_bins=32).fit(batch)
    ignored = PhysicsFit(fit_settings(outlier_sigma=1e9), n_bins=32).fit(batch)
    err_kept = (kept["mu"] - depth).abs().max()
    assert err_kept < (ignored["mu"] - depth).abs().max()
    assert ((kept["mu"] - depth).abs() / kept["sigma"]).max() < 5


@pytest.mark.slow
def test_jitter_regressors_remove_pointing_systematics():
    batch, depth = make_visits(b=2, jitter_amp=3e-3, seed=3)
    with_j = (PhysicsFit(fit_settings(), n_bins=32).fit(batch)["mu"] - depth).pow(2).mean()
    without = (PhysicsFit(fit_settings(use_jitter=False), n_bins=32).fit(batch)["mu"] - depth).pow(2).mean()
    assert with_j < 0.5 * without


@pytest.mark.slow
def test_a_missing_transit_is_flagged_and_its_sigma_widened():
    batch, _ = make_visits(b=2, transit=False, seed=4)
    out = PhysicsFit(fit_settings(), n_bins=32).fit(batch)
    assert out["failed"].all()
    assert (out["sigma"] >= 2e-3).all() and torch.isfinite(out["mu"]).all() and (out["mu"] >= 0).all()


def test_a_dead_column_fails_alone_and_gets_a_wide_sigma():
    batch, depth = make_visits(b=2, seed=5)
    batch["flux"][:, :, 30] = float("nan")
    out = PhysicsFit(fit_settings(), n_bins=32).fit(batch)
    assert out["failed"][:, 30].all() and out["failed"].sum() == 2
    assert (out["sigma"][:, 30] >= 2e-3).all() and torch.isfinite(out["mu"][:, 30]).all()


@pytest.mark.slow
def test_a_drift_that_is_not_separable_needs_the_polynomial_drift():
    batch, depth = make_visits(seed=7, separable=False)
    out = PhysicsFit(fit_settings(), n_bins=32).fit(batch)
    assert ((out["mu"] - depth).abs() / out["sigma"] < 2).float().mean() > 0.85


@pytest.mark.slow
def test_a_separable_drift_is_fitted_with_two_parameters_a_bin():
    batch, depth = make_visits(seed=8)
    out = PhysicsFit(fit_settings(drift="shared"), n_bins=32).fit(batch)
    assert ((out["mu"] - depth).abs() / out["sigma"] < 2).float().mean() > 0.85


@pytest.mark.slow
def test_all_283_bins_of_a_full_visit():
    batch, depth = make_visits(b=2, t=187, n=N, seed=6)
    out = PhysicsFit(fit_settings()).fit(batch)
    z = (out["mu"] - depth) / out["sigma"]
    assert not out["failed"].any() and 0.55 < (z.abs() < 1).float().mean() < 0.8
