"""Where predict finds its model, and the predict/evaluate commands end to end on a tiny simulated set."""

import json

import pandas as pd
import pytest
import yaml
from conftest import make_settings

from spectramind.config import runhash
from spectramind.errors import ConfigError, DataError
from spectramind.evaluate.predict import checkpoint_path, load_model, resolve_run

ATTRS = {"n_time": 50, "n_bins": 283, "star_columns": list("abcdefghi")}
TINY = ["data.simulate.n_train=8", "data.simulate.n_test=2", "data.simulate.airs_reads=120",
        "data.simulate.fgs1_reads=1440", "data.num_workers=0", "data.split.val_fraction=0.25",
        "data.split.test_fraction=0.25"]


def _run_folder(output_dir, hash_, status="complete"):
    folder = runhash.run_dir(output_dir, hash_)
    folder.mkdir(parents=True)
    model = {"_target_": "spectramind.models.nets.CNN1D"}
    (folder / "config.yaml").write_text(yaml.safe_dump({"model": model}))
    runhash.index_run(output_dir, hash_, {"command": "train", "status": status})
    return folder


def test_a_run_is_found_by_folder_hash_or_latest(tmp_path):
    first = _run_folder(tmp_path, "aaaa")
    _run_folder(tmp_path, "bbbb", status="failed")
    assert resolve_run(str(first), tmp_path) == first
    assert resolve_run("aaaa", tmp_path) == first
    assert resolve_run("latest", tmp_path) == first
    with pytest.raises(ConfigError, match="neither a run folder nor a run hash"):
        resolve_run("cccc", tmp_path)


def test_latest_takes_a_run_stopped_by_a_guard_and_an_outputs_root_names_its_latest(tmp_path):
    stopped = _run_folder(tmp_path, "aaaa", status="stopped")  # e.g. the Kaggle time budget
    _run_folder(tmp_path, "bbbb", status="started")
    assert resolve_run("latest", tmp_path) == stopped
    assert resolve_run(str(tmp_path), tmp_path / "elsewhere") == stopped


def test_latest_without_a_complete_run_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no complete train run"):
        resolve_run("latest", tmp_path)


def test_a_network_needs_a_run_and_the_run_needs_a_checkpoint(tmp_path):
    with pytest.raises(ConfigError, match="predict.run: required"):
        load_model(make_settings("model=cnn1d", f"paths.output_dir={tmp_path}"), ATTRS)
    folder = _run_folder(tmp_path, "aaaa")
    with pytest.raises(DataError, match="no best.pt or last.pt"):
        checkpoint_path(folder)


def test_the_physics_fit_needs_no_run(tmp_path):
    s = make_settings("model=fit", f"paths.output_dir={tmp_path}")
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
