"""The fit stage: the physics baseline of every visit of the store, as a sidecar HDF5 the dataset merges in.

A sidecar has the store's layout (/visits/<planet_id>_<visit>/<name>) with `baseline_mu` and
`baseline_sigma` (283,) per visit, and `baseline_flags` (one per fit.REASONS, named in the file's
`reasons` attribute): why the fit widened that visit's sigma. When the fit was calibrated on labels
(models.calibration), `baseline_mu`/`baseline_sigma` are the calibrated values and `baseline_mu_raw`/
`baseline_sigma_raw` the fit's own; the `calibration` attribute holds what was fitted. It lives in
`data.baseline`, named by a hash of the fit's settings, of the store's content, of the fit's code and of
the cross-validation fold held out (the labels it may calibrate on), so a change to any of them makes a
new one (a copy or a `dvc checkout` of the same store finds the old one); an existing one is reused as it
is. The fit itself sees no label: its raw values (`fit_<hash>.h5`) are kept once per store and fit
settings and calibrated again for each fold.
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

from spectramind import files, signals
from spectramind.config.settings import Fit, Settings
from spectramind.data.folds import planet_splits
from spectramind.data.store import H5_NAME, read_manifest, read_store_attrs
from spectramind.errors import DataError
from spectramind.models.fit import REASONS, PhysicsFit
from spectramind.progress import bar

_INPUTS = ("flux", "flux_err", "time", "jitter", "star")
# Models whose batches carry the baseline's outputs (they correct it): they need the fit stage first.
NEEDS_BASELINE = ("spectramind.models.nets.ResidualNet",)
_RAW = ("mu", "sigma", "flags")                                   # what the fit gives per visit
_CALIBRATION_ONLY = ("calibration_folds", "spectral_prior_shrinkage")  # fit settings only _calibrate reads


def _named(s: Settings, prefix: str, suffix: str, fit: dict, **parts) -> Path:
    from spectramind.config.provenance import code_digest

    key = xxhash.xxh3_64(json.dumps({"fit": fit, "code": code_digest("fit"), **parts},
                                    sort_keys=True).encode()).hexdigest()
    return Path(s.data.baseline) / f"{prefix}_{key}{suffix}"


def _store_fingerprint(s: Settings) -> str:
    return files.tree_fingerprint(Path(s.data.store) / H5_NAME)


def sidecar_path(s: Settings) -> Path:
    return _named(s, "baseline", ".h5", dataclasses.asdict(s.fit), store=_store_fingerprint(s),
                  held_out=s.data.split.held_out)


def raw_fit_path(s: Settings) -> Path:
    """The fit of every visit before any label is used: shared by every fold and calibration setting."""
    fit = {k: v for k, v in dataclasses.asdict(s.fit).items() if k not in _CALIBRATION_ONLY}
    return _named(s, "fit", ".h5", fit, store=_store_fingerprint(s))


def calibration_path(s: Settings) -> Path:
    """Where the fit stage keeps what it learned from labels (models.calibration) for `model=fit` to apply
    on any store: named by the fit's settings and code, not by the store it was learned on. Under
    cross-validation by the store and the fold held out as well: a fold's calibration is for its own
    store's held-out planets, and one learned where other planets were held out must never reach them."""
    held_out = s.data.split.held_out
    where = {} if held_out is None else {"store": _store_fingerprint(s), "held_out": held_out}
    return _named(s, "calibration", ".npz", dataclasses.asdict(s.fit), **where)


def label_calibration(s: Settings, mu: np.ndarray, sigma: np.ndarray) -> tuple[np.ndarray, np.ndarray, str | None]:
    """Per-visit (visits, bins) fit values with what the fit stage learned from labels applied, when it
    learned something for these fit settings; and the file it came from."""
    from spectramind.models import calibration as cal

    path = calibration_path(s)
    if not path.is_file():
        return mu, sigma, None
    return (*apply_steps(cal.load(path), mu, sigma), str(path))


def apply_steps(steps: list, mu: np.ndarray, sigma: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(visits, bins) values through the learned steps of models.calibration.load, in float64."""
    for step in steps:
        mu, sigma = step.apply(mu.astype(np.float64), sigma.astype(np.float64))
    return mu, sigma


def sidecar_calibrated(path: Path) -> bool:
    """Whether a baseline sidecar holds label-calibrated values (its store had enough labelled planets)."""
    with h5py.File(path, "r") as f:
        return json.loads(f.attrs["calibration"]) is not None


def fit_baseline(s: Settings, device: torch.device | str = "cpu", batch_size: int = 16,
                 progress: bool = True) -> dict:
    """The fit stage: fit every visit of `data.store` once with the `fit` settings (unless its raw fit is
    kept), calibrate the result on the labelled training planets of the split (models.calibration; under
    cross-validation the other folds' only) when `fit.calibration_folds` asks for it, and write the
    sidecar; returns a summary."""
    from spectramind.data.prepare import require_store

    started = time.perf_counter()
    store = require_store(s)
    path = sidecar_path(s)
    if path.is_file():
        return {"baseline": str(path), "cached": True}
    results = _fit_visits(s, store, device, batch_size, progress)
    train = planet_splits(read_manifest(store), s.data.split.held_out)["train"]
    calibration, learned = _calibrate(s, results, set(train))
    if learned:
        from spectramind.models import calibration as cal

        cal.save(calibration_path(s), learned)
    with files.atomic_path(path) as tmp, h5py.File(tmp, "w") as dst:
        group = dst.create_group("visits")
        for k, r in results.items():
            g = group.create_group(k)
            for name in ("mu", "sigma", "flags", "mu_raw", "sigma_raw"):
                if name in r:
                    dtype = np.uint8 if name == "flags" else np.float32
                    g.create_dataset(f"baseline_{name}", data=r[name].astype(dtype))
        dst.attrs["fit_config"] = json.dumps(dataclasses.asdict(s.fit), sort_keys=True)
        dst.attrs["reasons"] = json.dumps(REASONS)
        dst.attrs["calibration"] = json.dumps(calibration)
    return {"baseline": str(path), "visits": len(results), "cached": False, "calibration": calibration,
            "seconds": round(time.perf_counter() - started, 2)}


def _fit_visits(s: Settings, store: Path, device, batch_size: int, progress: bool) -> dict[str, dict]:
    """Per visit: the fit's mu, sigma and flags, read back from `raw_fit_path` when another fold or
    calibration setting has fitted this store already, with the visit's planet_id and target."""
    raw = raw_fit_path(s)
    with h5py.File(store / H5_NAME, "r") as src:
        visits = src["visits"]
        keys = sorted(visits)
        labels = {k: {"planet_id": int(visits[k].attrs["planet_id"]), "target": visits[k]["target"][()]}
                  for k in keys}
        if raw.is_file():
            with h5py.File(raw, "r") as f:
                fitted = {k: {name: f["visits"][k][name][()] for name in _RAW} for k in keys}
        else:
            fit = PhysicsFit(s.fit, n_bins=read_store_attrs(store)["n_bins"]).to(device)
            fitted = {}
            with bar("fit", len(keys), enabled=progress, unit="visits") as advance:
                for start in range(0, len(keys), batch_size):
                    signals.raise_if_requested()  # a stop between batches: nothing is written before the end
                    chunk = keys[start:start + batch_size]
                    batch = {name: torch.from_numpy(np.stack([visits[k][name][()] for k in chunk]))
                             for name in _INPUTS}
                    out = fit.fit({k: v.to(device) for k, v in batch.items()})
                    for i, k in enumerate(chunk):
                        fitted[k] = {"mu": out["mu"][i].cpu().numpy(), "sigma": out["sigma"][i].cpu().numpy(),
                                     "flags": out["flags"][i].cpu().numpy().astype(np.uint8)}
                        advance()
            with files.atomic_path(raw) as tmp, h5py.File(tmp, "w") as dst:
                for k, r in fitted.items():
                    for name in _RAW:
                        dst.create_dataset(f"visits/{k}/{name}", data=r[name])
    return {k: {**fitted[k], **labels[k]} for k in keys}


def _calibrate(s: Settings, results: dict[str, dict], train: set[int]) -> tuple[dict | None, list]:
    """Calibrate every visit's mu and sigma in place (raw values kept as mu_raw, sigma_raw), stacked
    out of fold: first the spectral prior (when `fit.spectral_prior_shrinkage` is set), then the per-
    instrument calibration on the prior's output. The training planets get what the other folds taught,
    the others what all of them did. Returns a summary and the steps learned on all of them; (None, [])
    with nothing changed when `fit.calibration_folds` is 0 or fewer than 2 x folds training planets have
    labels."""
    from spectramind.models.calibration import SpectralPrior, fit_calibration, out_of_fold

    folds, shrinkage = s.fit.calibration_folds, s.fit.spectral_prior_shrinkage
    labelled = [k for k, r in results.items() if r["planet_id"] in train and np.isfinite(r["target"]).all()]
    if folds == 0 or len({results[k]["planet_id"] for k in labelled}) < 2 * folds:
        return None, []
    for r in results.values():
        r["mu_raw"], r["sigma_raw"] = r["mu"], r["sigma"]
    others = [k for k in results if k not in set(labelled)]
    planets = [results[k]["planet_id"] for k in labelled]

    def stack(keys, name):
        return np.stack([results[k][name] for k in keys]).astype(np.float64)

    def learn_prior(mu, sigma, y):
        return SpectralPrior.learn(y, mu, sigma, shrinkage)

    y = stack(labelled, "target")
    steps = ([learn_prior] if shrinkage is not None else []) + [fit_calibration]
    learned_steps = []
    for learn in steps:
        mu, sigma = stack(labelled, "mu"), stack(labelled, "sigma")
        mu_oof, sigma_oof = out_of_fold(planets, mu, sigma, y, folds, s.seed, learn)
        learned = learn(mu, sigma, y)
        learned_steps.append(learned)
        for i, k in enumerate(labelled):
            results[k]["mu"], results[k]["sigma"] = mu_oof[i], sigma_oof[i]
        if others:
            mu_all, sigma_all = learned.apply(stack(others, "mu"), stack(others, "sigma"))
            for i, k in enumerate(others):
                results[k]["mu"], results[k]["sigma"] = mu_all[i], sigma_all[i]
    return ({**learned.as_dict(), "spectral_prior": shrinkage is not None, "planets": len(set(planets)),
             "folds": folds}, learned_steps)


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
