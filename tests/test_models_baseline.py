"""The physics fit cached as a sidecar beside the store, and read back through the dataset."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_settings
from test_models_fit import make_visits

from spectramind.data import store as st
from spectramind.data.dataset import LightCurveDataset
from spectramind.data.prepare import _store_config
from spectramind.errors import DataError
from spectramind.models.baseline import fit_baseline, require_baseline
from spectramind.models.fit import PhysicsFit

N = 32


def _store(tmp_path, *overrides):
    """A store of two visits written here (N bins), and settings (shipped YAML) that point at it."""
    s = make_settings(*overrides)
    store = tmp_path / "store"
    s = replace(s, data=replace(s.data, store=str(store), baseline=str(tmp_path / "baseline")))
    batch, truth = make_visits(b=2, n=N)
    with st.writer(store, {"star_columns": list("abcdefghi"), "jitter_columns": ["x", "y"]}) as add:
        for i, pid in enumerate((11, 12)):
            arrays = {k: batch[k][i].numpy() for k in ("flux", "flux_err", "time", "jitter", "star")}
            arrays.update(oot=np.ones(len(arrays["time"]), bool), norm=np.ones(N),
                          target=truth["depth"][i].astype(np.float32))
            add(pid, 0, arrays, {"t0_h": 3.75})
    manifest = {"planets": [{"planet_id": p, "visits": [0]} for p in (11, 12)],
                "splits": {"train": [11, 12], "val": [], "test": [], "predict": []},
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
