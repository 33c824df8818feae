"""Simulate a small set, calibrate it, and read it back: truth recovered, files as promised, cached."""

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import make_settings

from spectramind.data import ariel_format as af
from spectramind.data import calibrate as cal
from spectramind.data.dataset import LightCurveDataset, read_store_attrs
from spectramind.data.prepare import calibrate, require_store
from spectramind.data.simulate import simulate_raw
from spectramind.physics.transit import quadratic_ld_coefficients, transit_flux
from spectramind.physics.wavelengths import FGS1_WAVELENGTH_UM, airs_detector_wavelengths_um

SEED = 7
FIT_MODEL = {"limb_darkening": "quadratic", "orbit_sma_sigma": 0.0, "orbit_inc_sigma_deg": 0.0, "drift": "separable",
             "psf": "simple", "nonlinearity": "weak", "read_noise": "simple", "per_visit_maps": False,
             "atmosphere": "simple"}


def small_settings(tmp, **simulate):
    """The shipped synthetic set (its YAML calibration) shrunk to a few planets, under `tmp`."""
    s = make_settings(f"seed={SEED}", "data=synthetic")
    # The simulator's switches at the model the recovery test fits (test_data_simulate_honest covers the rest).
    sim = replace(s.data.simulate, n_train=3, n_test=1, two_visit_fraction=0.3, airs_reads=300, fgs1_reads=1200,
                  cosmic_ray_rate=1e-4, jitter_px=0.05, star_table=None, **FIT_MODEL)
    data = replace(s.data, root=str(tmp / "raw"), store=str(tmp / "store"), baseline=str(tmp / "baseline"),
                   num_workers=0, simulate=replace(sim, **simulate),
                   calibrate=replace(s.data.calibrate, airs_bin=3, fgs1_bin=12),
                   split=replace(s.data.split, val_fraction=0.2, test_fraction=0.2))
    return replace(s, data=data)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pipeline")
    s = small_settings(tmp)
    simulate_raw(s, progress=False)
    assert calibrate(s, progress=False)["cached"] is False
    return s, require_store(s, ("train", "test"))


def fit_depths(item, truth, t0):
    """Weighted least squares of flux = (c0 + c1 x + c2 x^2) + d * template per bin; returns d and sigma."""
    star = item["star"].double().numpy()
    ts, period, sma, inc = star[2], star[5], star[6], star[7]
    t = item["time"].double().numpy()
    wl = np.r_[FGS1_WAVELENGTH_UM, airs_detector_wavelengths_um()[af.AIRS_CROP][::-1]]
    u1, u2 = quadratic_ld_coefficients(wl, ts)
    template = (transit_flux(t, t0, period, sma, inc, np.sqrt(truth), u1, u2).numpy() - 1) / truth[:, None]
    x = (t - t.mean()) / np.ptp(t)
    flux, err = item["flux"].double().numpy(), item["flux_err"].double().numpy()
    depth, sigma = np.empty(283), np.empty(283)
    for j in range(283):
        design = np.c_[np.ones_like(t), x, x * x, template[j]] / err[:, j, None]
        coef, *_ = np.linalg.lstsq(design, flux[:, j] / err[:, j], rcond=None)
        cov = np.linalg.inv(design.T @ design)
        depth[j], sigma[j] = coef[3] / coef[0], np.sqrt(cov[3, 3]) / coef[0]
    return depth, sigma


def test_calibration_recovers_every_injected_depth_within_its_noise(built):
    s, store = built
    root = s.data.root
    truth = pd.concat([af.read_targets(root), af.read_targets(root, "simulation_test_truth.csv")])
    oracle = pd.read_csv(f"{root}/simulation_noise.csv").set_index("planet_id")
    visits = pd.read_csv(f"{root}/simulation_visits.csv").set_index(["planet_id", "visit"])
    pulls, ratios = [], []
    for split in ("all", "predict"):
        for item in LightCurveDataset(store, split):
            pid, k = int(item["planet_id"]), int(item["visit"])
            depth, sigma = fit_depths(item, truth.loc[pid].to_numpy(), visits.loc[(pid, k), "t0_h"])
            pulls.append((depth - truth.loc[pid].to_numpy()) / sigma)
            ratios.append(sigma / oracle.loc[pid].to_numpy())
    pulls = np.concatenate(pulls)
    assert np.abs(pulls).max() < 5.5, "a bin's depth is off by more than its noise allows"
    assert 0.7 < pulls.std() < 1.5 and abs(pulls.mean()) < 0.2
    # The fit's sigma is near the oracle's physical limit (it also fits the drift, so a little above it).
    assert 0.8 < np.median(np.concatenate(ratios)) < 3.0


def test_raw_folder_has_the_competition_layout_and_the_simulator_files(built):
    s, _ = built
    root = s.data.root
    train_ids = af.read_star_info(root, "train").index
    test_ids = af.read_star_info(root, "test").index
    assert len(train_ids) == 3 and len(test_ids) == 1
    assert list(af.read_targets(root).index) == list(train_ids)
    assert list(af.read_targets(root, "simulation_test_truth.csv").index) == list(test_ids)
    noise = pd.read_csv(f"{root}/simulation_noise.csv")
    assert list(noise.columns) == ["planet_id", *af.SIGMA_COLUMNS]
    assert set(noise.planet_id) == set(train_ids) | set(test_ids) and (noise.iloc[:, 1:] > 0).all().all()
    sample = pd.read_csv(f"{root}/sample_submission.csv")
    assert sample.shape == (1, 567)
    axis = af.read_axis_info(root)
    assert np.all(np.diff(axis["AIRS-CH0-axis2-um"]) < 0)
    assert np.allclose(af.read_wavelengths(root)[1:], axis["AIRS-CH0-axis2-um"][320 - np.arange(282)])
    visit = af.list_visits(root, "train")[0]
    raw = af.read_signal(visit, "AIRS-CH0", expect_reads=300)
    assert raw.dtype == np.uint16 and raw.shape == (300, 32, 356)
    assert af.read_signal(visit, "FGS1").shape == (1200, 32, 32)
    assert af.read_calibration(visit, "AIRS-CH0")["linear_corr"].shape == (6, 32, 356)


@pytest.mark.slow
def test_simulation_is_deterministic(built, tmp_path):
    again = small_settings(tmp_path, n_train=1, n_test=0)
    a = simulate_raw(again, progress=False)["root"]
    first = af.read_signal(af.list_visits(a, "train")[0], "FGS1")
    other = replace(again, data=replace(again.data, root=str(tmp_path / "other")))
    b = simulate_raw(other, progress=False)["root"]
    assert b == str(tmp_path / "other")
    assert np.array_equal(first, af.read_signal(af.list_visits(b, "train")[0], "FGS1"))


def test_store_is_cached_when_nothing_changed(built):
    s, store = built
    h5 = store / "lightcurves.h5"
    before = h5.stat().st_mtime_ns
    assert simulate_raw(s, progress=False)["cached"] is True
    assert calibrate(s, progress=False)["cached"] is True
    assert require_store(s, ("train", "test")) == store
    assert h5.stat().st_mtime_ns == before


@pytest.mark.slow
def test_stars_and_orbits_can_come_from_the_real_table(tmp_path, real_sample):
    table = real_sample / "train_star_info.csv"
    s = small_settings(tmp_path, n_train=2, n_test=0, star_table=str(table))
    root = simulate_raw(s, progress=False)["root"]
    real = af.read_star_table(table).to_numpy()
    for row in af.read_star_info(root, "train").to_numpy():
        assert np.isclose(real, row, rtol=1e-9).all(axis=1).any()


@pytest.mark.slow
def test_store_is_recomputed_when_the_calibration_config_changes(built):
    s, store = built
    h5 = store / "lightcurves.h5"
    before = h5.stat().st_mtime_ns
    changed = replace(s, data=replace(s.data, calibrate=replace(s.data.calibrate, cosmic_sigma=6.0)))
    assert calibrate(changed, progress=False)["cached"] is False
    assert h5.stat().st_mtime_ns != before
    assert json.loads((store / "manifest.json").read_text())["config"]["calibrate"]["cosmic_sigma"] == 6.0
    assert calibrate(s, progress=False)["cached"] is False  # back to the module's configuration


def test_manifest_splits_are_disjoint_planet_level_and_seeded(built):
    _, store = built
    manifest = json.loads((store / "manifest.json").read_text())
    splits = manifest["splits"]
    labelled = [set(splits[s]) for s in ("train", "val", "test")]
    assert sum(len(s) for s in labelled) == 3 and not (labelled[0] & labelled[1] | labelled[0] & labelled[2])
    assert len(splits["predict"]) == 1 and manifest["seed"] == SEED
    summary = json.loads((store / "summary.json").read_text())
    assert summary["n_time"] == 50 and summary["n_bins"] == 283 and summary["visits"] >= 4


def attrs_jitter(store):
    return read_store_attrs(store)["jitter_columns"]


def test_store_names_every_jitter_regressor_and_the_manifest_counts_cosmic_rays(built):
    s, store = built
    assert attrs_jitter(store) == list(cal.jitter_columns(s.data.calibrate))
    assert set(cal.SHAPE_COLUMNS) <= set(attrs_jitter(store))  # the shipped default measures the PSF shape
    manifest = json.loads((store / "manifest.json").read_text())
    counts = manifest["cosmic_replaced"]
    assert len(counts) == sum(len(p["visits"]) for p in manifest["planets"])
    # The simulator's hits (1e-4 per pixel per CDS frame) over the pixels calibration reads, found.
    for inst, reads in (("AIRS-CH0", 300), ("FGS1", 1200)):
        rows, cols = cal.pixels(inst, s.data.calibrate)
        expected = 1e-4 * reads / 2 * len(rows) * len(cols)
        found = np.mean([c[inst] for c in counts.values()])
        assert 0.7 * expected < found < 1.5 * expected + 3, inst
    # psf=simple: no wings, a background that grows with the column and does not dim with the star.
    shares = manifest["wing_share"]
    assert shares.keys() == counts.keys()
    assert np.median([v["AIRS-CH0"] for v in shares.values()]) < 0.3
    assert all(0.0 <= v <= 1.0 for share in shares.values() for v in share.values())


def test_dataset_items_shapes_normalisation_and_attrs(built):
    _, store = built
    ds = LightCurveDataset(store, "all")
    item = ds[0]
    assert item["flux"].shape == (50, 283) and item["flux"].dtype == torch.float32
    assert item["flux_err"].shape == (50, 283) and item["time"].shape == (50,)
    assert item["jitter"].shape == (50, len(attrs_jitter(store))) and item["star"].shape == (9,)
    assert item["target"].shape == (283,)
    assert item["planet_id"].dtype == torch.int64 and item["planet_id"].ndim == 0
    assert abs(float(item["flux"].median()) - 1.0) < 0.03
    assert torch.isfinite(item["target"]).all()
    assert torch.isnan(LightCurveDataset(store, "predict")[0]["target"]).all()
    attrs = read_store_attrs(store)
    assert attrs == ds.attrs
    assert attrs["n_time"] == 50 and attrs["star_columns"][:8] == list(af.STAR_COLUMNS)
    assert len(attrs["target_mean"]) == 283 and attrs["naive_sigma"] > 0
    assert len(LightCurveDataset(store, "train", max_samples=1)) == 1


def test_sidecars_add_their_datasets_and_dataloader_workers_read_lazily(built, tmp_path):
    import h5py

    _, store = built
    ds = LightCurveDataset(store, "all")
    side = tmp_path / "fit.h5"
    with h5py.File(side, "w") as f:
        for key in ds.keys:
            f.create_dataset(f"visits/{key}/baseline_depth", data=np.full(283, 0.01, np.float32))
    with_side = LightCurveDataset(store, "all", sidecars=[side])
    assert with_side._handles is None  # nothing opened until an item is read
    loader = torch.utils.data.DataLoader(with_side, batch_size=2, num_workers=2)
    batch = next(iter(loader))
    assert batch["baseline_depth"].shape == (2, 283) and batch["flux"].shape == (2, 50, 283)


def test_finer_time_bins_make_a_store_the_models_read(built, tmp_path):
    """airs_bin 1 / fgs1_bin 4 (the short visits' counterpart of 5 / 60): n_time follows into the store, the
    dataset and the models, which take it from the store's attributes."""
    from spectramind.models.baseline import fit_kwargs

    s, _ = built
    fine = replace(s.data.calibrate, airs_bin=1, fgs1_bin=4)
    s = replace(s, data=replace(s.data, store=str(tmp_path / "fine"), calibrate=fine))
    assert calibrate(s, progress=False)["n_time"] == 150
    store = require_store(s, ("train",))
    attrs = read_store_attrs(store)
    batch = torch.utils.data.default_collate([LightCurveDataset(store, "all")[i] for i in range(2)])
    assert batch["flux"].shape == (2, 150, 283) and batch["jitter"].shape == (2, 150, len(attrs["jitter_columns"]))
    for model in ("cnn1d", "transformer", "fit"):
        m = make_settings(f"model={model}")
        net = m.model.instantiate(n_time=attrs["n_time"], n_bins=attrs["n_bins"], n_star=len(attrs["star_columns"]),
                                  **fit_kwargs(m))
        mu, sigma = net(batch)
        assert mu.shape == sigma.shape == (2, 283) and torch.isfinite(mu).all(), model


def test_unknown_split_is_a_data_error(built):
    from spectramind.errors import DataError

    with pytest.raises(DataError, match="split 'holdout'"):
        LightCurveDataset(built[1], "holdout")
