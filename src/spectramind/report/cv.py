"""K-fold cross-validation at planet level (`spectramind cv data.split.folds=K`) and its out-of-fold score.

Fold k is held out by ordinary runs with `data.split.fold=k` (the store's "test" split is then fold k of
the labelled planets, data.folds): the fit stage, whose label calibration learns from the other folds only;
the training run, unless model=fit (its fit-stage calibration is the fold's model); the prediction of fold
k with that fold's model. The command line runs them (cli.cv), each left alone when its run is complete;
this module says what each fold runs and scores the held-out predictions of every labelled planet with the
competition's metric, the way competitors choose models: `<output_dir>/cv/<id>/cv.json`, with the
out-of-fold submission and per-bin scores beside it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import xxhash

from spectramind import files
from spectramind.config import runhash
from spectramind.config.settings import Settings
from spectramind.errors import ConfigError

CV_DIR, REPORT = "cv", "cv.json"
# What cv sets for each fold's runs: the held-out fold, the run to predict with, the split it predicts and
# the submission's place (in the predict run's own folder, one per fold).
FOLD_KEYS = ("data.split.fold", "predict.run", "predict.split", "predict.out")


def fold_overrides(overrides: list[str]) -> list[list[str]]:
    """The overrides of each fold's runs: the user's plus the fold held out."""
    from spectramind.config.compose import compose, override_keys

    folds = compose(overrides)["data"]["split"]["folds"]
    taken = [k for k in override_keys(overrides) if k.lstrip("+~") in FOLD_KEYS]
    if taken:
        raise ConfigError(f"{taken[0]}: `spectramind cv` sets it for each fold; leave it out")
    if folds is None or folds < 2:
        raise ConfigError(f"data.split.folds: expected K >= 2 folds to cross-validate, got {folds}")
    return [[*overrides, f"data.split.fold={k}"] for k in range(folds)]


def predict_overrides(fold: list[str], trained: str | None) -> list[str]:
    """A fold's prediction of its held-out planets, with the run it trained (None for model=fit)."""
    return [*fold, "predict.split=test", *([f"predict.run={trained}"] if trained else [])]


def submission_path(output_dir: str, predict_run: str) -> Path:
    return runhash.run_dir(output_dir, predict_run) / "submission.csv"


def predicted(output_dir: str, predict_run: str) -> bool:
    """Whether the prediction run is complete, its submission written."""
    entry = files.read_json(Path(output_dir) / runhash.INDEX_NAME).get(predict_run, {})
    return entry.get("status") == "complete" and submission_path(output_dir, predict_run).is_file()


def report(s: Settings, overrides: list[str], runs: list[dict]) -> dict:
    """Score each fold's held-out predictions (`runs`: per fold its train and predict run hashes) on their
    own and all together; write cv.json, oof_submission.csv and per_bin.csv; return the report."""
    from spectramind.data.folds import LABELLED, planet_splits
    from spectramind.data.store import read_manifest
    from spectramind.evaluate import submission
    from spectramind.evaluate.evaluate import load_truth, score_report

    manifest = read_manifest(s.data.store)
    frames = [submission.read(submission_path(s.paths.output_dir, run["predict_run"])) for run in runs]
    for k, frame in enumerate(frames):
        assert sorted(frame["planet_id"]) == planet_splits(manifest, (k, len(runs)))["test"], f"fold {k}"
    oof = pd.concat(frames, ignore_index=True)
    ids = oof["planet_id"].tolist()
    assert sorted(ids) == sorted(p for name in LABELLED for p in manifest["splits"][name]), "not every planet once"
    fold = np.concatenate([np.full(len(f), k) for k, f in enumerate(frames)])
    mu, sigma = submission.arrays(oof)
    y, naive_mean, naive_sigma, sigma_opt = load_truth(s.data.root, ids)

    def scored(rows):
        return score_report(y[rows], mu[rows], sigma[rows], naive_mean, naive_sigma,
                            None if sigma_opt is None else sigma_opt[rows])

    overall, per_bin = scored(slice(None))
    per_fold = [{"fold": k, **run, **{m: v for m, v in scored(fold == k)[0].items() if not m.startswith("naive")},
                 "planet_ids": sorted(frames[k]["planet_id"].tolist())} for k, run in enumerate(runs)]
    folder = Path(s.paths.output_dir) / CV_DIR / xxhash.xxh3_64(json.dumps(overrides).encode()).hexdigest()
    oof_path = submission.write(folder / "oof_submission.csv", ids, mu, sigma, columns=list(oof.columns))
    with files.atomic_path(folder / "per_bin.csv") as tmp:
        per_bin.to_csv(tmp, index=False)
    done = {**overall, "folds": len(runs), "model": s.model.target, "overrides": list(overrides),
            "oof_submission": str(oof_path), "per_fold": per_fold}
    files.write_json(folder / REPORT, done)
    return {**done, "report": str(folder / REPORT)}
