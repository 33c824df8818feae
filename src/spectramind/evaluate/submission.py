"""The submission file: `planet_id, wl_1..wl_283, sigma_1..sigma_283`, checked before it is written.

Checks (each a DataError naming the problem): the expected planet ids, once each; the sample
submission's columns in its order; finite values; mu >= 0; sigma > 0. The file is written atomically,
so a failure leaves no half-written submission.csv behind.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from spectramind import files
from spectramind.errors import DataError
from spectramind.metric import N_BINS, ROW_ID


def default_columns(n_bins: int = N_BINS) -> list[str]:
    return [ROW_ID, *(f"wl_{k}" for k in range(1, n_bins + 1)), *(f"sigma_{k}" for k in range(1, n_bins + 1))]


def sample_columns(sample: str | os.PathLike | None, n_bins: int = N_BINS) -> list[str]:
    """The column order of the sample_submission.csv when there is one, else the known format."""
    if sample is None or not Path(sample).is_file():
        return default_columns(n_bins)
    columns = list(pd.read_csv(sample, nrows=0).columns)
    if sorted(columns) != sorted(default_columns(n_bins)):
        raise DataError(f"{sample}: expected the columns planet_id, wl_1..wl_{n_bins}, "
                        f"sigma_1..sigma_{n_bins}, got {len(columns)} columns starting {columns[:3]}")
    return columns


def sample_ids(sample: str | os.PathLike) -> list[int]:
    return pd.read_csv(sample, usecols=[ROW_ID])[ROW_ID].astype(np.int64).tolist()


def build_frame(planet_ids: Sequence[int], mu: np.ndarray, sigma: np.ndarray,
                columns: Sequence[str] | None = None) -> pd.DataFrame:
    """A submission frame in `columns` order from (planets, bins) mu and sigma."""
    mu, sigma = np.asarray(mu, dtype=np.float64), np.asarray(sigma, dtype=np.float64)
    if mu.ndim != 2 or mu.shape != sigma.shape or mu.shape[0] != len(planet_ids):
        raise DataError(f"predictions: mu {mu.shape} and sigma {sigma.shape} must both be "
                        f"({len(planet_ids)}, bins)")
    n_bins = mu.shape[1]
    frame = pd.DataFrame(np.hstack([mu, sigma]), columns=default_columns(n_bins)[1:])
    frame.insert(0, ROW_ID, np.asarray(planet_ids, dtype=np.int64))
    return frame[list(columns or default_columns(n_bins))]


def validate(frame: pd.DataFrame, expected_ids: Sequence[int] | None = None,
             columns: Sequence[str] | None = None) -> None:
    """Raise DataError on the first problem that the hosts' scorer (or common sense) would reject."""
    n_bins = (frame.shape[1] - 1) // 2
    columns = list(columns or default_columns(n_bins))
    if list(frame.columns) != columns:
        pairs = zip(frame.columns, columns, strict=False)
        wrong = next((f"{a!r} where {b!r} belongs" for a, b in pairs if a != b),
                     f"{frame.shape[1]} columns, expected {len(columns)}")
        raise DataError(f"submission columns: {wrong}")
    ids = frame[ROW_ID]
    if ids.duplicated().any():
        raise DataError(f"submission: planet_id {ids[ids.duplicated()].iloc[0]} appears more than once")
    if expected_ids is not None:
        missing, extra = sorted(set(expected_ids) - set(ids)), sorted(set(ids) - set(expected_ids))
        if missing or extra:
            raise DataError(f"submission: {len(missing)} planet_id(s) missing (e.g. {missing[:1]}), "
                            f"{len(extra)} unexpected (e.g. {extra[:1]})")
    mu, sigma = arrays(frame)
    for name, values, ok in (("mu", mu, mu >= 0), ("sigma", sigma, sigma > 0)):
        if not np.isfinite(values).all():
            row = int(np.argwhere(~np.isfinite(values))[0, 0])
            raise DataError(f"submission: non-finite {name} for planet_id {ids.iloc[row]}")
        if not ok.all():
            row, col = np.argwhere(~ok)[0]
            raise DataError(f"submission: {name} = {values[row, col]:.3g} in bin {col + 1} of planet_id "
                            f"{ids.iloc[row]} (expected {'>= 0' if name == 'mu' else '> 0'})")


def arrays(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """A submission frame's mu and sigma columns, each (planets, bins) in float64."""
    mu = frame[[c for c in frame.columns if c.startswith("wl_")]].to_numpy(np.float64)
    sigma = frame[[c for c in frame.columns if c.startswith("sigma_")]].to_numpy(np.float64)
    return mu, sigma


def write(path: str | os.PathLike, planet_ids: Sequence[int], mu: np.ndarray, sigma: np.ndarray,
          expected_ids: Sequence[int] | None = None, columns: Sequence[str] | None = None) -> Path:
    """Validate, then write the submission CSV atomically; returns its path."""
    frame = build_frame(planet_ids, mu, sigma, columns)
    validate(frame, expected_ids, columns)
    path = Path(path)
    with files.atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
    return path


def read(path: str | os.PathLike) -> pd.DataFrame:
    """A submission written by `write` (or by anyone), validated."""
    try:
        frame = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise DataError(f"{path}: not a readable submission CSV ({e})") from e
    validate(frame)
    return frame
