"""The physics baseline's outputs cached beside the store, as a sidecar HDF5 that the dataset merges in.

A sidecar has the store's layout (/visits/<planet_id>_<visit>/<name>) with `baseline_mu` and
`baseline_sigma` (283,) per visit. Its name carries a hash of the fit's settings and of the store
file, so a change to either makes a new one; an existing one is reused as it is.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import torch
import xxhash

from spectramind import files
from spectramind.data.store import H5_NAME
from spectramind.models.fit import PhysicsFit
from spectramind.progress import bar

_INPUTS = ("flux", "flux_err", "time", "jitter", "star")


def sidecar_path(store: str | Path, fit_config: dict) -> Path:
    """Beside the store, not inside it: the store is the calibrate stage's output and stays as written."""
    h5 = Path(store) / H5_NAME
    stat = h5.stat()
    key = xxhash.xxh3_64(json.dumps({"fit": fit_config, "store": [stat.st_size, stat.st_mtime_ns]},
                                    sort_keys=True).encode()).hexdigest()
    return Path(f"{Path(store)}.baseline") / f"baseline_{key}.h5"


def ensure_baseline(store: str | Path, fit_config: dict, device: torch.device | str = "cpu",
                    batch_size: int = 16, progress: bool = True) -> Path:
    """Fit every visit of the store once with PhysicsFit(**fit_config); returns the sidecar's path."""
    path = sidecar_path(store, fit_config)
    if path.is_file():
        return path
    fit = PhysicsFit(**fit_config).to(device)
    with h5py.File(Path(store) / H5_NAME, "r") as src, files.atomic_path(path) as tmp, \
            h5py.File(tmp, "w") as dst:
        keys = sorted(src["visits"])
        out = dst.create_group("visits")
        with bar("baseline fit", len(keys), enabled=progress) as advance:
            for start in range(0, len(keys), batch_size):
                chunk = keys[start:start + batch_size]
                batch = {name: torch.from_numpy(np.stack([src["visits"][k][name][()] for k in chunk]))
                         for name in _INPUTS}
                mu, sigma = fit({k: v.to(device) for k, v in batch.items()})
                for i, k in enumerate(chunk):
                    g = out.create_group(k)
                    g.create_dataset("baseline_mu", data=mu[i].cpu().numpy())
                    g.create_dataset("baseline_sigma", data=sigma[i].cpu().numpy())
                    advance()
        dst.attrs["fit_config"] = json.dumps(fit_config, sort_keys=True)
    return path


def sidecars_for(model: torch.nn.Module, store: str | Path,
                 device: torch.device | str = "cpu") -> tuple[Path, ...]:
    """The sidecar files `model` reads from its batches (the residual net: the baseline's outputs)."""
    fit_config = getattr(model, "fit_config", None)
    if fit_config is None:
        return ()
    return (ensure_baseline(store, fit_config, device),)
