"""Quality on a held-out simulated set made with another seed: the fit, the fit calibrated on labels,
residual, cnn1d, a K-fold cross-validation and the per-bin oracle.

The simulator's defaults do not share the fit's model (disc-integrated transit with Claret's law, a
drawn orbit, a non-separable drift, photometric jitter, the real non-linearity). Trains `residual` and
`cnn1d` with `spectramind train` on a simulated training set (seed 42), then predicts a held-out
simulated set (seed 43, every planet labelled) with each model and with the physics fit, and scores them
against the truth with the naive reference taken from the training labels. `fit` is the joint fit
alone; `fit+calibration` the fit stage's calibration on the held-out store's own labelled training
split, applied out of fold to those planets (models.calibration); `fit+calibration:train` the one the
fit stage learned on the training set's labels, applied to every held-out planet (as `spectramind
predict model=fit` does to a store without labels). A net on the baseline reads that one too: on Kaggle
the test store has no labels, so its baseline is the raw fit through the training set's calibration.
`K-fold cv:<model>` is `spectramind
cv data.split.folds=K` on the held-out set, each planet predicted by what was fitted on the other folds
(the fit's calibration and the net), the way competitors choose a model. The per-bin oracle is the
simulator's own noise limit for a fit that knows the transit shape (reference section 2). Prints one
JSON object with a table: score, ratio to the oracle and its 95% bootstrap interval over the planets,
RMSE, the share of |z| below 1 and 2 and the worst planet's score per model, every row over the same
planets: the held-out set's labelled ones.

Everything is cached under --out (stores, sidecars, runs): running it again resumes where it stopped.
At full size a visit's raw frames take 0.5 GB, so `--chunk N` streams the held-out set: N planets at a time
(seeds 43, 44, ...) are simulated, calibrated and predicted by every row (the nets trained once before;
`cv:<model>` cross-validates within each chunk, its nets trained on N x (K-1)/K planets), their raw frames
deleted, and the rows scored over all the chunks together. `--refit` predicts the saved chunks' stores
again with the code as it is now and scores them: a change to the fit alone is measured on the same planets
without simulating them again (a change to the calibration, its settings or the shared config code makes
the stores stale, and the fit stage says so; cv rows cannot be redone, their raw frames are gone).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

TRAIN_SEED, HELDOUT_SEED = 42, 43
NETS = ("residual", "cnn1d")  # the rows that train on the training set (cv:<net> trains on the held-out set)
TRAIN_CALIBRATION = "fit+calibration:train"  # what the training set's labels taught the fit (its row's key)
# The fit alone; calibrated on the held-out store's own labelled split, out of fold; and calibrated on the
# training set's labels (what `spectramind predict model=fit` applies to a store without labels).
FIT_ROWS = ("fit", "fit+calibration", TRAIN_CALIBRATION)
BOOTSTRAP_DRAWS = 2000  # resampled planet sets behind each row's ratio_95%


def data_overrides(out: Path, name: str, planets: int, test_fraction: float, args) -> list[str]:
    """One set's data settings: its folders and size, the split it is scored on, and --full-size/--simulate."""
    # Full size: the real read counts, binned as the competition's data is (187 time bins).
    size = ["data.simulate.full_size=true", "data.calibrate.airs_bin=30", "data.calibrate.fgs1_bin=360"]
    # The training set's frames matter only to the rows that learn from them; else it gives only labels.
    learns = any(m in NETS or m == TRAIN_CALIBRATION for m in args.models.split(","))
    full_size = args.full_size and (name != "train" or learns)
    # Each set its own baseline folder: a labelled set's fit stage writes the calibration `model=fit`
    # applies, and the training set's must not be replaced by a held-out chunk's.
    return [*(size if full_size else []), *(f"data.simulate.{o}" for o in args.simulate),
            f"data.root={out / name / 'raw'}", f"data.store={out / name / 'store'}",
            f"data.baseline={out / name / 'baseline'}",
            f"data.simulate.n_train={planets}", "data.simulate.n_test=1", f"data.num_workers={args.workers}",
            "data.split.val_fraction=0.15" if test_fraction == 0 else "data.split.val_fraction=0.0",
            f"data.split.test_fraction={test_fraction}"]


CLI = [sys.executable, "-m", "spectramind"]


def training_args(model: str, out: Path, seed: int, epochs: int) -> list[str]:
    """The overrides every training here runs with: CPU, fp32, one process."""
    return [f"model={model}", f"paths.output_dir={out}", f"seed={seed}", "trainer.device=cpu",
            "trainer.precision=fp32", f"trainer.max_epochs={epochs}", "trainer.batch_size=16",
            "trainer.accumulate_grad_batches=1", "trainer.loader.num_workers=0", "trainer.loader.pin_memory=false",
            "trainer.loader.prefetch_factor=null", "trainer.early_stopping.patience=6"]


def spectramind(command: str, args: list[str]) -> None:
    """A `spectramind` command in a subprocess (the real code path); its stderr's end if it fails."""
    done = subprocess.run([*CLI, command, *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"spectramind {command} {' '.join(args)} failed:\n{done.stderr[-3000:]}")


def train(model: str, out: Path, overrides: list[str], epochs: int) -> Path:
    """`spectramind train` on the training set; returns the run folder."""
    args = [*training_args(model, out, TRAIN_SEED, epochs), *overrides]
    spectramind("train", args)
    hash_ = subprocess.run([*CLI, "config", "hash", *args], capture_output=True, text=True,
                           check=True).stdout.strip()
    return out / "runs" / hash_


def cross_validated(model: str, out: Path, overrides: list[str], folds: int, epochs: int,
                    seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """`spectramind cv data.split.folds=K` on a held-out set (simulated with `seed`): every planet predicted
    by the model (and the fit's label calibration) fitted on the other folds; its out-of-fold submission."""
    from spectramind.evaluate import submission

    start = time.time()
    # The nets' validation planets (early stopping, output calibration) are drawn from the other folds. The
    # split is part of the store's settings, so cv calibrates the same raw set into a store of its own.
    data = [o for o in overrides if not o.startswith(("data.split.val_fraction=", "data.store="))]
    args = [*training_args(model, out / "cv", seed, epochs), *data, f"data.store={out / 'cv' / 'store'}",
            f"data.split.folds={folds}", "data.split.val_fraction=0.15"]
    spectramind("cv", args)
    report = max((out / "cv" / "cv").glob("*/cv.json"), key=lambda p: p.stat().st_mtime)
    oof = submission.read(json.loads(report.read_text())["oof_submission"])
    return oof["planet_id"].to_numpy(), *submission.arrays(oof), time.time() - start


class _RawBaseline(torch.nn.Module):
    """A net fed the baseline as the fit made it (`baseline_*_raw`), not as the held-out labels calibrated it
    (a sidecar the fit stage did not calibrate has no `_raw` values: its own are the fit's)."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net({**batch, **{f"baseline_{k}": batch.get(f"baseline_{k}_raw", batch[f"baseline_{k}"])
                                     for k in ("mu", "sigma")}})


def predict(net, trained, store: Path, steps: list,
            device: str = "cpu") -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """A trained net's predictions for the held-out store's labelled planets; one on the baseline reads the
    raw fit through `steps` (the training set's calibration), as predict does to a store without labels."""
    from spectramind.data.dataset import LightCurveDataset
    from spectramind.evaluate.predict import _Calibrated, combine_visits, predict_visits
    from spectramind.models.baseline import require_baseline

    start = time.time()
    sidecars = require_baseline(trained)
    dataset = LightCurveDataset(store, "all", sidecars=sidecars)
    if sidecars:
        net = _RawBaseline(_Calibrated(net, steps, inputs=True))
    ids, mu, sigma = combine_visits(*predict_visits(net, dataset, 16, device, progress=False))
    return ids, np.maximum(mu, 0.0), sigma, time.time() - start


def fit_from_sidecar(s, store: Path, calibrated: bool,
                     steps: list | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """The physics fit's predictions, computed once (the fit stage) as the sidecar the residual net reads
    too: its calibrated values, or the fit's own (`baseline_*_raw` where the stage calibrated), through
    `steps` when given (what models.calibration.load read: a calibration learned on another set)."""
    import h5py

    from spectramind.data.dataset import LightCurveDataset
    from spectramind.evaluate.predict import combine_visits
    from spectramind.models.baseline import apply_steps, fit_baseline

    start = time.time()
    path = fit_baseline(s, progress=False)["baseline"]
    keys = LightCurveDataset(store, "all").keys  # the labelled planets, as the nets' rows predict them
    with h5py.File(path) as f, h5py.File(store / "lightcurves.h5") as main:
        ids = [int(main["visits"][k].attrs["planet_id"]) for k in keys]
        raw = (steps is not None or not calibrated) and "baseline_mu_raw" in f["visits"][keys[0]]
        suffix = "_raw" if raw else ""
        mu = np.stack([f["visits"][k][f"baseline_mu{suffix}"][()] for k in keys])
        sigma = np.stack([f["visits"][k][f"baseline_sigma{suffix}"][()] for k in keys])
    if steps is not None:
        mu, sigma = apply_steps(steps, mu, sigma)
    ids, mu, sigma = combine_visits(ids, mu, sigma)
    return ids, np.maximum(mu, 0.0), sigma, time.time() - start


def epochs(args, model: str) -> int:  # model=fit trains nothing: its value is only a key of the config
    return args.residual_epochs if model == "residual" else args.cnn_epochs


def row(name: str, s, data: list[str], seed: int, learned: dict, out: Path,
        args) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """One row's (ids, mu, sigma, seconds) on the held-out store of `s` (made from `data` with `seed`): the
    fit, calibrated or not (`learned[name]`: the steps learned on the training set, if any); `cv:<model>`
    on that set, its runs under `out`; or a net (`learned[name]`: its run, its baseline through the steps of
    `learned[TRAIN_CALIBRATION]`)."""
    from spectramind.config.stage import load
    from spectramind.data.store import read_store_attrs
    from spectramind.evaluate.predict import load_model
    from spectramind.models.baseline import fit_baseline

    store = Path(s.data.store)
    if name in FIT_ROWS:
        return fit_from_sidecar(s, store, calibrated=name != "fit", steps=learned.get(name))
    if name.startswith("cv:"):
        model = name.removeprefix("cv:")
        return cross_validated(model, out, data, args.cv_folds, epochs(args, model), seed)
    fit_baseline(s, progress=False)  # the net's input on this store
    target = load([*data, f"seed={seed}", f"paths.output_dir={args.out}", f"model={name}",
                   f"predict.run={learned[name]}"])[1]
    net, trained, _ = load_model(target, read_store_attrs(store))
    return predict(net, trained, store, learned[TRAIN_CALIBRATION])


def streamed_rows(args, names: list[str], learned: dict) -> tuple[dict, dict]:
    """The rows over `args.test_planets` held-out planets, `args.chunk` at a time: each chunk is simulated
    (its own seed), calibrated and predicted by every row (`cv:<model>` cross-validates within the chunk),
    its (y, mu, sigma, oracle sigma) per row saved and its raw frames deleted; a rerun computes only the
    rows a chunk has not saved (`--refit`: every row again, from the chunk's store). Returns per row the
    concatenated (y, mu, sigma, oracle sigma), and the timings."""
    from spectramind import files
    from spectramind.config.stage import load
    from spectramind.data.prepare import calibrate
    from spectramind.data.simulate import simulate_raw
    from spectramind.evaluate.evaluate import load_truth

    keys = ("y", "mu", "sigma", "opt")
    timings = {"heldout_data_s": 0.0, **{f"{name}_s": 0.0 for name in names}}
    parts: dict[str, list] = {name: [] for name in names}
    for c in range(-(-args.test_planets // args.chunk)):
        planets = min(args.chunk, args.test_planets - c * args.chunk)
        folder = args.out / "heldout" / f"chunk{c}"
        saved = folder / "rows.npz"
        rows = {}
        if saved.is_file():
            with np.load(saved) as f:
                rows = dict(f)
        todo = [name for name in names if args.refit or f"{name}/y" not in rows]
        if todo:
            data = data_overrides(folder.parent, folder.name, planets, 0.5, args)
            s = load([*data, f"seed={HELDOUT_SEED + c}", f"paths.output_dir={args.out}"])[1]
            if not saved.is_file():
                t0 = time.time()
                simulate_raw(s, progress=False)
                calibrate(s, progress=False)
                timings["heldout_data_s"] += time.time() - t0
            elif cv := [name for name in todo if name.startswith("cv:")]:
                raise SystemExit(f"{folder}: its raw frames are deleted, and {cv} need them (cv calibrates "
                                 "them again); give a new --out")
            for name in todo:
                ids, mu, sigma, seconds = row(name, s, data, HELDOUT_SEED + c, learned, folder, args)
                timings[f"{name}_s"] += seconds
                y, _, _, sigma_opt = load_truth(s.data.root, ids)
                if sigma_opt is None:
                    raise SystemExit(f"{s.data.root}: the simulator wrote no oracle noise file")
                rows.update(zip((f"{name}/{k}" for k in keys), (y, mu, sigma, sigma_opt), strict=True))
            with files.atomic_path(saved) as tmp, open(tmp, "wb") as fh:
                np.savez(fh, **rows)
            for signal in Path(s.data.root).rglob("*.parquet"):  # the frames; the labels and star info stay
                signal.unlink()
        for name in names:
            parts[name].append([rows[f"{name}/{k}"] for k in keys])
        print(json.dumps({"chunk": c, "planets": planets, "computed": todo}), file=sys.stderr, flush=True)
    joined = {name: [np.concatenate(column) for column in zip(*chunks, strict=True)] for name, chunks in parts.items()}
    return joined, {k: round(v, 1) for k, v in timings.items()}


def training_calibration(training) -> list:
    """The steps the fit stage learned from the training set's labels (models.calibration.load)."""
    from spectramind.data.prepare import calibrate
    from spectramind.models import calibration as cal
    from spectramind.models.baseline import calibration_path, fit_baseline, sidecar_calibrated

    calibrate(training, progress=False)
    if not sidecar_calibrated(Path(fit_baseline(training, progress=False)["baseline"])):
        raise SystemExit(f"{training.data.store}: too few labelled planets to calibrate the fit on")
    return cal.load(calibration_path(training))


def planet_scores(y, mu, sigma, sigma_opt, naive_mean, naive_sigma) -> tuple[np.ndarray, np.ndarray]:
    """Each planet's score and its oracle's (its bins weighted as the competition weights them)."""
    from spectramind import metric

    ind = metric.element_scores(y, mu, sigma, naive_mean, naive_sigma)
    score = np.array([metric.weighted_score(ind[i:i + 1], clip=False) for i in range(len(y))])
    oracle = np.array([metric.oracle_score(y[i:i + 1], sigma_opt[i:i + 1], naive_mean, naive_sigma)
                       for i in range(len(y))])
    return score, oracle


def ratio_interval(score: np.ndarray, oracle: np.ndarray, draws: int = BOOTSTRAP_DRAWS) -> list[float]:
    """The central 95% of the ratio to the oracle over held-out sets of the same size drawn from these
    planets with replacement: how far another set of planets could move the row (every planet weighs the
    same in the score, so a set's ratio is its mean planet score over its mean oracle score)."""
    picks = np.random.default_rng(0).integers(0, len(score), (draws, len(score)))
    ratios = score[picks].mean(1) / oracle[picks].mean(1)
    return [round(float(v), 4) for v in np.percentile(ratios, [2.5, 97.5])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/bench_quality"))
    parser.add_argument("--train-planets", type=int, default=200)
    parser.add_argument("--test-planets", type=int, default=200)
    parser.add_argument("--residual-epochs", type=int, default=40)
    parser.add_argument("--cnn-epochs", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--full-size", action="store_true", help="the real read counts (slow: ~20 s a visit)")
    parser.add_argument("--models", default="fit,fit+calibration,residual,cnn1d,cv:residual",
                        help="rows; cv:<model> is `spectramind cv` on the held-out set, out of fold")
    parser.add_argument("--cv-folds", type=int, default=8)
    parser.add_argument("--simulate", action="append", default=[], metavar="KEY=VALUE",
                        help="a data.simulate setting for both sets, e.g. limb_darkening=quadratic (repeatable)")
    parser.add_argument("--chunk", type=int, default=0,
                        help="stream the held-out set N planets at a time (cv within each chunk; 0: all at once)")
    parser.add_argument("--refit", action="store_true",
                        help="with --chunk: fit the saved chunks' stores again with the code as it is now")
    args = parser.parse_args()
    models = args.models.split(",")
    if args.refit and not args.chunk:
        parser.error("--refit fits the streamed chunks' stores again: it needs --chunk")

    from spectramind.config.stage import load
    from spectramind.data.simulate import simulate_raw
    from spectramind.data.store import read_store_attrs
    from spectramind.evaluate.evaluate import score_report
    from spectramind.metric import naive_stats

    timings = {}
    # The training set's bytes matter only to the rows that learn from it; else it gives the naive reference.
    train_data = data_overrides(args.out, "train", args.train_planets, 0.0, args)
    t0 = time.time()
    training = load([*train_data, f"seed={TRAIN_SEED}", f"paths.output_dir={args.out}"])[1]
    simulate_raw(training, progress=False)  # its labels give the naive reference; `spectramind train` finds it
    timings["train_data_s"] = round(time.time() - t0, 1)
    train_raw = Path(training.data.root)
    naive_mean, naive_sigma = naive_stats(pd.read_csv(train_raw / "train.csv").set_index("planet_id"))
    rows = {}

    def score(name: str, y, mu, sigma, sigma_opt) -> None:
        metrics, _ = score_report(y, mu, sigma, naive_mean, naive_sigma, sigma_opt)
        rows[name] = {k: round(metrics[k], 4) for k in ("score", "ratio_to_oracle", "rmse", "within_1sigma",
                                                         "within_2sigma", "within_1sigma_fgs1")}
        per_planet, oracles = planet_scores(y, mu, sigma, sigma_opt, naive_mean, naive_sigma)
        rows[name]["ratio_95%"] = ratio_interval(per_planet, oracles)
        rows[name]["worst_planet"] = round(float(per_planet.min()), 4)
        rows.setdefault("per_bin_oracle", {"score": round(metrics["oracle_score"], 4), "ratio_to_oracle": 1.0})
        print(json.dumps({name: rows[name]}), file=sys.stderr, flush=True)

    learned = {}  # what the training set taught a row: a net's run, the fit's calibration steps (nets' too)
    for name in (m for m in models if m in NETS):  # builds its missing inputs (calibrate, fit)
        t0 = time.time()
        learned[name] = train(name, args.out, train_data, epochs(args, name))
        timings[f"{name}_train_s"] = round(time.time() - t0, 1)
    if TRAIN_CALIBRATION in models or any(m in NETS for m in models):
        learned[TRAIN_CALIBRATION] = training_calibration(training)
    if args.chunk:
        streamed, chunk_timings = streamed_rows(args, models, learned)
        timings.update(chunk_timings)
        for name, (y, mu, sigma, sigma_opt) in streamed.items():
            score(cv_name(name, args), y, mu, sigma, sigma_opt)
        planets, time_bins = len(y), read_store_attrs(args.out / "heldout" / "chunk0" / "store")["n_time"]
    else:
        planets, time_bins = heldout_rows(args, models, learned, timings, score)

    report = {"heldout_planets": planets, "train_planets": args.train_planets, "heldout_seed": HELDOUT_SEED,
              "chunk": args.chunk or None, "simulate": args.simulate,
              "cv_planets": "within each chunk" if args.chunk else "the whole held-out set", "train_seed": TRAIN_SEED,
              "time_bins": time_bins, "table": rows, "timings_s": timings,
              "goals": {"fit >= 0.85 x oracle": rows.get("fit", {}).get("ratio_to_oracle", 0) >= 0.85,
                        "calibrated >= 1.0 x oracle": {k: r["ratio_to_oracle"] >= 1.0 for k, r in rows.items()
                                                       if k not in ("fit", "per_bin_oracle")},
                        "|z|<1 in 0.62-0.74": {k: 0.62 <= r.get("within_1sigma", 0) <= 0.74
                                               for k, r in rows.items() if "within_1sigma" in r},
                        "no planet below 0": {k: r["worst_planet"] >= 0 for k, r in rows.items()
                                              if "worst_planet" in r}}}
    print(json.dumps(report, indent=2))


def cv_name(name: str, args) -> str:
    return f"{args.cv_folds}-fold {name}" if name.startswith("cv:") else name


def heldout_rows(args, models: list[str], learned: dict, timings: dict, score) -> tuple[int, int]:
    """Every row on the held-out set built at once; returns its planet and time-bin counts."""
    from spectramind.config.stage import load
    from spectramind.data.prepare import calibrate
    from spectramind.data.simulate import simulate_raw
    from spectramind.data.store import read_store_attrs
    from spectramind.evaluate.evaluate import load_truth

    start = time.time()
    heldout_data = data_overrides(args.out, "heldout", args.test_planets, 0.5, args)  # scored on "all"
    heldout = load([*heldout_data, f"seed={HELDOUT_SEED}", f"paths.output_dir={args.out}"])[1]
    simulate_raw(heldout, progress=False)
    calibrate(heldout, progress=False)
    timings["heldout_data_s"] = round(time.time() - start, 1)
    for name in models:
        ids, mu, sigma, seconds = row(name, heldout, heldout_data, HELDOUT_SEED, learned, args.out, args)
        timings[f"{name}_s"] = round(seconds, 1)
        y, _, _, sigma_opt = load_truth(heldout.data.root, ids)
        score(cv_name(name, args), y, mu, sigma, sigma_opt)
    return len(ids), read_store_attrs(Path(heldout.data.store))["n_time"]


if __name__ == "__main__":
    main()
