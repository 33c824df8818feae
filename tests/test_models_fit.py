"""The joint physics fit on light curves from another transit code (batman) with known truth.

batman (Kreidberg 2015) is a test-only dependency: its integration of the stellar disc shares no code with
physics/transit.py, and its `nonlinear` law (Claret's four coefficients) is not the fit's quadratic one.
"""

from dataclasses import replace
from functools import lru_cache

import numpy as np
import pytest
import torch
from conftest import make_settings

from spectramind.models.fit import REASONS, PhysicsFit
from spectramind.physics.wavelengths import target_wavelengths_um

batman = pytest.importorskip("batman")

N = 283


@lru_cache
def _yaml_fit():
    return make_settings().fit


def fit_settings(**changes):
    """The `fit` section of the shipped YAML, with `changes`."""
    return replace(_yaml_fit(), **changes)


def _curves(time_h, t0, period, a, inc, rp, law, coefficients):
    """(bins, T) light curves: one batman model per planet (its setup is the slow part), each bin's Rp/Rs
    and limb darkening set on it in turn."""
    params = batman.TransitParams()
    params.t0, params.per, params.rp, params.a, params.inc = t0 / 24, period, rp[0], a, inc
    params.ecc, params.w, params.limb_dark, params.u = 0.0, 90.0, law, list(coefficients[0])
    model = batman.TransitModel(params, np.asarray(time_h) / 24)
    out = []
    for r, u in zip(rp, coefficients, strict=True):
        params.rp, params.u = r, list(u)
        out.append(model.light_curve(params))
    return np.array(out)


def make_visits(b=2, t=120, n=32, noise=3e-4, seed=0, law="quadratic", transit=True, t0_shift=0.0,
                drift=2e-3, jitter_amp=5e-4, red=0.0, jitter_per_bin=False):
    """A batch as the dataset yields it (n bins: FGS1, then AIRS bins spread over its range), and the truth.

    The drift is a cubic in time whose amplitude depends on wavelength plus a cross term (not separable),
    the pointing jitter moves each bin's flux by a wavelength-dependent amount (with `jitter_per_bin`, by
    each bin's own amount, as each detector column's PSF and spectral slope make it), the noise is white
    (plus, with `red`, smooth noise on the transit's time scale). FGS1's noise is 5x lower.
    """
    rng = np.random.default_rng(seed)
    wl = target_wavelengths_um(N)[np.r_[0, np.linspace(1, N - 1, n - 1).round().astype(int)]]
    time_h = np.linspace(0, 7.5, t)
    tn = (time_h - 3.75) / 3.75
    star = np.zeros((b, 9))
    truth = {"depth": np.zeros((b, n)), "t0": np.zeros(b), "a": np.zeros(b), "inc": np.zeros(b),
             "u": np.zeros((b, n, 2))}
    flux = np.zeros((b, n, t))
    jitter = rng.normal(size=(b, t, 2))
    response = rng.uniform(-1.5, 1.5, n) if jitter_per_bin else wl / 3
    for i in range(b):
        period = rng.uniform(3, 7)
        a, inc = 4.2 * period ** (2 / 3) * rng.uniform(0.9, 1.3), rng.uniform(87.5, 89.8)  # T14 < 5 h
        t0 = 3.75 + rng.uniform(-0.3, 0.3) + t0_shift
        depth = rng.uniform(0.006, 0.03) * (1 + 0.05 * np.sin(5 * wl + rng.uniform(0, 6)))
        star[i, [0, 1, 2, 5, 6, 7]] = 1.0, 1.0, rng.uniform(4500, 6500), period, a, inc
        u1 = 0.45 - 0.08 * (wl - 0.7)          # darker in the blue, as a real star
        u2 = 0.2 - 0.02 * (wl - 0.7)
        coefficients = (np.c_[0.6 - 0.1 * wl, -0.1 + 0.05 * wl, 0.4 - 0.05 * wl, -0.15 + 0.02 * wl]
                        if law == "nonlinear" else np.c_[u1, u2])
        flux[i] = _curves(time_h, t0, period, a, inc, np.sqrt(depth), law, coefficients) if transit else 1.0
        amp = drift * (1 + 0.3 * (wl - 2.5))[:, None]
        systematics = (amp * (0.8 * tn + 0.5 * tn**2 - 0.4 * tn**3) + 0.2 * drift * np.outer(wl - 2.5, tn**2)
                       + jitter_amp * jitter[i, :, 0] * response[:, None])
        flux[i] *= (1 + systematics) * rng.uniform(0.8, 1.2, (n, 1))
        truth["depth"][i], truth["t0"][i], truth["a"][i], truth["inc"][i] = depth, t0, a, inc
        truth["u"][i] = np.c_[u1, u2]
    sigma = np.full(n, noise)
    sigma[0] = noise / 5
    flux = flux + sigma[None, :, None] * rng.normal(size=flux.shape)
    if red:
        kernel = np.ones(20) / 20
        walk = np.apply_along_axis(lambda x: np.convolve(x, kernel, "same"), -1, rng.normal(size=flux.shape))
        flux = flux + red * sigma[None, :, None] * walk / walk.std(-1, keepdims=True)
    batch = {"flux": torch.from_numpy(flux).transpose(1, 2).float(),
             "flux_err": torch.from_numpy(np.broadcast_to(sigma, (b, t, n)).copy()).float(),
             "time": torch.from_numpy(np.broadcast_to(time_h, (b, t)).copy()).float(),
             "jitter": torch.from_numpy(jitter).float(), "star": torch.from_numpy(star).float()}
    return batch, truth


class _Bins(PhysicsFit):
    """The fit on a subset of the 283 bins (the wavelengths make_visits drew)."""

    def __init__(self, fit, n):
        super().__init__(fit, n_bins=N)
        keep = torch.from_numpy(np.r_[0, np.linspace(1, N - 1, n - 1).round().astype(int)])
        self.n_bins = n
        self.wavelength = self.wavelength[keep]
        self.wl_norm = self.wl_norm[keep]


def fit(batch, n=32, **changes):
    return _Bins(fit_settings(**changes), n).fit(batch)


@pytest.fixture(scope="module")
def noiseless():
    batch, truth = make_visits(b=2, t=240, noise=1e-7, jitter_amp=0.0, seed=11)
    return batch, truth, fit(batch)


def test_a_noiseless_batman_curve_gives_back_every_transit_parameter(noiseless):
    batch, truth, out = noiseless
    depth = torch.from_numpy(truth["depth"])
    assert ((out["mu"] - depth).abs() / depth).max() < 2e-3                # depth within 0.2%
    assert (out["t0"] - torch.from_numpy(truth["t0"])[:, None]).abs().max() < 2e-3 * 1   # t0 within 7 s
    assert ((out["a_rs"] - torch.from_numpy(truth["a"])).abs() / torch.from_numpy(truth["a"])).max() < 0.01
    assert (out["inc"] - torch.from_numpy(truth["inc"])).abs().max() < 0.1               # degrees
    u = torch.from_numpy(truth["u"])
    fitted = torch.stack([out["u"][:, 0], out["u"][:, 1]], -1)                           # FGS1's pair
    assert (fitted - u[:, 0]).abs().max() < 0.05
    blue_red = torch.stack([out["u"][:, 2], out["u"][:, 3]], -1)                         # AIRS u1 ends
    assert (blue_red - u[:, [1, -1], 0]).abs().max() < 0.05
    assert not out["flags"].any()


def test_forward_returns_float_mu_and_positive_sigma(noiseless):
    batch, _, _ = noiseless
    mu, sigma = _Bins(fit_settings(), 32)(batch)
    assert mu.shape == sigma.shape == (2, 32) and mu.dtype == torch.float32 and (sigma > 0).all()


@pytest.mark.slow
def test_pulls_over_200_planets_have_unit_spread():
    """Another transit code, Claret's four-coefficient law, a non-separable drift and jitter: the fit's
    quadratic law and smooth drift surface are only approximations of it, and sigma must still hold."""
    pulls = []
    for seed in range(10):
        batch, truth = make_visits(b=20, t=120, n=24, law="nonlinear", seed=100 + seed)
        out = fit(batch, n=24)
        assert not out["flags"][:, :2].any()
        pulls.append(((out["mu"] - torch.from_numpy(truth["depth"])) / out["sigma"]).flatten())
    pulls = torch.cat(pulls)
    # The quadratic law's mismatch leaves a small bias shared by a planet's bins (measured: ~0.25 sigma).
    assert 0.9 < pulls.std() < 1.1 and pulls.mean().abs() < 0.35


def test_a_visit_without_a_transit_is_flagged_and_widened():
    batch, _ = make_visits(b=1, transit=False, seed=4)
    out = fit(batch)
    assert out["flags"][0, REASONS.index("no_transit")] and out["failed"].all()
    assert (out["sigma"] >= 2e-3).all() and torch.isfinite(out["mu"]).all() and (out["mu"] >= 0).all()


def test_a_transit_at_the_window_edge_is_flagged_and_widened():
    batch, _ = make_visits(b=1, t0_shift=3.5, seed=5)
    out = fit(batch)
    assert out["flags"][0, REASONS.index("t0_at_edge")] and (out["sigma"] >= 2e-3).all()


def test_fgs1_far_from_the_airs_spectrum_gets_a_sigma_that_covers_the_gap():
    batch, truth = make_visits(b=1, seed=6)
    reference = fit(batch)
    batch["flux"][..., 0] = 1 + (batch["flux"][..., 0] - 1) * 0.5   # FGS1's transit half as deep
    out = fit(batch)
    gap = (out["mu"][0, 0] - truth["depth"][0, 0]).abs()
    assert out["flags"][0, REASONS.index("fgs1_vs_airs")] and not reference["flags"][0, REASONS.index("fgs1_vs_airs")]
    assert out["sigma"][0, 0] > 0.5 * gap and out["sigma"][0, 0] > 10 * reference["sigma"][0, 0]


def test_a_dead_column_fails_alone_and_gets_a_wide_sigma():
    batch, _ = make_visits(b=1, seed=7)
    batch["flux"][:, :, 20] = float("nan")
    out = fit(batch)
    assert out["failed"][0, 20] and out["failed"].sum() == 1
    assert out["sigma"][0, 20] >= 2e-3 and torch.isfinite(out["mu"]).all()


def test_fgs1_light_that_falls_with_the_square_of_the_pointing_offset_is_regressed_away():
    """FGS1's box cuts its PSF's wings, so its light falls with the square of the pointing offset (the
    batch's first two jitter columns are FGS1's centroids, as in every store): with only linear jitter
    terms FGS1's depth was off by a median 2% (up to 8%)."""
    batch, truth = make_visits(b=6, seed=23)
    offset = batch["jitter"]
    batch["flux"][..., 0] *= 1 - 1e-3 * (offset[..., 0] ** 2 + offset[..., 1] ** 2)
    depth = torch.from_numpy(truth["depth"])[:, 0]
    out = fit(batch)
    assert ((out["mu"][:, 0] - depth).abs() / depth).max() < 0.01
    assert ((out["mu"][:, 0] - depth).abs() / out["sigma"][:, 0]).max() < 3.0


def test_fgs1_noisier_than_its_errors_say_widens_fgs1_alone():
    """FGS1's noise ~3.2x what its flux_err says, AIRS's as stated. FGS1's depth error is mostly its
    shared terms' (its t0, limb darkening, drift, jitter), which FGS1's light alone sets: scaled by the
    chi^2 of all bins (AIRS's), its sigma grew only 1.1-1.9x."""
    batch, _ = make_visits(b=6, seed=21)
    clean = fit(batch)
    noise = torch.randn(batch["flux"][..., 0].shape, generator=torch.Generator().manual_seed(0))
    batch["flux"][..., 0] += 3.0 * batch["flux_err"][..., 0] * noise
    out = fit(batch)
    grown = out["sigma"] / clean["sigma"]
    assert 2.4 < grown[:, 0].median() < 4.5 and grown[:, 0].min() > 2.0
    assert grown[:, 1:].median() < 1.2


@pytest.mark.slow
def test_red_noise_widens_sigma_towards_the_real_error():
    # Noise correlated over ~1 h, as strong as the white noise: the formal error would be ~2.5x too small.
    batch, truth = make_visits(b=4, red=1.0, seed=8)
    out = fit(batch)
    z = (out["mu"] - torch.from_numpy(truth["depth"])) / out["sigma"]
    assert out["beta"][:, 1:].median() > 1.5
    assert z.pow(2).mean().sqrt() < 1.6 and (z.abs() < 2).float().mean() > 0.8


@pytest.mark.slow
def test_jitter_regressors_remove_pointing_systematics():
    batch, truth = make_visits(b=2, jitter_amp=3e-3, seed=9)
    depth = torch.from_numpy(truth["depth"])
    with_j = (fit(batch)["mu"] - depth).pow(2).mean()
    without = (fit(batch, use_jitter=False)["mu"] - depth).pow(2).mean()
    assert with_j < 0.5 * without


@pytest.mark.slow
def test_jitter_coefficients_per_bin_follow_each_bins_own_response():
    """A pointing response that differs bin by bin: the default (a coefficient per bin) removes it, a
    wavelength polynomial cannot, and sigma stays honest."""
    batch, truth = make_visits(b=2, jitter_amp=1e-2, seed=12, jitter_per_bin=True)
    depth = torch.from_numpy(truth["depth"])
    per_bin = fit(batch)
    smooth = fit(batch, jitter_wavelength_degree=1)
    assert (per_bin["mu"] - depth).pow(2).mean() < 0.25 * (smooth["mu"] - depth).pow(2).mean()
    z = ((per_bin["mu"] - depth) / per_bin["sigma"])[:, 1:]
    assert z.pow(2).mean().sqrt() < 1.5


@pytest.mark.slow
def test_all_283_bins_of_a_full_visit():
    batch, truth = make_visits(b=2, t=187, n=N, seed=10)
    out = PhysicsFit(fit_settings()).fit(batch)
    z = (out["mu"] - torch.from_numpy(truth["depth"])) / out["sigma"]
    assert not out["flags"].any() and 0.58 < (z.abs() < 1).float().mean() < 0.78
