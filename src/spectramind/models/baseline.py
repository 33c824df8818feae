"""The fit stage: the physics baseline of every visit of the store, as a sidecar HDF5 the dataset merges in.

A sidecar has the store's layout (/visits/<planet_id>_<visit>/<name>) with `baseline_mu` and
`baseline_sigma` (283,) per visit, and `baseline_flags` (one per fit.REASONS, named in the file's
`reasons` attribute): why the fit widened that visit's sigma. It lives in `data.baseline`, named by a
hash of the fit's settings, of the store's content and of the fit's code, so a change to any of them
makes a new one (a copy or a `dvc checkout` of the same store finds the old one); an existing one is
reused as it is.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import h5py
import numpy as np
import torch
import xxhash

from spectramind import files
from spectramind.config.settings import Fit, Settings
from spectramind.data.store import H5_NAME, read_store_attrs
from spectramind.errors import DataError
from spectramind.models.fit import REASONS, PhysicsFit
from spectramind.progress import bar

_INPUTS = ("flux", "flux_err", "time", "jitter", "star")
# Models whose batches carry the baseline's outputs (they correct it): they need the fit stage first.
NEEDS_BASELINE = ("spectramind.models.nets.ResidualNet",)


def sidecar_path(s: Settings) -> Path:
    from spectramind.config.provenance import code_digest

    key = xxhash.xxh3_64(json.dumps({
        "fit": dataclasses.asdict(s.fit),
        "store": files.tree_fingerprint(Path(s.data.store) / H5_NAME),
        "code": code_digest("fit"),
    }, sort_keys=True).encode()).hexdigest()
    return Path(s.data.baseline) / f"baseline_{key}.h5"


def fit_baseline(s: Settings, device: torch.device | str = "cpu", batch_size: int = 16,
                 progress: bool = True) -> dict:
    """The fit stage: fit every visit of `data.store` once with the `fit` settings; returns a summary."""
    from spectramind.data.prepare import require_store

    started = time.perf_counter()
    store = require_store(s)
    path = sidecar_path(s)
    if path.is_file():
        return {"baseline": str(path), "cached": True}
    fit = PhysicsFit(s.fit, n_bins=read_store_attrs(store)["n_bins"]).to(device)
    with h5py.File(store / H5_NAME, "r") as src, files.atomic_path(path) as tmp, h5py.File(tmp, "w") as dst:
        keys = sorted(src["visits"])
        out = dst.create_group("visits")
        with bar("baseline fit", len(keys), enabled=progress) as advance:
            for start in range(0, len(keys), batch_size):
                chunk = keys[start:start + batch_size]
                batch = {name: torch.from_numpy(np.stack([src["visits"][k][name][()] for k in chunk]))
                         for name in _INPUTS}
                result = fit.fit({k: v.to(device) for k, v in batch.items()})
                for i, k in enumerate(chunk):
                    g = out.create_group(k)
                    g.create_dataset("baseline_mu", data=result["mu"][i].float().cpu().numpy())
                    g.create_dataset("baseline_sigma", data=result["sigma"][i].float().cpu().numpy())
                    g.create_dataset("baseline_flags", data=result["flags"][i].cpu().numpy().astype(np.uint8))
                    advance()
        dst.attrs["fit_config"] = json.dumps(dataclasses.asdict(s.fit), sort_keys=True)
        dst.attrs["reasons"] = json.dumps(REASONS)
    return {"baseline": str(path), "visits": len(keys), "cached": False,
            "seconds": round(time.perf_counter() - started, 2)}


def visit_reasons(s: Settings, planet_ids) -> list[dict] | None:
    """Per visit of `planet_ids`: why the fit widened its sigma (fit.REASONS, plus `visits_disagree` when
    a planet's visits differ by more than `fit.visits_disagree_chi2` in mean squared z over the bins);
    None when the store has no baseline for these fit settings."""
    path = sidecar_path(s)
    if not path.is_file():
        return None
    wanted = {int(p) for p in planet_ids}
    rows: dict[int, list[dict]] = {}
    with h5py.File(path, "r") as f:
        names = json.loads(f.attrs["reasons"])
        for key, g in f["visits"].items():
            pid, visit = (int(x) for x in key.split("_"))
            if pid in wanted:
                flags = g["baseline_flags"][()]
                rows.setdefault(pid, []).append({
                    "planet_id": pid, "visit": visit, "mu": g["baseline_mu"][()], "sigma": g["baseline_sigma"][()],
                    "reasons": [n for n, on in zip(names, flags, strict=True) if on]})
    out = []
    for visits in rows.values():
        if len(visits) > 1:
            mu = np.stack([v["mu"] for v in visits])
            var = np.stack([v["sigma"] for v in visits]) ** 2
            mean = (mu / var).sum(0) / (1 / var).sum(0)
            chi2 = ((mu - mean) ** 2 / var).sum(0).mean() / (len(visits) - 1)
            if chi2 > s.fit.visits_disagree_chi2:
                for v in visits:
                    v["reasons"].append("visits_disagree")
        out += [{"planet_id": v["planet_id"], "visit": v["visit"], "reasons": v["reasons"]} for v in visits]
    return sorted(out, key=lambda r: (r["planet_id"], r["visit"]))


def require_baseline(s: Settings) -> tuple[Path, ...]:
    """The sidecars `s.model` reads from its batches: the fit stage's output for models on the baseline."""
    if s.model.target not in NEEDS_BASELINE:
        return ()
    path = sidecar_path(s)
    if not path.is_file():
        raise DataError(f"{path}: no physics baseline for this store and fit settings; run `spectramind fit` first")
    return (path,)


def fit_kwargs(s: Settings) -> dict:
    """What a model built on the baseline takes besides its own section: the baseline's settings."""
    return {"fit": s.fit} if s.model.target in NEEDS_BASELINE or s.model.target == PhysicsFit.TARGET else {}


__all__ = ["Fit", "NEEDS_BASELINE", "fit_baseline", "fit_kwargs", "require_baseline", "sidecar_path"]
