"""Post-hoc calibration of the physics fit on labelled planets, fitted by the competition's own likelihood.

Per instrument (FGS1, AIRS): mu -> mu (1 + m) and sigma -> sqrt((s sigma)^2 + (f mu)^2). m corrects a
depth bias the fit shares across planets (a limb-darkening law that is not the star's), s rescales the
fit's sigma, and f is the relative error the fit does not know about (systematics it does not model).
Six numbers, fitted by maximising the Gaussian log-likelihood of the labels with L-BFGS; applied out
of fold to the labelled planets themselves, so nothing downstream sees a planet's own label through it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch


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

    def as_dict(self) -> dict:
        return asdict(self)


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


def out_of_fold(planet_ids, mu, sigma, y, folds: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Each labelled visit calibrated by the calibration fitted on the other folds (folds by planet)."""
    planet_ids = np.asarray(planet_ids)
    planets = np.unique(planet_ids)
    fold_of = dict(zip(planets, np.random.default_rng(seed).permutation(len(planets)) % folds, strict=True))
    fold = np.array([fold_of[p] for p in planet_ids])
    mu_out, sigma_out = np.empty_like(mu), np.empty_like(sigma)
    for k in range(folds):
        held = fold == k
        cal = fit_calibration(mu[~held], sigma[~held], y[~held])
        mu_out[held], sigma_out[held] = cal.apply(mu[held], sigma[held])
    return mu_out, sigma_out
