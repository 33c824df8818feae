"""`spectramind evaluate`: predict a labelled split, then score it against the truth.

Writes metrics.json (score, GLL, RMSE of mu, sigma calibration as the share of |z| below 1 and 2, and
on simulated data the per-bin oracle's score and the ratio to it), per_bin.csv, two PNGs and, where the
store has a physics baseline, fit_flags.csv: per visit, the reasons the fit widened its sigma.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from spectramind import files, metric
from spectramind.config.settings import Settings
from spectramind.data import ariel_format as af
from spectramind.errors import DataError
from spectramind.evaluate import plots, submission
from spectramind.physics.wavelengths import target_wavelengths_um

TRUTH_FILES = ("train.csv", "simulation_test_truth.csv")  # labels (the first is the competition's too)
NOISE_FILE = "simulation_noise.csv"                        # the simulator's oracle sigma per planet and bin


def score_report(y: np.ndarray, mu: np.ndarray, sigma: np.ndarray, naive_mean: float, naive_sigma: float,
                 sigma_opt: np.ndarray | None = None) -> tuple[dict, pd.DataFrame]:
    """Summary metrics and a per-bin table for aligned (planets, bins) arrays."""
    ind = metric.element_scores(y, mu, sigma, naive_mean, naive_sigma)
    z = np.abs(mu - y) / np.maximum(sigma, metric.SIGMA_FLOOR)
    gll = metric.gll(y, mu, np.maximum(sigma, metric.SIGMA_FLOOR))
    out = {
        "score": metric.weighted_score(ind),
        "score_unclipped": metric.weighted_score(ind, clip=False),
        "gll": float(gll.mean()),
        "rmse": float(np.sqrt(np.mean((mu - y) ** 2))),
        "rmse_fgs1": float(np.sqrt(np.mean((mu[:, 0] - y[:, 0]) ** 2))),
        "within_1sigma": float((z < 1).mean()),
        "within_2sigma": float((z < 2).mean()),
        "within_1sigma_fgs1": float((z[:, 0] < 1).mean()),
        "planets": int(len(y)),
        "naive_mean": naive_mean,
        "naive_sigma": naive_sigma,
    }
    if sigma_opt is not None:
        out["oracle_score"] = metric.oracle_score(y, sigma_opt, naive_mean, naive_sigma)
        oracle = out["oracle_score"]
        out["ratio_to_oracle"] = out["score"] / oracle if oracle > 0 else float("nan")
    per_bin = pd.DataFrame({
        "bin": np.arange(1, y.shape[1] + 1), "wavelength_um": target_wavelengths_um(y.shape[1]),
        "score": ind.mean(0), "gll": gll.mean(0), "rmse": np.sqrt(((mu - y) ** 2).mean(0)),
        "mean_sigma": sigma.mean(0), "within_1sigma": (z < 1).mean(0), "within_2sigma": (z < 2).mean(0)})
    return out, per_bin


def load_truth(root: str | Path, ids) -> tuple[np.ndarray, float, float, np.ndarray | None]:
    """Labels of `ids` (in order), the training labels' naive mean/sigma, and the oracle sigma if known."""
    root = Path(root)
    train = af.read_targets(root, "train.csv")
    naive_mean, naive_sigma = metric.naive_stats(train.to_numpy())
    labels = pd.concat([af.read_targets(root, name) for name in TRUTH_FILES if (root / name).is_file()])
    missing = sorted(set(ids) - set(labels.index))
    if missing:
        raise DataError(f"{root}: no labels for {len(missing)} of the {len(ids)} planets to evaluate "
                        f"(e.g. {missing[0]}); evaluate a labelled split (evaluate.split=test)")
    y = labels.loc[list(ids)].to_numpy(np.float64)
    sigma_opt = None
    if (root / NOISE_FILE).is_file():
        noise = pd.read_csv(root / NOISE_FILE).set_index("planet_id")
        if set(ids) <= set(noise.index):
            sigma_opt = noise.loc[list(ids), list(af.SIGMA_COLUMNS)].to_numpy(np.float64)
    return y, naive_mean, naive_sigma, sigma_opt


def evaluate(s: Settings, run_dir: Path, events=None, progress: bool = True) -> dict:
    """Predict `evaluate.split`, score it, and write metrics.json, per_bin.csv and the PNGs beside the
    submission: in `evaluate.out_dir` when given, else in this stage's own `run_dir`."""
    from spectramind.evaluate.predict import predict
    from spectramind.models.baseline import visit_reasons

    out_dir = Path(s.evaluate.out_dir) if s.evaluate.out_dir else Path(run_dir)
    pred = predict(s, run_dir, split=s.evaluate.split, out=str(out_dir / "submission.csv"), events=events,
                   progress=progress)
    frame = submission.read(pred["submission"])
    ids = frame["planet_id"].tolist()
    mu, sigma = submission.arrays(frame)
    y, naive_mean, naive_sigma, sigma_opt = load_truth(s.data.root, ids)
    metrics, per_bin = score_report(y, mu, sigma, naive_mean, naive_sigma, sigma_opt)
    metrics.update(split=s.evaluate.split, model=pred["model"], run=pred["run"], predict_seconds=pred["seconds"])
    folder = out_dir
    reasons = visit_reasons(s, ids)
    if reasons is not None:
        # Why the physics fit widened a visit's sigma, per planet: a planet scoring badly with no reason
        # here is a fit that was wrong and sure.
        with files.atomic_path(folder / "fit_flags.csv") as tmp:
            pd.DataFrame([{**r, "reasons": " ".join(r["reasons"])} for r in reasons]).to_csv(tmp, index=False)
        counts: dict[str, int] = {}
        for r in reasons:
            for name in r["reasons"]:
                counts[name] = counts.get(name, 0) + 1
        metrics["fit_flags"] = dict(sorted(counts.items()))
    files.write_json(folder / "metrics.json", metrics)
    with files.atomic_path(folder / "per_bin.csv") as tmp:
        per_bin.to_csv(tmp, index=False)
    wl = per_bin["wavelength_um"].to_numpy()
    figures = [plots.spectra(folder / "spectra.png", wl, ids, y, mu, sigma, s.evaluate.plot_planets),
               plots.score_per_wavelength(folder / "score_per_wavelength.png", per_bin)]
    if events is not None:
        events.emit("evaluate", **{k: v for k, v in metrics.items()
                                   if not isinstance(v, float) or np.isfinite(v)})
    return {**metrics, "metrics": str(folder / "metrics.json"), "figures": [str(f) for f in figures]}
