"""A seeded forward model that writes the competition's exact raw layout (DESIGN.md, "The science inside").

Per planet: a star and circular orbit, a transmission spectrum (physics.spectra), a quadratic limb-darkened
transit per detector column (physics.transit), a gain drift 1 + f(t) g(lambda), pointing jitter, and the
detector: flat field, dark current with hot pixels, photon noise, cosmic rays, a quadratic non-linearity that
the written `linear_corr` inverts, read noise, dead pixels and the ADC. Beside the competition files it
writes the truth (`train.csv`, `simulation_test_truth.csv`), the oracle noise per planet and bin
(`simulation_noise.csv`) and the per-visit nuisance values (`simulation_visits.csv`).
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from spectramind import files
from spectramind.config.settings import Settings, Simulate
from spectramind.data import ariel_format as af
from spectramind.data import instrument as ins
from spectramind.data.parallel import imap_unordered
from spectramind.errors import ConfigError
from spectramind.physics import spectra
from spectramind.physics.wavelengths import FGS1_WAVELENGTH_UM, airs_detector_wavelengths_um

SCHEMA_VERSION = 1
MARKER = "simulation.json"  # written last: its presence and content say the folder is complete and current
_CHUNK_PAIRS = 400  # bounds memory at full size: (pairs, 32, 356) float32 temporaries stay ~20 MB each


def simulate(root: str | Path, sim: Simulate, *, seed: int, num_workers: int, progress: bool = True) -> dict:
    """Write a complete raw folder at `root` (built beside it, renamed into place); returns a summary.

    sim.star_table: a `*_star_info.csv` (e.g. the competition's train_star_info.csv) to draw stars and orbits
    from; None draws them from distributions spanning the real table's ranges (the package ships no data).
    """
    if sim.airs_reads % 2 or sim.fgs1_reads % 2:
        raise ValueError("airs_reads and fgs1_reads must be even (reads come in CDS pairs)")
    root = Path(root)
    params = marker_for(sim, seed)
    n_train, n_test, airs_reads, fgs1_reads = sim.n_train, sim.n_test, sim.airs_reads, sim.fgs1_reads
    cosmic_ray_rate, jitter_px, two_visit_fraction, star_table = (sim.cosmic_ray_rate, sim.jitter_px,
                                                                 sim.two_visit_fraction, sim.star_table)
    rng = np.random.default_rng(seed)
    stars = None if star_table is None else af.read_star_table(star_table).to_numpy(np.float64)
    planets = [
        _draw_planet(
            rng, split, airs_reads, fgs1_reads, cosmic_ray_rate, jitter_px, two_visit_fraction, stars
        )
        for split, n in (("train", n_train), ("test", n_test))
        for _ in range(n)
    ]
    ids = rng.choice(np.arange(100_000, 4_290_000_000, 7919), size=len(planets), replace=False)
    for planet, pid in zip(planets, ids, strict=True):
        planet["planet_id"] = int(pid)

    building = root.with_name(root.name + ".partial")
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    # One detector for the whole set (one instrument): its maps are written once and copied per visit.
    detector = {inst: _calibration_maps(rng, inst) for inst in af.INSTRUMENTS}
    for inst, (maps, _) in detector.items():
        for name, arr in maps.items():
            af.write_map(building / ".detector" / inst / f"{name}.parquet", arr)
    results = [None] * len(planets)
    tasks = [(building, p, detector) for p in planets]
    for i, result in imap_unordered(_simulate_planet, tasks, num_workers, "simulate", progress):
        results[i] = result
    shutil.rmtree(building / ".detector")
    _write_tables(building, planets, results, airs_reads, fgs1_reads)
    files.write_json(building / MARKER, params)
    if root.exists():
        shutil.rmtree(root)
    building.rename(root)
    return {"planets": len(planets), "visits": sum(p["n_visits"] for p in planets), "root": str(root)}


def marker_for(settings: Simulate, seed: int) -> dict:
    """What the marker of a simulation with these settings, seed and simulator code holds."""
    from spectramind.config.provenance import code_digest

    return {**dataclasses.asdict(settings), "seed": seed, "schema_version": SCHEMA_VERSION,
            "code": code_digest("simulate")}


def simulate_raw(s: Settings, progress: bool = True) -> dict:
    """The simulate stage: write `data.root` unless it already holds this simulation; returns a summary."""
    if s.data.simulate is None:
        raise ConfigError(f"data={s.data.name}: simulate writes only the synthetic set (data=synthetic)")
    root = Path(s.data.root)
    marker = marker_for(s.data.simulate, s.seed)
    if read_marker(root) == marker:
        return {"root": str(root), "n_train": marker["n_train"], "n_test": marker["n_test"], "cached": True}
    simulate(root, s.data.simulate, seed=s.seed, num_workers=s.data.num_workers, progress=progress)
    return {"root": str(root), "n_train": marker["n_train"], "n_test": marker["n_test"], "cached": False}


def read_marker(root: str | Path) -> dict | None:
    """The parameters a complete simulated folder was made with, or None."""
    import json

    path = Path(root) / MARKER
    return json.loads(path.read_text()) if path.is_file() else None


def _draw_planet(
    rng, split, airs_reads, fgs1_reads, cosmic_ray_rate, jitter_px, two_visit_fraction, stars
) -> dict:
    """Star, orbit, atmosphere and visit nuisances, drawn in the parent: no worker order matters."""
    while True:
        rp = np.sqrt(rng.uniform(0.006, 0.04))
        if stars is not None:  # a real row: Rs, Ms, Ts, Mp, e, P, sma, i
            rs, ms, ts, mp, _, period, sma, inc = stars[rng.integers(len(stars))]
            b = sma * np.cos(np.radians(inc))
        else:
            ts = rng.uniform(4250.0, 6950.0)
            ms = float(np.clip(0.6 + (ts - 4250.0) / 2700.0 * 0.9 + rng.normal(0, 0.12), 0.6, 1.8))
            rs = float(np.clip(ms**0.9 * np.exp(rng.normal(0.1, 0.2)), 0.65, 2.9))
            mp, period = rng.uniform(0.05, 5.0), rng.uniform(2.8, 7.6)
            sma = (ms * (period / 365.25) ** 2) ** (1 / 3) * 215.032 / rs  # Kepler's third law, stellar radii
            b = rng.uniform(0.0, 0.8 * (1 - rp))
            inc = np.degrees(np.arccos(b / sma))
        if b >= 0.9 * (1 - rp):
            continue  # grazing: no full-depth part to calibrate against
        duration_h = 24 * period / np.pi * np.arcsin(min(1.0, np.sqrt((1 + rp) ** 2 - b * b) / sma))
        if 4.0 <= sma <= 21.0 and duration_h < 5.5:
            break
    atmosphere = spectra.random_atmosphere(rng, rp)
    wl_cols = airs_detector_wavelengths_um()
    depth = spectra.transmission_spectrum(np.r_[FGS1_WAVELENGTH_UM, wl_cols], rp, **atmosphere)
    n_visits = 2 if rng.random() < two_visit_fraction else 1
    visits = [
        {
            "t0_h": float(ins.VISIT_HOURS / 2 + rng.uniform(-0.3, 0.3)),
            "drift_time": rng.normal(0.0, [1.5e-3, 8e-4]).tolist(),  # f(t) = a1 x + a2 x^2, x in [-1, 1]
            "drift_colour": float(rng.uniform(-0.5, 0.5)),  # g(lambda) = 1 + c (lambda - 2.5 um) / 1.5 um
            "brightness": float(rng.uniform(0.6, 1.4)),
            "seed": int(rng.integers(2**63)),
        }
        for _ in range(n_visits)
    ]
    return {
        "split": split,
        "star": [float(v) for v in (rs, ms, ts, mp, 0.0, period, sma, inc)],
        "depth": depth,
        "n_visits": n_visits,
        "visits": visits,
        "airs_reads": airs_reads,
        "fgs1_reads": fgs1_reads,
        "cosmic_ray_rate": cosmic_ray_rate,
        "jitter_px": jitter_px,
    }


def _simulate_planet(args) -> dict:
    """Write every visit of one planet; return its oracle sigma (283,) (visits combined)."""
    building, planet, detector = args
    if multiprocessing.parent_process() is not None:
        import torch

        torch.set_num_threads(1)  # one process per core already: intra-op threads would only contend
    folder = Path(building) / planet["split"] / str(planet["planet_id"])
    inverse_var = np.zeros(af.N_BINS)
    for k, visit in enumerate(planet["visits"]):
        rng = np.random.default_rng(visit["seed"])
        sigma_cols = {}
        for instrument in af.INSTRUMENTS:
            raw, sigma = _instrument_visit(rng, instrument, planet, visit, *detector[instrument])
            af.write_signal(folder / f"{instrument}_signal_{k}.parquet", raw)
            (folder / f"{instrument}_calibration_{k}").mkdir(parents=True)
            for name in af.CALIBRATION_FILES:
                shutil.copyfile(
                    Path(building) / ".detector" / instrument / f"{name}.parquet",
                    folder / f"{instrument}_calibration_{k}" / f"{name}.parquet",
                )
            sigma_cols[instrument] = sigma
        sigma = np.r_[sigma_cols["FGS1"], sigma_cols["AIRS-CH0"][af.AIRS_CROP][::-1]]
        inverse_var += sigma**-2.0
    return {"sigma": inverse_var**-0.5}


def pair_times_h(n_pairs: int) -> tuple[np.ndarray, np.ndarray]:
    """Times (h) of the first and second read of each CDS pair, evenly spread over the visit."""
    start = np.arange(n_pairs) * (ins.VISIT_HOURS * 3600.0 / n_pairs) + ins.FIRST_READ_S
    return start / 3600.0, (start + 0.1) / 3600.0


def _instrument_visit(rng, instrument: str, planet: dict, visit: dict, maps: dict, beta: np.ndarray):
    """Raw uint16 reads (N, 32, W) and the oracle depth sigma per column (W,) (or (1,) for FGS1)."""
    from spectramind.physics.transit import quadratic_ld_coefficients, transit_flux

    n_pairs = planet[f"{'airs' if instrument == 'AIRS-CH0' else 'fgs1'}_reads"] // 2
    w = af.WIDTH[instrument]
    t_even, t_odd = pair_times_h(n_pairs)
    t_mid = 0.5 * (t_even + t_odd)
    wl = airs_detector_wavelengths_um() if instrument == "AIRS-CH0" else np.array([FGS1_WAVELENGTH_UM])
    depth = planet["depth"][1:] if instrument == "AIRS-CH0" else planet["depth"][:1]
    _, _, ts, _, _, period, sma, inc = planet["star"]
    u1, u2 = quadratic_ld_coefficients(wl, ts)
    transit = transit_flux(t_mid, visit["t0_h"], period, sma, inc, np.sqrt(depth), u1, u2).double().numpy()
    x = (t_mid - ins.VISIT_HOURS / 2) / (ins.VISIT_HOURS / 2)
    a1, a2 = visit["drift_time"]
    drift = 1.0 + np.outer(1.0 + visit["drift_colour"] * (wl - 2.5) / 1.5, a1 * x + a2 * x * x)
    light = (transit * drift).T  # (P, W) relative stellar flux seen per column
    jitter = _jitter(rng, n_pairs, planet["jitter_px"])

    if instrument == "AIRS-CH0":
        counts = ins.airs_counts(ts) * visit["brightness"]
        background = 3.0 + ins.AIRS_BACKGROUND_PER_COLUMN * np.arange(w)
        profile = ins.airs_profile()
        psf = profile[None, :, None] + jitter[:, 1, None, None] * -np.gradient(profile)[None, :, None]
        image = psf * (counts * light)[:, None, :] + background  # (P, 32, W) e- per CDS before the flat
    else:
        counts = ins.FGS1_COUNTS * visit["brightness"] * ins.planck_ratio(FGS1_WAVELENGTH_UM, ts)
        background = np.full(1, ins.FGS1_BACKGROUND)
        psf = _fgs1_psf(jitter)
        image = psf * (counts * light[:, 0])[:, None, None] + background
    raw = _read_out(rng, image.astype(np.float32), maps, beta, instrument, planet["cosmic_ray_rate"])

    # Oracle: optimal (profile-weighted) extraction of photon + read noise, in- vs out-of-transit pairs.
    signal = psf.mean(0) * np.reshape(counts, (1, -1)) * maps["flat"]  # (32, W) e- per CDS frame per pixel
    noise_var = np.abs(signal) + background * np.abs(maps["flat"]) + 2.0 * maps["read"] ** 2
    information = np.where(maps["dead"] | (maps["flat"] <= 0), 0.0, signal**2 / noise_var).sum(0)
    if instrument == "FGS1":
        information = information.sum(keepdims=True)
    rel_var = 1.0 / information  # variance of a bin's flux per CDS frame, relative to its flux
    bottom = transit.min(1, keepdims=True)
    n_in = (transit <= bottom + 0.1 * (1 - bottom)).sum(1)  # pairs near full depth
    n_out = (transit >= 1.0 - 1e-12).sum(1)
    sigma = (1.0 - depth) * np.sqrt(rel_var * (1.0 / np.maximum(n_in, 1) + 1.0 / np.maximum(n_out, 1)))
    return raw, sigma


def _jitter(rng, n_pairs: int, amplitude_px: float) -> np.ndarray:
    """(P, 2) pointing offsets (x, y) in pixels: a smoothed random walk plus white noise."""
    walk = np.cumsum(rng.normal(0.0, 1.0, (n_pairs, 2)), axis=0)
    walk = (walk - walk.mean(0)) / max(walk.std(), 1e-9)
    return amplitude_px * (0.7 * walk + 0.3 * rng.normal(0.0, 1.0, (n_pairs, 2)))


def _fgs1_psf(jitter: np.ndarray) -> np.ndarray:
    """(P, 32, 32) unit-sum Gaussian PSF moved by the pointing jitter."""
    grid = np.arange(af.ROWS)
    cx, cy = ins.FGS1_PSF_CENTRE
    sx, sy = ins.FGS1_PSF_SIGMA
    gx = np.exp(-0.5 * ((grid[None, :] - cx - jitter[:, :1]) / sx) ** 2)
    gy = np.exp(-0.5 * ((grid[None, :] - cy - jitter[:, 1:]) / sy) ** 2)
    psf = gy[:, :, None] * gx[:, None, :]
    return psf / (2 * np.pi * sx * sy)


def _calibration_maps(rng, instrument: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
    shape = (af.ROWS, af.WIDTH[instrument])
    dark = ins.DARK_MEDIAN * rng.lognormal(0.0, 0.3, shape)
    hot = rng.random(shape) < ins.HOT_FRACTION
    dark[hot] = rng.uniform(*ins.HOT_DARK_RANGE, hot.sum())
    dead = rng.random(shape) < ins.DEAD_FRACTION[instrument]
    flat = rng.normal(ins.FLAT_MEDIAN, ins.FLAT_SCATTER, shape)
    flat[dead] = rng.uniform(-0.05, 0.2, dead.sum())  # the real maps' flat is <= 0 on some bad pixels
    read = ins.READ_MEDIAN + np.abs(rng.normal(0.0, ins.READ_SCATTER, shape))
    beta = ins.NONLINEARITY_BETA * rng.uniform(0.7, 1.3, shape)
    maps = {
        "dark": dark,
        "dead": dead,
        "flat": flat,
        "linear_corr": linearity_coefficients(beta),
        "read": read,
    }
    return maps, beta


def linearity_coefficients(beta: np.ndarray) -> np.ndarray:
    """(6, *beta.shape) ascending c with q = sum c_k y^k inverting y = q - beta q^2 (least squares)."""
    y_max = 65535 / ins.ADC["gain"] + ins.ADC["offset"]
    s = np.linspace(0.0, 1.0, 64)
    y = s * y_max
    q = (1.0 - np.sqrt(1.0 - 4.0 * beta.reshape(1, -1) * y[:, None])) / (2.0 * beta.reshape(1, -1))
    basis = np.vander(s, 6, increasing=True)  # fit in s = y / y_max: well conditioned
    coef = np.linalg.pinv(basis) @ q / (y_max ** np.arange(6))[:, None]
    return coef.reshape(6, *beta.shape)


def apply_nonlinearity(q: np.ndarray, beta: np.ndarray) -> np.ndarray:
    return q - beta * q * q


def _read_out(rng, image: np.ndarray, maps: dict, beta: np.ndarray, instrument: str, cr_rate: float):
    """Reads (2P, 32, W) uint16 from the expected e- per CDS frame `image` (P, 32, W), chunked over pairs."""
    n_pairs = image.shape[0]
    t_int = ins.INTEGRATION_S[instrument]
    raw = np.empty((2 * n_pairs, *image.shape[1:]), dtype=np.uint16)
    flat, dark, read = (maps[k].astype(np.float32) for k in ("flat", "dark", "read"))
    beta32 = beta.astype(np.float32)
    for lo in range(0, n_pairs, _CHUNK_PAIRS):
        chunk = image[lo : lo + _CHUNK_PAIRS] * flat
        # The first read's photon noise is common to both reads of a pair and cancels in the CDS; only
        # the increment's is drawn.
        first = chunk * np.float32(ins.FIRST_READ_S / t_int) + dark * np.float32(ins.FIRST_READ_S)
        increment = chunk + dark * np.float32(t_int)
        increment += np.sqrt(np.maximum(increment, 0)) * rng.standard_normal(chunk.shape, dtype=np.float32)
        hits = rng.choice(increment.size, rng.binomial(increment.size, cr_rate), replace=False)
        increment.reshape(-1)[hits] += rng.uniform(2e3, 2e4, len(hits)).astype(np.float32)
        for parity, charge in ((0, first), (1, first + increment)):
            measured = apply_nonlinearity(charge, beta32) + read * rng.standard_normal(
                charge.shape, np.float32
            )
            measured[:, maps["dead"]] = ins.ADC["offset"]  # dead pixels read nothing
            adc = np.rint((measured - np.float32(ins.ADC["offset"])) * np.float32(ins.ADC["gain"]))
            raw[2 * lo + parity : 2 * (lo + len(chunk)) : 2] = np.clip(adc, 0, 65535).astype(np.uint16)
    return raw


def _write_tables(building: Path, planets: list[dict], results: list[dict], airs_reads: int, fgs1_reads: int):
    """The competition's CSV and axis files plus the simulator's own truth and noise files."""
    wl = airs_detector_wavelengths_um()
    airs_even, airs_odd = pair_times_h(airs_reads // 2)
    fgs_even, fgs_odd = pair_times_h(fgs1_reads // 2)
    af.write_axis_info(
        building / "axis_info.parquet",
        np.c_[airs_even, airs_odd].ravel(),
        np.tile([0.1, ins.INTEGRATION_S["AIRS-CH0"]], airs_reads // 2),
        wl,
        np.c_[fgs_even, fgs_odd].ravel(),
    )
    af.write_csv(
        building / "adc_info.csv",
        pd.DataFrame(
            [
                {
                    "FGS1_adc_offset": ins.ADC["offset"],
                    "FGS1_adc_gain": ins.ADC["gain"],
                    "AIRS-CH0_adc_offset": ins.ADC["offset"],
                    "AIRS-CH0_adc_gain": ins.ADC["gain"],
                }
            ]
        ),
    )
    target_wl = np.r_[FGS1_WAVELENGTH_UM, wl[af.AIRS_CROP][::-1]]
    af.write_csv(building / "wavelengths.csv", pd.DataFrame([target_wl], columns=af.TARGET_COLUMNS))

    def table(rows, columns):
        return pd.DataFrame(rows, columns=["planet_id", *columns])

    truth = {p["planet_id"]: np.r_[p["depth"][0], p["depth"][1:][af.AIRS_CROP][::-1]] for p in planets}
    for split in ("train", "test"):
        group = [p for p in planets if p["split"] == split]
        af.write_csv(
            building / f"{split}_star_info.csv",
            table([[p["planet_id"], *p["star"]] for p in group], af.STAR_COLUMNS),
        )
        labels = table([[p["planet_id"], *truth[p["planet_id"]]] for p in group], af.TARGET_COLUMNS)
        af.write_csv(building / ("train.csv" if split == "train" else "simulation_test_truth.csv"), labels)
    test_ids = [p["planet_id"] for p in planets if p["split"] == "test"]
    af.write_csv(
        building / "sample_submission.csv",
        table(
            [[pid, *[0.015] * af.N_BINS, *[0.001] * af.N_BINS] for pid in test_ids],
            [*af.TARGET_COLUMNS, *af.SIGMA_COLUMNS],
        ),
    )
    af.write_csv(
        building / "simulation_noise.csv",
        table(
            [[p["planet_id"], *r["sigma"]] for p, r in zip(planets, results, strict=True)], af.SIGMA_COLUMNS
        ),
    )
    af.write_csv(
        building / "simulation_visits.csv",
        pd.DataFrame(
            [
                {
                    "planet_id": p["planet_id"],
                    "visit": k,
                    "t0_h": v["t0_h"],
                    "drift_a1": v["drift_time"][0],
                    "drift_a2": v["drift_time"][1],
                    "drift_colour": v["drift_colour"],
                    "brightness": v["brightness"],
                }
                for p in planets
                for k, v in enumerate(p["visits"])
            ]
        ),
    )
