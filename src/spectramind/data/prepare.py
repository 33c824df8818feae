"""From a raw folder to the calibrated store, once: splits, a process pool over visits, caching.

`ensure_store(data, seed)` is the entry point every later stage uses: it simulates the embedded default
when needed, calibrates when the store is missing or stale, and otherwise does nothing.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from spectramind import files
from spectramind.config import runhash
from spectramind.data import ariel_format as af
from spectramind.data import calibrate as cal
from spectramind.data import simulate as sim
from spectramind.data import store as st
from spectramind.data.parallel import imap_unordered
from spectramind.errors import DataError

STAR_COLUMNS = (*af.STAR_COLUMNS, "T14_h")  # the star-info table plus the transit duration it implies


def ensure_store(data: dict, seed: int, progress: bool = True) -> Path:
    """Make sure data["store"] holds a current calibration of data["root"]; return the store folder.

    Held under a lock on the store folder: parallel runs (an ablation sweep) wait for one build
    instead of writing the same folders at once.
    """
    with files.locked(Path(data["store"])):
        return _ensure_store(data, seed, progress)


def _ensure_store(data: dict, seed: int, progress: bool) -> Path:
    if data["name"] == "synthetic":
        ensure_simulated(data, seed, progress)
    store = Path(data["store"])
    wanted = _store_config(data, seed)
    manifest = store / st.MANIFEST_NAME
    if manifest.is_file() and (store / st.H5_NAME).is_file():
        recorded = st.read_manifest(store)
        if recorded.get("config") == wanted and recorded.get("source_fingerprint") == runhash.folder_fingerprint(
            data["root"]
        ):
            return store
    calibrate_folder(
        data["root"],
        store,
        num_workers=data["num_workers"],
        calibrate=data.get("calibrate", {}),
        split=data.get("split", {}),
        seed=seed,
        progress=progress,
    )
    return store


def ensure_simulated(data: dict, seed: int, progress: bool = True) -> Path:
    """Simulate data["root"] unless it already holds a complete simulation with these parameters."""
    root = Path(data["root"])
    if sim.read_marker(root) != sim.marker_for(data.get("simulate", {}), seed):
        sim.simulate(root, **data.get("simulate", {}), seed=seed, num_workers=data["num_workers"], progress=progress)
    return root


def calibrate_folder(
    root: str | Path,
    store: str | Path,
    *,
    num_workers: int,
    calibrate: dict,
    split: dict,
    seed: int,
    progress: bool = True,
) -> dict:
    """Calibrate every visit under root/train and root/test into `store`; returns the summary."""
    started = time.perf_counter()
    root, store = Path(root), Path(store)
    opts = cal.Options(**{k: tuple(v) if isinstance(v, list) else v for k, v in calibrate.items()})
    visits = af.list_visits(root, "train") + af.list_visits(root, "test")
    if not visits:
        raise DataError(f"{root}: no planet folders under train/ or test/")
    adc, axis = af.read_adc(root), af.read_axis_info(root)
    for inst, key in (("AIRS-CH0", "airs_bin"), ("FGS1", "fgs1_bin")):
        if len(axis[f"{inst}-axis0-h"]) // 2 < getattr(opts, key):
            raise DataError(
                f"{root / 'axis_info.parquet'}: {len(axis[f'{inst}-axis0-h']) // 2} {inst} CDS frames per visit, "
                f"fewer than one time bin (data.calibrate.{key}={getattr(opts, key)})"
            )
    stars = {s: af.read_star_info(root, s) for s in ("train", "test") if any(v.split == s for v in visits)}
    targets = af.read_targets(root) if (root / "train.csv").is_file() else None
    for v in visits:
        if v.planet_id not in stars[v.split].index:
            raise DataError(f"{root / f'{v.split}_star_info.csv'}: unknown planet id {v.planet_id} (folder {v.folder})")
    manifest = _manifest(root, visits, targets, split, seed)
    labelled = manifest["splits"]["train"]
    train_targets = np.array([targets.loc[p].to_numpy() for p in labelled]) if labelled else np.zeros((0, 283))
    star_rows = {pid: _star_row(stars[split_].loc[pid]) for split_ in stars for pid in stars[split_].index}
    train_stars = np.array([star_rows[p] for p in labelled]) if labelled else np.zeros((0, len(STAR_COLUMNS)))
    stats = st.normalisation_stats(train_targets, train_stars)
    attrs = {
        **stats,
        "star_columns": list(STAR_COLUMNS),
        "jitter_columns": list(cal.JITTER_COLUMNS),
        "source": str(root),
    }

    tasks = [(v, adc, axis, opts, float(star_rows[v.planet_id][-1])) for v in visits]
    with st.writer(store, attrs) as add:
        for i, arrays in imap_unordered(_calibrate_one, tasks, num_workers, "calibrate", progress):
            v = visits[i]
            target = (
                targets.loc[v.planet_id].to_numpy()
                if targets is not None and v.split == "train" and v.planet_id in targets.index
                else np.full(af.N_BINS, np.nan)
            )
            t0 = arrays.pop("t0_h")
            add(
                v.planet_id,
                v.visit,
                {**arrays, "star": star_rows[v.planet_id], "target": target},
                {"t0_h": t0, "source": str(v.signal("AIRS-CH0"))},
            )
    attrs_now = st.read_store_attrs(store)
    seconds = time.perf_counter() - started
    summary = {
        "planets": len(manifest["planets"]),
        "visits": len(visits),
        "split_counts": {k: len(v) for k, v in manifest["splits"].items()},
        "n_time": attrs_now["n_time"],
        "n_bins": attrs_now["n_bins"],
        "normalisation": {k: v for k, v in attrs_now.items() if k in stats},
        "seconds": round(seconds, 3),
        "seconds_per_visit": round(seconds / len(visits), 4),
    }
    files.write_json(store / st.SUMMARY_NAME, summary)
    manifest["config"] = _store_config({"calibrate": calibrate, "split": split}, seed)
    files.write_json(store / st.MANIFEST_NAME, manifest)  # last: its presence marks a complete store
    return summary


def read_visit(visit: af.Visit, axis: dict, opts: cal.Options) -> tuple[dict, dict]:
    """The reads calibration uses (only its pixels) and the calibration maps of one visit, checked."""
    raw = {
        inst: af.read_signal(visit, inst, len(axis[f"{inst}-axis0-h"]), cal.pixels(inst, opts))
        for inst in af.INSTRUMENTS
    }
    return raw, {inst: af.read_calibration(visit, inst) for inst in af.INSTRUMENTS}


def _calibrate_one(task) -> dict:
    """Worker: read, calibrate and normalise one visit (runs in a spawned process)."""
    visit, adc, axis, opts, duration_h = task
    out = cal.calibrate_visit(*read_visit(visit, axis, opts), adc, axis, opts)
    oot, t0 = cal.out_of_transit(out["time"], out["flux"], duration_h)
    norm = np.median(out["flux"][oot], axis=0)
    if not np.all(np.isfinite(out["flux"])) or not np.all(norm > 0):
        bad = int(np.argmax(~(np.isfinite(out["flux"]).all(0) & (norm > 0))))
        raise DataError(
            f"{visit.signal('AIRS-CH0')}: calibrated bin wl_{bad + 1} has no usable flux "
            "(non-finite values or no positive out-of-transit level)"
        )
    return {
        "flux": (out["flux"] / norm).astype(np.float32),
        "flux_err": (out["flux_err"] / norm).astype(np.float32),
        "time": out["time"].astype(np.float32),
        "jitter": out["jitter"].astype(np.float32),
        "oot": oot,
        "norm": norm,
        "t0_h": t0,
    }


def _star_row(row) -> np.ndarray:
    values = row[list(af.STAR_COLUMNS)].to_numpy(np.float64)
    duration = cal.transit_duration_h(row["P"], row["sma"], row["i"])
    return np.r_[values, duration].astype(np.float32)


def _manifest(root: Path, visits: list, targets, split: dict, seed: int) -> dict:
    """Planets, visits and the planet-level train/val/test split of labelled planets; test/ is "predict"."""
    val_fraction, test_fraction = split.get("val_fraction", 0.15), split.get("test_fraction", 0.15)
    planets = {}
    for v in visits:
        entry = planets.setdefault(v.planet_id, {"planet_id": v.planet_id, "folder": v.split, "visits": []})
        entry["visits"].append(v.visit)
    labelled = sorted(
        p for p, e in planets.items() if e["folder"] == "train" and targets is not None and p in targets.index
    )
    order = np.random.default_rng(seed).permutation(len(labelled))
    n_test, n_val = round(test_fraction * len(labelled)), round(val_fraction * len(labelled))
    shuffled = [labelled[i] for i in order]
    splits = {
        "test": sorted(shuffled[:n_test]),
        "val": sorted(shuffled[n_test : n_test + n_val]),
        "train": sorted(shuffled[n_test + n_val :]),
        "predict": sorted(p for p, e in planets.items() if e["folder"] == "test"),
    }
    for entry in planets.values():
        entry["labelled"] = entry["planet_id"] in labelled
    return {
        "schema_version": st.SCHEMA_VERSION,
        "source": str(root),
        "source_fingerprint": runhash.folder_fingerprint(root),
        "seed": seed,
        "fractions": {"val": val_fraction, "test": test_fraction},
        "planets": [planets[p] for p in sorted(planets)],
        "splits": splits,
    }


def _store_config(data: dict, seed: int) -> dict:
    return {
        "calibrate": data.get("calibrate", {}),
        "split": data.get("split", {}),
        "seed": seed,
        "schema_version": st.SCHEMA_VERSION,
    }
