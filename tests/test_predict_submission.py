"""Submission writing and validation, and how visits are combined into one row per planet."""

import numpy as np
import pandas as pd
import pytest

from spectramind.errors import DataError
from spectramind.evaluate import submission
from spectramind.evaluate.predict import combine_visits

N = 283


def _arrays(n=3, seed=0):
    rng = np.random.default_rng(seed)
    return list(range(10, 10 + n)), 0.02 + 1e-3 * rng.random((n, N)), 1e-4 * (1 + rng.random((n, N)))


def test_written_file_has_the_sample_format_and_round_trips(tmp_path):
    ids, mu, sigma = _arrays()
    path = submission.write(tmp_path / "sub" / "submission.csv", ids, mu, sigma, expected_ids=ids)
    frame = submission.read(path)
    assert list(frame.columns) == ["planet_id", *[f"wl_{k}" for k in range(1, N + 1)],
                                   *[f"sigma_{k}" for k in range(1, N + 1)]]
    assert frame.shape == (3, 567)
    np.testing.assert_allclose(frame.iloc[:, 1:284].to_numpy(), mu, rtol=1e-15)
    np.testing.assert_allclose(frame.iloc[:, 284:].to_numpy(), sigma, rtol=1e-15)


def test_column_order_follows_the_sample_submission(tmp_path, real_sample):
    columns = submission.sample_columns(real_sample / "sample_submission.csv")
    assert columns == list(pd.read_csv(real_sample / "sample_submission.csv", nrows=0).columns)
    ids, mu, sigma = _arrays()
    path = submission.write(tmp_path / "s.csv", ids, mu, sigma, columns=columns)
    assert list(pd.read_csv(path, nrows=0).columns) == columns


def test_a_sample_with_other_columns_is_rejected(tmp_path):
    bad = tmp_path / "sample_submission.csv"
    pd.DataFrame(columns=["planet_id", "wl_1"]).to_csv(bad, index=False)
    with pytest.raises(DataError, match="sample_submission.csv"):
        submission.sample_columns(bad)


@pytest.mark.parametrize("spoil, message", [
    (lambda ids, mu, s: (ids, np.where(np.arange(N) == 4, -1e-4, mu), s), "mu = -0.0001 in bin 5"),
    (lambda ids, mu, s: (ids, mu, np.where(np.arange(N) == 0, 0.0, s)), "sigma = 0 in bin 1"),
    (lambda ids, mu, s: (ids, np.where(np.arange(N) == 7, np.nan, mu), s), "non-finite mu"),
    (lambda ids, mu, s: (ids, mu, np.where(np.arange(N) == 7, np.inf, s)), "non-finite sigma"),
    (lambda ids, mu, s: ([10, 10, 12], mu, s), "more than once"),
    (lambda ids, mu, s: ([10, 11, 99], mu, s), "missing"),
    (lambda ids, mu, s: (ids, mu[:, :-1], s), "must both be"),
])
def test_bad_predictions_raise_and_leave_no_file(tmp_path, spoil, message):
    ids, mu, sigma = spoil(*_arrays())
    target = tmp_path / "submission.csv"
    with pytest.raises(DataError, match=message):
        submission.write(target, ids, mu, sigma, expected_ids=[10, 11, 12])
    assert list(tmp_path.iterdir()) == []


def test_a_failed_write_keeps_the_previous_good_file(tmp_path):
    ids, mu, sigma = _arrays()
    path = submission.write(tmp_path / "submission.csv", ids, mu, sigma)
    before = path.read_bytes()
    with pytest.raises(DataError):
        submission.write(path, ids, -mu, sigma)
    assert path.read_bytes() == before


def test_wrong_column_order_is_named():
    ids, mu, sigma = _arrays()
    frame = submission.build_frame(ids, mu, sigma)
    swapped = frame[["planet_id", "wl_2", "wl_1", *frame.columns[3:]]]
    with pytest.raises(DataError, match="'wl_2' where 'wl_1' belongs"):
        submission.validate(swapped)


def test_one_visit_passes_through_and_two_agreeing_visits_average():
    mu = np.array([[0.02] * N, [0.0210] * N, [0.0212] * N])
    sigma = np.array([[1e-4] * N, [1e-4] * N, [2e-4] * N])
    ids, m, s = combine_visits([7, 3, 3], mu, sigma)
    assert ids.tolist() == [7, 3]
    np.testing.assert_allclose(m[0], 0.02)
    np.testing.assert_allclose(s[0], 1e-4)
    w = np.array([1e-4, 2e-4]) ** -2
    np.testing.assert_allclose(m[1], (w * [0.0210, 0.0212]).sum() / w.sum())
    # 2e-4 apart with sigmas 1e-4 and 2e-4: chi^2 = 0.8 < 1, so only the spread floor could act.
    assert np.all(s[1] >= w.sum() ** -0.5 - 1e-12) and np.all(s[1] < 1e-4)


def test_visits_that_disagree_widen_sigma():
    rng = np.random.default_rng(0)
    truth = 0.02 + 1e-3 * rng.random(N)
    mu = np.stack([truth, truth + 1e-3])                    # 10 sigma apart in every bin
    sigma = np.full((2, N), 1e-4)
    _, m, s = combine_visits([5, 5], mu, sigma)
    assert np.all(s[0] >= 5e-4 - 1e-12)                     # at least half the spread, not 7e-5
    assert np.all(np.abs(m[0] - truth) / s[0] <= 1.0 + 1e-9)


def test_sample_ids_are_read_as_integers(tmp_path, real_sample):
    ids = submission.sample_ids(real_sample / "sample_submission.csv")
    assert ids and all(isinstance(i, int) for i in ids)
