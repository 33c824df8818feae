"""The simulator's embedded instrument numbers, re-measured on the genuine files."""

import numpy as np

from spectramind.data import ariel_format as af
from spectramind.data import instrument as ins
from spectramind.physics.wavelengths import airs_detector_wavelengths_um


def test_wavelength_axis_matches_the_real_one(real_sample):
    real = af.read_axis_info(real_sample)["AIRS-CH0-axis2-um"]
    assert np.abs(airs_detector_wavelengths_um() - real).max() < 1e-12


def test_trace_psf_and_counts_match_the_real_frames(real_sample):
    frames = np.load(real_sample / "first_frames_342072318.npz")
    airs = frames["airs_first50"].astype(np.float64)
    cds = (airs[1::2] - airs[0::2]).mean(0)
    signal = cds - np.median(np.r_[cds[:5], cds[-5:]], axis=0)
    profile = np.median(signal[:, 40:320] / signal[:, 40:320].sum(0), axis=1)
    assert np.abs(profile - ins.airs_profile()).max() < 0.01
    assert np.argmax(ins.airs_profile()) == np.argmax(profile)
    counts = signal[8:24].sum(0)[40:320]
    model = ins.airs_counts(5800.0)[40:320]
    assert 0.7 < np.median(model / counts) < 1.4
    fgs = frames["fgs1_first50"].astype(np.float64)
    fcds = (fgs[1::2] - fgs[0::2]).mean(0)
    fcds -= np.median(np.r_[fcds[:4].ravel(), fcds[-4:].ravel()])
    yy, xx = np.mgrid[:32, :32]
    total = fcds.sum()
    assert abs(total / ins.FGS1_COUNTS - 1) < 0.05
    assert abs((fcds * xx).sum() / total - ins.FGS1_PSF_CENTRE[0]) < 0.3


def test_calibration_map_statistics_match(real_sample):
    visit = af.Visit("train", 342072318, 0, real_sample / "train" / "342072318", "_0")
    maps = af.read_calibration(visit, "AIRS-CH0")
    assert abs(np.median(maps["read"]) - ins.READ_MEDIAN) < 1.0
    assert abs(np.median(maps["flat"]) - ins.FLAT_MEDIAN) < 0.02
    assert abs(np.median(maps["dark"]) - ins.DARK_MEDIAN) < 0.002
    assert abs(abs(np.median(maps["linear_corr"][2])) - ins.NONLINEARITY_BETA) < 0.2 * ins.NONLINEARITY_BETA
