"""`spectramind export`: a training run as a model folder that predicts what the run predicts, on a machine
that has never seen the run, and that loads as safely as a run folder (schema, allowlist, no pickle)."""

import json
import pickle
import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import make_settings, run_cli
from safetensors.torch import load_file, save_file
from test_predict import ATTRS, _tiny_store

from spectramind import files
from spectramind.config.compose import compose
from spectramind.config.stage import load
from spectramind.errors import ConfigError, DataError
from spectramind.evaluate import export
from spectramind.evaluate.predict import build_model, load_model, require_run
from spectramind.models import calibration as cal
from spectramind.train import checkpoint

# Eight labelled planets, four of them in the training split: enough for the fit to calibrate on labels
# with two folds, so the residual model is trained on the calibrated baseline.
TINY = ["data.simulate.n_train=8", "data.simulate.n_test=2", "data.simulate.airs_reads=120",
        "data.simulate.fgs1_reads=1440", "data.num_workers=0", "data.split.val_fraction=0.25",
        "data.split.test_fraction=0.25", "fit.calibration_folds=2"]


def train_and_export(where: Path) -> tuple[list[str], Path]:
    """A residual model trained (ci_fast) under `where`/outputs and exported to `where`/model, by the CLI."""
    overrides = ["trainer=ci_fast", f"paths.output_dir={where / 'outputs'}", *TINY]
    done = run_cli("train", *overrides)
    assert done.returncode == 0, done.stderr
    done = run_cli("export", "run=latest", *overrides, str(where / "model"))
    assert done.returncode == 0, done.stderr
    return overrides, where / "model"


def read_sorted(path: Path) -> pd.DataFrame:
    return pd.read_csv(path).set_index("planet_id").sort_index()


@pytest.mark.slow
def test_an_export_predicts_what_its_run_predicts_on_a_machine_that_never_saw_the_run(tmp_path):
    overrides, model = train_and_export(tmp_path / "here")
    done = run_cli("predict", "run=latest", *overrides, f"predict.out={tmp_path / 'from_run.csv'}")
    assert done.returncode == 0, done.stderr
    run = next(p for p in (tmp_path / "here" / "outputs" / "runs").iterdir() if (p / "checkpoints").is_dir())

    meta = json.loads((model / export.META).read_text())
    assert sorted(p.name for p in model.iterdir()) == sorted(export.FILES)
    assert meta["run"] == run.name and meta["spectramind"] == __import__("spectramind").__version__
    assert meta["overrides"][0] == "model=residual" and "fit.calibration_folds=2" in meta["overrides"]
    assert (model / export.CONFIG).read_bytes() == (run / "config.yaml").read_bytes()
    weights, state = load_file(model / export.WEIGHTS), checkpoint.load(run / "checkpoints" / "best.pt")["model"]
    assert weights.keys() == state.keys() and all(torch.equal(weights[k], state[k]) for k in state)
    store = json.loads((model / export.STORE).read_text())
    assert len(store["target_mean"]) == 283 and store["naive_sigma"] > 0 and store["star_columns"][0] == "Rs"
    card = (model / export.CARD).read_text()
    assert run.name in card and "best val/loss" in card and " ".join(meta["overrides"]) in card
    # A run that lost its output calibration (a crash right after its summary) gets it back, untrained.
    made = (run / cal.OUTPUTS_FILE).read_bytes()
    (run / cal.OUTPUTS_FILE).unlink()
    done = run_cli("train", *overrides)
    assert done.returncode == 0 and "already complete" in done.stdout + done.stderr, done.stderr
    assert (run / cal.OUTPUTS_FILE).read_bytes() == made

    shutil.rmtree(tmp_path / "here" / "outputs")  # the run, its data, store and baseline: only the export is left
    elsewhere = tmp_path / "elsewhere"
    done = run_cli("predict", f"run={model}", *meta["overrides"], f"paths.output_dir={elsewhere}", *TINY,
                   f"predict.out={elsewhere / 'from_export.csv'}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    summary = json.loads((elsewhere / "predict_summary.json").read_text())
    assert summary["checkpoint"] == str(model / export.WEIGHTS)
    # This store has no labelled training planets (test/ alone), so its baseline is uncalibrated; the model
    # sees it through the calibration shipped in the export, as it saw its training store's.
    [sidecar] = (elsewhere / "data" / "synthetic" / "baseline").glob("baseline_*.h5")
    with h5py.File(sidecar) as f:
        assert json.loads(f.attrs["calibration"]) is None
    assert summary["calibration"] == str(model / export.CALIBRATION)
    # Not bit-identical: the physics fit of a visit differs in its last float32 bit with the batch of visits it
    # is fitted in (all twelve there, these two here), so the values agree to float32 rounding.
    ours, theirs = read_sorted(elsewhere / "from_export.csv"), read_sorted(tmp_path / "from_run.csv")
    assert list(ours.index) == list(theirs.index) and list(ours.columns) == list(theirs.columns)
    np.testing.assert_allclose(ours.to_numpy(), theirs.to_numpy(), rtol=1e-5, atol=0)


def _crafted(folder: Path, *overrides: str, model=None, weights: bytes | None = None) -> Path:
    """An export folder as a stranger could write it: a validated cnn1d config (`model` replaces its model
    section), tiny weights (or these bytes), export.json with the overrides that select its settings."""
    cfg, _ = load(["model=cnn1d", *overrides])
    folder.mkdir(parents=True)
    (folder / export.CONFIG).write_text(yaml.safe_dump({**cfg, "model": model or cfg["model"]}))
    if weights is None:
        save_file({"w": torch.zeros(1)}, folder / export.WEIGHTS)
    else:
        (folder / export.WEIGHTS).write_bytes(weights)
    files.write_json(folder / export.STORE, {"n_bins": 283, "star_columns": ATTRS["star_columns"]})
    files.write_json(folder / export.META, {"format": export.FORMAT, "calibration": None,
                                           "overrides": export.selecting_overrides(cfg)})
    return folder


class _Touch:
    """Unpickling this creates `path`: what a pickled checkpoint could do when it is loaded."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return Path.touch, (self.path,)


def test_a_crafted_export_config_is_refused_and_nothing_is_called(cli, tmp_path):
    marker = tmp_path / "called"
    folder = _crafted(tmp_path / "model", model={"_target_": "pathlib.Path.touch", "_args_": [str(marker)]})
    with pytest.raises(ConfigError, match=r"model/config.yaml: not a valid run config \(model._target_: "
                                          r"expected one of the registered targets"):
        require_run(make_settings(f"predict.run={folder}"))
    done = cli("predict", f"run={folder}", f"paths.output_dir={tmp_path / 'out'}")
    assert done.returncode == 2 and "got 'pathlib.Path.touch'" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not marker.exists() and not (tmp_path / "out" / "data").exists(), "something ran or was built"


def test_weights_that_are_a_pickle_are_refused_unread(tmp_path):
    marker = tmp_path / "called"
    folder = _crafted(tmp_path / "model", weights=pickle.dumps({"model": _Touch(marker)}))
    s = make_settings(f"predict.run={folder}", *export.read_meta(folder)["overrides"])
    with pytest.raises(DataError, match="model.safetensors: not loadable weights"):
        load_model(s, ATTRS)
    assert not marker.exists()


def test_an_export_refuses_light_curves_calibrated_otherwise_naming_the_key_and_the_fix(tmp_path):
    folder = _crafted(tmp_path / "model", "data.calibrate.airs_bin=10")
    meta = export.read_meta(folder)
    assert "data.calibrate.airs_bin=10" in meta["overrides"]
    with pytest.raises(ConfigError) as e:
        require_run(make_settings(f"predict.run={folder}"))
    assert str(e.value) == (f"predict.run: {folder} was trained with other data.calibrate.airs_bin (10, here 3); "
                            f"predict with the export's overrides: {' '.join(meta['overrides'])}")
    assert require_run(make_settings(f"predict.run={folder}", *meta["overrides"])) == folder
    (folder / export.META).write_text(json.dumps({**meta, "calibration": export.CALIBRATION}))
    with pytest.raises(DataError, match="names calibration.npz, which is missing"):
        require_run(make_settings(f"predict.run={folder}", *meta["overrides"]))
    (folder / export.META).write_text(json.dumps({**meta, "overrides": [*meta["overrides"], "paths.output_dir=/"]}))
    with pytest.raises(ConfigError, match="override 'paths.output_dir=/' is not one of the model, fit or data"):
        export.read_meta(folder)


@pytest.mark.parametrize("data", ["synthetic", "kaggle"])
def test_the_selecting_overrides_give_any_data_option_the_exports_settings(data):
    cfg = compose(["model=transformer", "model.heads=2", "fit.iterations=5", "data=kaggle",
                   "data.calibrate.airs_bin=10", "data.calibrate.airs_rows=[9,23]"])
    chosen = export.selecting_overrides(cfg)
    assert chosen[0] == "model=transformer" and "model.heads=2" in chosen and "fit.iterations=5" in chosen
    there = compose([f"data={data}", *chosen])
    assert (there["model"], there["fit"], there["data"]["calibrate"]) == (cfg["model"], cfg["fit"],
                                                                         cfg["data"]["calibrate"])


def test_export_writes_the_checkpoints_weights_and_predict_loads_them(tmp_path):
    from dataclasses import replace

    s = make_settings("model=cnn1d", f"paths.output_dir={tmp_path}")
    s = replace(s, data=replace(s.data, store=str(tmp_path / "store")))
    _tiny_store(tmp_path / "store", s, 283, 1.0)
    run = tmp_path / "runs" / "aaaa"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(load(["model=cnn1d", f"paths.output_dir={tmp_path}"])[0]))
    state = build_model(s, ATTRS).state_dict()
    checkpoint.save(run / "checkpoints" / "best.pt", {"model": state})
    with pytest.raises(DataError, match="output_calibration.npz: missing, yet the run was trained with "
                                        "trainer.calibrate_outputs=true"):
        load_model(replace(s, predict=replace(s.predict, run=str(run))), ATTRS)
    widened = cal.Calibration(mu_bias=(0.0, 0.0), sigma_scale=(3.0, 2.0), sigma_floor=(0.0, 0.0))
    cal.save(run / cal.OUTPUTS_FILE, [widened])

    with pytest.raises(ConfigError, match="model=fit has no weights"):
        export.export(replace(s, model=make_settings("model=fit").model), tmp_path / "nothing")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="exists and is not empty"):
        export.export(replace(s, predict=replace(s.predict, run=str(run))), tmp_path / "taken")
    done = export.export(replace(s, predict=replace(s.predict, run=str(run))), tmp_path / "model")
    assert done["run"] == "aaaa" and done["calibration"] is None and done["overrides"][0] == "model=cnn1d"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".model.")], "the staging folder is left"
    with pytest.raises(ConfigError, match="already an exported model folder"):
        export.export(replace(s, predict=replace(s.predict, run=str(tmp_path / "model"))), tmp_path / "again")

    assert json.loads((tmp_path / "model" / export.STORE).read_text())["star_columns"] == ATTRS["star_columns"]
    from spectramind.data.dataset import LightCurveDataset

    batch = {k: v[None] for k, v in LightCurveDataset(tmp_path / "store", "train")[0].items()}
    bare_mu, bare_sigma = build_model(s, ATTRS, {"model": state})(batch)
    for folder in (run, tmp_path / "model"):
        net, _, source = load_model(replace(s, predict=replace(s.predict, run=str(folder))), ATTRS)
        assert all(torch.equal(net.net.state_dict()[k], state[k]) for k in state), folder
        mu, sigma = net(batch)  # the run's output calibration travels with the export
        assert torch.allclose(mu, bare_mu) and torch.allclose(sigma[:, 0], 3 * bare_sigma[:, 0])
        assert torch.allclose(sigma[:, 1:], 2 * bare_sigma[:, 1:]), folder
    assert source["checkpoint"] == str(tmp_path / "model" / export.WEIGHTS)
    with pytest.raises(DataError, match="trained on a store with star_columns"):
        load_model(replace(s, predict=replace(s.predict, run=str(tmp_path / "model"))),
                   {**ATTRS, "star_columns": list("abc")})
