"""A torch Dataset over the light-curve store: one item per visit, read lazily, safe in DataLoader workers."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from spectramind.data import store as st
from spectramind.data.folds import LABELLED, planet_splits
from spectramind.data.store import read_store_attrs
from spectramind.errors import DataError

# "train", "val", "test": the planet-level split of labelled planets (the manifest's, or a cross-validation
# fold's); "all": all three; "predict": the planets of the raw folder's test/ (no labels; what a submission
# is made for).
SPLITS = ("train", "val", "test", "all", "predict")

__all__ = ["LightCurveDataset", "read_store_attrs", "SPLITS"]


class LightCurveDataset(Dataset):
    """Visits of one split of the store, as dicts of tensors (see store.py for the arrays' meaning).

    Item: planet_id, visit (int64 scalars); flux, flux_err (T, 283) f32; time (T,) f32; jitter (T, J) f32;
    star (S,) f32; target (283,) f32 (NaN when unknown); plus every per-visit dataset of each sidecar
    HDF5 file (same /visits/<planet_id>_<visit>/ layout) under its own name.
    held_out: (fold, folds) under cross-validation (`data.split.held_out`): the splits are that fold's.
    HDF5 handles are opened on first use in each process, so the dataset pickles into DataLoader workers.
    """

    def __init__(
        self,
        store: str | Path,
        split: str,
        max_samples: int | None = None,
        sidecars: Sequence[str | Path] = (),
        held_out: tuple[int, int] | None = None,
    ):
        if split not in SPLITS:
            raise DataError(f"split {split!r}: expected one of {', '.join(SPLITS)}")
        self.store = Path(store)
        if not (self.store / st.MANIFEST_NAME).is_file() or not (self.store / st.H5_NAME).is_file():
            raise DataError(f"{self.store}: no calibrated store here (run `spectramind calibrate`)")
        manifest = st.read_manifest(self.store)
        splits = planet_splits(manifest, held_out)
        planets = set(sum((splits[s] for s in LABELLED), [])) if split == "all" else set(splits[split])
        self.keys = [
            st.visit_key(p["planet_id"], v)
            for p in manifest["planets"]
            if p["planet_id"] in planets
            for v in p["visits"]
        ]
        if max_samples is not None:
            self.keys = self.keys[:max_samples]
        self.sidecars = [Path(s) for s in sidecars]
        for path in self.sidecars:
            if not path.is_file():
                raise DataError(f"{path}: sidecar file not found")
        self._handles: list[h5py.File] | None = None
        self._attrs: dict | None = None

    @property
    def attrs(self) -> dict:
        """The store's root attributes (n_time, n_bins, star_columns, normalisation statistics, ...)."""
        if self._attrs is None:
            self._attrs = read_store_attrs(self.store)
        return self._attrs

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if self._handles is None:
            self._handles = [h5py.File(p, "r") for p in (self.store / st.H5_NAME, *self.sidecars)]
        key = self.keys[index]
        main, *sides = self._handles
        group = main["visits"][key]
        item = {
            "planet_id": torch.tensor(int(group.attrs["planet_id"]), dtype=torch.int64),
            "visit": torch.tensor(int(group.attrs["visit"]), dtype=torch.int64),
        }
        for name in ("flux", "flux_err", "time", "jitter", "star", "target"):
            item[name] = torch.from_numpy(np.asarray(group[name][()], dtype=np.float32))
        for handle in sides:
            if key not in handle.get("visits", {}):
                raise DataError(f"{handle.filename}: no group visits/{key}")
            for name, ds in handle["visits"][key].items():
                item[name] = torch.from_numpy(_checked(handle.filename, key, name, np.asarray(ds[()])))
        return item

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_handles"] = None  # each worker opens its own handles
        return state

    def __del__(self):
        for handle in getattr(self, "_handles", None) or []:
            handle.close()


def _checked(filename: str, key: str, name: str, value: np.ndarray) -> np.ndarray:
    """A sidecar's baseline as the models may use it: a finite mu, a finite sigma > 0 (a net would
    otherwise clamp a corrupt sigma into a confident one)."""
    bad = ~np.isfinite(value) | ((value <= 0) if name.startswith("baseline_sigma") else False)
    if name.startswith(("baseline_mu", "baseline_sigma")) and bad.any():
        index = int(np.argmax(bad))
        raise DataError(f"{filename}: visits/{key}/{name}[{index}] = {value[index]:g}, expected a finite "
                        f"{'sigma > 0' if 'sigma' in name else 'depth'}; rerun `spectramind fit`")
    return value
