"""The simulator's embedded instrument numbers, re-measured on the genuine files."""

import numpy as np
from test_data_simulate_honest import centroid_rms, edge_over_trace, width_trend

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


def test_read_noise_quantiles_match_the_real_map(real_sample):
    visit = af.Visit("train", 342072318, 0, real_sample / "train" / "342072318", "_0")
    read = af.read_calibration(visit, "AIRS-CH0")["read"]
    assert np.allclose(np.quantile(read, ins.READ_PROBABILITIES), ins.READ_QUANTILES, rtol=2e-3)


def test_linear_corr_medians_match_the_real_map(real_sample):
    visit = af.Visit("train", 342072318, 0, real_sample / "train" / "342072318", "_0")
    coefficients = af.read_calibration(visit, "AIRS-CH0")["linear_corr"].reshape(6, -1)
    assert np.allclose(np.median(coefficients, axis=1), ins.LINEAR_CORR_MEDIAN, rtol=2e-3)
    c3 = coefficients[3] / ins.LINEAR_CORR_MEDIAN[3]
    assert np.percentile(c3, 1) > 1 - 3 * ins.LINEAR_CORR_SCATTER[1]
    assert np.percentile(c3, 99) < 1 + 3 * ins.LINEAR_CORR_SCATTER[1]


def test_trace_width_trend_edge_light_and_fgs1_jitter_match_the_real_frames(real_sample):
    frames = np.load(real_sample / "first_frames_342072318.npz")
    airs = frames["airs_first50"].astype(np.float64)
    assert abs(width_trend(airs) - ins.AIRS_TREND_ROWS_PER_UM) < 0.01
    edge = edge_over_trace(airs)
    assert abs(np.median(edge[40:320]) - ins.AIRS_EDGE_FRACTION) < 0.15 * ins.AIRS_EDGE_FRACTION
    fgs = frames["fgs1_first50"].astype(np.float64)
    assert np.allclose(centroid_rms(fgs), ins.FGS1_CENTROID_RMS, atol=0.01)
    cds = fgs[1::2] - fgs[0::2]
    cds -= np.median(np.r_[cds[:, :4].ravel(), cds[:, -4:].ravel()])
    mean_fgs = cds.mean(0)
    assert abs(mean_fgs.max() / mean_fgs.sum() - 0.100) < 0.005  # the peak pixel's share quoted in instrument.py
    assert abs(1 - mean_fgs[10:22, 10:22].sum() / mean_fgs.sum() - 0.038) < 0.005


def test_the_real_visit_lies_in_the_per_visit_ranges(real_sample):
    visit = af.Visit("train", 342072318, 0, real_sample / "train" / "342072318", "_0")
    for instrument in af.INSTRUMENTS:
        maps = af.read_calibration(visit, instrument)
        dark = maps["dark"]
        mad = 1.4826 * np.median(np.abs(dark - np.median(dark)))
        hot = (dark > np.median(dark) + 5 * mad).mean()
        assert ins.DEAD_FRACTION_RANGE[0] <= maps["dead"].mean() <= ins.DEAD_FRACTION_RANGE[1]
        assert ins.HOT_FRACTION_RANGE[0] <= hot <= ins.HOT_FRACTION_RANGE[1]
