"""Training losses: the competition's Gaussian log-likelihood, plus optional physics terms.

`SpectralLoss(mu, sigma, target) -> (total, parts)`: mu, sigma, target are (B, 283) tensors (FGS1 first,
AIRS in target order); targets may hold NaN where unknown. The physics terms are measured in units of
the predicted sigma (detached), so a weight means the same thing whatever the depth scale of the data.
Each term is switched on by `composite.<term>.enabled` and scaled by `composite.<term>.weight`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from spectramind.errors import ConfigError
from spectramind.metric import FGS_WEIGHT
from spectramind.physics.spectra import MOLECULES
from spectramind.physics.wavelengths import target_wavelengths_um

BAND_HALF_WIDTH_LN = 0.05  # a band's half width in ln(lambda): ~0.1 um at 2 um, ~0.17 um at 3.3 um
TERMS = ("smoothness", "fft", "nonnegativity", "asymmetry", "molecular")
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def band_masks(wl: torch.Tensor, flank_um: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(bands, bins) boolean masks: inside each H2O, CO2, CH4 and CO band in range, and its flanks."""
    inside, flanks = [], []
    for centre, _strength in (b for bands in MOLECULES.values() for b in bands):
        half = centre * BAND_HALF_WIDTH_LN
        distance = (wl - centre).abs()
        band, flank = distance <= half, (distance > half) & (distance <= half + flank_um)
        if band.sum() >= 2 and flank.sum() >= 2:
            inside.append(band)
            flanks.append(flank)
    return torch.stack(inside), torch.stack(flanks)


def gaussian_nll(mu, sigma, target, fgs_weight: float = FGS_WEIGHT) -> torch.Tensor:
    """Weighted mean of -GLL over known targets (FGS1 weighted as in the metric)."""
    known = torch.isfinite(target)
    y = torch.where(known, target, mu.detach())
    nll = _HALF_LOG_2PI + torch.log(sigma) + 0.5 * ((y - mu) / sigma) ** 2
    weights = torch.ones_like(mu)
    weights[:, 0] = fgs_weight
    weights = weights * known
    return (nll * weights).sum() / weights.sum().clamp_min(1.0)


class SpectralLoss:
    """GLL plus the physics terms that `composite` switches on; returns (total, {term: value})."""

    def __init__(self, fgs_weight: float = FGS_WEIGHT, fft_cutoff: float = 0.25, band_flank_um: float = 0.1,
                 composite: Mapping | None = None):
        composite = composite or {}
        unknown = set(composite) - set(TERMS)
        if unknown:
            raise ConfigError(f"loss.composite: unknown term(s) {sorted(unknown)}; expected some of {TERMS}")
        self.fgs_weight = float(fgs_weight)
        self.fft_cutoff = float(fft_cutoff)     # share of the Nyquist band counted as high frequency
        self.band_flank_um = float(band_flank_um)
        self.weights = {name: float(term["weight"]) for name, term in composite.items()
                        if bool(term["enabled"])}
        self._masks: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, mu, sigma, target) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        mu, sigma, target = mu.float(), sigma.float(), target.float()  # fp16 overflows ((y - mu) / sigma)^2
        parts = {"gll": gaussian_nll(mu, sigma, target, self.fgs_weight)}
        scale = sigma[:, 1:].detach().median(dim=1, keepdim=True).values  # (B, 1) AIRS sigma per planet
        for name in self.weights:
            parts[name] = getattr(self, f"_{name}")(mu, sigma, target, scale)
        total = parts["gll"] + sum(w * parts[name] for name, w in self.weights.items())
        return total, parts

    @staticmethod
    def _smoothness(mu, sigma, target, scale):
        """Mean squared second difference of the AIRS spectrum: penalises bin-to-bin zig-zag."""
        airs = mu[:, 1:]
        return ((airs[:, 2:] - 2 * airs[:, 1:-1] + airs[:, :-2]) / scale).pow(2).mean()

    def _fft(self, mu, sigma, target, scale):
        """Mean power above `fft_cutoff` of the Nyquist frequency in the AIRS spectrum."""
        airs = mu[:, 1:]
        spectrum = torch.fft.rfft((airs - airs.mean(dim=1, keepdim=True)) / scale, dim=1, norm="ortho")
        start = int(math.ceil(self.fft_cutoff * (spectrum.shape[1] - 1)))
        return spectrum[:, start:].abs().pow(2).mean()

    @staticmethod
    def _nonnegativity(mu, sigma, target, scale):
        """Transit depths cannot be negative."""
        return (torch.relu(-mu) / scale).pow(2).mean()

    @staticmethod
    def _asymmetry(mu, sigma, target, scale):
        """A whole spectrum shifted one way (squared mean signed z per planet), which GLL forgives
        when sigma grows; unknown targets are left out."""
        known = torch.isfinite(target)
        z = torch.where(known, (mu - torch.nan_to_num(target)) / sigma, torch.zeros_like(mu))
        return (z.sum(1) / known.sum(1).clamp_min(1)).pow(2).mean()

    def _molecular(self, mu, sigma, target, scale):
        """Absorption only adds depth: a band's mean depth should not fall below its flanks' mean."""
        airs = mu[:, 1:]
        inside, flanks = self._band_masks(airs.device, mu.shape[1])
        band_mean = airs @ inside.T / inside.sum(1)
        flank_mean = airs @ flanks.T / flanks.sum(1)
        return (torch.relu(flank_mean - band_mean) / scale).pow(2).mean()

    def _band_masks(self, device, n_bins):
        if device not in self._masks:
            inside, flanks = band_masks(torch.from_numpy(target_wavelengths_um(n_bins)[1:]), self.band_flank_um)
            self._masks[device] = (inside.to(device=device, dtype=torch.float32),
                                   flanks.to(device=device, dtype=torch.float32))  # mu is float32 here
        return self._masks[device]
