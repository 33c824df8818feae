"""The post-hoc calibration of the physics fit on labels: it finds a known bias and a known sigma error."""

import dataclasses

import numpy as np
import pytest
import torch

from spectramind.models.calibration import (
    IDENTITY,
    OUTPUTS_FILE,
    Calibration,
    LevelError,
    SpectralPrior,
    fit_calibration,
    load,
    out_of_fold,
)
from spectramind.train import checkpoint
from spectramind.train.setup import MIN_CALIBRATION_PLANETS, MIN_SCALE_PLANETS, Parts, calibrate_outputs


def _fit_output(n=300, bins=20, seed=0):
    """Labels, and what a fit biased by +4% in AIRS with sigma 2x too small (FGS1 1.5x) would report."""
    rng = np.random.default_rng(seed)
    y = rng.uniform(0.006, 0.04, (n, 1)) * (1 + 0.05 * rng.normal(size=(n, bins)))
    true_sigma = np.full((n, bins), 1e-4)
    true_sigma[:, 0] = 3e-5
    reported = true_sigma / np.r_[1.5, np.full(bins - 1, 2.0)]
    mu = y * np.r_[1.0, np.full(bins - 1, 1.04)] + true_sigma * rng.normal(size=(n, bins))
    return mu, reported, y


def _gll(y, mu, sigma):
    return float((-0.5 * (np.log(2 * np.pi * sigma**2) + (y - mu) ** 2 / sigma**2)).mean())


def test_the_calibration_finds_the_bias_and_the_sigma_scale():
    mu, sigma, y = _fit_output()
    cal = fit_calibration(mu, sigma, y)
    assert abs(cal.mu_bias[1] - (1 / 1.04 - 1)) < 0.003 and abs(cal.mu_bias[0]) < 0.003
    assert 1.3 < cal.sigma_scale[0] < 1.7 and cal.sigma_floor[1] < 0.01
    mu_cal, sigma_cal = cal.apply(mu, sigma)
    z = (mu_cal - y) / sigma_cal
    assert 0.9 < z[:, 1:].std() < 1.1 and 0.9 < z[:, 0].std() < 1.1


def test_out_of_fold_calibration_raises_the_likelihood_of_every_fold():
    mu, sigma, y = _fit_output(seed=1)
    ids = np.repeat(np.arange(100), 3)                       # three visits a planet: folds split planets
    mu_oof, sigma_oof = out_of_fold(ids, mu, sigma, y, folds=5, seed=0)
    assert _gll(y, mu_oof, sigma_oof) > _gll(y, mu, sigma) + 1.0


def test_the_identity_calibration_changes_nothing():
    mu, sigma, _ = _fit_output(n=5)
    same = Calibration(mu_bias=(0.0, 0.0), sigma_scale=(1.0, 1.0), sigma_floor=(0.0, 0.0)).apply(mu, sigma)
    np.testing.assert_array_equal(same[0], mu)
    np.testing.assert_array_equal(same[1], sigma)


def _spectra(n, bins=60, seed=0):
    """Spectra from a three-parameter family (a level, a band's strength, a slope), as real ones are."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 1, bins)
    band = np.exp(-0.5 * ((x - 0.6) / 0.08) ** 2)
    level, strength, slope = rng.uniform(0.006, 0.04, (n, 1)), rng.uniform(0, 0.2, (n, 1)), rng.normal(0, 0.05, (n, 1))
    return level * (1 + strength * band + slope * (x - 0.5))


def _measured(y, sigma, level_sd=0.0, seed=2):
    """A fit's values: independent noise `sigma` per bin plus a level error shared by the AIRS bins."""
    rng = np.random.default_rng(seed)
    shared = np.c_[np.zeros(len(y)), np.repeat(level_sd * rng.normal(size=(len(y), 1)), y.shape[1] - 1, 1)]
    return y + sigma * rng.normal(size=y.shape) + shared


def _learned(level_sd=0.0):
    y = _spectra(400)
    sigma = np.full_like(y, 2e-4)
    return SpectralPrior.learn(y, _measured(y, sigma, level_sd, seed=3), sigma, shrinkage=0.1)


def test_the_spectral_prior_beats_the_per_bin_limit_on_airs_and_leaves_fgs1_alone():
    prior = _learned()
    y = _spectra(200, seed=1)
    sigma = np.full_like(y, 2e-4)
    mu = _measured(y, sigma)
    post_mu, post_sigma = prior.apply(mu, sigma)
    assert post_mu[:, 0].tolist() == mu[:, 0].tolist() and post_sigma[:, 0].tolist() == sigma[:, 0].tolist()
    post_mu, post_sigma, y, sigma = post_mu[:, 1:], post_sigma[:, 1:], y[:, 1:], sigma[:, 1:]   # AIRS
    assert np.sqrt(((post_mu - y) ** 2).mean()) < 0.5 * 2e-4          # well below the per-bin error
    z = (post_mu - y) / post_sigma
    # Shrinkage adds independent per-bin variance the family does not have: sigma errs on the safe side
    # (measured 0.75), and the calibration after the prior rescales it.
    assert (post_sigma < sigma).all() and 0.6 < z.std() < 1.1


def test_a_level_error_shared_by_every_bin_stays_in_sigma():
    """The fit's level (its mean AIRS depth) off by 1.5 sigma for all bins at once, as a limb-darkening or
    orbit error makes it: the prior removes the per-bin noise, not that, and its sigma keeps it."""
    y = _spectra(200, seed=1)
    sigma = np.full_like(y, 2e-4)
    mu = _measured(y, sigma, level_sd=3e-4)
    prior = _learned(level_sd=3e-4)
    assert 1.2 < prior.level_scale < 1.8
    for learned, within in ((prior, (0.8, 1.25)), (dataclasses.replace(prior, level_scale=0.0), (2.0, np.inf))):
        post_mu, post_sigma = learned.apply(mu, sigma)
        z = ((post_mu - y) / post_sigma)[:, 1:]
        assert within[0] < z.std() < within[1]


def test_the_level_error_of_a_net_is_learned_and_shared_by_every_airs_bin():
    """A model whose per-bin sigma is right for each bin's own noise, with its whole AIRS spectrum off by
    a shared 1.5 sigma: the learned level error widens each bin by its share and leaves FGS1 alone."""
    y = _spectra(300, seed=4)
    sigma = np.full_like(y, 2e-4)
    mu = _measured(y, sigma, level_sd=3e-4, seed=5)
    level = LevelError.learn(mu, sigma, y)
    assert 1.3 < level.scale < 1.7                      # sqrt(1.5^2 + 1/59): the level's own noise too
    mu_out, sigma_out = level.apply(mu, sigma)
    assert mu_out is mu and sigma_out[:, 0].tolist() == sigma[:, 0].tolist()
    z = ((mu - y) / sigma_out)[:, 1:]
    assert 0.9 < z.std() < 1.1 and ((mu - y) / sigma)[:, 1:].std() > 1.5


def test_a_spectrum_unlike_the_labels_is_not_pulled_onto_them_when_its_bins_are_precise():
    prior = _learned()
    odd = 0.02 * (1 + 0.3 * np.sin(np.linspace(0, 20, 60)))[None]    # a shape the family cannot make
    post_mu, _ = prior.apply(odd, np.full_like(odd, 1e-6))
    np.testing.assert_allclose(post_mu, odd, rtol=1e-3)


class _Overconfident(torch.nn.Module):
    """Reports sigma 1e-3 where its error (the items' `noise`) is 3e-3 in AIRS and 2e-3 in FGS1."""

    def __init__(self):
        super().__init__()
        self.register_buffer("unused", torch.zeros(1))

    def forward(self, batch):
        return batch["target"] + batch["noise"], torch.full_like(batch["target"], 1e-3)


class _Labelled(torch.utils.data.Dataset):
    def __init__(self, planets: int, bins: int = 30):
        rng = np.random.default_rng(1)
        self.items = [{"planet_id": torch.tensor(i), "flux": torch.ones(5, bins),
                       "target": torch.full((bins,), 0.01),
                       "noise": torch.from_numpy(np.r_[2e-3, np.full(bins - 1, 3e-3)] * rng.normal(size=bins)).float()}
                      for i in range(planets)]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


class _PassesFgs1(_Overconfident):
    fgs1_from_baseline = True     # as ResidualNet's switch says: its FGS1 is the baseline's, calibrated already


@pytest.mark.parametrize("planets", [MIN_SCALE_PLANETS, MIN_CALIBRATION_PLANETS, MIN_CALIBRATION_PLANETS - 1])
@pytest.mark.parametrize("model", [_Overconfident, _PassesFgs1])
def test_a_trained_nets_outputs_are_calibrated_on_its_validation_split(tmp_path, planets, model):
    """What `spectramind train` runs after training (trainer.calibrate_outputs): the checkpoint predicts the
    validation planets; their labels set the AIRS level's error from MIN_CALIBRATION_PLANETS and the
    per-instrument scale from MIN_SCALE_PLANETS (FGS1's only when the net makes its own); fewer planets
    leave the identity, written."""
    net = model()
    checkpoint.save(tmp_path / "checkpoints" / "best.pt", {"model": net.state_dict()})
    parts = Parts(model=net, loss_fn=None, train_set=None, val_set=_Labelled(planets), trainer=None,
                  optimizer=None, scheduler=None)
    learned = calibrate_outputs(parts, tmp_path, torch.device("cpu"))
    assert load(tmp_path / OUTPUTS_FILE) == learned
    if planets < MIN_CALIBRATION_PLANETS:
        assert learned == [IDENTITY]
        return
    level, scale = learned
    # The items' AIRS errors are independent (3 sigma a bin): their mean over 29 bins is 3/sqrt(29) sigma.
    assert 0.3 < level.scale < 0.9
    if planets < MIN_SCALE_PLANETS:
        assert scale == IDENTITY
        return
    assert 2.6 < scale.sigma_scale[1] < 3.4
    if model is _PassesFgs1:
        assert (scale.mu_bias[0], scale.sigma_scale[0], scale.sigma_floor[0]) == (0.0, 1.0, 0.0)
    else:
        assert 1.5 < scale.sigma_scale[0] < 2.6
