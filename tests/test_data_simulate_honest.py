"""The simulator's honest models, compared with the real sample and with independent references.

Each measurement is made the same way on the simulated reads and on the genuine ones (50 reads of planet
342072318); the switches' other values are shown to give the simpler models the fit was written for.
"""

import dataclasses
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import make_settings

from spectramind.data import ariel_format as af
from spectramind.data import disc_transit
from spectramind.data import instrument as ins
from spectramind.data import simulate as sim
from spectramind.physics.wavelengths import airs_detector_wavelengths_um

HONEST = make_settings().data.simulate  # the shipped defaults
SIMPLE = dataclasses.replace(HONEST, limb_darkening="quadratic", orbit_sma_sigma=0.0, orbit_inc_sigma_deg=0.0,
                             drift="separable", psf="simple", nonlinearity="weak", read_noise="simple",
                             per_visit_maps=False, atmosphere="simple")


def electrons(raw):
    return raw.astype(np.float64) / ins.ADC["gain"] + ins.ADC["offset"]


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    """The first 50 reads of one simulated visit, as the real sample has them, and its AIRS maps."""
    small = dataclasses.replace(HONEST, n_train=1, n_test=0, two_visit_fraction=0.0, airs_reads=100,
                                fgs1_reads=200, cosmic_ray_rate=0.0)
    root = sim.simulate(tmp_path_factory.mktemp("honest") / "raw", small, seed=3, num_workers=0, progress=False)
    visit = af.list_visits(root["root"], "train")[0]
    return {"airs": electrons(af.read_signal(visit, "AIRS-CH0"))[:50],
            "fgs1": electrons(af.read_signal(visit, "FGS1"))[:50],
            "maps": af.read_calibration(visit, "AIRS-CH0"), "root": Path(root["root"])}


@pytest.fixture(scope="module")
def real():
    from conftest import REAL_SAMPLE

    if not REAL_SAMPLE.is_dir():
        pytest.skip(f"real competition sample not found at {REAL_SAMPLE}")
    frames = np.load(REAL_SAMPLE / "first_frames_342072318.npz")
    visit = af.Visit("train", 342072318, 0, REAL_SAMPLE / "train" / "342072318", "_0")
    return {"airs": frames["airs_first50"].astype(np.float64), "fgs1": frames["fgs1_first50"].astype(np.float64),
            "maps": af.read_calibration(visit, "AIRS-CH0")}


def mean_cds(reads):
    return (reads[1::2] - reads[0::2]).mean(0)


def edge_over_trace(airs):
    """Per column: the mean of rows 0-1 and 30-31 over the trace's rows 8-24 sum (mean CDS frame)."""
    m = mean_cds(airs)
    return m[[0, 1, 30, 31]].mean(0) / m[8:24].sum(0)


def box_fraction(fgs1):
    m = mean_cds(fgs1)
    return m[10:22, 10:22].sum() / m.sum()


def centroid_rms(fgs1):
    cds = fgs1[1::2] - fgs1[0::2]
    cds = cds - np.median(np.r_[cds[:, :4].ravel(), cds[:, -4:].ravel()])
    yy, xx = np.mgrid[:32, :32]
    total = cds.sum((1, 2))
    return np.std((cds * xx).sum((1, 2)) / total), np.std((cds * yy).sum((1, 2)) / total)


def width_trend(airs):
    """Rows per um of the trace's second moment (rows 8-24, edge rows subtracted) in 20-column blocks."""
    m = mean_cds(airs)
    signal = m - np.median(np.r_[m[:3], m[-3:]], axis=0)
    wl, rows = airs_detector_wavelengths_um(), np.arange(8, 25)
    widths, centres = [], []
    for lo in range(30, 350, 20):
        s = signal[8:25, lo : lo + 20].sum(1)
        c = (s * rows).sum() / s.sum()
        widths.append(np.sqrt((s * (rows - c) ** 2).sum() / s.sum()))
        centres.append(wl[lo : lo + 20].mean())
    return np.polyfit(centres, widths, 1)[0]


def test_read_noise_map_has_the_real_spread_and_tail(simulated, real):
    ours, theirs = simulated["maps"]["read"], real["maps"]["read"]
    assert abs(np.median(ours) - np.median(theirs)) < 0.2
    assert ours.std() == pytest.approx(theirs.std(), rel=0.25)  # ~4.7 e-, the tail's doing
    assert np.percentile(ours, 99) == pytest.approx(np.percentile(theirs, 99), rel=0.2)
    assert 60.0 < ours.max() <= theirs.max() + 1e-6
    rng = np.random.default_rng(0)
    assert sim._read_noise_map(rng, (32, 356), SIMPLE).std() < 1.0  # the old map had no tail


def test_outer_rows_hold_psf_wings_that_follow_the_spectrum(simulated, real):
    ours, theirs = edge_over_trace(simulated["airs"]), edge_over_trace(real["airs"])
    for lo in range(40, 320, 40):  # 40-column blocks over the target columns
        assert np.median(ours[lo : lo + 40]) == pytest.approx(np.median(theirs[lo : lo + 40]), rel=0.5)
    m = mean_cds(simulated["airs"])
    edge, trace = m[[0, 1, 30, 31]].mean(0)[40:320], m[8:24].sum(0)[40:320]
    assert np.corrcoef(edge, trace)[0, 1] > 0.9  # light, not a flat background


def test_fgs1_light_outside_the_box_and_peak_match(simulated, real):
    assert box_fraction(simulated["fgs1"]) == pytest.approx(box_fraction(real["fgs1"]), abs=0.01)
    assert 0.03 < 1 - box_fraction(simulated["fgs1"]) < 0.07
    peak = [mean_cds(f).max() / mean_cds(f).sum() for f in (simulated["fgs1"], real["fgs1"])]
    assert peak[0] == pytest.approx(peak[1], rel=0.15)


def test_fgs1_centroid_moves_like_the_real_one(simulated, real):
    for ours, theirs in zip(centroid_rms(simulated["fgs1"]), centroid_rms(real["fgs1"]), strict=True):
        assert 0.08 < ours < 0.16 and 0.08 < theirs < 0.16


def test_trace_widens_to_the_red_like_the_real_one(simulated, real):
    ours, theirs = width_trend(simulated["airs"]), width_trend(real["airs"])
    assert theirs > 0.2 and ours == pytest.approx(theirs, rel=0.2)


@pytest.mark.parametrize(("level", "real_percent"), [(1e4, 0.10), (3e4, 0.90), (6e4, 3.1)])
def test_non_linearity_is_the_real_one_and_linear_corr_inverts_it(simulated, real, level, real_percent):
    def correction(coefficients, y):
        return np.polynomial.polynomial.polyval(y, np.median(coefficients.reshape(6, -1), axis=1))

    theirs = correction(real["maps"]["linear_corr"], level) / level - 1
    ours = correction(simulated["maps"]["linear_corr"], level) / level - 1
    assert 100 * theirs == pytest.approx(real_percent, rel=0.1)
    assert ours == pytest.approx(theirs, rel=0.1)
    coefficients, respond = sim._nonlinearity(np.random.default_rng(1), (32, 356), HONEST)
    charge = np.full((1, 32, 356), level, np.float32)
    measured = respond(charge)
    assert 100 * np.median(charge / measured - 1) == pytest.approx(real_percent, rel=0.15)  # a loss of response
    undone = np.polynomial.polynomial.polyval(measured.astype(np.float64), coefficients, tensor=False)
    assert np.abs(undone - level).max() < 2e-6 * level  # float32 Newton steps: ~0.02 e- at 10k e-
    _, weak = sim._nonlinearity(np.random.default_rng(1), (32, 356), SIMPLE)
    assert abs(weak(charge).mean() / level - 1) < 0.1 * abs(measured.mean() / level - 1) + 4e-4


@pytest.mark.parametrize(("rp", "inc", "u1", "u2"), [(0.1, 89.0, 0.4, 0.2), (0.2, 87.0, 0.3, 0.25),
                                                     (0.05, 90.0, 0.5, 0.1), (0.15, 86.5, 0.2, 0.3)])
def test_disc_integration_agrees_with_batman(rp, inc, u1, u2):
    batman = pytest.importorskip("batman")
    t = np.linspace(-3.0, 3.0, 1201)
    params = batman.TransitParams()
    params.t0, params.per, params.rp, params.a, params.inc = 0.0, 96.0, rp, 10.0, inc
    params.ecc, params.w, params.limb_dark, params.u = 0.0, 90.0, "quadratic", [u1, u2]
    reference = batman.TransitModel(params, t).light_curve(params)
    ours = disc_transit.light_curve(t, 0.0, 4.0, 10.0, inc, [rp], disc_transit.claret_from_quadratic([u1], [u2]))
    depth = 1 - reference.min()
    assert np.abs(ours[0] - reference).max() < 3e-6 * depth  # batman's own error is ~1e-6 of the depth
    a = disc_transit.claret_coefficients(0.7, 5000.0)
    params.limb_dark, params.u = "nonlinear", list(a)  # batman's nonlinear law is Claret's 4-parameter one
    reference = batman.TransitModel(params, t, max_err=0.01).light_curve(params)
    ours = disc_transit.light_curve(t, 0.0, 4.0, 10.0, inc, [rp], a[None])
    assert np.abs(ours[0] - reference).max() < 1.5e-5 * depth


def test_claret_law_is_darker_in_the_blue_and_for_cooler_stars():
    wl = np.linspace(0.7, 4.1, 30)
    for teff in (4300.0, 5800.0, 6900.0):
        a = disc_transit.claret_coefficients(wl, teff)
        assert np.all(np.diff(a.sum(-1)) < 0)  # limb darkening 1 - I(0)/I(1) falls with wavelength
        mu = np.linspace(0.0, 1.0, 201)
        intensity = 1 - (a[:, None, :] * (1 - mu[None, :, None] ** (np.arange(1, 5) / 2))).sum(-1)
        assert np.all(intensity > 0) and np.all(np.diff(intensity, axis=1) > 0)
    cool, hot = (disc_transit.claret_coefficients(wl, t).sum(-1) for t in (4300.0, 6900.0))
    assert np.all(cool > hot)


def test_the_true_orbit_scatters_around_the_star_info():
    def draw(settings, n=150):
        rng = np.random.default_rng(5)
        planets = [sim._draw_planet(rng, "train", settings, None) for _ in range(n)]
        return np.array([(p["orbit"][0] / p["star"][6] - 1, p["orbit"][1] - p["star"][7]) for p in planets])

    offsets = draw(HONEST)
    assert offsets[:, 0].std() == pytest.approx(HONEST.orbit_sma_sigma, rel=0.25)
    assert 0.2 * HONEST.orbit_inc_sigma_deg < np.abs(offsets[:, 1]).mean() < 1.5 * HONEST.orbit_inc_sigma_deg
    assert np.all(draw(SIMPLE, 20) == 0.0)


def test_visits_record_the_true_orbit_and_the_nuisances(simulated):
    import pandas as pd

    visits = pd.read_csv(simulated["root"] / "simulation_visits.csv")
    star = af.read_star_info(simulated["root"], "train").loc[visits.planet_id[0]]
    assert visits.sma[0] != star.sma and abs(visits.sma[0] / star.sma - 1) < 0.2
    for column in ("drift_a3", "drift_c2", "drift_cross", "AIRS-CH0_dead_fraction", "FGS1_min_flat"):
        assert np.isfinite(visits[column]).all()
    noise = pd.read_csv(simulated["root"] / "simulation_noise.csv").set_index("planet_id")
    assert list(noise.columns) == list(af.SIGMA_COLUMNS) and (noise.to_numpy() > 0).all()


def test_drift_is_not_separable_unless_asked():
    wl, t = airs_detector_wavelengths_um(), np.linspace(0.0, ins.VISIT_HOURS, 100)
    for settings, separable in ((HONEST, False), (SIMPLE, True)):
        visit = sim._draw_visit(np.random.default_rng(2), settings)
        singular = np.linalg.svd(sim._drift(visit, wl, t) - 1.0, compute_uv=False)
        assert bool(singular[1] / singular[0] < 1e-12) is separable


def test_jitter_moves_light_across_columns_and_out_of_the_aperture():
    counts = ins.airs_counts(5800.0)
    width = ins.airs_width_scale(airs_detector_wavelengths_um())
    still, moved = np.zeros((1, 2)), np.array([[0.3, 0.0]])
    per_column = [sim._shift_columns(counts, j[:, 0])[0] * sim._airs_psf(j, width)[0].sum(0) for j in (still, moved)]
    change = np.abs(per_column[1] / per_column[0] - 1)[40:320]
    assert change.max() > 1e-3  # the spectrum's slope turns spectral jitter into flux
    up = np.array([[0.0, 0.5]])
    aperture = [sim._airs_psf(j, width)[0, 8:24].sum(0) for j in (still, up)]
    assert np.abs(aperture[1] / aperture[0] - 1).max() > 1e-4
    simple = [sim._airs_psf_simple(j)[0].sum(0) for j in (still, up)]
    assert np.allclose(simple[0], simple[1], atol=1e-3)  # the old model: nothing leaves with jitter


def test_detector_maps_vary_per_visit_in_the_real_ranges():
    rng = np.random.default_rng(4)
    detector = sim._calibration_maps(rng, "AIRS-CH0", HONEST, None)
    visits = [sim._calibration_maps(rng, "AIRS-CH0", HONEST, detector)[0] for _ in range(12)]
    dead = np.array([v["dead"].mean() for v in visits])
    flat_min = np.array([v["flat"][~v["dead"]].min() for v in visits])
    assert dead.min() >= 0.0005 and dead.max() <= 0.013 and dead.std() > 0.001
    assert flat_min.min() >= 0.57 and flat_min.max() <= 0.9 and flat_min.std() > 0.02
    assert all(v["read"] is detector[0]["read"] for v in visits)  # the pixels' read noise stays


def test_spectra_span_the_real_depth_range_with_structure():
    rng = np.random.default_rng(6)
    depths = np.array([sim._draw_planet(rng, "train", HONEST, None)["depth"] for _ in range(60)])
    assert depths.min() >= 0.006 and depths.max() <= 0.046
    assert depths.max(1).max() > 0.03 and depths.min(1).min() < 0.012
    relative = (depths.max(1) - depths.min(1)) / depths.mean(1)
    assert relative.std() > 0.02  # from flat (clouds) to a few tens of percent (clear, haze, bands)


def test_concurrent_runs_build_the_root_once(tmp_path):
    s = make_settings("data.simulate.n_train=1", "data.simulate.n_test=0", "data.simulate.two_visit_fraction=0",
                      "data.simulate.airs_reads=24", "data.simulate.fgs1_reads=96", "data.num_workers=0",
                      f"paths.output_dir={tmp_path}")
    results = []
    threads = [threading.Thread(target=lambda: results.append(sim.simulate_raw(s, progress=False)))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r["cached"] for r in results) == [False, True]  # the second waited, then found it done
    root = Path(s.data.root)
    assert sim.read_marker(root) == sim.marker_for(s.data.simulate, s.seed)
    assert not list(root.parent.glob(f"{root.name}.partial-*"))


@pytest.mark.slow
def test_full_size_writes_the_real_read_counts(tmp_path):
    full = dataclasses.replace(HONEST, n_train=1, n_test=0, two_visit_fraction=0.0, full_size=True)
    root = sim.simulate(tmp_path / "raw", full, seed=2, num_workers=0, progress=False)["root"]
    visit = af.list_visits(root, "train")[0]
    assert af.read_signal(visit, "AIRS-CH0").shape == (11250, 32, 356)
    assert af.read_signal(visit, "FGS1").shape == (135000, 32, 32)
    assert np.isfinite(af.read_axis_info(root)["AIRS-CH0-axis0-h"]).sum() == 11250


def test_quadratic_switch_gives_the_fits_own_transit():
    from spectramind.physics.transit import quadratic_ld_coefficients, transit_flux

    rng = np.random.default_rng(8)
    planet = sim._draw_planet(rng, "train", SIMPLE, None)
    _, _, ts, _, _, period, sma, inc = planet["star"]
    assert planet["orbit"] == (sma, inc)  # no orbit scatter: the star info's own
    visit = sim._draw_visit(rng, SIMPLE)
    wl, t = airs_detector_wavelengths_um(), np.linspace(0.0, ins.VISIT_HOURS, 300)
    depth = planet["depth"][1:]
    ours = sim._transit(planet, visit, wl, depth, t, SIMPLE)
    u1, u2 = quadratic_ld_coefficients(wl, ts)
    fits = transit_flux(t, visit["t0_h"], period, sma, inc, np.sqrt(depth), u1, u2).numpy()
    assert np.abs(ours - fits).max() < 1e-9
    honest = sim._transit(planet, visit, wl, depth, t, HONEST)  # Claret's law: a different shape
    assert np.abs(honest - fits).max() > 1e-5
