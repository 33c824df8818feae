"""The competition metric on hand-computed cases, and the hosts' input checks."""

import math

import numpy as np
import pandas as pd
import pytest

from spectramind import metric
from spectramind.errors import DataError

N = metric.N_BINS


def _frames(y, mu, sigma, ids=None):
    ids = list(range(100, 100 + len(y))) if ids is None else ids
    solution = pd.DataFrame(y, columns=[f"wl_{k}" for k in range(1, N + 1)])
    solution.insert(0, "planet_id", ids)
    sub = pd.DataFrame(np.hstack([mu, sigma]),
                       columns=[f"wl_{k}" for k in range(1, N + 1)] + [f"sigma_{k}" for k in range(1, N + 1)])
    sub.insert(0, "planet_id", ids)
    return solution, sub


@pytest.fixture
def truth():
    rng = np.random.default_rng(0)
    y = 0.01 + 0.005 * rng.random((4, N))
    return y, *metric.naive_stats(y)


def test_gll_matches_the_gaussian_log_pdf_by_hand():
    y, mu, s = 0.012, 0.010, 0.001
    by_hand = math.log(1 / (s * math.sqrt(2 * math.pi)) * math.exp(-0.5 * ((y - mu) / s) ** 2))
    assert metric.gll(np.array(y), mu, s) == pytest.approx(by_hand, rel=1e-12)


def test_naive_stats_use_population_std():
    assert metric.naive_stats([[1.0, 3.0]]) == (2.0, 1.0)


def test_naive_prediction_scores_exactly_zero(truth):
    y, m, s = truth
    sol, sub = _frames(y, np.full_like(y, m), np.full_like(y, s))
    assert metric.score(sol, sub, m, s) == pytest.approx(0.0, abs=1e-12)
    unclipped = metric.score_arrays(y, np.full_like(y, m), np.full_like(y, s), m, s, clip=False)
    assert unclipped == pytest.approx(0.0, abs=1e-12)


def test_truth_with_sigma_true_scores_exactly_one(truth):
    y, m, s = truth
    sigma = np.full_like(y, 1e-5)
    sigma[:, 0] = 1e-6
    sol, sub = _frames(y, y, sigma)
    assert metric.score(sol, sub, m, s) == pytest.approx(1.0, abs=1e-12)


def test_overconfident_sigma_is_clipped_to_zero(truth):
    y, m, s = truth
    sol, sub = _frames(y, y + 1e-3, np.full_like(y, 1e-6))
    assert metric.score_arrays(y, y + 1e-3, np.full_like(y, 1e-6), m, s, clip=False) < -1
    assert metric.score(sol, sub, m, s) == 0.0


def test_one_element_hand_computed_with_fgs_weight():
    # Two bins: FGS1 (weight 57.846) and one AIRS bin, one planet; every term written out by hand.
    y, mu, sig = np.array([[0.02, 0.03]]), np.array([[0.0201, 0.0298]]), np.array([[2e-4, 3e-4]])
    naive_mean, naive_sigma = 0.025, 0.01

    def g(yy, mm, ss):
        return -0.5 * math.log(2 * math.pi) - math.log(ss) - 0.5 * ((yy - mm) / ss) ** 2

    def naive(j):
        return g(y[0, j], naive_mean, naive_sigma)

    ind = [(g(y[0, j], mu[0, j], sig[0, j]) - naive(j)) / (g(y[0, j], y[0, j], st) - naive(j))
           for j, st in enumerate((1e-6, 1e-5))]
    expected = (57.846 * ind[0] + ind[1]) / (57.846 + 1)
    assert metric.score_arrays(y, mu, sig, naive_mean, naive_sigma) == pytest.approx(expected, rel=1e-12)
    assert metric.score_arrays(y, mu, sig, naive_mean, naive_sigma, fgs_weight=1.0) == pytest.approx(
        sum(ind) / 2, rel=1e-12)


def test_sigma_floor_keeps_zero_sigma_finite(truth):
    y, m, s = truth
    assert metric.score_arrays(y, y, np.zeros_like(y), m, s, clip=False) > 1  # exact mu, sigma -> 1e-15
    assert math.isfinite(metric.score_arrays(y, y + 1e-4, np.zeros_like(y), m, s, clip=False))


def test_rows_are_matched_by_planet_id_not_by_order(truth):
    y, m, s = truth
    sol, sub = _frames(y, y + 1e-4, np.full_like(y, 1e-4))
    reversed_rows = sub.iloc[::-1].reset_index(drop=True)
    assert metric.score(sol, reversed_rows, m, s) == pytest.approx(metric.score(sol, sub, m, s))


def test_oracle_score_is_the_expectation_of_a_noisy_estimator(truth):
    y, m, s = truth
    s_opt = np.full_like(y, 5e-5)
    rng = np.random.default_rng(1)
    draws = [metric.score_arrays(y, y + s_opt * rng.standard_normal(y.shape), s_opt, m, s)
             for _ in range(200)]
    assert metric.oracle_score(y, s_opt, m, s) == pytest.approx(np.mean(draws), abs=0.01)


@pytest.mark.parametrize("break_it, message", [
    (lambda sol, sub: sub.assign(wl_5=-1e-3), "negative"),
    (lambda sol, sub: sub.assign(sigma_7=-1e-3), "negative"),
    (lambda sol, sub: sub.assign(wl_3="x"), "numeric"),
    (lambda sol, sub: sub.assign(wl_3=np.nan), "non-numeric"),
    (lambda sol, sub: sub.drop(columns=["sigma_283"]), "value columns"),
    (lambda sol, sub: sub.assign(extra=1.0), "value columns"),
    (lambda sol, sub: sub.iloc[1:], "missing"),
    (lambda sol, sub: pd.concat([sub, sub.iloc[:1].assign(planet_id=999)]), "unexpected"),
    (lambda sol, sub: pd.concat([sub, sub.iloc[:1]]), "duplicate"),
    (lambda sol, sub: sub.drop(columns=["planet_id"]), "planet_id"),
])
def test_each_input_error_raises(truth, break_it, message):
    y, m, s = truth
    sol, sub = _frames(y, y, np.full_like(y, 1e-4))
    with pytest.raises(DataError, match=message):
        metric.score(sol, break_it(sol, sub), m, s)
