"""Toy transmission spectra: continuum depth and bands where the molecules absorb."""

import numpy as np

from spectramind.physics import spectra


def test_no_features_gives_the_continuum_depth():
    wl = np.linspace(1.6, 4.1, 200)
    depth = spectra.transmission_spectrum(wl, 0.1, 0.001, {m: 0.0 for m in spectra.MOLECULES}, 0.0)
    assert np.allclose(depth, 0.01)


def test_each_molecule_peaks_at_its_strongest_band():
    wl = np.linspace(1.0, 5.0, 4001)
    for molecule, bands in spectra.MOLECULES.items():
        strongest = max(bands, key=lambda b: b[1])[0]
        assert abs(wl[np.argmax(spectra.band_profile(wl, molecule))] - strongest) < 0.05


def test_random_atmospheres_are_seeded_and_scaled_to_the_depth():
    a = spectra.random_atmosphere(np.random.default_rng(3), 0.1)
    b = spectra.random_atmosphere(np.random.default_rng(3), 0.1)
    assert a == b
    assert 0.03 * 0.01 <= a["scale_depth"] <= 0.12 * 0.01
