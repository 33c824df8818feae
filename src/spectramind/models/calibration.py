"""Post-hoc calibration of the physics fit on labelled planets, fitted by the competition's own likelihood,
and a spectral prior learned from the same labels.

Per instrument (FGS1, AIRS): mu -> mu (1 + m) and sigma -> sqrt((s sigma)^2 + (f mu)^2). m corrects a
depth bias the fit shares across planets (a limb-darkening law that is not the star's), s rescales the
fit's sigma, and f is the relative error the fit does not know about (systematics it does not model).
Six numbers, fitted by maximising the Gaussian log-likelihood of the labels with L-BFGS; applied out
of fold to the labelled planets themselves, so nothing downstream sees a planet's own label through it.
Before it, optionally: a spectral prior on the AIRS shape (the fit stage's), or the error of the AIRS
level that every bin shares (a trained net's, LevelError).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from spectramind.data.folds import assign_folds

OUTPUTS_FILE = "output_calibration.npz"  # a trained net's, in its run folder (train.setup.calibrate_outputs)


@dataclass(frozen=True)
class Calibration:
    mu_bias: tuple[float, float]       # m per instrument
    sigma_scale: tuple[float, float]   # s
    sigma_floor: tuple[float, float]   # f (relative to mu)

    def apply(self, mu: np.ndarray, sigma: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(visits, bins) arrays, FGS1 first."""
        m, s, f = (np.r_[v[0], np.full(mu.shape[1] - 1, v[1])] for v in
                   (self.mu_bias, self.sigma_scale, self.sigma_floor))
        mu_cal = mu * (1 + m)
        return mu_cal, np.hypot(s * sigma, f * np.abs(mu_cal))

    def airs_only(self) -> Calibration:
        """The same for AIRS, the identity for FGS1."""
        return Calibration(mu_bias=(0.0, self.mu_bias[1]), sigma_scale=(1.0, self.sigma_scale[1]),
                           sigma_floor=(0.0, self.sigma_floor[1]))

    def as_dict(self) -> dict:
        return asdict(self)


IDENTITY = Calibration(mu_bias=(0.0, 0.0), sigma_scale=(1.0, 1.0), sigma_floor=(0.0, 0.0))


def fit_calibration(mu: np.ndarray, sigma: np.ndarray, y: np.ndarray) -> Calibration:
    """The calibration that maximises the labels' likelihood; (visits, bins) arrays, FGS1 first."""
    params = [_fit_instrument(*(a[:, cols] for a in (mu, sigma, y))) for cols in (slice(0, 1), slice(1, None))]
    return Calibration(*(tuple(p[k] for p in params) for k in range(3)))


def _fit_instrument(mu, sigma, y) -> tuple[float, float, float]:
    """(m, s, f) for one instrument's values."""
    m_, s_, y_ = (torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64)).flatten() for a in (mu, sigma, y))
    keep = torch.isfinite(m_) & torch.isfinite(s_) & torch.isfinite(y_) & (s_ > 0)
    m_, s_, y_ = m_[keep], s_[keep], y_[keep]
    theta = torch.tensor([0.0, 0.0, -6.0], dtype=torch.float64, requires_grad=True)  # m, log s, log f
    opt = torch.optim.LBFGS([theta], max_iter=200, line_search_fn="strong_wolfe")

    def nll():
        opt.zero_grad()
        mean = m_ * (1 + theta[0])
        var = (theta[1].exp() * s_) ** 2 + (theta[2].exp() * mean) ** 2
        loss = 0.5 * (var.log() + (y_ - mean) ** 2 / var).mean()
        loss.backward()
        return loss

    opt.step(nll)
    t = theta.detach()
    return float(t[0]), float(t[1].exp()), float(t[2].exp())


def out_of_fold(planet_ids, mu, sigma, y, folds: int, seed: int, learn=None) -> tuple[np.ndarray, np.ndarray]:
    """Each labelled visit corrected by what `learn(mu, sigma, y)` (default: fit_calibration) makes of
    the other folds (folds by planet); what it makes must have `apply(mu, sigma)`."""
    learn = learn or fit_calibration
    fold_of = assign_folds(planet_ids, folds, seed)
    fold = np.array([fold_of[p] for p in np.asarray(planet_ids).tolist()])
    mu_out, sigma_out = np.empty_like(mu), np.empty_like(sigma)
    for k in range(folds):
        held = fold == k
        mu_out[held], sigma_out[held] = learn(mu[~held], sigma[~held], y[~held]).apply(mu[held], sigma[held])
    return mu_out, sigma_out


@dataclass(frozen=True)
class SpectralPrior:
    """A Gaussian prior on a spectrum's shape (the spectrum over its mean AIRS depth), learned from labels.

    Real transmission spectra are a few molecules' bands, a haze slope and clouds: far fewer degrees of
    freedom than 283 bins, so neighbouring bins are not independent, and a fit's per-bin values can be
    pulled towards the shapes the labels span. The posterior of a visit's shape given its per-bin values
    (treated as independent with their sigma) is the usual Gaussian update; sigma may then fall below the
    per-bin limit, legitimately, but never below what the spectrum's level (its mean AIRS depth) is known
    to: that error is shared by every bin (the limb darkening, the orbit, the drift), so no prior on the
    shape removes it, and each bin keeps its share of it. AIRS only: FGS1's one value against AIRS's
    mean is the ratio a planet's haze and clouds set, too varied to be pulled towards the labels' (that
    is where a prior was seen to make a planet confidently wrong).
    """

    mean: np.ndarray        # (bins - 1,) mean AIRS shape
    covariance: np.ndarray  # (bins - 1, bins - 1) its covariance, shrunk towards its diagonal
    level_scale: float      # the error of a visit's level in units of its AIRS bins' rms sigma

    @classmethod
    def learn(cls, labels: np.ndarray, mu: np.ndarray, sigma: np.ndarray, shrinkage: float) -> SpectralPrior:
        """From (visits, bins) labels and the fit's values for them."""
        airs = labels[:, 1:]
        shape = airs / airs.mean(1, keepdims=True)
        cov = np.cov(shape, rowvar=False)
        # Shrinkage towards the diagonal: a covariance from fewer spectra than bins is singular.
        cov = (1 - shrinkage) * cov + shrinkage * np.diag(np.diag(cov))
        return cls(mean=shape.mean(0), covariance=cov, level_scale=LevelError.learn(mu, sigma, labels).scale)

    def apply(self, mu: np.ndarray, sigma: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(visits, bins) -> the posterior mean and standard deviation per bin."""
        level = _level(mu)
        level_var = LevelError(self.level_scale).relative_variance(mu, sigma)[:, 0]
        out_mu, out_sigma = mu.copy(), sigma.copy()
        for i in range(len(mu)):
            s, d = mu[i, 1:] / level[i], (sigma[i, 1:] / level[i]) ** 2
            innovation = s - self.mean
            # A spectrum the labels did not prepare the prior for (its values unlikely under prior + noise)
            # gets a prior widened by how unlikely they are (empirical Bayes): never pulled confidently
            # onto shapes it does not have.
            chi2 = innovation @ np.linalg.solve(self.covariance + np.diag(d), innovation) / len(s)
            cov = self.covariance * max(1.0, chi2)
            gain = np.linalg.solve(cov + np.diag(d), cov).T                          # C (C + D)^-1
            post = self.mean + gain @ innovation
            var = np.diag(cov - gain @ cov).clip(1e-30) + post**2 * level_var[i]
            out_mu[i, 1:], out_sigma[i, 1:] = post * level[i], np.sqrt(var) * level[i]
        return out_mu, out_sigma


@dataclass(frozen=True)
class LevelError:
    """The error of a visit's level (its mean AIRS depth), which every AIRS bin shares, in units of the rms
    of the visit's AIRS sigmas: learned from labels by maximum likelihood, each bin given its share of it.

    It comes from what is common to all bins (the limb darkening, the orbit, the drift), so a model that
    narrows each bin's sigma by pooling the bins (the spectral prior, a net's convolutions across
    wavelength) narrows nothing of it, and a per-bin likelihood never sees it on its own. One number, so
    a few labelled planets determine it where the per-instrument Calibration's three need many more.
    """

    scale: float

    @classmethod
    def learn(cls, mu: np.ndarray, sigma: np.ndarray, y: np.ndarray) -> LevelError:
        """From (visits, bins) values and their labels: the rms of the level errors over the rms sigmas."""
        z = (mu[:, 1:].mean(1) - y[:, 1:].mean(1)) / _rms(sigma[:, 1:])
        return cls(scale=float(np.sqrt(np.mean(z[np.isfinite(z)] ** 2))))

    def relative_variance(self, mu: np.ndarray, sigma: np.ndarray) -> np.ndarray:
        """Per visit (visits, 1): the level's variance relative to the level squared."""
        return (self.scale * _rms(sigma[:, 1:])[:, None] / _level(mu)) ** 2

    def apply(self, mu: np.ndarray, sigma: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(visits, bins): each AIRS bin's sigma widened by its share of the level's error (FGS1 unchanged)."""
        out = sigma.copy()
        out[:, 1:] = np.sqrt(sigma[:, 1:] ** 2 + mu[:, 1:] ** 2 * self.relative_variance(mu, sigma))
        return mu, out

    def as_dict(self) -> dict:
        return {"level_scale": self.scale}


def _level(mu: np.ndarray) -> np.ndarray:
    """Per visit (visits, 1): the mean AIRS depth, kept away from 0."""
    return np.abs(mu[:, 1:].mean(1, keepdims=True)).clip(1e-6)


def _rms(sigma: np.ndarray) -> np.ndarray:
    """Per visit: the rms of (visits, bins) sigmas."""
    return np.sqrt((sigma**2).mean(1))


def save(path, learned: list) -> None:
    """The learned steps as one .npz: a SpectralPrior and/or a LevelError, then a Calibration, in that order."""
    from spectramind import files

    arrays = {}
    for step in learned:
        if isinstance(step, SpectralPrior):
            arrays.update(prior_mean=step.mean, prior_covariance=step.covariance,
                          prior_level_scale=np.float64(step.level_scale))
        elif isinstance(step, LevelError):
            arrays["level_scale"] = np.float64(step.scale)
        else:
            arrays["calibration"] = np.array([step.mu_bias, step.sigma_scale, step.sigma_floor])
    with files.atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def load(path) -> list:
    """What `save` wrote, as steps to apply in order (no pickle: arrays only)."""
    with np.load(path, allow_pickle=False) as data:
        steps = []
        if "prior_mean" in data:
            steps.append(SpectralPrior(mean=data["prior_mean"], covariance=data["prior_covariance"],
                                       level_scale=float(data["prior_level_scale"])))
        if "level_scale" in data:
            steps.append(LevelError(scale=float(data["level_scale"])))
        m, s, f = (tuple(float(v) for v in row) for row in data["calibration"])
        return [*steps, Calibration(mu_bias=m, sigma_scale=s, sigma_floor=f)]
