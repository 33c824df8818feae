"""Where predict finds its model, and the predict/evaluate commands end to end on a tiny simulated set."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import make_settings

from spectramind import files
from spectramind.config import runhash
from spectramind.config.settings import Target
from spectramind.config.stage import load
from spectramind.errors import ConfigError, DataError
from spectramind.evaluate.predict import checkpoint_path, load_model, require_run, resolve_run
from spectramind.train import checkpoint

ATTRS = {"n_time": 50, "n_bins": 283, "star_columns": list("abcdefghi")}
TINY = ["data.simulate.n_train=8", "data.simulate.n_test=2", "data.simulate.airs_reads=120",
        "data.simulate.fgs1_reads=1440", "data.num_workers=0", "data.split.val_fraction=0.25",
        "data.split.test_fraction=0.25"]


def _run_folder(output_dir, hash_, *overrides, status="complete", ckpt: bytes | None = b"", model=None):
    """A train run in the index: its validated config (cnn1d, then `overrides`; `model` replaces the model
    section as a crafted folder would), a checkpoint unless `ckpt` is None (other bytes: a corrupt one).
    Runs made later are indexed as newer."""
    cfg, _ = load(["model=cnn1d", f"paths.output_dir={output_dir}", *overrides])
    folder = runhash.run_dir(output_dir, hash_)
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({**cfg, "model": model or cfg["model"]}))
    if ckpt == b"":
        checkpoint.save(folder / "checkpoints" / "last.pt", {"model": {}})
    elif ckpt is not None:
        (folder / "checkpoints").mkdir()
        (folder / "checkpoints" / "last.pt").write_bytes(ckpt)

    def newest(index):
        index[hash_] = {"command": "train", "status": status, "updated": f"2026-01-01T00:00:{len(index):02d}"}

    files.update_json(output_dir / runhash.INDEX_NAME, newest)
    return folder


def _settings(output_dir, run, *overrides):
    return make_settings("model=cnn1d", f"paths.output_dir={output_dir}", f"predict.run={run}", *overrides)


def test_a_run_is_found_by_folder_hash_or_latest(tmp_path):
    first = _run_folder(tmp_path, "aaaa")
    _run_folder(tmp_path, "bbbb", status="failed")
    assert resolve_run(_settings(tmp_path, first)) == first
    assert resolve_run(_settings(tmp_path, "aaaa")) == first
    assert resolve_run(_settings(tmp_path, "latest")) == first
    with pytest.raises(ConfigError, match="neither a run folder nor a run hash"):
        resolve_run(_settings(tmp_path, "cccc"))


def test_latest_takes_a_run_stopped_by_a_guard_and_an_outputs_root_names_its_latest(tmp_path):
    stopped = _run_folder(tmp_path, "aaaa", status="stopped")  # e.g. the Kaggle time budget
    _run_folder(tmp_path, "bbbb", status="started")
    assert resolve_run(_settings(tmp_path, "latest")) == stopped
    assert resolve_run(_settings(tmp_path / "elsewhere", tmp_path)) == stopped


def test_latest_takes_the_newest_run_with_a_loadable_checkpoint_and_the_same_model_and_data(tmp_path):
    fits = _run_folder(tmp_path, "aaaa", status="stopped")
    _run_folder(tmp_path, "bbbb", status="stopped", ckpt=None)        # stopped by the disk guard: no checkpoint
    _run_folder(tmp_path, "cccc", status="stopped", ckpt=b"garbage")  # killed mid-write by hand
    _run_folder(tmp_path, "dddd", "model.channels=8")
    _run_folder(tmp_path, "eeee", "data.calibrate.airs_bin=10")
    _run_folder(tmp_path, "ffff", "data.num_workers=3", "trainer.max_epochs=3")  # neither changes the model
    assert resolve_run(_settings(tmp_path, "latest")) == tmp_path / "runs" / "ffff"
    (tmp_path / "runs" / "ffff" / "checkpoints" / "last.pt").unlink()
    assert resolve_run(_settings(tmp_path, "latest")) == fits


def test_latest_says_why_no_run_fits_in_one_line(tmp_path):
    with pytest.raises(ConfigError, match="no complete or stopped train run"):
        resolve_run(_settings(tmp_path, "latest"))
    _run_folder(tmp_path, "aaaa", ckpt=None)
    with pytest.raises(ConfigError, match="none of the 1 finished .*the newest, aaaa: .*: no best.pt or last.pt"):
        resolve_run(_settings(tmp_path, "latest"))
    channels_8 = _run_folder(tmp_path, "bbbb", "model.channels=8")
    with pytest.raises(ConfigError) as e:
        resolve_run(_settings(tmp_path, "latest"))
    assert str(e.value) == (f"predict.run=latest: none of the 2 finished train runs in {tmp_path}/"
                            f"{runhash.INDEX_NAME} fits this config; the newest, bbbb was trained with other "
                            "model.channels (8, here 32)")
    with pytest.raises(ConfigError, match="the newest, bbbb was trained with other data.calibrate.airs_bin"):
        resolve_run(_settings(tmp_path, "latest", "model.channels=8", "data.calibrate.airs_bin=10"))
    assert resolve_run(_settings(tmp_path, "latest", "model.channels=8")) == channels_8


def _marker_call(marker):
    """A node that would create `marker` if anything instantiated it."""
    return {"_target_": "pathlib.Path.touch", "_args_": [str(marker)]}


def test_a_crafted_run_config_is_refused_and_nothing_is_called(tmp_path):
    marker = tmp_path / "called"
    top = _run_folder(tmp_path, "aaaa", model=_marker_call(marker))
    nested = _run_folder(tmp_path, "bbbb", model={"_target_": "spectramind.models.nets.CNN1D",
                                                "channels": _marker_call(marker)})
    with pytest.raises(ConfigError, match=r"aaaa/config.yaml: not a valid run config \(model._target_: "
                                          r"expected one of the registered targets .*got 'pathlib.Path.touch'"):
        require_run(_settings(tmp_path, top))
    with pytest.raises(ConfigError, match=r"bbbb/config.yaml: .*model.channels._target_: .*'pathlib.Path.touch'"):
        require_run(_settings(tmp_path, nested))
    with pytest.raises(ConfigError, match="the newest, bbbb: .*model.channels._target_"):
        require_run(_settings(tmp_path, "latest"))  # nor is it taken for latest
    assert not marker.exists()


@pytest.mark.parametrize("where", ["top", "nested"])
def test_instantiating_checks_the_allowlist_whatever_built_the_settings(tmp_path, where):
    marker = tmp_path / "called"
    target = (Target("pathlib.Path.touch", {"_args_": [str(marker)]}) if where == "top" else
              Target("spectramind.models.nets.CNN1D", {"channels": _marker_call(marker)}))
    with pytest.raises(ConfigError, match="_target_: expected one of the registered targets"):
        target.instantiate()
    assert not marker.exists()


def test_predict_refuses_a_crafted_run_folder_with_exit_code_2(cli, tmp_path):
    marker = tmp_path / "called"
    folder = _run_folder(tmp_path, "aaaa", model={"_target_": "os.system", "command": f"touch {marker}"})
    done = cli("predict", "model=cnn1d", f"predict.run={folder}", f"paths.output_dir={tmp_path}")
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {folder}/config.yaml: not a valid run config")
    assert "got 'os.system'" in lines[0]
    assert not marker.exists() and not (tmp_path / "data").exists(), "something ran or was built"


def test_a_network_needs_a_run_and_the_run_needs_a_checkpoint(tmp_path):
    with pytest.raises(ConfigError, match="predict.run: required"):
        require_run(make_settings("model=cnn1d", f"paths.output_dir={tmp_path}"))
    folder = _run_folder(tmp_path, "aaaa", ckpt=None)
    with pytest.raises(DataError, match="no best.pt or last.pt"):
        checkpoint_path(folder)


def test_the_physics_fit_needs_no_run(tmp_path):
    s = make_settings("model=fit", f"paths.output_dir={tmp_path}")
    assert require_run(s) is None
    model, trained, source = load_model(s, ATTRS)
    assert trained == s
    assert source == {"model": "spectramind.models.fit.PhysicsFit", "run": None}


@pytest.mark.slow
def test_predict_and_evaluate_the_fit_from_the_command_line(cli, tmp_path):
    common = ["model=fit", f"paths.output_dir={tmp_path}", *TINY]
    out = tmp_path / "kaggle" / "working" / "submission.csv"
    done = cli("predict", *common, f"predict.out={out}")
    assert done.returncode == 0, done.stderr
    frame = pd.read_csv(out)
    sample = pd.read_csv(tmp_path / "data" / "synthetic" / "raw" / "sample_submission.csv")
    assert list(frame.columns) == list(sample.columns) and sorted(frame.planet_id) == sorted(sample.planet_id)
    assert (frame.filter(like="sigma_") > 0).all().all() and (frame.filter(like="wl_") >= 0).all().all()

    done = cli("evaluate", *common)
    assert done.returncode == 0, done.stderr
    assert "oracle" in done.stdout and "ratio" in done.stdout
    folder = next(p for p in (tmp_path / "runs").iterdir() if (p / "metrics.json").is_file())
    metrics = json.loads((folder / "metrics.json").read_text())
    assert 0 < metrics["score"] <= metrics["oracle_score"] <= 1
    assert 0.4 < metrics["within_1sigma"] < 0.9
    assert {"per_bin.csv", "spectra.png", "score_per_wavelength.png", "submission.csv"} <= {
        p.name for p in folder.iterdir()}


@pytest.mark.slow
def test_a_network_without_a_run_is_refused_with_exit_code_2(cli, tmp_path):
    done = cli("predict", "model=cnn1d", f"paths.output_dir={tmp_path}", *TINY)
    assert done.returncode == 2 and "predict.run: required" in done.stderr


def _tiny_store(folder: Path, s, n_bins: int, flux: float) -> None:
    """A labelled store of one visit with n_bins bins, every flux value `flux`."""
    from spectramind.data import store as st
    from spectramind.data.prepare import _store_config

    t = 40
    with st.writer(folder, {"star_columns": list("abcdefghi"), "jitter_columns": ["x"]}) as add:
        arrays = {"flux": np.full((t, n_bins), flux, np.float32), "flux_err": np.full((t, n_bins), 1e-3, np.float32),
                  "time": np.linspace(0, 7.5, t, dtype=np.float32), "jitter": np.zeros((t, 1), np.float32),
                  "star": np.ones(9, np.float32), "oot": np.ones(t, bool), "norm": np.ones(n_bins),
                  "target": np.full(n_bins, 0.01, np.float32)}
        add(7, 0, arrays, {"t0_h": 3.75})
    manifest = {"planets": [{"planet_id": 7, "visits": [0]}], "folders": ["train", "test"],
                "splits": {"train": [7], "val": [], "test": [], "predict": []},
                "config": _store_config(s.data.calibrate, s.data.split, s.seed)}
    (folder / st.MANIFEST_NAME).write_text(json.dumps(manifest))


@pytest.mark.parametrize(("n_bins", "flux", "says"), [(32, 1.0, "light curves of 32 bins; expected 283"),
                                                       (283, float("nan"), "has no finite flux value")])
def test_a_store_the_fit_cannot_predict_from_is_a_data_error_with_no_submission(tmp_path, n_bins, flux, says):
    """The stage function the CLI calls (DataError is its exit code 3, one line)."""
    from dataclasses import replace

    from spectramind.evaluate.predict import predict

    s = make_settings("model=fit", f"paths.output_dir={tmp_path}")
    s = replace(s, data=replace(s.data, store=str(tmp_path / "store")))
    _tiny_store(tmp_path / "store", s, n_bins, flux)
    out = tmp_path / "sub" / "submission.csv"
    with pytest.raises(DataError, match=says) as err:
        predict(s, tmp_path / "run", split="train", out=str(out), progress=False)
    assert "\n" not in str(err.value) and not out.exists()
