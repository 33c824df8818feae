"""The competition's score, exactly as the hosts compute it (reference section 2), and the oracle score.

Per element: the Gaussian log-likelihood of the truth under the prediction, placed between a naive
reference (the training labels' mean and standard deviation everywhere) and a near-perfect one (the
truth with sigma_true), then a weighted mean over planets and bins with FGS1 weighted `fgs_weight`,
clipped to [0, 1].
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from spectramind.errors import DataError

N_BINS = 283                 # wl_1 (FGS1) and wl_2..wl_283 (AIRS)
FGS_WEIGHT = 57.846          # the FGS1 bin's weight in 2025
FGS_SIGMA_TRUE = 1e-6        # the near-perfect reference's sigma for FGS1
AIRS_SIGMA_TRUE = 1e-5       # ... and for each AIRS bin
SIGMA_FLOOR = 1e-15          # the hosts clip predicted sigma here to avoid division by zero
ROW_ID = "planet_id"

_HALF_LOG_2PI = 0.5 * np.log(2.0 * np.pi)


def gll(y: np.ndarray, mu: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Element-wise Gaussian log-likelihood of `y` under N(mu, sigma^2) (scipy.stats.norm.logpdf)."""
    return -_HALF_LOG_2PI - np.log(sigma) - 0.5 * ((y - mu) / sigma) ** 2


def naive_stats(train_labels) -> tuple[float, float]:
    """The naive reference: mean and (population) standard deviation of every training label."""
    values = np.asarray(train_labels, dtype=np.float64)
    return float(values.mean()), float(values.std())


def bin_weights(n_bins: int = N_BINS, fgs_weight: float = FGS_WEIGHT) -> np.ndarray:
    weights = np.ones(n_bins)
    weights[0] = fgs_weight
    return weights


def element_scores(
    y_true: np.ndarray,
    mu: np.ndarray,
    sigma: np.ndarray,
    naive_mean: float,
    naive_sigma: float,
    fgs_sigma_true: float = FGS_SIGMA_TRUE,
    airs_sigma_true: float = AIRS_SIGMA_TRUE,
) -> np.ndarray:
    """(planets, bins) normalised scores: 0 for the naive prediction, 1 for the truth with sigma_true."""
    y_true = np.asarray(y_true, dtype=np.float64)
    sigma = np.maximum(np.asarray(sigma, dtype=np.float64), SIGMA_FLOOR)
    gll_pred = gll(y_true, np.asarray(mu, dtype=np.float64), sigma)
    return _normalise(gll_pred, y_true, naive_mean, naive_sigma, fgs_sigma_true, airs_sigma_true)


def _normalise(gll_pred, y_true, naive_mean, naive_sigma, fgs_sigma_true, airs_sigma_true) -> np.ndarray:
    sigma_true = np.full(y_true.shape[-1], airs_sigma_true)
    sigma_true[0] = fgs_sigma_true
    gll_naive = gll(y_true, naive_mean, naive_sigma)
    return (gll_pred - gll_naive) / (gll(y_true, y_true, sigma_true) - gll_naive)


def weighted_score(ind: np.ndarray, fgs_weight: float = FGS_WEIGHT, clip: bool = True) -> float:
    """The weighted mean of element scores (FGS1 weighted `fgs_weight`), clipped to [0, 1]."""
    weights = np.broadcast_to(bin_weights(ind.shape[-1], fgs_weight), ind.shape)
    value = float(np.average(ind, weights=weights))
    return float(np.clip(value, 0.0, 1.0)) if clip else value


def score_arrays(
    y_true: np.ndarray,
    mu: np.ndarray,
    sigma: np.ndarray,
    naive_mean: float,
    naive_sigma: float,
    fgs_weight: float = FGS_WEIGHT,
    fgs_sigma_true: float = FGS_SIGMA_TRUE,
    airs_sigma_true: float = AIRS_SIGMA_TRUE,
    clip: bool = True,
) -> float:
    """The score of aligned (planets, bins) arrays; no input checks (use `score` for a submission)."""
    ind = element_scores(y_true, mu, sigma, naive_mean, naive_sigma, fgs_sigma_true, airs_sigma_true)
    return weighted_score(ind, fgs_weight, clip)


def oracle_score(
    y_true: np.ndarray,
    sigma_opt: np.ndarray,
    naive_mean: float,
    naive_sigma: float,
    fgs_weight: float = FGS_WEIGHT,
    fgs_sigma_true: float = FGS_SIGMA_TRUE,
    airs_sigma_true: float = AIRS_SIGMA_TRUE,
) -> float:
    """The physical limit of the score: its expectation for mu ~ N(y, s_opt^2), sigma = s_opt (E[z^2] = 1)."""
    y_true = np.asarray(y_true, dtype=np.float64)
    sigma_opt = np.maximum(np.asarray(sigma_opt, dtype=np.float64), SIGMA_FLOOR)
    gll_oracle = -_HALF_LOG_2PI - np.log(sigma_opt) - 0.5
    ind = _normalise(gll_oracle, y_true, naive_mean, naive_sigma, fgs_sigma_true, airs_sigma_true)
    return weighted_score(ind, fgs_weight)


def check_submission_frame(solution: pd.DataFrame, submission: pd.DataFrame, row_id: str = ROW_ID) -> None:
    """The hosts' input checks, each a DataError: ids, numeric values, no negatives, 2 x bins columns."""
    for name, frame in (("solution", solution), ("submission", submission)):
        if row_id not in frame.columns:
            raise DataError(f"{name}: column '{row_id}' is missing")
    sub_ids, sol_ids = submission[row_id], solution[row_id]
    if sub_ids.duplicated().any():
        raise DataError(f"submission: duplicate {row_id} {sub_ids[sub_ids.duplicated()].iloc[0]}")
    missing = sorted(set(sol_ids) - set(sub_ids))
    extra = sorted(set(sub_ids) - set(sol_ids))
    if missing:
        raise DataError(f"submission: {len(missing)} {row_id}(s) missing, e.g. {missing[0]}")
    if extra:
        raise DataError(f"submission: {len(extra)} unexpected {row_id}(s), e.g. {extra[0]}")
    values = submission.drop(columns=[row_id])
    n_bins = solution.shape[1] - 1
    if values.shape[1] != 2 * n_bins:
        raise DataError(f"submission: expected {2 * n_bins} value columns (2 x {n_bins}), "
                        f"got {values.shape[1]}")
    for col in values.columns:
        if not pd.api.types.is_numeric_dtype(values[col]) or pd.api.types.is_bool_dtype(values[col]):
            raise DataError(f"submission: column '{col}' must be numeric, got dtype {values[col].dtype}")
    array = values.to_numpy(dtype=np.float64)
    if not np.isfinite(array).all():
        row, col = np.argwhere(~np.isfinite(array))[0]
        raise DataError(f"submission: non-numeric value {array[row, col]} in column '{values.columns[col]}'")
    if (array < 0).any():
        row, col = np.argwhere(array < 0)[0]
        raise DataError(f"submission: negative value {array[row, col]:.3g} in column '{values.columns[col]}'")


def score(
    solution: pd.DataFrame,
    submission: pd.DataFrame,
    naive_mean: float,
    naive_sigma: float,
    fgs_weight: float = FGS_WEIGHT,
    fgs_sigma_true: float = FGS_SIGMA_TRUE,
    airs_sigma_true: float = AIRS_SIGMA_TRUE,
    row_id: str = ROW_ID,
) -> float:
    """Score a submission frame (`planet_id`, mu columns, sigma columns) against a solution frame."""
    check_submission_frame(solution, submission, row_id)
    solution = solution.set_index(row_id)
    submission = submission.set_index(row_id).loc[solution.index]
    n_bins = solution.shape[1]
    values = submission.to_numpy(dtype=np.float64)
    return score_arrays(solution.to_numpy(dtype=np.float64), values[:, :n_bins], values[:, n_bins:],
                        naive_mean, naive_sigma, fgs_weight, fgs_sigma_true, airs_sigma_true)
