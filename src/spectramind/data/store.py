"""The calibrated light-curve store: one self-describing HDF5 file plus manifest.json and summary.json.

Layout of `lightcurves.h5` (schema SCHEMA_VERSION):
  /visits/<planet_id>_<visit>/   one group per visit (see visit_key), datasets:
      flux (T, 283) f4        each bin divided by its out-of-transit median (FGS1 column 0, AIRS 1..282)
      flux_err (T, 283) f4    1-sigma photon + read noise, same normalisation
      time (T,) f4            hours since the start of the visit
      jitter (T, J) f4        pointing and PSF-shape estimates in pixels, columns = attrs["jitter_columns"]
      oot (T,) bool           out-of-transit bins used for the normalisation
      norm (283,) f8          the out-of-transit medians (electrons per bin): flux * norm is electrons
      star (S,) f4            star and orbit, columns = attrs["star_columns"]
      target (283,) f4        transit depths; NaN when unknown
    group attrs: planet_id, visit, t0_h (transit centre found by calibration), source (signal file, relative
      to the raw folder: the store's bytes do not depend on where that lies)
  root attrs: schema_version, n_time, n_bins, star_columns, jitter_columns, target_mean/std (283,),
      star_mean/std (S,), naive_mean, naive_sigma (scalars over every training label), split fractions.
Sidecar files (physics-baseline outputs and the like) use the same /visits/<key>/<name> layout.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np

from spectramind import files
from spectramind.errors import DataError

SCHEMA_VERSION = 1
H5_NAME, MANIFEST_NAME, SUMMARY_NAME = "lightcurves.h5", "manifest.json", "summary.json"
_ARRAY_KEYS = ("flux", "flux_err", "time", "jitter", "oot", "norm", "star", "target")


def visit_key(planet_id: int, visit: int) -> str:
    return f"{int(planet_id)}_{int(visit)}"


@contextlib.contextmanager
def writer(store: str | Path, attrs: dict) -> Iterator[callable]:
    """Yield `add(planet_id, visit, arrays, group_attrs)`; the file appears only if the block completes."""
    path = Path(store) / H5_NAME
    with files.atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        visits = f.create_group("visits")
        shapes = set()

        def add(planet_id: int, visit: int, arrays: dict, group_attrs: dict) -> None:
            # HDF5 does not survive a failed write (it can crash closing the file): refuse before it.
            files.require_free_space(path.parent, sum(np.asarray(arrays[k]).nbytes for k in _ARRAY_KEYS),
                                     f"visit {visit_key(planet_id, visit)} of the store")
            g = visits.create_group(visit_key(planet_id, visit))
            for key in _ARRAY_KEYS:
                value = np.asarray(arrays[key])
                big = value.ndim == 2
                g.create_dataset(
                    key,
                    data=value,
                    chunks=value.shape if big else None,
                    compression="gzip" if big else None,
                    compression_opts=4 if big else None,
                )
            g.attrs.update({"planet_id": int(planet_id), "visit": int(visit), **group_attrs})
            shapes.add(np.shape(arrays["flux"]))

        yield add
        if len(shapes) > 1:
            raise DataError(
                f"{path}: visits have different light-curve shapes {sorted(shapes)}; set the bin sizes so "
                "every visit has the same number of time bins"
            )
        n_time, n_bins = shapes.pop() if shapes else (0, 0)
        f.attrs.update(
            {
                "schema_version": SCHEMA_VERSION,
                "n_time": n_time,
                "n_bins": n_bins,
                **{k: _attr(v) for k, v in attrs.items()},
            }
        )


def read_store_attrs(store: str | Path) -> dict:
    """Root attributes of the store as plain Python (lists for arrays)."""
    path = Path(store) / H5_NAME
    with h5py.File(path, "r") as f:
        return {k: _plain(v) for k, v in f.attrs.items()}


def read_manifest(store: str | Path) -> dict:
    return json.loads((Path(store) / MANIFEST_NAME).read_text(encoding="utf-8"))


def normalisation_stats(targets: np.ndarray, stars: np.ndarray) -> dict:
    """Per-bin target mean/std and per-column star mean/std (std 1 where constant) over the training split,
    and the metric's naive mean/sigma: scalars over every training label."""

    def std(x):
        s = x.std(0) if len(x) else np.ones(x.shape[1])
        return np.where(s > 0, s, 1.0)

    def mean(x):
        return x.mean(0) if len(x) else np.zeros(x.shape[1])

    return {
        "target_mean": mean(targets),
        "target_std": std(targets),
        "star_mean": mean(stars),
        "star_std": std(stars),
        "naive_mean": float(targets.mean()) if targets.size else float("nan"),
        "naive_sigma": float(targets.std()) if targets.size else float("nan"),
    }


def _attr(value):
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], str):
        return np.array(value, dtype=h5py.string_dtype())
    return value


def _plain(value):
    if isinstance(value, np.ndarray):
        return [v.decode() if isinstance(v, bytes) else v for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    return value
