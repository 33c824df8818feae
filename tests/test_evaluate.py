"""Evaluation: the metrics table, labels and oracle noise from a raw folder, the figures."""

import json

import numpy as np
import pandas as pd
import pytest

from spectramind import metric
from spectramind.errors import DataError
from spectramind.evaluate import plots
from spectramind.evaluate.evaluate import load_truth, score_report

N = 283


def _labels(ids, seed):
    rng = np.random.default_rng(seed)
    columns = [f"wl_{k}" for k in range(1, N + 1)]
    frame = pd.DataFrame(0.01 + 0.02 * rng.random((len(ids), N)), columns=columns)
    frame.insert(0, "planet_id", ids)
    return frame


@pytest.fixture
def raw(tmp_path):
    _labels([1, 2, 3], 0).to_csv(tmp_path / "train.csv", index=False)
    _labels([7, 8], 1).to_csv(tmp_path / "simulation_test_truth.csv", index=False)
    noise = pd.DataFrame(np.full((5, N), 1e-4), columns=[f"sigma_{k}" for k in range(1, N + 1)])
    noise.insert(0, "planet_id", [1, 2, 3, 7, 8])
    noise.to_csv(tmp_path / "simulation_noise.csv", index=False)
    return tmp_path


def test_truth_comes_from_either_label_file_with_naive_stats_from_train(raw):
    y, naive_mean, naive_sigma, sigma_opt = load_truth(raw, [8, 2])
    train = pd.read_csv(raw / "train.csv").set_index("planet_id")
    np.testing.assert_array_equal(y[1], train.loc[2].to_numpy())
    test_truth = pd.read_csv(raw / "simulation_test_truth.csv").set_index("planet_id")
    np.testing.assert_array_equal(y[0], test_truth.loc[8])
    assert (naive_mean, naive_sigma) == pytest.approx(metric.naive_stats(train.to_numpy()))
    assert sigma_opt.shape == (2, N) and np.all(sigma_opt == 1e-4)


def test_unlabelled_planets_are_an_error(raw):
    with pytest.raises(DataError, match="no labels for 1 of the 2 planets"):
        load_truth(raw, [1, 99])


def test_report_counts_sigma_calibration_and_oracle_ratio():
    rng = np.random.default_rng(0)
    y = 0.02 + 1e-3 * rng.random((50, N))
    sigma = np.full_like(y, 1e-4)
    mu = y + sigma * rng.standard_normal(y.shape)
    out, per_bin = score_report(y, mu, sigma, 0.02, 0.01, sigma_opt=sigma)
    assert out["within_1sigma"] == pytest.approx(0.6827, abs=0.02)
    assert out["within_2sigma"] == pytest.approx(0.9545, abs=0.01)
    assert out["rmse"] == pytest.approx(1e-4, rel=0.05)
    assert out["score"] == pytest.approx(metric.score_arrays(y, mu, sigma, 0.02, 0.01))
    assert out["ratio_to_oracle"] == pytest.approx(1.0, abs=0.02)
    assert list(per_bin.columns) == ["bin", "wavelength_um", "score", "gll", "rmse", "mean_sigma",
                                     "within_1sigma", "within_2sigma"]
    assert len(per_bin) == N and per_bin["wavelength_um"].iloc[0] == 0.7
    json.dumps(out)  # plain floats: metrics.json and the leaderboard read it


def test_over_confident_prediction_shows_in_calibration_not_just_score():
    rng = np.random.default_rng(1)
    y = 0.02 + 1e-3 * rng.random((20, N))
    mu = y + 1e-4 * rng.standard_normal(y.shape)
    out, _ = score_report(y, mu, np.full_like(y, 1e-5), 0.02, 0.01)
    assert out["score"] == 0.0 and out["score_unclipped"] < 0 and out["within_1sigma"] < 0.2


def test_figures_are_written_as_png(tmp_path):
    rng = np.random.default_rng(2)
    y = 0.02 + 1e-3 * rng.random((3, N))
    out, per_bin = score_report(y, y, np.full_like(y, 1e-4), 0.02, 0.01)
    wl = per_bin["wavelength_um"].to_numpy()
    for path in (plots.spectra(tmp_path / "spectra.png", wl, [1, 2, 3], y, y, np.full_like(y, 1e-4), 2),
                 plots.score_per_wavelength(tmp_path / "score.png", per_bin)):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
