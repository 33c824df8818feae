"""The instrument as the simulator models it: numbers measured on genuine competition files.

Measured on ../shared/ariel-real-sample (planet 342072318, visit 0: its calibration maps and the mean of
its first 25 CDS frames), so that simulated frames look like the real ones without shipping the data
(CC BY-NC) inside the package. tests/test_data_instrument.py re-measures them on the real files.
"""

from __future__ import annotations

import numpy as np

from spectramind.physics.wavelengths import airs_detector_wavelengths_um

# Mean spatial profile of the AIRS trace (fraction of a column's electrons per row, rows 0..31): peaks on
# rows 15-16 with a full width of ~3 rows and faint wings.
AIRS_PROFILE = (
    0.0,
    0.0,
    0.0,
    0.0,
    0.0003,
    0.0005,
    0.0008,
    0.0015,
    0.0023,
    0.0035,
    0.0057,
    0.0131,
    0.0212,
    0.0435,
    0.1281,
    0.2517,
    0.2695,
    0.1532,
    0.0433,
    0.0196,
    0.015,
    0.008,
    0.0045,
    0.0027,
    0.0021,
    0.0013,
    0.0007,
    0.0005,
    0.0003,
    0.0001,
    0.0,
    0.0,
)
# ln(electrons per column per CDS frame) as a polynomial in c / 355 (highest power first): ~30 e- at the red
# end (column 0), ~1.3e5 at column ~320, for the sample's star (Ts 5,8xx K).
AIRS_COUNTS_LOGPOLY = (
    -321.443673369319,
    945.0910506852897,
    -1181.6548716458838,
    819.9664904499916,
    -330.2611133265709,
    73.22554030782213,
    3.3296956798659534,
)
AIRS_BACKGROUND_PER_COLUMN = 0.3  # e- per pixel per CDS frame per column index (3 at column 0, ~108 at 355)
REFERENCE_TEFF_K = 5800.0

# FGS1: a Gaussian PSF of 2.1 x 1.8 pixels (sigma, x by y) centred near (15.3, 15.4), 2.17e5 e- per CDS frame.
FGS1_PSF_CENTRE = (15.3, 15.4)
FGS1_PSF_SIGMA = (2.08, 1.80)
FGS1_COUNTS = 2.17e5
FGS1_BACKGROUND = 3.4

# Calibration maps: dark current (e-/s) median and hot-pixel tail, dead fraction, flat scatter, read noise.
DARK_MEDIAN = 0.0065
HOT_FRACTION = 0.002
HOT_DARK_RANGE = (0.5, 12.0)
DEAD_FRACTION = {"AIRS-CH0": 0.001, "FGS1": 0.003}
FLAT_MEDIAN, FLAT_SCATTER = 1.01, 0.02
READ_MEDIAN, READ_SCATTER = 13.0, 0.5
# Quadratic loss of response: measured = q - beta q^2 (e-); real linear_corr's median c2 is ~5.7e-9.
NONLINEARITY_BETA = 5.7e-9

# Timing (s): reads in pairs, CDS integration 4.5 s (AIRS) / 0.1 s (FGS1); first read 0.1 s after reset.
FIRST_READ_S = 0.1
INTEGRATION_S = {"AIRS-CH0": 4.5, "FGS1": 0.1}
VISIT_HOURS = 7.5
ADC = {"offset": -1000.0, "gain": 0.4369}


def airs_counts(teff_k: float) -> np.ndarray:
    """(356,) electrons per column per CDS frame, a star of temperature teff_k at the sample's brightness."""
    base = np.exp(np.polyval(AIRS_COUNTS_LOGPOLY, np.arange(356) / 355.0))
    return base * planck_ratio(airs_detector_wavelengths_um(), teff_k)


def planck_ratio(wavelength_um, teff_k: float) -> np.ndarray:
    """B_lambda(teff) / B_lambda(reference), normalised to 1 at 2.5 um: colour, not level."""

    def planck(wl, t):
        return 1.0 / (wl**5 * np.expm1(14387.77 / (wl * t)))

    wl = np.asarray(wavelength_um, dtype=np.float64)
    ratio = planck(wl, teff_k) / planck(wl, REFERENCE_TEFF_K)
    return ratio / (planck(2.5, teff_k) / planck(2.5, REFERENCE_TEFF_K))


def airs_profile() -> np.ndarray:
    p = np.asarray(AIRS_PROFILE)
    return p / p.sum()
