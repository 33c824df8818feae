"""`spectramind predict`: a model (from a training run, or the physics fit with none) over a split of the
calibrated store, visits combined per planet, written as a validated submission.csv.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

from spectramind import files
from spectramind.config import runhash
from spectramind.config.settings import Settings
from spectramind.data import ariel_format as af
from spectramind.devices import resolve_device
from spectramind.errors import ConfigError, DataError, SpectraMindError
from spectramind.evaluate import submission

FIT_TARGET = "spectramind.models.fit.PhysicsFit"


def combine_visits(planet_ids, mu, sigma) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One row per planet from per-visit rows: the inverse-variance mean, and an honest sigma.

    Visits that disagree more than their sigmas allow widen the result two ways: the planet's sigma is
    scaled by sqrt(reduced chi^2) over all bins when that exceeds 1 (Birge ratio), and no bin's sigma
    falls below the weighted spread of its visits' values. Planets keep the order of first appearance.
    """
    planet_ids = np.asarray(planet_ids)
    mu, sigma = np.asarray(mu, dtype=np.float64), np.asarray(sigma, dtype=np.float64)
    ids, first, inverse = np.unique(planet_ids, return_index=True, return_inverse=True)
    order = np.argsort(first)
    inverse = np.argsort(order)[inverse]                      # planet index per row, in first-seen order
    n = len(ids)
    w = sigma**-2.0
    sum_w = np.zeros((n, mu.shape[1]))
    np.add.at(sum_w, inverse, w)
    mean = np.zeros_like(sum_w)
    np.add.at(mean, inverse, w * mu)
    mean /= sum_w
    spread2 = np.zeros_like(sum_w)
    np.add.at(spread2, inverse, w * (mu - mean[inverse]) ** 2)   # sum of squared z over visits
    visits = np.bincount(inverse, minlength=n)[:, None]
    birge = np.where(visits > 1, spread2.sum(1, keepdims=True) / np.maximum(visits - 1, 1) / mu.shape[1], 1.0)
    combined = sum_w**-0.5 * np.sqrt(np.maximum(birge, 1.0))
    combined = np.maximum(combined, np.sqrt(spread2 / sum_w))
    return ids[order], mean, combined


def resolve_run(s: Settings) -> Path:
    """The training run `predict.run` names: a folder path, a run hash, `latest`, or an outputs root
    holding a run index. `latest` (and a root) is the newest finished train run (complete, or stopped by
    a guard) that has a loadable checkpoint and was trained with this config's model and data settings."""
    run, output_dir = s.predict.run, s.paths.output_dir
    if run == "latest" or (Path(run) / runhash.INDEX_NAME).is_file():
        return _newest_fitting(s, Path(output_dir if run == "latest" else run) / runhash.INDEX_NAME)
    folder = Path(run) if Path(run).is_dir() else runhash.run_dir(output_dir, run)
    if not (folder / "config.yaml").is_file():
        raise ConfigError(f"predict.run: {run!r} is neither a run folder nor a run hash under "
                          f"{output_dir}/runs")
    return folder


def _newest_fitting(s: Settings, index_path: Path) -> Path:
    from spectramind.train import checkpoint

    index = json.loads(index_path.read_text(encoding="utf-8")) if index_path.exists() else {}
    finished = sorted(((entry.get("updated", ""), h) for h, entry in index.items()
                       if entry.get("command") == "train" and entry.get("status") in ("complete", "stopped")),
                      reverse=True)
    if not finished:
        raise ConfigError(f"predict.run={s.predict.run}: no complete or stopped train run in {index_path}")
    why = []
    for _, hash_ in finished:
        folder = runhash.run_dir(index_path.parent, hash_)
        try:
            differs = difference(_matched(s), _matched(trained_settings(folder)))
            if differs is None:
                checkpoint.load(checkpoint_path(folder))
                return folder
            why.append(f"{hash_} was trained with other {differs}")
        except SpectraMindError as e:
            why.append(f"{hash_}: {e}")
    raise ConfigError(f"predict.run={s.predict.run}: none of the {len(finished)} finished train runs in "
                      f"{index_path} fits this config; the newest, {why[0]}")


def _matched(s: Settings) -> dict:
    """The settings a trained model must share with the config predicting with it, as plain values
    without the fields that change nothing about the result (where the data lives, how many workers)."""
    model = {"_target_": s.model.target, **s.model.params}
    return json.loads(runhash.canonical({"model": model, "data": dataclasses.asdict(s.data)}))


def difference(ours: dict, theirs: dict, where: str = "") -> str | None:
    """The first dotted key whose value differs, as `key (theirs, here ours)`; None when all are equal."""
    for key in sorted(set(ours) | set(theirs)):
        a, b, dotted = ours.get(key), theirs.get(key), f"{where}.{key}" if where else key
        if isinstance(a, dict) and isinstance(b, dict):
            found = difference(a, b, dotted)
            if found is not None:
                return found
        elif a != b:
            return f"{dotted} ({b!r}, here {a!r})"
    return None


def checkpoint_path(run_dir: Path) -> Path:
    for name in ("best.pt", "last.pt"):
        if (run_dir / "checkpoints" / name).is_file():
            return run_dir / "checkpoints" / name
    raise DataError(f"{run_dir / 'checkpoints'}: no best.pt or last.pt; train this run first")


def trained_settings(folder: Path) -> Settings:
    """The settings a training run was made with, from its config.yaml (see run_config)."""
    from spectramind.config.settings import build

    return build(run_config(folder))


def run_config(folder: Path) -> dict:
    """A run's resolved config.yaml, through the same schema and `_target_` allowlist as any config
    (nested nodes included): a crafted run folder cannot name a callable of its own. A refused config is a
    config error: nothing has run."""
    import yaml

    from spectramind.config.schema import validate

    path = folder / "config.yaml"
    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise DataError(f"{path}: unreadable run config ({str(e).splitlines()[0]})") from e
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: expected a mapping of config sections, got {type(cfg).__name__}")
    try:
        validate(cfg)
    except ConfigError as e:
        raise ConfigError(f"{path}: not a valid run config ({e})") from e
    return cfg


def build_model(s: Settings, attrs: dict, state: dict | None = None) -> torch.nn.Module:
    """The model of `s` sized for the store, with the weights of `state` when given."""
    from spectramind.models.baseline import fit_kwargs

    n_star = attrs.get("n_star", len(attrs["star_columns"]))
    model = s.model.instantiate(n_time=attrs["n_time"], n_bins=attrs["n_bins"], n_star=n_star, **fit_kwargs(s))
    if state is not None:
        model.load_state_dict(state["model"])
    return model.eval()


def require_run(s: Settings) -> Path | None:
    """The run folder (or exported model folder) to predict with (None for the physics fit), checked
    before any input is built: it resolves, its config passes the schema and the allowlist, and an
    export's calibration and fit settings are this config's."""
    from spectramind.evaluate import export

    if s.predict.run is None:
        if s.model.target != FIT_TARGET:
            raise ConfigError(f"predict.run: required for model {s.model.target} (a run folder, a run "
                              "hash, 'latest' or an exported model folder); only model=fit predicts without training")
        return None
    folder = resolve_run(s)
    trained = trained_settings(folder)
    if export.is_export(folder):
        export.read_meta(folder)
        export.check_settings(s, folder, trained)
    return folder


def load_model(s: Settings, attrs: dict) -> tuple[torch.nn.Module, Settings, dict]:
    """The model to predict with, the settings it was made with, and where it came from: a run's
    checkpoint or an export's weights (their own settings win over the current ones, the data's
    folders aside), or the physics fit, which needs no run."""
    from spectramind.evaluate import export
    from spectramind.train import checkpoint

    folder = require_run(s)
    if folder is None:
        return build_model(s, attrs), s, {"model": FIT_TARGET, "run": None}
    trained = dataclasses.replace(trained_settings(folder), data=s.data)
    if export.is_export(folder):
        export.check_store(folder, attrs)
        ckpt, state = folder / export.WEIGHTS, {"model": export.load_weights(folder)}
    else:
        ckpt = checkpoint_path(folder)
        state = checkpoint.load(ckpt)
    source = {"model": trained.model.target, "run": str(folder), "checkpoint": str(ckpt)}
    return _calibrated_outputs(build_model(trained, attrs, state), folder, trained, source), trained, source


def _calibrated_outputs(net: torch.nn.Module, folder: Path, trained: Settings, source: dict) -> torch.nn.Module:
    """A trained net through the output calibration its run fitted on the validation split (an export
    carries a copy), when its run asked for one (trainer.calibrate_outputs)."""
    from spectramind.models import calibration as cal

    if not trained.trainer.calibrate_outputs:
        return net
    path = folder / cal.OUTPUTS_FILE
    if not path.is_file():
        raise DataError(f"{path}: missing, yet the run was trained with trainer.calibrate_outputs=true; run "
                        "`spectramind train` with its config again to write it (nothing is retrained)")
    source["output_calibration"] = str(path)
    return _Calibrated(net, cal.load(path), inputs=False).eval()


class _Calibrated(torch.nn.Module):
    """A net whose baseline inputs (`inputs`), or whose own outputs, go through learned calibration steps."""

    def __init__(self, net: torch.nn.Module, steps: list, inputs: bool):
        super().__init__()
        self.net, self.steps, self.inputs = net, steps, inputs

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.inputs:
            mu, sigma = _through(self.steps, batch["baseline_mu"], batch["baseline_sigma"])
            return self.net({**batch, "baseline_mu": mu, "baseline_sigma": sigma})
        return _through(self.steps, *self.net(batch))


def _through(steps: list, mu: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    from spectramind.models.baseline import apply_steps

    mu_cal, sigma_cal = apply_steps(steps, mu.detach().cpu().numpy(), sigma.detach().cpu().numpy())
    return torch.from_numpy(mu_cal).to(mu), torch.from_numpy(sigma_cal).to(sigma)


def _baseline_as_trained(net: torch.nn.Module, trained: Settings, source: dict, sidecars) -> torch.nn.Module:
    """A model on the baseline was trained on the label-calibrated baseline when its store had the labels
    for it; a store without them (test/ alone, on Kaggle) has an uncalibrated one, so the calibration the
    fit learned (an export's copy, else the one in data.baseline) is applied to its inputs instead."""
    from spectramind.evaluate import export
    from spectramind.models import calibration as cal
    from spectramind.models.baseline import calibration_path, sidecar_calibrated

    if not sidecars or sidecar_calibrated(sidecars[0]):
        return net
    folder = Path(source["run"])
    path = folder / export.CALIBRATION if export.is_export(folder) else calibration_path(trained)
    if not path.is_file():
        return net
    source["calibration"] = str(path)
    return _Calibrated(net, cal.load(path), inputs=True).eval()


def split_folders(split: str) -> tuple[str, ...]:
    """The raw folders a split of the store comes from: only test/ for the submission's planets."""
    return {"predict": ("test",), "all": ("train", "test")}.get(split, ("train",))


@torch.no_grad()
def predict_visits(model: torch.nn.Module, dataset, batch_size: int, device: torch.device | str,
                   progress: bool = True):
    """Per-visit (planet_ids, mu, sigma) as numpy arrays, in the dataset's order."""
    from torch.utils.data import DataLoader

    from spectramind.progress import bar

    model = model.to(device)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    ids, mus, sigmas = [], [], []
    with bar("predict", len(dataset), enabled=progress) as advance:
        for batch in loader:
            empty = ~torch.isfinite(batch["flux"]).flatten(1).any(1)
            if empty.any():
                i = int(empty.nonzero()[0, 0])
                raise DataError(f"{dataset.store}: visit {int(batch['planet_id'][i])}_{int(batch['visit'][i])} "
                                "has no finite flux value; expected calibrated light curves")
            tensors = {k: v.to(device) for k, v in batch.items() if torch.is_tensor(v) and k != "planet_id"}
            mu, sigma = model(tensors)
            ids.append(np.asarray(batch["planet_id"]))
            mus.append(mu.float().cpu().numpy())
            sigmas.append(sigma.float().cpu().numpy())
            for _ in range(len(mu)):
                advance()
    if not ids:
        raise DataError("predict: the selected split holds no visits")
    return np.concatenate(ids), np.concatenate(mus), np.concatenate(sigmas)


def predict(s: Settings, run_dir: Path, *, split: str | None = None, out: str | None = None, events=None,
            progress: bool = True) -> dict:
    """Write a validated submission.csv for the planets of `split` (default predict.split); returns a summary.

    Every file goes to `out`'s folder (default predict.out) when given, else to this stage's own `run_dir`:
    a finished training run is never written into.
    """
    from spectramind.data.dataset import LightCurveDataset, read_store_attrs
    from spectramind.data.prepare import require_store
    from spectramind.models.baseline import label_calibration, require_baseline

    start = time.time()
    split = split or s.predict.split
    out = out or s.predict.out
    require_run(s)  # before anything is read: fail at start-up
    store = require_store(s, split_folders(split))
    attrs = read_store_attrs(store)
    if attrs["n_bins"] != af.N_BINS:
        raise DataError(f"{store}: light curves of {attrs['n_bins']} bins; expected {af.N_BINS} (FGS1 and "
                        "282 AIRS bins, the submission's), re-run `spectramind calibrate`")
    net, trained, source = load_model(s, attrs)
    dev = resolve_device(s.predict.device, "predict.device")
    sidecars = require_baseline(trained)
    net = _baseline_as_trained(net, trained, source, sidecars)
    dataset = LightCurveDataset(store, split, sidecars=sidecars, held_out=s.data.split.held_out)
    visit_ids, visit_mu, visit_sigma = predict_visits(net, dataset, s.predict.batch_size, dev, progress)
    if source["model"] == FIT_TARGET:  # what `spectramind fit` learned from labels, when it has
        visit_mu, visit_sigma, source["calibration"] = label_calibration(s, visit_mu, visit_sigma)
    ids, mu, sigma = combine_visits(visit_ids, visit_mu, visit_sigma)
    negative = int((mu < 0).sum())
    mu = np.maximum(mu, 0.0)  # a depth cannot be negative and the scorer rejects negative values
    sample = Path(s.data.root) / "sample_submission.csv"
    columns = submission.sample_columns(sample, mu.shape[1])
    # The test/ folder's planets are exactly the sample submission's: any other set would be rejected.
    expected = submission.sample_ids(sample) if split == "predict" and sample.is_file() else None
    folder = Path(out).parent if out else Path(run_dir)
    path = submission.write(Path(out) if out else folder / "submission.csv", ids, mu, sigma,
                            expected_ids=expected, columns=columns)
    summary = {"submission": str(path), "folder": str(folder), "planets": len(ids), "visits": len(dataset),
               "split": split, "mu_clipped_to_zero": negative, "seconds": round(time.time() - start, 2),
               **source}
    files.write_json(folder / "predict_summary.json", summary)
    if events is not None:
        events.emit("predict", **summary)
    return summary
