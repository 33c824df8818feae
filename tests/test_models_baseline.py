"""The physics fit cached as a sidecar beside the store, and read back through the dataset."""

import json
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import make_settings
from test_models_fit import make_visits

from spectramind.data import store as st
from spectramind.data.dataset import LightCurveDataset
from spectramind.data.prepare import _store_config
from spectramind.errors import DataError
from spectramind.models.baseline import (
    calibration_path,
    fit_baseline,
    label_calibration,
    require_baseline,
    sidecar_path,
    visit_reasons,
)
from spectramind.models.fit import PhysicsFit

N = 32


def _store(tmp_path, *overrides, visits=None):
    """A store of visits written here (N bins), and settings (shipped YAML) that point at it.

    visits: (planet_id, visit, row of the batch, transform of its flux) per visit; by default planets 11
    and 12, one visit each, as made."""
    s = make_settings(*overrides)
    store = tmp_path / "store"
    s = replace(s, data=replace(s.data, store=str(store), baseline=str(tmp_path / "baseline")))
    batch, truth = make_visits(b=2, n=N)
    visits = visits or [(11, 0, 0, None), (12, 0, 1, None)]
    with st.writer(store, {"star_columns": list("abcdefghi"), "jitter_columns": ["x", "y"]}) as add:
        for pid, visit, i, change in visits:
            arrays = {k: batch[k][i].numpy() for k in ("flux", "flux_err", "time", "jitter", "star")}
            if change is not None:
                arrays["flux"] = change(arrays["flux"])
            arrays.update(oot=np.ones(len(arrays["time"]), bool), norm=np.ones(N),
                          target=truth["depth"][i].astype(np.float32))
            add(pid, visit, arrays, {"t0_h": 3.75})
    planets = sorted({v[0] for v in visits})
    manifest = {"planets": [{"planet_id": p, "visits": sorted(v[1] for v in visits if v[0] == p)} for p in planets],
                "splits": {"train": planets, "val": [], "test": [], "predict": []},
                "config": _store_config(s.data.calibrate, s.data.split, s.seed), "folders": ["train", "test"]}
    (store / st.MANIFEST_NAME).write_text(json.dumps(manifest))
    return s, batch


def test_sidecar_holds_the_fit_per_visit_and_is_reused(tmp_path):
    s, batch = _store(tmp_path)
    first = fit_baseline(s, progress=False)
    path = Path(first["baseline"])
    assert not first["cached"] and path.parent == tmp_path / "baseline"
    stamp = path.stat().st_mtime_ns
    again = fit_baseline(s, progress=False)
    assert Path(again["baseline"]) == path and again["cached"] and path.stat().st_mtime_ns == stamp
    assert Path(fit_baseline(replace(s, fit=replace(s.fit, drift_time_degree=2)), progress=False)["baseline"]) != path
    item = LightCurveDataset(s.data.store, "train", sidecars=[path])[1]
    mu, sigma = PhysicsFit(s.fit, n_bins=N)(batch)
    torch.testing.assert_close(item["baseline_mu"], mu[1])
    torch.testing.assert_close(item["baseline_sigma"], sigma[1])


def test_only_the_residual_net_asks_for_a_sidecar(tmp_path):
    fit_only, _ = _store(tmp_path / "fit", "model=fit")
    assert require_baseline(fit_only) == ()
    s, _ = _store(tmp_path / "residual", "model=residual")
    s = replace(s, fit=replace(s.fit, iterations=3))
    with pytest.raises(DataError, match="spectramind fit"):
        require_baseline(s)
    fit_baseline(s, progress=False)
    (path,) = require_baseline(s)
    assert path.name.startswith("baseline_") and path.is_file()


def test_the_reasons_to_distrust_a_visit_are_read_back_per_planet(tmp_path):
    """Planet 11 seen twice with transits of different depth; planet 12 with no transit at all."""
    def deeper(flux):
        return 1 + (flux - 1) * 1.3

    def flat(flux):
        return np.ones_like(flux) + 3e-4 * np.random.default_rng(0).normal(size=flux.shape).astype(np.float32)

    s, _ = _store(tmp_path, visits=[(11, 0, 0, None), (11, 1, 0, deeper), (12, 0, 1, flat)])
    assert visit_reasons(s, [11, 12]) is None                        # no baseline yet
    fit_baseline(s, progress=False)
    rows = {(r["planet_id"], r["visit"]): r["reasons"] for r in visit_reasons(s, [11, 12])}
    assert rows[(11, 0)] == rows[(11, 1)] == ["visits_disagree"]
    assert "no_transit" in rows[(12, 0)] and "visits_disagree" not in rows[(12, 0)]
    assert [r["planet_id"] for r in visit_reasons(s, [12])] == [12]


def test_with_enough_labelled_planets_the_sidecar_holds_the_calibrated_fit_and_the_raw_one(tmp_path):
    s, _ = _store(tmp_path, visits=[(p, 0, p % 2, None) for p in (21, 22, 23, 24)])
    s = replace(s, fit=replace(s.fit, calibration_folds=2))
    summary = fit_baseline(s, progress=False)
    assert summary["calibration"]["planets"] == 4 and summary["calibration"]["folds"] == 2
    with h5py.File(summary["baseline"]) as f:
        g = f["visits"]["21_0"]
        assert json.loads(f.attrs["calibration"])["sigma_scale"] == list(summary["calibration"]["sigma_scale"])
        assert not np.array_equal(g["baseline_sigma"][()], g["baseline_sigma_raw"][()])
    off = fit_baseline(replace(s, fit=replace(s.fit, calibration_folds=0)), progress=False)
    assert off["calibration"] is None
    with h5py.File(off["baseline"]) as f:
        assert "baseline_sigma_raw" not in f["visits"]["21_0"]


def test_what_the_fit_stage_learned_from_labels_is_applied_by_predict_to_unlabelled_visits(tmp_path):
    s, _ = _store(tmp_path, visits=[(p, 0, p % 2, None) for p in (21, 22, 23, 24, 25)])
    manifest_path = tmp_path / "store" / st.MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text())
    manifest["splits"].update(train=[21, 22, 23, 24], test=[25])         # 25: no label the fit may use
    manifest_path.write_text(json.dumps(manifest))
    s = replace(s, fit=replace(s.fit, calibration_folds=2))
    assert label_calibration(s, np.ones((1, N)), np.ones((1, N)))[2] is None   # nothing learned yet
    fit_baseline(s, progress=False)
    with h5py.File(sidecar_path(s)) as f:
        g = f["visits"]["25_0"]
        raw = g["baseline_mu_raw"][()][None], g["baseline_sigma_raw"][()][None]
        stored = g["baseline_mu"][()], g["baseline_sigma"][()]
    mu, sigma, source = label_calibration(s, *raw)
    assert source == str(calibration_path(s))
    np.testing.assert_allclose(mu[0], stored[0], rtol=1e-5)
    np.testing.assert_allclose(sigma[0], stored[1], rtol=1e-5)
    assert not np.allclose(sigma[0], raw[1][0])
