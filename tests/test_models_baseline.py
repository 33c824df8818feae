"""The physics fit cached as a sidecar beside the store, and read back through the dataset."""

import json

import numpy as np
import torch
from test_models_fit import make_visits

from spectramind.data import store as st
from spectramind.data.dataset import LightCurveDataset
from spectramind.models.baseline import ensure_baseline, sidecars_for
from spectramind.models.fit import PhysicsFit
from spectramind.models.nets import ResidualNet

N = 32


def _store(tmp_path):
    batch, depth = make_visits(b=2, n=N)
    with st.writer(tmp_path, {"star_columns": list("abcdefghi"), "jitter_columns": ["x", "y"]}) as add:
        for i, pid in enumerate((11, 12)):
            arrays = {k: batch[k][i].numpy() for k in ("flux", "flux_err", "time", "jitter", "star")}
            arrays.update(oot=np.ones(len(arrays["time"]), bool), norm=np.ones(N), target=depth[i].numpy())
            add(pid, 0, arrays, {"t0_h": 3.75})
    manifest = {"planets": [{"planet_id": p, "visits": [0]} for p in (11, 12)],
                "splits": {"train": [11, 12], "val": [], "test": [], "predict": []}}
    (tmp_path / st.MANIFEST_NAME).write_text(json.dumps(manifest))
    return tmp_path, batch


def test_sidecar_holds_the_fit_per_visit_and_is_reused(tmp_path):
    store, batch = _store(tmp_path)
    config = {"n_bins": N}
    path = ensure_baseline(store, config, progress=False)
    stamp = path.stat().st_mtime_ns
    assert ensure_baseline(store, config, progress=False) == path and path.stat().st_mtime_ns == stamp
    assert ensure_baseline(store, {"n_bins": N, "drift_degree": 1}, progress=False) != path
    item = LightCurveDataset(store, "train", sidecars=[path])[1]
    mu, sigma = PhysicsFit(n_bins=N)(batch)
    torch.testing.assert_close(item["baseline_mu"], mu[1])
    torch.testing.assert_close(item["baseline_sigma"], sigma[1])


def test_only_the_residual_net_asks_for_a_sidecar(tmp_path):
    store, _ = _store(tmp_path)
    assert sidecars_for(PhysicsFit(n_bins=N), store) == ()
    (path,) = sidecars_for(ResidualNet(n_bins=N, fit={"iterations": 3}), store)
    assert path.name.startswith("baseline_") and path.is_file()
