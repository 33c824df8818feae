"""K-fold cross-validation at planet level: the folds (data.folds), a fit stage that calibrates on the other
folds only, and `spectramind cv` end to end on a small simulated set."""

from __future__ import annotations

import json
from dataclasses import replace

import h5py
import numpy as np
import pandas as pd
import pytest
from conftest import SMALL_SET, make_settings
from test_models_fit import make_visits

from spectramind.data import store as st
from spectramind.data.dataset import LightCurveDataset
from spectramind.data.folds import assign_folds, planet_splits
from spectramind.data.prepare import _store_config
from spectramind.errors import DataError
from spectramind.models.baseline import calibration_path, fit_baseline

LABELLED = list(range(100, 123))           # 23 labelled planets; every third observed twice
PREDICT = [900, 901]


def _manifest(seed=7, val=0.15) -> dict:
    return {"seed": seed, "fractions": {"val": val, "test": 0.15},
            "splits": {"train": LABELLED[:17], "val": LABELLED[17:20], "test": LABELLED[20:], "predict": PREDICT}}


def test_folds_are_planet_level_seeded_and_balanced():
    visits = [p for p in LABELLED for _ in range(1 + (p % 3 == 0))]   # a planet id once per visit
    fold_of = assign_folds(visits, 4, seed=7)
    assert sorted(fold_of) == LABELLED                               # one fold per planet, not per visit
    assert sorted(np.bincount(list(fold_of.values()))) == [5, 6, 6, 6]
    assert assign_folds(visits, 4, seed=7) == fold_of
    assert assign_folds(visits, 4, seed=8) != fold_of


def test_each_fold_holds_out_its_planets_and_the_folds_cover_every_labelled_planet_once():
    manifest = _manifest()
    assert planet_splits(manifest, None) == manifest["splits"]
    held = []
    for k in range(4):
        splits = planet_splits(manifest, (k, 4))
        train, val, test = (set(splits[n]) for n in ("train", "val", "test"))
        assert not (train & val or train & test or val & test) and train | val | test == set(LABELLED)
        assert len(val) == round(0.15 * len(LABELLED)) and splits["predict"] == PREDICT
        assert splits == planet_splits(manifest, (k, 4))
        held += splits["test"]
    assert sorted(held) == LABELLED
    assert planet_splits(_manifest(seed=8), (0, 4))["test"] != planet_splits(manifest, (0, 4))["test"]
    with pytest.raises(DataError, match="fewer than one per fold"):
        planet_splits(manifest, (0, 24))


def test_a_planet_observed_twice_is_held_out_with_both_visits(tmp_path):
    store = tmp_path / "store"
    planets = [(p, 1 + (p % 3 == 0)) for p in LABELLED]
    arrays = {"flux": np.ones((4, 3), np.float32), "flux_err": np.ones((4, 3), np.float32),
              "time": np.arange(4, dtype=np.float32), "jitter": np.zeros((4, 1), np.float32),
              "oot": np.ones(4, bool), "norm": np.ones(3), "star": np.ones(2, np.float32),
              "target": np.ones(3, np.float32)}
    with st.writer(store, {"star_columns": ["a", "b"], "jitter_columns": ["x"]}) as add:
        for p, n in planets:
            for v in range(n):
                add(p, v, arrays, {"t0_h": 1.0})
    manifest = {**_manifest(), "planets": [{"planet_id": p, "visits": list(range(n))} for p, n in planets]}
    (store / st.MANIFEST_NAME).write_text(json.dumps(manifest))
    for k in range(3):
        keys = LightCurveDataset(store, "test", held_out=(k, 3)).keys
        held = planet_splits(manifest, (k, 3))["test"]
        assert sorted(keys) == sorted(st.visit_key(p, v) for p, n in planets if p in held for v in range(n))


SIX = list(range(31, 37))


def _six(s) -> dict:
    """The manifest of six labelled planets, all in the store's training split."""
    return {"seed": s.seed, "fractions": {"val": 0.0, "test": 0.0},
            "planets": [{"planet_id": p, "visits": [0]} for p in SIX],
            "splits": {"train": SIX, "val": [], "test": [], "predict": []},
            "config": _store_config(s.data.calibrate, s.data.split, s.seed), "folders": ["train", "test"]}


def _labelled_store(tmp_path, s, scale: dict[int, float]):
    """The six planets (one visit each) in a store, every label of planet p times scale.get(p, 1)."""
    batch, truth = make_visits(b=6, n=32)
    store = tmp_path / "store"
    s = replace(s, data=replace(s.data, store=str(store), baseline=str(tmp_path / "baseline")))
    with st.writer(store, {"star_columns": list("abcdefghi"), "jitter_columns": ["x", "y"]}) as add:
        for i, p in enumerate(SIX):
            arrays = {k: batch[k][i].numpy() for k in ("flux", "flux_err", "time", "jitter", "star")}
            arrays.update(oot=np.ones(len(arrays["time"]), bool), norm=np.ones(32),
                          target=(truth["depth"][i] * scale.get(p, 1.0)).astype(np.float32))
            add(p, 0, arrays, {"t0_h": 3.75})
    (store / st.MANIFEST_NAME).write_text(json.dumps(_six(s)))
    return s


def _baselines(s) -> dict[str, np.ndarray]:
    summary = fit_baseline(s, progress=False)
    with h5py.File(summary["baseline"]) as f:
        values = {f"{k}/{n}": g[n][()] for k, g in f["visits"].items() for n in ("baseline_mu", "baseline_sigma")}
    return {**values, "calibrated": summary["calibration"] is not None}


def test_the_fit_stage_never_calibrates_with_the_labels_of_the_fold_held_out(tmp_path):
    """Two stores alike but for the labels of the planets fold 1 holds out: every calibrated baseline (the
    held-out planets' and the training planets' a net learns from) and the calibration that `model=fit`
    applies are the same; with no fold held out the same labels change them."""
    s = make_settings("data.split.val_fraction=0", "data.split.folds=3", "data.split.fold=1", "fit.iterations=5",
                      "fit.calibration_folds=2")
    held = planet_splits(_six(s), (1, 3))["test"]
    runs = [_labelled_store(tmp_path / name, s, scale) for name, scale in
            (("a", {}), ("b", dict.fromkeys(held, 1.3)))]
    cv = [_baselines(r) for r in runs]
    assert cv[0]["calibrated"] and cv[0].keys() == cv[1].keys()
    for key in cv[0]:
        np.testing.assert_array_equal(cv[0][key], cv[1][key], err_msg=key)
    learned = [dict(np.load(calibration_path(r))) for r in runs]
    assert learned[0].keys() == learned[1].keys() and all(np.array_equal(learned[0][k], learned[1][k])
                                                          for k in learned[0])
    single = [_baselines(replace(r, data=replace(r.data, split=replace(r.data.split, folds=None, fold=None))))
              for r in runs]
    assert any(not np.array_equal(single[0][k], single[1][k]) for k in single[0] if k != "calibrated")


@pytest.mark.parametrize("args, message", [
    (("cv",), "data.split.folds: expected K >= 2"),
    (("cv", "data.split.folds=2", "data.split.fold=0"), "data.split.fold: `spectramind cv` sets it"),
    (("train", "data.split.folds=3"), "data.split.fold: expected the fold to hold out, 0 to 2"),
])
def test_a_fold_setting_that_cannot_work_is_one_line_and_exit_2(cli, tmp_path, args, message):
    done = cli(*args, f"paths.output_dir={tmp_path}")
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert not (tmp_path / "runs").exists()


# The small set, built in-process (no pool to start on 2 cores).
SMALL = ("trainer=ci_fast", "trainer.batch_size=2", "data.num_workers=0", *SMALL_SET, "data.split.folds=2")


def _report(stdout: str) -> dict:
    line = [x for x in stdout.splitlines() if x.startswith("cv: out-of-fold score")]
    assert len(line) == 1, stdout
    return json.loads(open(line[0].rsplit(" -> ", 1)[1]).read())


@pytest.mark.slow
def test_cv_scores_every_labelled_planet_out_of_fold_once_and_a_rerun_trains_nothing(cli, tmp_path):
    out = tmp_path / "outputs"
    first = cli("cv", *SMALL, f"paths.output_dir={out}")
    assert first.returncode == 0, first.stderr[-3000:]
    report = _report(first.stdout)
    labelled = pd.read_csv(out / "data" / "synthetic" / "raw" / "train.csv")["planet_id"].tolist()
    held = [p for fold in report["per_fold"] for p in fold["planet_ids"]]
    assert sorted(held) == sorted(labelled) and report["planets"] == len(labelled) == 8
    assert sorted(pd.read_csv(report["oof_submission"])["planet_id"]) == sorted(labelled)
    assert 0 <= report["score"] <= 1 and report["ratio_to_oracle"] > 0
    for fold in report["per_fold"]:      # each fold's model saw none of the planets it held out
        events = [json.loads(x) for x in (out / "runs" / fold["train_run"] / "events.jsonl").read_text().splitlines()]
        built = next(e for e in events if e["event"] == "built")
        assert built["train_samples"] + built["val_samples"] == len(labelled) - fold["planets"]
    trained = sorted(out.glob("runs/*/checkpoints"))
    assert len(trained) == 2

    again = cli("cv", *SMALL, f"paths.output_dir={out}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("train: already complete") == 2 and again.stdout.count("predict: already complete") == 2
    assert sorted(out.glob("runs/*/checkpoints")) == trained and _report(again.stdout)["score"] == report["score"]

    physics = cli("cv", *SMALL, "model=fit", f"paths.output_dir={out}")
    assert physics.returncode == 0, physics.stderr[-3000:]
    fitted = _report(physics.stdout)
    assert sorted(p for fold in fitted["per_fold"] for p in fold["planet_ids"]) == sorted(labelled)
    assert all(fold["train_run"] is None for fold in fitted["per_fold"])
    assert sorted(out.glob("runs/*/checkpoints")) == trained
