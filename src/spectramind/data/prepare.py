"""The calibrate stage: a raw folder in the competition's layout to the calibrated store, once.

`calibrate(settings)` reads `data.root` and writes `data.store` (splits, a process pool over visits) unless
the store already holds this calibration of these raw bytes; `require_store(settings)` is what the later
stages call: it names the command to run when the store is missing or was made with other settings.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import xxhash

from spectramind import files
from spectramind.config.settings import Calibrate, Settings, Split
from spectramind.data import ariel_format as af
from spectramind.data import calibrate as cal
from spectramind.data import store as st
from spectramind.data.parallel import imap_unordered, in_order
from spectramind.errors import DataError

STAR_COLUMNS = (*af.STAR_COLUMNS, "T14_h")  # the star-info table plus the transit duration it implies
FOLDERS = ("train", "test")                 # the raw folders a store can hold
# Content digests of the raw files, kept in the outputs folder: inside the store they would make its bytes
# depend on the machine (absolute paths, inodes), so identical data would get a different store hash.
FINGERPRINT_CACHE = Path("cache") / "fingerprints.json"
LOCK_NAME = ".calibrate"                     # <store>/.calibrate.lock serialises builders of one store


def calibrate(s: Settings, folders: tuple[str, ...] = FOLDERS, progress: bool = True) -> dict:
    """The calibrate stage: make `data.store` a current calibration of `folders` of `data.root`.

    Held under a lock on the store folder: parallel runs (an ablation sweep) wait for one build instead of
    writing the same folders at once. Returns the store's summary, with `cached` when nothing was done.
    """
    root, store = Path(s.data.root), Path(s.data.store)
    if not (root / "axis_info.parquet").is_file():
        how = "run `spectramind simulate`" if s.data.simulate is not None else "expected the competition's layout"
        raise DataError(f"{root}: no raw folder (axis_info.parquet missing); {how}")
    with files.locked(store / LOCK_NAME):
        if store_problem(s, folders, check_source=True) is None:
            return {**files.read_json(store / st.SUMMARY_NAME), "cached": True}
        summary = calibrate_folder(root, store, num_workers=s.data.num_workers, calibrate=s.data.calibrate,
                                   split=s.data.split, seed=s.seed, folders=folders,
                                   fingerprint=source_fingerprint(root, folders, fingerprint_cache(s)),
                                   progress=progress)
    return {**summary, "cached": False}


def fingerprint_cache(s: Settings) -> Path:
    return Path(s.paths.output_dir) / FINGERPRINT_CACHE


def source_fingerprint(root: Path, folders: tuple[str, ...], cache: Path | None) -> str:
    """The content fingerprint of what calibration reads: the top-level files and `folders` of `root`
    (digests cached in `cache`, so a second check reads no raw byte)."""
    h = xxhash.xxh3_64()
    for p in sorted(root.iterdir()):
        if p.is_file() or p.name in folders:
            h.update(f"{p.name}:{files.tree_fingerprint(p, cache=cache)}\n".encode())
    return h.hexdigest()


def store_problem(s: Settings, folders: tuple[str, ...] = (), check_source: bool = False) -> str | None:
    """Why `data.store` cannot serve `folders` with these settings (None: it can). The raw bytes are
    compared only with `check_source` (the calibrate stage); later stages trust the store's record."""
    store = Path(s.data.store)
    if not (store / st.MANIFEST_NAME).is_file() or not (store / st.H5_NAME).is_file():
        return "no calibrated store"
    recorded = st.read_manifest(store)
    if recorded.get("config") != _store_config(s.data.calibrate, s.data.split, s.seed):
        return "the store was calibrated with other settings"
    if not set(folders) <= set(recorded.get("folders", ())):
        return f"the store holds {', '.join(recorded.get('folders', ())) or 'no'} folders, not {', '.join(folders)}"
    held = tuple(recorded.get("folders", ()))
    if check_source and recorded.get("source_fingerprint") != source_fingerprint(Path(s.data.root), held,
                                                                                     fingerprint_cache(s)):
        return "the raw folder's content has changed"
    return None


def require_store(s: Settings, folders: tuple[str, ...] = ()) -> Path:
    """`data.store`, checked; a missing or stale store is one line naming the command that makes it."""
    problem = store_problem(s, folders)
    if problem is not None:
        raise DataError(f"{s.data.store}: {problem}; run `spectramind calibrate` first")
    return Path(s.data.store)


def calibrate_folder(
    root: str | Path,
    store: str | Path,
    *,
    num_workers: int,
    calibrate: Calibrate,
    split: Split,
    seed: int,
    folders: tuple[str, ...] = FOLDERS,
    fingerprint: str,
    progress: bool = True,
) -> dict:
    """Calibrate every visit under root/<folder> for `folders` into `store`; returns the summary.

    Every planet of root/train and root/test is listed in the manifest (the splits are drawn from all
    labelled planets), but only `folders` are read and calibrated.
    """
    started = time.perf_counter()
    root, store = Path(root), Path(store)
    opts = calibrate
    (store / st.MANIFEST_NAME).unlink(missing_ok=True)  # from here on the store is incomplete until rewritten
    listed = af.list_visits(root, "train") + af.list_visits(root, "test")
    visits = [v for v in listed if v.split in folders]
    if not visits:
        raise DataError(f"{root}: no planet folders under {' or '.join(f + '/' for f in folders)}")
    adc, axis = af.read_adc(root), af.read_axis_info(root)
    for inst, key in (("AIRS-CH0", "airs_bin"), ("FGS1", "fgs1_bin")):
        if len(axis[f"{inst}-axis0-h"]) // 2 < getattr(opts, key):
            raise DataError(
                f"{root / 'axis_info.parquet'}: {len(axis[f'{inst}-axis0-h']) // 2} {inst} CDS frames per visit, "
                f"fewer than one time bin (data.calibrate.{key}={getattr(opts, key)})"
            )
    stars = {s: af.read_star_info(root, s) for s in FOLDERS if any(v.split == s for v in listed)}
    targets = af.read_targets(root) if (root / "train.csv").is_file() else None
    for v in listed:
        if v.planet_id not in stars[v.split].index:
            raise DataError(f"{root / f'{v.split}_star_info.csv'}: unknown planet id {v.planet_id} (folder {v.folder})")
    manifest = _manifest(root, listed, targets, split, seed)
    labelled = manifest["splits"]["train"]
    train_targets = np.array([targets.loc[p].to_numpy() for p in labelled]) if labelled else np.zeros((0, 283))
    star_rows = {pid: _star_row(stars[split_].loc[pid]) for split_ in stars for pid in stars[split_].index}
    train_stars = np.array([star_rows[p] for p in labelled]) if labelled else np.zeros((0, len(STAR_COLUMNS)))
    stats = st.normalisation_stats(train_targets, train_stars)
    attrs = {
        **stats,
        "star_columns": list(STAR_COLUMNS),
        "jitter_columns": list(cal.jitter_columns(opts)),
    }

    tasks = [(v, adc, axis, opts, float(star_rows[v.planet_id][-1])) for v in visits]
    replaced = {}  # visit key -> instrument -> CDS values the cosmic-ray pass replaced
    wings = {}  # visit key -> instrument -> the share of the background rows' level kept as the star's
    with st.writer(store, attrs) as add:
        # In visit order, and no absolute path inside: the store's bytes (its fingerprint, part of every later
        # run hash) follow from the raw bytes and settings alone, wherever the raw folder lies.
        for i, arrays in in_order(imap_unordered(_calibrate_one, tasks, num_workers, "calibrate", progress,
                                                 "visits")):
            v = visits[i]
            target = (
                targets.loc[v.planet_id].to_numpy()
                if targets is not None and v.split == "train" and v.planet_id in targets.index
                else np.full(af.N_BINS, np.nan)
            )
            t0 = arrays.pop("t0_h")
            replaced[st.visit_key(v.planet_id, v.visit)] = arrays.pop("cosmic_replaced")
            wings[st.visit_key(v.planet_id, v.visit)] = arrays.pop("wing_share")
            add(
                v.planet_id,
                v.visit,
                {**arrays, "star": star_rows[v.planet_id], "target": target},
                {"t0_h": t0, "source": v.signal("AIRS-CH0").relative_to(root).as_posix()},
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
    manifest.update(config=_store_config(calibrate, split, seed), folders=list(folders),
                    source_fingerprint=fingerprint, cosmic_replaced=dict(sorted(replaced.items())),
                    wing_share=dict(sorted(wings.items())))
    files.write_json(store / st.MANIFEST_NAME, manifest)  # last: its presence marks a complete store
    return summary


def read_visit(visit: af.Visit, axis: dict, opts: Calibrate) -> tuple[dict, dict]:
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
        "cosmic_replaced": out["cosmic_replaced"],
        "wing_share": {k: round(v, 6) for k, v in out["wing_share"].items()},
    }


def _star_row(row) -> np.ndarray:
    values = row[list(af.STAR_COLUMNS)].to_numpy(np.float64)
    duration = cal.transit_duration_h(row["P"], row["sma"], row["i"])
    return np.r_[values, duration].astype(np.float32)


def _manifest(root: Path, visits: list, targets, split: Split, seed: int) -> dict:
    """Planets, visits and the planet-level train/val/test split of labelled planets; test/ is "predict"."""
    val_fraction, test_fraction = split.val_fraction, split.test_fraction
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
        "seed": seed,
        "fractions": {"val": val_fraction, "test": test_fraction},
        "planets": [planets[p] for p in sorted(planets)],
        "splits": splits,
    }


def _store_config(calibrate: Calibrate, split: Split, seed: int) -> dict:
    """What a store is a calibration with (besides its raw bytes and the calibration code)."""
    from spectramind.config.provenance import code_digest

    # Not the cross-validation folds: they are drawn as the store is read (data.folds), so every fold's
    # runs share one store.
    drawn = {"val_fraction": split.val_fraction, "test_fraction": split.test_fraction}
    config = {"calibrate": dataclasses.asdict(calibrate), "split": drawn, "seed": seed,
              "schema_version": st.SCHEMA_VERSION, "code": code_digest("calibrate")}
    return json.loads(json.dumps(config))  # as the manifest reads back: tuples become lists
