"""The wavelength grids, defined once: the 283 target bins (FGS1 first) and the AIRS detector columns."""

from __future__ import annotations

import numpy as np

FGS1_WAVELENGTH_UM = 0.7  # the FGS1 photometer's band centre: target bin wl_1

# The AIRS target grid wl_2..wl_283 (um) is exactly quadratic in the bin index (fitted to the competition's
# wavelengths.csv to 2e-15 um).
_AIRS_TARGET_POLY = (1.95176069217368, 0.008858256238602777, -6.9134721448017105e-06)

# AIRS wavelength of detector column c (um): exactly quadratic in c / 355 on the real axis_info (max error
# 2e-15), decreasing from 4.078 um at column 0 to 1.633 um at column 355.
AIRS_DETECTOR_POLY = (-0.871270327048639, -1.5739400934050298, 4.078463140898871)


def target_wavelengths_um(n_bins: int = 283) -> np.ndarray:
    """(n_bins,) float64 um: the target wavelength of each bin, FGS1 first."""
    k = np.arange(n_bins - 1, dtype=np.float64)
    airs = _AIRS_TARGET_POLY[0] + _AIRS_TARGET_POLY[1] * k + _AIRS_TARGET_POLY[2] * k**2
    return np.r_[FGS1_WAVELENGTH_UM, airs]


def airs_detector_wavelengths_um() -> np.ndarray:
    """(356,) um of the AIRS detector columns, decreasing with column index."""
    return np.polyval(AIRS_DETECTOR_POLY, np.arange(356) / 355.0)
