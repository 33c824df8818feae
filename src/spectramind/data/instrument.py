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
# psf: simple's stand-in for the outer rows' light: a background that grows with the column index
AIRS_BACKGROUND_PER_COLUMN = 0.3  # e- per pixel per CDS frame per column index (3 at column 0, ~108 at 355)
REFERENCE_TEFF_K = 5800.0
# The trace widens to the red: the second moment over rows 8-24 (edge rows subtracted) of 20-column blocks
# of the real mean CDS frame is 1.124 + 0.260 lambda (um) rows (1.52 at 1.7 um, 2.11 at 4.0 um). The
# profile above, a median over columns 40-320, is the width at ~2.97 um; its core is stretched by
# 1 + AIRS_CORE_STRETCH (lambda - 2.97 um), the slope tuned so that simulated frames give the real trend
# through the same estimator (the wings, of fixed shape, dilute the core's widening).
AIRS_TREND_ROWS_PER_UM = 0.260
AIRS_CORE_STRETCH, AIRS_PROFILE_UM = 0.19, 2.97
# PSF wings that reach the outer rows in proportion to the column's light: the real rows 0-1 and 30-31
# each hold a median 0.09% of the column's rows 8-24 sum (~0.2-0.5% of the trace peak), where the profile
# above (measured after subtracting the edge rows) holds none; the share falls to the blue with the width,
# from 0.12% at 3.8 um to 0.063% at 1.9 um in 40-column blocks: in the model, in proportion to the core's
# stretch (to this power), the level set so that simulated frames give the real blocks' values within ~15%.
AIRS_EDGE_FRACTION = 8.0e-4  # at the profile's own width (~2.97 um)
AIRS_WING_POWER = 1.0
AIRS_WING_ROWS = 8.0  # half width (rows) of the Lorentzian that carries the wings
AIRS_SKY_BACKGROUND = 3.0  # e- per pixel per CDS frame left where the trace's light does not reach

# FGS1: a Gaussian PSF of 2.1 x 1.8 pixels (sigma, x by y) centred near (15.3, 15.4), 2.17e5 e- per CDS frame.
FGS1_PSF_CENTRE = (15.3, 15.4)
FGS1_PSF_SIGMA = (2.08, 1.80)
FGS1_COUNTS = 2.17e5
FGS1_BACKGROUND = 3.4
# The same light as a narrow core plus broad wings: the real mean frame has its peak pixel at 10% of the
# total and 3.8% of the light outside the 12 x 12 box [10, 22) (5.1% with the background): a pixel-integrated
# Gaussian core of sigma ~1.1 px (a least-squares fit) and a Moffat (beta 2) wing of 5 px scale holding 12%
# (box fraction 0.966 of the light on the detector, peak pixel 10.4%).
FGS1_CORE_SIGMA = (1.10, 1.05)
FGS1_WING_FRACTION, FGS1_WING_SCALE = 0.12, 5.0
# Pointing jitter: the FGS1 centroid of the 25 real CDS frames moves by 0.105 (x) and 0.120 (y) px RMS
# over 10 s, almost all of it frame to frame; photon and read noise add only ~0.02 px.
FGS1_CENTROID_RMS = (0.105, 0.120)

# Calibration maps: dark current (e-/s) median and hot-pixel tail, dead fraction, flat scatter, read noise.
DARK_MEDIAN = 0.0065
HOT_FRACTION = 0.002
HOT_DARK_RANGE = (0.5, 12.0)
DEAD_FRACTION = {"AIRS-CH0": 0.001, "FGS1": 0.003}
FLAT_MEDIAN, FLAT_SCATTER = 1.01, 0.02
READ_MEDIAN, READ_SCATTER = 13.0, 0.5
# The real AIRS read map's distribution, as quantiles (e-) at READ_PROBABILITIES: median 13.0, std 4.65, a tail
# to 152.6 e- (0.1% of pixels above 78 e-); FGS1's is alike (median 13.3, std 4.74, max 114).
READ_PROBABILITIES = (0, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.98, 0.99, 0.995, 0.998, 0.999, 0.9995,
                      0.9998, 0.9999, 1)
READ_QUANTILES = (11.84, 12.16, 12.35, 12.46, 12.68, 13.03, 13.6, 14.95, 17.11, 22.45, 29.34, 41.57, 61.63,
                  78.09, 95.12, 124.16, 135.0, 152.63)
# Per-visit bad pixels across the competition's visits: dead 0.1-1.1%, hot up to 1.7% (this visit: AIRS 0.1%
# dead, 0.7% hot at 5 sigma; FGS1 0.3% dead, 1.0% hot), and good pixels' flat down to 0.57.
DEAD_FRACTION_RANGE = (0.001, 0.011)
HOT_FRACTION_RANGE = (0.002, 0.017)
FLAT_MIN_RANGE = (0.57, 0.9)
LOW_FLAT_FRACTION = 0.002  # share of pixels with a depressed (but positive) response
# Quadratic loss of response: measured = q - beta q^2 (e-); real linear_corr's median c2 is ~5.7e-9.
NONLINEARITY_BETA = 5.7e-9
# The real correction, medians of AIRS linear_corr per coefficient (ascending: true = sum c_k measured^k); the
# cubic term dominates: +0.1% at 10k e-, +0.9% at 30k, +3.1% at 60k. Per pixel, c1 scatters by 0.005 and the
# non-linear terms by ~10% (c3's 1st-99th percentiles are 0.72-1.25 times its median).
LINEAR_CORR_MEDIAN = (0.1404, 0.99990, -5.713e-09, 1.1789e-11, -6.033e-17, 1.3384e-22)
LINEAR_CORR_SCATTER = (0.005, 0.1)  # c1 (absolute), the non-linear terms' common factor (relative)

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


def airs_wings() -> np.ndarray:
    """(32,) Lorentzian wings (a fraction of the column's light per row) that add AIRS_EDGE_FRACTION of the
    column's rows 8-24 light to each outer row; the core (airs_profile) holds the rest."""
    core = airs_profile()
    rows = np.arange(32)
    wing = 1.0 / (1.0 + ((rows - (core * rows).sum()) / AIRS_WING_ROWS) ** 2)
    return AIRS_EDGE_FRACTION * core[8:24].sum() / wing[[0, 1, 30, 31]].mean() * wing


def airs_width_scale(wavelength_um) -> np.ndarray:
    """The trace core's width at each wavelength relative to AIRS_PROFILE's."""
    return 1.0 + AIRS_CORE_STRETCH * (np.asarray(wavelength_um, np.float64) - AIRS_PROFILE_UM)
