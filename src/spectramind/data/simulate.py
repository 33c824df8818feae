"""A seeded forward model that writes the competition's exact raw layout (DESIGN.md, "The science inside").

Built to test the fit, never to match it: it shares none of the fit's code or assumptions. Per planet: a star,
an orbit drawn around the star info's (the written star info stays nominal), a transmission spectrum with
haze and clouds (physics.spectra), a transit integrated numerically over the stellar disc with Claret's
four-parameter limb darkening (data.disc_transit), a gain drift that is not 1 + f(t) g(lambda), pointing
jitter that moves a chromatic PSF with wings across rows and columns (so it changes the flux per column),
and the detector: per-visit maps (dead, hot, flat), flat field, dark current, photon noise, cosmic rays, the
real cubic non-linearity that the written `linear_corr` inverts, read noise with the real map's tail, and
the ADC. Each of these is a switch in data.simulate (configs/data/synthetic.yaml): off, it is the simpler
model the fit was written for. Beside the competition files it writes the truth (`train.csv`,
`simulation_test_truth.csv`), the oracle noise per planet and bin (`simulation_noise.csv`) and the per-visit
nuisance values (`simulation_visits.csv`).
"""

from __future__ import annotations

import dataclasses
import functools
import multiprocessing
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import xxhash

from spectramind import files
from spectramind.config.settings import Settings, Simulate
from spectramind.data import ariel_format as af
from spectramind.data import disc_transit
from spectramind.data import instrument as ins
from spectramind.data.parallel import imap_unordered
from spectramind.errors import ConfigError
from spectramind.physics import spectra
from spectramind.physics.wavelengths import FGS1_WAVELENGTH_UM, airs_detector_wavelengths_um

SCHEMA_VERSION = 2
MARKER = "simulation.json"  # written last: its presence and content say the folder is complete and current
_CHUNK_PAIRS = 400  # bounds memory at full size: (pairs, 32, 356) float32 temporaries stay ~20 MB each
_DEPTH_RANGE = (0.006, 0.046)  # the real labels' range of transit depth
_VISIT_MAPS = ("dark", "dead", "flat")  # drawn per visit when per_visit_maps; read and linear_corr are the set's
_POINTING_KNOTS = 64  # the slow pointing drift's resolution over a visit (shared by both instruments)


def simulate(root: str | Path, sim: Simulate, *, seed: int, num_workers: int, progress: bool = True) -> dict:
    """Write a complete raw folder at `root` (built beside it, renamed into place); returns a summary.

    sim.star_table: a `*_star_info.csv` (e.g. the competition's train_star_info.csv) to draw stars and orbits
    from; None draws them from distributions spanning the real table's ranges (the package ships no data).
    Safe against a concurrent run on the same root: the build and the swap are under the root's lock.
    """
    with files.locked(_lock_path(root)):
        return _build(Path(root), sim, seed, num_workers, progress)


def _lock_path(root: str | Path) -> Path:
    """The root's lock, in the system's temporary folder: beside the root it would be a file DVC sees the
    simulate stage write outside its declared output (files.locked adds `.lock`)."""
    key = xxhash.xxh3_64(str(Path(root).resolve()).encode()).hexdigest()
    return Path(tempfile.gettempdir()) / f"spectramind-simulate-{key}"


def _build(root: Path, sim: Simulate, seed: int, num_workers: int, progress: bool) -> dict:
    if sim.airs_reads % 2 or sim.fgs1_reads % 2:
        raise ValueError("airs_reads and fgs1_reads must be even (reads come in CDS pairs)")
    params = marker_for(sim, seed)
    if sim.full_size:
        sim = dataclasses.replace(sim, airs_reads=af.FULL_READS["AIRS-CH0"], fgs1_reads=af.FULL_READS["FGS1"])
    rng = np.random.default_rng(seed)
    stars = None if sim.star_table is None else af.read_star_table(sim.star_table).to_numpy(np.float64)
    planets = [
        _draw_planet(rng, split, sim, stars) for split, n in (("train", sim.n_train), ("test", sim.n_test))
        for _ in range(n)
    ]
    ids = rng.choice(np.arange(100_000, 4_290_000_000, 7919), size=len(planets), replace=False)
    for planet, pid in zip(planets, ids, strict=True):
        planet["planet_id"] = int(pid)

    root.parent.mkdir(parents=True, exist_ok=True)
    for stale in root.parent.glob(f"{root.name}.partial-*"):  # left by a killed run (we hold the lock)
        shutil.rmtree(stale, ignore_errors=True)
    building = Path(tempfile.mkdtemp(prefix=f"{root.name}.partial-", dir=root.parent))
    try:
        # One detector for the whole set, or (per_visit_maps) a variant of it per visit, drawn in the worker.
        detector = {inst: _calibration_maps(rng, inst, sim, None) for inst in af.INSTRUMENTS}
        for inst, (maps, _) in detector.items():
            for name, arr in maps.items():
                af.write_map(building / ".detector" / inst / f"{name}.parquet", arr)
        results = [None] * len(planets)
        tasks = [(building, p, detector, sim) for p in planets]
        for i, result in imap_unordered(_simulate_planet, tasks, num_workers, "simulate", progress, "planets"):
            results[i] = result
        shutil.rmtree(building / ".detector")
        _write_tables(building, planets, results, sim.airs_reads, sim.fgs1_reads)
        files.write_json(building / MARKER, params)
        if root.exists():
            shutil.rmtree(root)
        building.rename(root)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return {"planets": len(planets), "visits": sum(p["n_visits"] for p in planets), "root": str(root)}


def marker_for(settings: Simulate, seed: int) -> dict:
    """What the marker of a simulation with these settings, seed and simulator code holds."""
    from spectramind.config.provenance import code_digest

    return {**dataclasses.asdict(settings), "seed": seed, "schema_version": SCHEMA_VERSION,
            "code": code_digest("simulate")}


def simulate_raw(s: Settings, progress: bool = True) -> dict:
    """The simulate stage: write `data.root` unless it already holds this simulation; returns a summary.

    The marker check, the build and the rename hold the root's lock, so two concurrent runs build it once.
    """
    if s.data.simulate is None:
        raise ConfigError(f"data={s.data.name}: simulate writes only the synthetic set (data=synthetic)")
    root = Path(s.data.root)
    marker = marker_for(s.data.simulate, s.seed)
    summary = {"root": str(root), "n_train": marker["n_train"], "n_test": marker["n_test"]}
    with files.locked(_lock_path(root)):
        if read_marker(root) == marker:
            return {**summary, "cached": True}
        _build(root, s.data.simulate, s.seed, s.data.num_workers, progress)
    return {**summary, "cached": False}


def read_marker(root: str | Path) -> dict | None:
    """The parameters a complete simulated folder was made with, or None."""
    import json

    path = Path(root) / MARKER
    return json.loads(path.read_text()) if path.is_file() else None


def _draw_star(rng, stars, rp):
    """(Rs, Ms, Ts, Mp, P, sma, inc) from a real row, or from distributions spanning the real table."""
    if stars is not None:  # a real row: Rs, Ms, Ts, Mp, e, P, sma, i
        rs, ms, ts, mp, _, period, sma, inc = stars[rng.integers(len(stars))]
        return rs, ms, ts, mp, period, sma, inc
    ts = rng.uniform(4250.0, 6950.0)
    ms = float(np.clip(0.6 + (ts - 4250.0) / 2700.0 * 0.9 + rng.normal(0, 0.12), 0.6, 1.8))
    rs = float(np.clip(ms**0.9 * np.exp(rng.normal(0.1, 0.2)), 0.65, 2.9))
    mp, period = rng.uniform(0.05, 5.0), rng.uniform(2.8, 7.6)
    sma = (ms * (period / 365.25) ** 2) ** (1 / 3) * 215.032 / rs  # Kepler's third law, stellar radii
    inc = np.degrees(np.arccos(rng.uniform(0.0, 0.8 * (1 - rp)) / sma))
    return rs, ms, ts, mp, period, sma, inc


def _draw_planet(rng, split: str, sim: Simulate, stars) -> dict:
    """Star, orbit, atmosphere and visit nuisances, drawn in the parent: no worker order matters."""
    wl = np.r_[FGS1_WAVELENGTH_UM, airs_detector_wavelengths_um()]
    while True:
        rp = np.sqrt(rng.uniform(0.006, 0.04))
        rs, ms, ts, mp, period, sma, inc = _draw_star(rng, stars, rp)
        # The true orbit: the star info's values are estimates with these uncertainties.
        true_sma = sma * (1.0 + sim.orbit_sma_sigma * rng.normal())
        true_inc = 90.0 - abs(90.0 - (inc + sim.orbit_inc_sigma_deg * rng.normal()))
        b = true_sma * np.cos(np.radians(true_inc))
        if b >= 0.9 * (1 - rp):
            continue  # grazing: no full-depth part to calibrate against
        duration_h = 24 * period / np.pi * np.arcsin(min(1.0, np.sqrt((1 + rp) ** 2 - b * b) / true_sma))
        if not (4.0 <= sma <= 21.0 and duration_h < 5.5):
            continue
        if sim.atmosphere == "cloudy":
            depth = spectra.transmission_spectrum(wl, rp, **spectra.random_cloudy_atmosphere(rng, rp))
            if not (_DEPTH_RANGE[0] <= depth.min() and depth.max() <= _DEPTH_RANGE[1]):
                continue
        else:
            depth = spectra.transmission_spectrum(wl, rp, **spectra.random_atmosphere(rng, rp))
        break
    n_visits = 2 if rng.random() < sim.two_visit_fraction else 1
    return {
        "split": split,
        "star": [float(v) for v in (rs, ms, ts, mp, 0.0, period, sma, inc)],
        "orbit": (float(true_sma), float(true_inc)),
        "depth": depth,
        "n_visits": n_visits,
        "visits": [_draw_visit(rng, sim) for _ in range(n_visits)],
    }


def _draw_visit(rng, sim: Simulate) -> dict:
    """The nuisances of one visit. Drift 1 + A(lambda) f(t) + cross(lambda, t), x = time in [-1, 1] and
    l = (lambda - 2.5 um) / 1.5 um: f = a1 x + a2 x^2 + a3 x^3, A = 1 + c1 l + c2 l^2, cross = b l x^2
    (separable: a3 = c2 = b = 0, the fit's own 1 + f(t) g(lambda))."""
    a1, a2, a3 = rng.normal(0.0, [1.5e-3, 8e-4, 6e-4])
    c1, c2, b = rng.uniform(-0.5, 0.5), rng.normal(0.0, 0.3), rng.normal(0.0, 3e-4)
    if sim.drift == "separable":
        a3 = c2 = b = 0.0
    return {
        "t0_h": float(ins.VISIT_HOURS / 2 + rng.uniform(-0.3, 0.3)),
        "drift": [float(v) for v in (a1, a2, a3, c1, c2, b)],
        "brightness": float(rng.uniform(0.6, 1.4)),
        "seed": int(rng.integers(2**63)),
        "pointing_seed": int(rng.integers(2**63)),
    }


def _simulate_planet(args) -> dict:
    """Write every visit of one planet; return its oracle sigma (283,) (visits combined) and visit facts."""
    building, planet, detector, sim = args
    folder = Path(building) / planet["split"] / str(planet["planet_id"])
    inverse_var = np.zeros(af.N_BINS)
    facts = []
    for k, visit in enumerate(planet["visits"]):
        rng = np.random.default_rng(visit["seed"])
        sigma_cols, fact = {}, {}
        for instrument in af.INSTRUMENTS:
            maps, respond = detector[instrument]
            if sim.per_visit_maps:
                maps, respond = _calibration_maps(rng, instrument, sim, detector[instrument])
            raw, sigma = _instrument_visit(rng, instrument, planet, visit, maps, respond, sim)
            af.write_signal(folder / f"{instrument}_signal_{k}.parquet", raw)
            calibration = folder / f"{instrument}_calibration_{k}"
            for name in af.CALIBRATION_FILES:
                if sim.per_visit_maps and name in _VISIT_MAPS:
                    af.write_map(calibration / f"{name}.parquet", maps[name])
                else:  # the set's own map, written once: a copy is much cheaper than a parquet write
                    calibration.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(Path(building) / ".detector" / instrument / f"{name}.parquet",
                                    calibration / f"{name}.parquet")
            sigma_cols[instrument] = sigma
            fact[f"{instrument}_dead_fraction"] = float(maps["dead"].mean())
            fact[f"{instrument}_min_flat"] = float(maps["flat"][~maps["dead"]].min())
        sigma = np.r_[sigma_cols["FGS1"], sigma_cols["AIRS-CH0"][af.AIRS_CROP][::-1]]
        inverse_var += sigma**-2.0
        facts.append(fact)
    return {"sigma": inverse_var**-0.5, "visits": facts}


def pair_times_h(n_pairs: int) -> tuple[np.ndarray, np.ndarray]:
    """Times (h) of the first and second read of each CDS pair, evenly spread over the visit."""
    start = np.arange(n_pairs) * (ins.VISIT_HOURS * 3600.0 / n_pairs) + ins.FIRST_READ_S
    return start / 3600.0, (start + 0.1) / 3600.0


def _transit(planet: dict, visit: dict, wl: np.ndarray, depth: np.ndarray, t_mid: np.ndarray, sim: Simulate):
    """(W, P) relative flux of the transit at the columns' wavelengths, from the disc integration."""
    _, _, ts, _, _, period, _, _ = planet["star"]
    if sim.limb_darkening == "claret":
        coefficients = disc_transit.claret_coefficients(wl, ts)
    else:  # the fit's own law: the grey-atmosphere quadratic coefficients
        import torch

        from spectramind.physics.transit import quadratic_ld_coefficients

        if multiprocessing.parent_process() is not None:
            torch.set_num_threads(1)  # one process per core already: intra-op threads would only contend

        u1, u2 = (u.numpy() for u in quadratic_ld_coefficients(wl, ts))
        coefficients = disc_transit.claret_from_quadratic(u1, u2)
    sma, inc = planet["orbit"]
    return disc_transit.light_curve(t_mid, visit["t0_h"], period, sma, inc, np.sqrt(depth), coefficients)


def _drift(visit: dict, wl: np.ndarray, t_mid: np.ndarray) -> np.ndarray:
    """(W, P) the gain drift of _draw_visit's formula."""
    a1, a2, a3, c1, c2, b = visit["drift"]
    x = (t_mid - ins.VISIT_HOURS / 2) / (ins.VISIT_HOURS / 2)
    lam = (wl - 2.5) / 1.5
    amplitude = 1.0 + c1 * lam + c2 * lam**2
    return 1.0 + np.outer(amplitude, a1 * x + a2 * x**2 + a3 * x**3) + b * np.outer(lam, x**2)


def _instrument_visit(rng, instrument, planet, visit, maps, respond, sim: Simulate):
    """Raw uint16 reads (N, 32, W) and the oracle depth sigma per column (W,) (or (1,) for FGS1)."""
    airs = instrument == "AIRS-CH0"
    n_pairs = (sim.airs_reads if airs else sim.fgs1_reads) // 2
    t_even, t_odd = pair_times_h(n_pairs)
    t_mid = 0.5 * (t_even + t_odd)
    wl = airs_detector_wavelengths_um() if airs else np.array([FGS1_WAVELENGTH_UM])
    depth = planet["depth"][1:] if airs else planet["depth"][:1]
    ts = planet["star"][2]
    transit = _transit(planet, visit, wl, depth, t_mid, sim)
    light = (transit * _drift(visit, wl, t_mid)).T  # (P, W) relative stellar flux seen per column
    jitter = _pointing(rng, visit["pointing_seed"], t_mid, sim.jitter_px, ins.INTEGRATION_S[instrument])
    measured = sim.psf == "measured"
    if airs:
        counts = ins.airs_counts(ts) * visit["brightness"]
        if measured:
            background = np.full(af.WIDTH[instrument], ins.AIRS_SKY_BACKGROUND)
            psf_of = functools.partial(_airs_psf, width=ins.airs_width_scale(wl))
        else:
            background = 3.0 + ins.AIRS_BACKGROUND_PER_COLUMN * np.arange(af.WIDTH[instrument])
            psf_of = _airs_psf_simple
    else:
        counts = np.array([ins.FGS1_COUNTS * visit["brightness"] * ins.planck_ratio(FGS1_WAVELENGTH_UM, ts)])
        background = np.full(1, ins.FGS1_BACKGROUND)
        psf_of = _fgs1_psf if measured else _fgs1_psf_simple

    def image(lo: int, hi: int) -> np.ndarray:
        """(n, 32, W) e- per CDS frame before the flat, pairs lo..hi."""
        j = jitter[lo:hi]
        # Spectral jitter slides the spectrum along the columns (the star's flux per column changes).
        star = _shift_columns(counts, j[:, 0]) if airs and measured else counts
        return (psf_of(j) * (star * light[lo:hi])[:, None, :] + background).astype(np.float32)

    raw = _read_out(rng, image, n_pairs, maps, respond, instrument, sim.cosmic_ray_rate)

    # Oracle: optimal (profile-weighted) extraction of photon + read noise, in- vs out-of-transit pairs.
    signal = psf_of(np.zeros((1, 2)))[0] * counts[None, :] * maps["flat"]  # (32, W) e- per CDS per pixel
    noise_var = np.abs(signal) + background * np.abs(maps["flat"]) + 2.0 * maps["read"] ** 2
    information = np.where(maps["dead"] | (maps["flat"] <= 0), 0.0, signal**2 / noise_var).sum(0)
    if not airs:
        information = information.sum(keepdims=True)
    rel_var = 1.0 / information  # variance of a bin's flux per CDS frame, relative to its flux
    bottom = transit.min(1, keepdims=True)
    n_in = (transit <= bottom + 0.1 * (1 - bottom)).sum(1)  # pairs near full depth
    n_out = (transit >= 1.0 - 1e-12).sum(1)
    sigma = (1.0 - depth) * np.sqrt(rel_var * (1.0 / np.maximum(n_in, 1) + 1.0 / np.maximum(n_out, 1)))
    return raw, sigma


def _pointing(rng, pointing_seed: int, t_mid: np.ndarray, amplitude_px: float, t_int: float) -> np.ndarray:
    """(P, 2) pointing offsets (x, y) in pixels, RMS amplitude_px: 80% of the variance frame-to-frame
    (averaged down over longer exposures), 20% a slow drift that both instruments share."""
    knots = np.random.default_rng(pointing_seed).normal(0.0, 1.0, (_POINTING_KNOTS, 2)).cumsum(0)
    knots = (knots - knots.mean(0)) / max(knots.std(), 1e-9)
    grid = np.linspace(0.0, ins.VISIT_HOURS, _POINTING_KNOTS)
    slow = np.stack([np.interp(t_mid, grid, knots[:, k]) for k in range(2)], axis=1)
    white = rng.normal(0.0, 1.0, (t_mid.size, 2)) * np.sqrt(ins.INTEGRATION_S["FGS1"] / t_int)
    return amplitude_px * (np.sqrt(0.2) * slow + np.sqrt(0.8) * white)


def _shift_columns(values: np.ndarray, dx: np.ndarray) -> np.ndarray:
    """(P, W) values(c - dx_p): the spectrum moved by dx columns (linear interpolation, edges held)."""
    position = np.clip(np.arange(values.size)[None, :] - dx[:, None], 0, values.size - 1)
    lo = np.minimum(position.astype(int), values.size - 2)
    frac = position - lo
    return values[lo] * (1.0 - frac) + values[lo + 1] * frac


def _airs_psf(jitter: np.ndarray, width: np.ndarray) -> np.ndarray:
    """(P, 32, W) AIRS PSF per column: the profile's core stretched by `width` (W,) about its centre, plus
    wings of fixed shape whose share grows with the width, both moved by the spatial jitter; pixel-integrated
    from cumulative sums."""
    core, wings = ins.airs_profile(), ins.airs_wings()
    share = wings.sum() * width**ins.AIRS_WING_POWER  # (W,) of each column's light in the wings
    centre = (core * np.arange(af.ROWS)).sum()
    edges = np.arange(af.ROWS + 1) - 0.5
    moved = edges[None, :, None] - jitter[:, 1, None, None]  # (P, 33, 1)
    stretched = centre + (moved - centre) / width[None, None, :]
    cumulative = (1.0 - share) * np.interp(stretched, edges, np.r_[0.0, np.cumsum(core)])
    cumulative += share / wings.sum() * np.interp(moved, edges, np.r_[0.0, np.cumsum(wings)])
    return np.diff(cumulative, axis=1)


def _airs_psf_simple(jitter: np.ndarray) -> np.ndarray:
    """(P, 32, 1) the fixed profile moved to first order by the spatial jitter (the old model)."""
    profile = ins.airs_profile()
    return (profile[None, :] + jitter[:, 1, None] * -np.gradient(profile)[None, :])[:, :, None]


def _erf(x: np.ndarray) -> np.ndarray:
    """Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7): numpy has no erf and scipy is not a dependency."""
    t = 1.0 / (1.0 + 0.3275911 * np.abs(x))
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return np.sign(x) * (1.0 - poly * np.exp(-x * x))


def _fgs1_psf(jitter: np.ndarray) -> np.ndarray:
    """(P, 32, 32) FGS1 PSF of unit total (over the whole plane): a pixel-integrated Gaussian core plus
    Moffat (beta 2) wings, moved by the pointing jitter."""
    edges = np.arange(af.ROWS + 1) - 0.5
    cx, cy = ins.FGS1_PSF_CENTRE
    sx, sy = ins.FGS1_CORE_SIGMA
    gx = np.diff(_erf((edges[None, :] - cx - jitter[:, :1]) / (sx * np.sqrt(2.0))), axis=1) / 2.0
    gy = np.diff(_erf((edges[None, :] - cy - jitter[:, 1:]) / (sy * np.sqrt(2.0))), axis=1) / 2.0
    grid = np.arange(af.ROWS)
    dx2 = (grid[None, :] - cx - jitter[:, :1]) ** 2
    dy2 = (grid[None, :] - cy - jitter[:, 1:]) ** 2
    scale = ins.FGS1_WING_SCALE
    wing = (1.0 + (dy2[:, :, None] + dx2[:, None, :]) / scale**2) ** -2.0 / (np.pi * scale**2)
    return (1.0 - ins.FGS1_WING_FRACTION) * gy[:, :, None] * gx[:, None, :] + ins.FGS1_WING_FRACTION * wing


def _fgs1_psf_simple(jitter: np.ndarray) -> np.ndarray:
    """(P, 32, 32) unit-sum Gaussian PSF moved by the pointing jitter (the old model)."""
    grid = np.arange(af.ROWS)
    cx, cy = ins.FGS1_PSF_CENTRE
    sx, sy = ins.FGS1_PSF_SIGMA
    gx = np.exp(-0.5 * ((grid[None, :] - cx - jitter[:, :1]) / sx) ** 2)
    gy = np.exp(-0.5 * ((grid[None, :] - cy - jitter[:, 1:]) / sy) ** 2)
    psf = gy[:, :, None] * gx[:, None, :]
    return psf / (2 * np.pi * sx * sy)


def _calibration_maps(rng, instrument: str, sim: Simulate, detector: tuple | None):
    """The maps written beside a visit and the detector's response (charge -> measured e-).

    detector None: the set's own detector. detector given (per_visit_maps): that detector's read noise and
    non-linearity with this visit's dark, dead and flat maps, drawn with fractions from the measured ranges.
    """
    shape = (af.ROWS, af.WIDTH[instrument])
    per_visit = detector is not None
    dark = ins.DARK_MEDIAN * rng.lognormal(0.0, 0.3, shape)
    hot = rng.random(shape) < (rng.uniform(*ins.HOT_FRACTION_RANGE) if per_visit else ins.HOT_FRACTION)
    dark[hot] = rng.uniform(*ins.HOT_DARK_RANGE, hot.sum())
    dead_fraction = rng.uniform(*ins.DEAD_FRACTION_RANGE) if per_visit else ins.DEAD_FRACTION[instrument]
    dead = rng.random(shape) < dead_fraction
    flat = rng.normal(ins.FLAT_MEDIAN, ins.FLAT_SCATTER, shape)
    if per_visit:  # pixels of depressed response, the lowest at this visit's minimum
        low = np.flatnonzero(rng.random(shape) < ins.LOW_FLAT_FRACTION)
        flat_min = rng.uniform(*ins.FLAT_MIN_RANGE)
        flat.reshape(-1)[low] = rng.uniform(flat_min, 0.95, low.size)
        flat.reshape(-1)[rng.integers(flat.size)] = flat_min
        dead.reshape(-1)[flat.reshape(-1) < 0.95] = False
    flat[dead] = rng.uniform(-0.05, 0.2, dead.sum())  # the real maps' flat is <= 0 on some bad pixels
    if per_visit:
        (base, respond) = detector
        read, coefficients = base["read"], base["linear_corr"]
    else:
        read = _read_noise_map(rng, shape, sim)
        coefficients, respond = _nonlinearity(rng, shape, sim)
    return {"dark": dark, "dead": dead, "flat": flat, "linear_corr": coefficients, "read": read}, respond


def _read_noise_map(rng, shape, sim: Simulate) -> np.ndarray:
    if sim.read_noise == "measured":  # inverse-CDF draws from the real map's quantiles: its tail included
        return np.interp(rng.random(shape), ins.READ_PROBABILITIES, ins.READ_QUANTILES)
    return ins.READ_MEDIAN + np.abs(rng.normal(0.0, ins.READ_SCATTER, shape))


def _nonlinearity(rng, shape, sim: Simulate) -> tuple[np.ndarray, functools.partial]:
    """(6, *shape) the written linear_corr and the forward response that it inverts."""
    if sim.nonlinearity == "weak":
        beta = ins.NONLINEARITY_BETA * rng.uniform(0.7, 1.3, shape)
        return linearity_coefficients(beta), functools.partial(apply_nonlinearity, beta=beta.astype(np.float32))
    c1_scatter, relative = ins.LINEAR_CORR_SCATTER
    coefficients = np.asarray(ins.LINEAR_CORR_MEDIAN)[:, None, None] * np.ones((6, *shape))
    coefficients[1] += rng.normal(0.0, c1_scatter, shape)
    coefficients[2:] *= 1.0 + relative * rng.normal(0.0, 1.0, shape)
    return coefficients, functools.partial(invert_correction, coefficients=coefficients.astype(np.float32))


def invert_correction(q: np.ndarray, coefficients: np.ndarray) -> np.ndarray:
    """The measured charge y with sum_k c_k y^k = q (what the real linear_corr undoes): two Newton steps from
    y = q, enough for the ~1% correction (the error after the second is ~1e-8 relative)."""
    y = q.copy()
    derivative = coefficients[1:] * np.arange(1, 6, dtype=q.dtype)[:, None, None]
    for _ in range(2):
        value, slope = coefficients[5], derivative[4]
        for k in range(4, -1, -1):
            value = value * y + coefficients[k]
            if k:
                slope = slope * y + derivative[k - 1]
        y -= (value - q) / slope
    return y


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


def _read_out(rng, image, n_pairs: int, maps: dict, respond, instrument: str, cr_rate: float):
    """Reads (2P, 32, W) uint16 from `image(lo, hi)`, the expected e- per CDS frame of pairs lo..hi before the
    flat, chunked over pairs; `respond` maps collected charge to the measured (non-linear) e-."""
    t_int = ins.INTEGRATION_S[instrument]
    raw = np.empty((2 * n_pairs, af.ROWS, af.WIDTH[instrument]), dtype=np.uint16)
    flat, dark, read = (maps[k].astype(np.float32) for k in ("flat", "dark", "read"))
    for lo in range(0, n_pairs, _CHUNK_PAIRS):
        chunk = image(lo, min(lo + _CHUNK_PAIRS, n_pairs)) * flat
        # The first read's photon noise is common to both reads of a pair and cancels in the CDS; only
        # the increment's is drawn.
        first = chunk * np.float32(ins.FIRST_READ_S / t_int) + dark * np.float32(ins.FIRST_READ_S)
        increment = chunk + dark * np.float32(t_int)
        increment += np.sqrt(np.maximum(increment, 0)) * rng.standard_normal(chunk.shape, dtype=np.float32)
        hits = rng.choice(increment.size, rng.binomial(increment.size, cr_rate), replace=False)
        increment.reshape(-1)[hits] += rng.uniform(2e3, 2e4, len(hits)).astype(np.float32)
        for parity, charge in ((0, first), (1, first + increment)):
            measured = respond(charge) + read * rng.standard_normal(charge.shape, np.float32)
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
    drift_names = ("drift_a1", "drift_a2", "drift_a3", "drift_c1", "drift_c2", "drift_cross")
    af.write_csv(
        building / "simulation_visits.csv",
        pd.DataFrame(
            [
                {
                    "planet_id": p["planet_id"],
                    "visit": k,
                    "t0_h": v["t0_h"],
                    "sma": p["orbit"][0],  # the true orbit (the star info holds the nominal one)
                    "i": p["orbit"][1],
                    **dict(zip(drift_names, v["drift"], strict=True)),
                    "brightness": v["brightness"],
                    **facts,
                }
                for p, r in zip(planets, results, strict=True)
                for k, (v, facts) in enumerate(zip(p["visits"], r["visits"], strict=True))
            ]
        ),
    )
