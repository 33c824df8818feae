"""Transmission spectra of a toy atmosphere: continuum, haze slope, molecular bands and a grey cloud deck.

Depth(lambda) = (Rp/Rs)^2 + A * F(lambda), F = rayleigh * (lambda / 1 um)^-slope + sum_m s_m * bands_m(lambda),
where A is the annulus of a few scale heights (2 Rp H / Rs^2) and bands_m is a sum of Gaussians in
log-wavelength at the strongest infrared bands of each molecule; a cloud deck at height cloud_top (in the
same units as F) hides what lies below it: F -> softmax(F, cloud_top). Not radiative transfer, but the right
places, widths and scale for a learner to find structure the way it exists in real spectra.
"""

from __future__ import annotations

import numpy as np

# Band centres (um) and relative strengths of the strongest near-IR bands (HITRAN band heads, rounded).
MOLECULES: dict[str, tuple[tuple[float, float], ...]] = {
    "H2O": ((1.15, 0.4), (1.40, 0.8), (1.90, 0.9), (2.70, 1.0), (3.20, 0.3)),
    "CO2": ((2.00, 0.3), (2.70, 0.6), (4.30, 1.0)),
    "CH4": ((1.70, 0.5), (2.30, 0.7), (3.30, 1.0)),
    "CO": ((2.35, 0.6), (4.60, 1.0)),
}
_CLOUD_SOFTNESS = 0.05
_BAND_WIDTH_LN = 0.045  # Gaussian sigma in ln(lambda): ~0.1 um at 2 um, like the unresolved band envelopes


def band_profile(wavelength_um: np.ndarray, molecule: str) -> np.ndarray:
    """Sum of unit-peak Gaussians (times relative strength) at the molecule's bands, same shape as input."""
    ln = np.log(np.asarray(wavelength_um, dtype=np.float64))
    out = np.zeros_like(ln)
    for centre, strength in MOLECULES[molecule]:
        out += strength * np.exp(-0.5 * ((ln - np.log(centre)) / _BAND_WIDTH_LN) ** 2)
    return out


def transmission_spectrum(
    wavelength_um: np.ndarray,
    rp_over_rs: float,
    scale_depth: float,
    strengths: dict[str, float],
    rayleigh: float,
    slope: float = 4.0,
    cloud_top: float | None = None,
) -> np.ndarray:
    """Transit depth per wavelength: continuum (Rp/Rs)^2 plus scale_depth times the features.

    slope: the haze's power law (4 is Rayleigh scattering, smaller for larger haze particles); cloud_top:
    the deck's height in feature units (None: cloud free), below which the features are flattened.
    """
    wl = np.asarray(wavelength_um, dtype=np.float64)
    features = rayleigh * (wl / 1.0) ** -slope
    for molecule, s in strengths.items():
        features = features + s * band_profile(wl, molecule)
    if cloud_top is not None:  # a smooth maximum (width 0.05): the deck's edge is not a kink in the spectrum
        features = _CLOUD_SOFTNESS * np.logaddexp(features / _CLOUD_SOFTNESS, cloud_top / _CLOUD_SOFTNESS)
    return rp_over_rs**2 + scale_depth * features


def random_atmosphere(rng: np.random.Generator, rp_over_rs: float) -> dict:
    """Random molecular strengths (some absent), Rayleigh slope and feature scale for one planet.

    scale_depth ~ 2 Rp H / Rs^2 x a few scale heights: ~3-12 percent of the continuum depth, so
    features reach a few hundred ppm on a 1-percent transit, as in hot Jupiters' spectra.
    """
    present = rng.random(len(MOLECULES)) < 0.7
    strengths = {
        m: float(rng.uniform(0.2, 1.0)) if keep else 0.0 for m, keep in zip(MOLECULES, present, strict=True)
    }
    return {
        "strengths": strengths,
        "rayleigh": float(rng.uniform(0.0, 0.3)),
        "scale_depth": float(rp_over_rs**2 * rng.uniform(0.03, 0.12)),
    }


def random_cloudy_atmosphere(rng: np.random.Generator, rp_over_rs: float) -> dict:
    """A more varied atmosphere than random_atmosphere: every molecule's abundance spread over two decades
    (some absent), a haze whose slope ranges from grey to steeper than Rayleigh, and a cloud deck in 60% of
    planets that mutes the bands below it."""
    present = rng.random(len(MOLECULES)) < 0.85
    abundance = 10.0 ** rng.uniform(-1.5, 0.3, len(MOLECULES))
    cloudy = rng.random() < 0.6
    return {
        "strengths": {m: float(a * keep) for m, a, keep in zip(MOLECULES, abundance, present, strict=True)},
        "rayleigh": float(rng.uniform(0.0, 0.4)),
        "slope": float(rng.uniform(1.0, 6.0)),
        "cloud_top": float(rng.uniform(0.1, 1.5)) if cloudy else None,
        "scale_depth": float(rp_over_rs**2 * rng.uniform(0.03, 0.15)),
    }
