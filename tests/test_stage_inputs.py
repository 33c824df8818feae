"""Stages take only declared inputs; inputs are known by content; predict calibrates only what it predicts."""

import json

import pytest
from conftest import run_cli

TINY = ["data.simulate.n_train=3", "data.simulate.n_test=2", "data.simulate.two_visit_fraction=0",
        "data.simulate.airs_reads=24", "data.simulate.fgs1_reads=96", "data.calibrate.airs_bin=2",
        "data.calibrate.fgs1_bin=8", "data.num_workers=0"]


def test_a_stage_missing_its_input_names_the_command_that_makes_it(tmp_path):
    out = [f"paths.output_dir={tmp_path}"]
    calibrate = run_cli("calibrate", *out)
    assert calibrate.returncode == 3 and "run `spectramind simulate`" in calibrate.stderr
    fit = run_cli("fit", *out)
    assert fit.returncode == 3 and "no calibrated store; run `spectramind calibrate` first" in fit.stderr
    assert not (tmp_path / "data" / "synthetic" / "store" / "manifest.json").exists()


@pytest.mark.slow
def test_a_changed_input_byte_gives_a_new_store(tmp_path):
    out = [f"paths.output_dir={tmp_path}", *TINY]
    assert run_cli("simulate", *out).returncode == 0
    first = run_cli("calibrate", *out)
    assert first.returncode == 0, first.stderr
    store = tmp_path / "data" / "synthetic" / "store"
    before = json.loads((store / "manifest.json").read_text())["source_fingerprint"]
    assert "(current)" in run_cli("calibrate", *out).stdout
    labels = tmp_path / "data" / "synthetic" / "raw" / "train.csv"
    text = labels.read_text()
    at = text.index("\n") + 1 + text[text.index("\n") + 1:].index(".") + 3  # a digit of the first label
    changed = text[:at] + ("1" if text[at] != "1" else "2") + text[at + 1:]
    assert len(changed) == len(text)
    labels.write_text(changed)  # same size, one digit of one label
    again = run_cli("calibrate", *out)
    assert "(current)" not in again.stdout
    assert json.loads((store / "manifest.json").read_text())["source_fingerprint"] != before


@pytest.mark.slow
def test_predict_calibrates_only_the_split_it_predicts_into_its_own_run_folder(tmp_path):
    out = [f"paths.output_dir={tmp_path}", *TINY]
    assert run_cli("simulate", *out).returncode == 0
    done = run_cli("predict", "model=fit", *out)
    assert done.returncode == 0, done.stderr
    assert "building its missing input with `spectramind calibrate`" in done.stderr
    manifest = json.loads((tmp_path / "data" / "synthetic" / "store" / "manifest.json").read_text())
    assert manifest["folders"] == ["test"]
    index = json.loads((tmp_path / "run_hash_summary_v50.json").read_text())
    (predict_hash,) = [h for h, e in index.items() if e["command"] == "predict"]
    assert index[predict_hash]["submission"] == str(tmp_path / "runs" / predict_hash / "submission.csv")
