"""`spectramind export`: a training run as a self-contained model folder, which `spectramind predict
run=<folder>` loads on a machine that has never seen the run (a Kaggle notebook, a colleague's laptop).

Layout (written into a temporary folder beside OUT and renamed when complete):
    model.safetensors   the weights (no pickle), with the package version and run hash as metadata
    config.yaml         the run's resolved config: loaded through the schema and the `_target_` allowlist
    store.json          the store the model was trained on: schema version, shapes, star and jitter
                        columns, normalisation statistics (target/star mean and std, the metric's naive ones)
    export.json         format, package version, run hash, checkpoint, the overrides that select the
                        export's model, fit and calibration settings over the shipped configs, the metrics
    calibration.npz     what `spectramind fit` learned from labels for the run's fit settings, when it
                        learned something: a model on the baseline that was trained on the calibrated
                        baseline gets it applied to a store that has no labels of its own (predict.py)
    output_calibration.npz  the net's own calibration, fitted on its validation split after training,
                        when the run made one (trainer.calibrate_outputs)
    README.md           the model card
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

import xxhash
import yaml

import spectramind
from spectramind import files
from spectramind.config import runhash
from spectramind.config.settings import Settings
from spectramind.errors import ConfigError, DataError
from spectramind.models.calibration import OUTPUTS_FILE

FORMAT = 1
WEIGHTS, CONFIG, STORE, META, CALIBRATION, CARD = ("model.safetensors", "config.yaml", "store.json", "export.json",
                                                  "calibration.npz", "README.md")
FILES = (WEIGHTS, CONFIG, STORE, META, CALIBRATION, OUTPUTS_FILE, CARD)
# Store attributes that describe what the model reads, not where the store came from.
STORE_KEYS = ("schema_version", "n_time", "n_bins", "star_columns", "jitter_columns", "target_mean", "target_std",
              "star_mean", "star_std", "naive_mean", "naive_sigma")
# The run's summary and its newest evaluation, as the model card and export.json report them.
SUMMARY_KEYS = ("status", "stop_reason", "epochs", "best_metric", "wall_time_s", "profile")
EVALUATION_KEYS = ("score", "split", "planets", "within_1sigma", "within_2sigma", "oracle_score", "ratio_to_oracle")


def is_export(folder: str | Path) -> bool:
    return (Path(folder) / WEIGHTS).is_file()


def export(s: Settings, out: str | Path) -> dict:
    """Write the training run `predict.run` names as a model folder at `out` (absent or empty)."""
    from safetensors.torch import save_file

    from spectramind.data.prepare import require_store
    from spectramind.data.store import read_store_attrs
    from spectramind.evaluate.predict import checkpoint_path, require_run, trained_settings
    from spectramind.train import checkpoint

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out}: the export folder exists and is not empty; name a new folder")
    folder = require_run(s)
    if folder is None:
        raise ConfigError("predict.run: name the training run to export (a run folder, a run hash or 'latest'); "
                          "model=fit has no weights")
    if is_export(folder):
        raise ConfigError(f"predict.run: {folder} is already an exported model folder; copy it instead")
    run = trained_settings(folder)
    # The run's own settings, with this config's folders (where the store and its baseline live here).
    trained = dataclasses.replace(run, data=dataclasses.replace(
        run.data, root=s.data.root, store=s.data.store, baseline=s.data.baseline))
    ckpt = checkpoint_path(folder)
    state = checkpoint.load(ckpt)["model"]
    store = {k: v for k, v in read_store_attrs(require_store(trained, ("train",))).items() if k in STORE_KEYS}
    calibration = _calibration(trained)
    meta = {"format": FORMAT, "spectramind": spectramind.__version__, "run": folder.name, "checkpoint": ckpt.name,
            "model": run.model.target, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "overrides": selecting_overrides(yaml.safe_load((folder / CONFIG).read_text(encoding="utf-8"))),
            "calibration": CALIBRATION if calibration else None, "metrics": _metrics(folder)}
    with files.atomic_folder(out) as tmp:
        save_file({k: v.contiguous() for k, v in state.items()}, tmp / WEIGHTS,
                  metadata={"spectramind": meta["spectramind"], "run": meta["run"], "format": str(FORMAT)})
        (tmp / WEIGHTS).chmod(0o644)  # safetensors writes it private; the export is meant to be shared
        shutil.copyfile(folder / CONFIG, tmp / CONFIG)
        files.write_json(tmp / STORE, store)
        if calibration:
            shutil.copyfile(calibration, tmp / CALIBRATION)
        if (folder / OUTPUTS_FILE).is_file():
            shutil.copyfile(folder / OUTPUTS_FILE, tmp / OUTPUTS_FILE)
        files.write_json(tmp / META, meta)
        files.write_text(tmp / CARD, model_card(meta, run, store))
    return {"out": str(out), **meta}


def _calibration(trained: Settings) -> Path | None:
    """The fit's label calibration for the run's fit settings, when it is the one the model was trained with:
    a model on the baseline saw it in its inputs exactly when its store's baseline was calibrated."""
    from spectramind.models.baseline import calibration_path, require_baseline, sidecar_calibrated

    path = calibration_path(trained)
    sidecars = require_baseline(trained)
    if sidecars and not sidecar_calibrated(sidecars[0]):
        return None
    if sidecars and not path.is_file():
        raise DataError(f"{path}: missing, yet the baseline {sidecars[0]} was calibrated with it; "
                        "run `spectramind fit` again")
    return path if path.is_file() else None


def _metrics(folder: Path) -> dict:
    summary = files.read_json(folder / "summary.json")
    evaluated = runhash.evaluations(folder.parents[1]).get(folder.name)
    scored = files.read_json(runhash.run_dir(folder.parents[1], evaluated) / "metrics.json") if evaluated else {}
    return {"train": {k: summary[k] for k in SUMMARY_KEYS if k in summary},
            "evaluate": {k: scored[k] for k in EVALUATION_KEYS if k in scored}}


def selecting_overrides(cfg: dict) -> list[str]:
    """Hydra overrides that give a composed config the model, fit and calibration sections of `cfg`: what
    predicting from the export needs (the model's group, so that its inputs are built; the fit and the
    calibration it was trained on), as differences from the shipped configs."""
    from spectramind.config.compose import compose, config_dir

    def options(group: str) -> dict[str, dict]:
        return {o.stem: compose([f"{group}={o.stem}"]) for o in sorted((config_dir() / group).glob("*.yaml"))}

    target = cfg["model"]["_target_"]
    models = options("model")
    group = next((g for g, c in models.items() if c["model"]["_target_"] == target), None)
    if group is None:
        raise ConfigError(f"model._target_: {target} is not the target of any model option ({', '.join(models)})")
    base = models[group]
    changed = [f"model={group}"]
    changed += [f"model.{k}={_value(v)}" for k, v in sorted(cfg["model"].items()) if base["model"].get(k) != v]
    changed += [f"fit.{k}={_value(v)}" for k, v in sorted(cfg["fit"].items()) if base["fit"].get(k) != v]
    # Each data option sets its own calibration defaults: a key any of them sets otherwise is pinned.
    data = options("data").values()
    changed += [f"data.calibrate.{k}={_value(v)}" for k, v in sorted(cfg["data"]["calibrate"].items())
                if any(c["data"]["calibrate"].get(k) != v for c in data)]
    return changed


def _value(value) -> str:
    """A value as a Hydra override spells it, with no spaces (a shell line splits there)."""
    return json.dumps(value, separators=(",", ":"))


def read_meta(folder: str | Path) -> dict:
    path = Path(folder) / META
    meta = files.read_json(path)
    if meta.get("format") != FORMAT:
        raise DataError(f"{path}: not an export of format {FORMAT} (got {meta.get('format')!r}); export the run again")
    if meta.get("calibration") and not (Path(folder) / meta["calibration"]).is_file():
        raise DataError(f"{path}: names {meta['calibration']}, which is missing; export the run again")
    # `kaggle submit` applies them: an export selects its own sections, never where files go or anything else.
    stray = [o for o in meta.get("overrides", []) if not o.startswith(("model=", "model.", "fit.", "data.calibrate."))]
    if stray:
        raise ConfigError(f"{path}: override {stray[0]!r} is not one of the model, fit or data.calibrate settings "
                          "an export selects")
    return meta


def load_weights(folder: str | Path) -> dict:
    """The state dict of an export (safetensors holds tensors only: nothing in it can run)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(folder) / WEIGHTS
    try:
        return load_file(path, device="cpu")
    except (OSError, SafetensorError) as e:
        raise DataError(f"{path}: not loadable weights ({e}); export the run again") from e


def check_settings(s: Settings, folder: Path, trained: Settings) -> None:
    """An export predicts only from light curves calibrated as its training store's were, and a model on the
    baseline only from the baseline fitted with its fit settings: a mismatch is one line naming the key."""
    from spectramind.evaluate.predict import difference
    from spectramind.models.baseline import NEEDS_BASELINE

    pairs = [("data.calibrate", s.data.calibrate, trained.data.calibrate)]
    if trained.model.target in NEEDS_BASELINE:
        pairs.append(("fit", s.fit, trained.fit))
    for where, ours, theirs in pairs:
        found = difference(dataclasses.asdict(ours), dataclasses.asdict(theirs), where)
        if found is not None:
            overrides = " ".join(read_meta(folder)["overrides"])
            raise ConfigError(f"predict.run: {folder} was trained with other {found}; predict with the "
                              f"export's overrides: {overrides}")


def check_store(folder: Path, attrs: dict) -> None:
    """The store to predict from has the bins and star columns the model was built for."""
    trained = files.read_json(Path(folder) / STORE)
    for key in ("n_bins", "star_columns"):
        if attrs.get(key) != trained.get(key):
            raise DataError(f"{folder / STORE}: the model was trained on a store with {key} {trained.get(key)}, "
                            f"this one has {attrs.get(key)}; calibrate with the export's settings")


def fingerprint(folder: str | Path) -> str:
    """The content of the export's own files (a Kaggle dataset may hold wheels beside them)."""
    folder = Path(folder)
    names = [n for n in FILES if n != CARD and (folder / n).is_file()]
    return xxhash.xxh3_64("".join(f"{n}:{files.file_digest(folder / n)}\n" for n in names).encode()).hexdigest()


def model_card(meta: dict, run: Settings, store: dict) -> str:
    train, scored = meta["metrics"]["train"], meta["metrics"]["evaluate"]
    best = train.get("best_metric") or {}
    lines = [f"# SpectraMind model {meta['run']}", "",
             f"`{meta['model']}` trained by spectramind {meta['spectramind']} (run `{meta['run']}`, checkpoint "
             f"`{meta['checkpoint']}`), exported {meta['created']}.", "",
             "```bash",
             f"spectramind predict run=<this folder> {' '.join(meta['overrides'])}",
             "```", "", "## Metrics", "", "| metric | value |", "|---|---|"]
    rows = {"training status": f"{train.get('status')} ({train.get('stop_reason')}, {train.get('epochs')} epochs, "
                               f"profile {train.get('profile')})",
            f"best {best.get('monitor', 'metric')}": best.get("value"),
            **{f"{scored['split']} {k}" if "split" in scored else k: v for k, v in scored.items() if k != "split"}}
    lines += [f"| {k} | {v} |" for k, v in rows.items()]
    lines += ["", "## What it expects", "",
              f"- light curves of {store.get('n_bins')} bins, {store.get('n_time')} time bins in training, star "
              f"columns {', '.join(store.get('star_columns', []))}",
              f"- data calibrated with `data.calibrate` = `{json.dumps(dataclasses.asdict(run.data.calibrate))}`",
              f"- the metric's naive mean {store.get('naive_mean')} and sigma {store.get('naive_sigma')} "
              "(its training labels); the normalisation statistics are in store.json",
              f"- label calibration of the physics baseline: {'calibration.npz' if meta['calibration'] else 'none'}",
              ""]
    return "\n".join(lines)
