"""The `spectramind` command line: parse, compose the config, call one stage function.

Only this module sees argv and typer; heavy libraries (torch, h5py, pandas) are imported inside
the commands that use them so that `--help` stays fast.
"""

from __future__ import annotations

import errno
import inspect
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from spectramind import __version__, progress, signals
from spectramind.config import groups

GROUPS_HELP = groups.help_text()  # read from the shipped configs/, so a new option shows up by itself

app = typer.Typer(
    help="SpectraMind: Ariel raw frames to calibrated light curves to a scored submission.csv.",
    epilog=GROUPS_HELP,
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
config_app = typer.Typer(help="Show, validate and hash the resolved configuration; list the config groups.",
                         no_args_is_help=True)
app.add_typer(config_app, name="config")
kaggle_app = typer.Typer(help="The offline Kaggle dataset and notebooks, and the submission notebook's work.",
                         no_args_is_help=True)
app.add_typer(kaggle_app, name="kaggle")

Overrides = Annotated[
    list[str] | None,
    typer.Argument(help="Hydra overrides: group=option, key=value, +new.key=value, ~key.", show_default=False,
                   autocompletion=lambda ctx, incomplete: groups.complete(ctx.params.get("overrides") or [],
                                                                           incomplete)),
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"spectramind {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks (or set SPECTRAMIND_DEBUG=1).")] = False,
) -> None:
    if debug:
        os.environ["SPECTRAMIND_DEBUG"] = "1"


Params = Annotated[str | None, typer.Option(
    "--params", show_default=False,
    help="Run a composed config file (DVC's params.yaml) instead of configs/; overrides are then plain "
         "key=value changes on top of it, and no missing input is built.")]


@config_app.command("show")
def config_show(
    overrides: Overrides = None,
    resolve: Annotated[bool, typer.Option("--resolve", help="Resolve interpolations (${trainer.max_epochs}) to "
                                          "the values a run sees.")] = False,
) -> None:
    """Print the composed config as YAML (validated; interpolations as written unless --resolve)."""
    from spectramind.config.compose import compose
    from spectramind.config.stage import load

    resolved = load(overrides or [])[0]
    typer.echo(_yaml(resolved if resolve else compose(overrides or [], resolve=False)), nl=False)


@config_app.command("groups")
def config_groups() -> None:
    """List every option of every config group, each with the first comment line of its YAML."""
    typer.echo(groups.listing(), nl=False)


@config_app.command("validate")
def config_validate(overrides: Overrides = None) -> None:
    """Check the resolved config against the schema; exit 2 with one line if it is wrong."""
    typer.echo(f"config ok (run hash {_hash('train', overrides or [])})")


@config_app.command("hash")
def config_hash(
    overrides: Overrides = None,
    command: Annotated[str, typer.Option(help="The command whose run hash to print.")] = "train",
) -> None:
    """Print the run hash of the resolved config (with the inputs as they are now)."""
    typer.echo(_hash(command, overrides or []))


@config_app.command("params")
def config_params(
    overrides: Overrides = None,
    out: Annotated[str | None, typer.Option(help="Write here (atomically) instead of printing.",
                                            show_default=False)] = None,
) -> None:
    """Compose configs/pipeline.yaml (the DVC pipeline's config) as DVC's Hydra composition writes params.yaml."""
    from omegaconf import OmegaConf

    from spectramind import files
    from spectramind.config.compose import compose
    from spectramind.config.schema import validate
    from spectramind.config.stage import PIPELINE

    cfg = compose(overrides or [], config_name=PIPELINE)
    validate(cfg)
    text = OmegaConf.to_yaml(OmegaConf.create(cfg))
    if out is None:
        typer.echo(text, nl=False)
    else:
        files.write_text(out, text)
        typer.echo(f"config params: {out}")


@app.command()
def train(
    overrides: Overrides = None,
    params: Params = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print config, run hash, folder and budgets; "
                                          "train nothing.")] = False,
    plan: Annotated[bool, typer.Option("--plan", help="Time a few real steps here, project the run's time "
                                       "and memory against the profile's budgets; write no run.")] = False,
) -> None:
    """Train a model under the trainer profile's guardrails (resumes an unfinished run)."""
    from spectramind.config import runhash
    from spectramind.config.stage import load, run_hash
    from spectramind.pipeline import input_fingerprint

    overrides = overrides or []
    cfg, s = load(overrides, params)
    if dry_run:
        hash_ = run_hash("train", cfg, input_fingerprint("train", s))
        typer.echo(_yaml(cfg), nl=False)
        typer.echo(f"run hash: {hash_}")
        typer.echo(f"run folder: {runhash.run_dir(s.paths.output_dir, hash_)}")
        typer.echo("budgets: " + ", ".join(f"{k}={v}" for k, v in cfg["trainer"]["budgets"].items()))
        return
    from spectramind.train import setup

    setup.check(s)
    with signals.handling():  # from here on a SIGTERM/SIGINT stops the command cleanly, between stages too
        _train(cfg, s, overrides, params, plan)


def _train(cfg: dict, s, overrides: list[str], params: str | None, plan: bool) -> None:
    from spectramind import files
    from spectramind.config import runhash
    from spectramind.config.stage import run_hash
    from spectramind.devices import process_count
    from spectramind.pipeline import input_fingerprint
    from spectramind.train import setup
    from spectramind.train.distributed import from_env, under_launcher

    if not under_launcher():
        _build_inputs("train", overrides, params, s, cfg)
    if plan:
        from spectramind.train.plan import render

        typer.echo(render(setup.plan(s)), nl=False)
        return
    hash_ = run_hash("train", cfg, input_fingerprint("train", s))
    run_dir = runhash.run_dir(s.paths.output_dir, hash_)
    done = setup.completed(run_dir)
    if done is not None:  # a finished run is reported and left alone, its output calibration aside
        setup.complete_outputs(s, run_dir)
        typer.echo(f"train: already complete, {setup.summary_line(done)} in {run_dir}")
        return
    processes = process_count(s.trainer.devices, s.trainer.device)
    if processes > 1 and not under_launcher():
        argv = ["train", *(["--params", params] if params else []), *overrides]
        raise typer.Exit(setup.launch(processes, argv))
    if not from_env().main:  # DDP ranks > 0 train but write nothing: no snapshot, no index entry
        setup.train(s, run_dir, hash_)
        return

    def work(stage) -> dict:
        # Two commands on one run: the second waits, then finds the run complete or resumes where it stopped.
        with files.locked(stage.run_dir / "train",
                          waiting=lambda: typer.echo("train: another process is training this run; waiting for it",
                                                     err=True)):
            summary = setup.train(stage.settings, stage.run_dir, stage.run_hash, stage.events)
        typer.echo(f"train: {summary['status']}, {setup.summary_line(summary)} in {stage.run_dir}")
        return {"status": summary["status"], "stop_reason": summary["stop_reason"], "epochs": summary["epochs"],
                "best_metric": summary["best_metric"]["value"], "wall_time_s": summary["wall_time_s"]}

    _run("train", overrides, params, work, loaded=(cfg, s))


@app.command()
def simulate(overrides: Overrides = None, params: Params = None) -> None:
    """Write the simulated raw folder (competition layout, truth and oracle noise) unless it is current."""
    _run("simulate", overrides or [], params, _simulate, uses_torch=False)


def _simulate(stage) -> dict:
    from spectramind.data.simulate import simulate_raw

    done = simulate_raw(stage.settings)
    state = "current" if done["cached"] else "written"
    typer.echo(f"simulate: {done['n_train']} train + {done['n_test']} test planets in {done['root']} ({state})")
    return done


@app.command()
def calibrate(overrides: Overrides = None, params: Params = None) -> None:
    """Calibrate the raw folder into the HDF5 light-curve store (unless it is current)."""
    _run("calibrate", overrides or [], params, _calibrate, uses_torch=False)


def _calibrate(stage, folders: tuple[str, ...] = ("train", "test")) -> dict:
    from spectramind.data.prepare import calibrate as calibrate_stage

    done = calibrate_stage(stage.settings, folders)
    state = "current" if done["cached"] else f"{done['seconds']} s"
    typer.echo(f"calibrate: {done['visits']} visits of {done['planets']} planets, {done['n_time']} x "
               f"{done['n_bins']} per visit -> {stage.settings.data.store} ({state})")
    return {"store": stage.settings.data.store, "visits": done["visits"], "cached": done["cached"]}


@app.command()
def fit(overrides: Overrides = None, params: Params = None) -> None:
    """Fit the physics baseline to every visit of the store (the sidecar that residual models correct)."""
    _run("fit", overrides or [], params, _fit)


def _fit(stage) -> dict:
    from spectramind.devices import resolve_device
    from spectramind.models.baseline import fit_baseline

    done = fit_baseline(stage.settings, resolve_device(stage.settings.predict.device, "predict.device"))
    state = "current" if done["cached"] else f"{done['visits']} visits in {done['seconds']} s"
    typer.echo(f"fit: baseline {done['baseline']} ({state})")
    return done


def _run_override(overrides: list[str] | None) -> list[str]:
    """`run=<folder|hash|latest>` is short for `predict.run=...`."""
    return [f"predict.{o}" if o.startswith("run=") else o for o in overrides or []]


@app.command()
def predict(overrides: Overrides = None, params: Params = None) -> None:
    """Write a validated submission.csv: `run=<run folder|hash|latest>`, or `model=fit` with no training."""
    def work(stage) -> dict:
        from spectramind.evaluate.predict import predict as predict_stage

        done = predict_stage(stage.settings, stage.run_dir, events=stage.events)
        typer.echo(f"predict: {done['planets']} planets ({done['visits']} visits) in {done['seconds']} s "
                   f"-> {done['submission']}")
        return {k: done[k] for k in ("submission", "planets", "visits", "seconds")}

    _run("predict", _run_override(overrides), params, work)


@app.command()
def evaluate(overrides: Overrides = None, params: Params = None) -> None:
    """Score a labelled split: metrics.json, per_bin.csv, PNGs (and the oracle ratio on simulated data)."""
    def work(stage) -> dict:
        from spectramind.evaluate.evaluate import evaluate as evaluate_stage

        done = evaluate_stage(stage.settings, stage.run_dir, events=stage.events)
        oracle = (f", oracle {done['oracle_score']:.4f} (ratio {done['ratio_to_oracle']:.3f})"
                  if "oracle_score" in done else "")
        typer.echo(f"evaluate: score {done['score']:.4f} on {done['planets']} planets{oracle}; "
                   f"|z|<1 {done['within_1sigma']:.3f}, |z|<2 {done['within_2sigma']:.3f} "
                   f"-> {done['metrics']}")
        keys = ("score", "planets", "within_1sigma") + (("ratio_to_oracle",) if oracle else ())
        return {**{k: done[k] for k in keys}, "evaluated_run": Path(done["run"]).name if done["run"] else None}

    _run("evaluate", _run_override(overrides), params, work)


@app.command()
def cv(overrides: Overrides = None) -> None:
    """K-fold cross-validation at planet level (`data.split.folds=K`): per fold, ordinary runs that hold it
    out (fit, train unless model=fit, predict), then the out-of-fold score of every labelled planet."""
    from spectramind.config.stage import load
    from spectramind.report import cv as crossval

    overrides = overrides or []
    folds = crossval.fold_overrides(overrides)
    with signals.handling():
        runs = [_cv_fold(fold) for fold in folds]
    done = crossval.report(load(folds[0])[1], overrides, runs)
    per_fold = ", ".join(f"{f['score']:.4f}" for f in done["per_fold"])
    oracle = f", ratio to oracle {done['ratio_to_oracle']:.3f}" if "ratio_to_oracle" in done else ""
    typer.echo(f"cv: out-of-fold score {done['score']:.4f} on {done['planets']} planets over {len(runs)} folds "
               f"({per_fold}){oracle} -> {done['report']}")


def _cv_fold(overrides: list[str]) -> dict:
    """One fold's runs, each left alone when complete: its inputs and training (model=fit: its inputs and
    the fit stage, whose label calibration is then the fold's model), then the prediction of the fold it
    holds out. Returns the fold's train and predict run hashes."""
    from spectramind.config.stage import load, run_hash
    from spectramind.evaluate.predict import FIT_TARGET
    from spectramind.models.baseline import sidecar_path
    from spectramind.pipeline import input_fingerprint
    from spectramind.report.cv import predict_overrides, predicted, submission_path
    from spectramind.train import setup

    cfg, s = load(overrides)
    trained = None
    if s.model.target == FIT_TARGET:
        _build_inputs("train", overrides, None, s)
        if not sidecar_path(s).is_file():
            _run("fit", overrides, None, _fit)
    else:
        setup.check(s)
        try:
            _train(cfg, s, overrides, None, plan=False)
        except typer.Exit as e:  # DDP: the processes it launched have trained the fold
            if e.exit_code:
                raise
        trained = run_hash("train", cfg, input_fingerprint("train", s))
    cfg, s = load(predict_overrides(overrides, trained))
    hash_ = run_hash("predict", cfg, input_fingerprint("predict", s))
    if predicted(s.paths.output_dir, hash_):
        typer.echo(f"predict: already complete, {submission_path(s.paths.output_dir, hash_)}")
    else:
        predict(predict_overrides(overrides, trained))
    return {"train_run": trained, "predict_run": hash_}


@app.command()
def export(
    overrides: Overrides = None,
    out: Annotated[str, typer.Argument(help="A new folder to write the model into.", show_default=False)] = ...,
    params: Params = None,
) -> None:
    """Write a training run (`run=<run folder|hash|latest>`) as a self-contained model folder, which
    `spectramind predict run=OUT` loads on a machine that has never seen the run. After `dvc repro`:
    `spectramind export --params params.yaml OUT` (the train stage's newest finished run)."""
    from spectramind.config.stage import load
    from spectramind.evaluate.export import export as export_run

    done = export_run(load(_run_override(overrides), params)[1], out)
    typer.echo(f"export: run {done['run']} ({done['model']}) -> {done['out']}; predict with "
               f"`spectramind predict run={done['out']} {' '.join(done['overrides'])}`")


@app.command()
def reproduce(
    run: Annotated[str, typer.Argument(help="The training run: its folder, its run hash under paths.output_dir, "
                                            "or latest (as predict's run=).", show_default=False)],
    overrides: Overrides = None,
) -> None:
    """Re-create a finished training run from its folder alone (config.yaml, overrides.yaml, env.json) in a
    scratch folder, data rebuilt from what its config names, and compare: last.pt's model and optimizer and
    metrics.jsonl bit-identical on CPU, within reproduce.rtol/atol when a GPU trained either. Prints what
    matched and what differed, with what changed since (data, code, versions, device); exits 4 on a mismatch.
    Overrides set reproduce.* (keep=true keeps the scratch folder) and where a run hash is looked up."""
    from spectramind.config.stage import load
    from spectramind.errors import Mismatch
    from spectramind.train import reproduce as again
    from spectramind.train import setup

    s = load(overrides or [])[1]
    run_dir = again.find(s, run)
    with again.scratch(s.reproduce) as folder:
        typer.echo(f"reproduce: re-creating run {run_dir.name} in {folder}", err=True)
        recreated = again.recreation(run_dir, folder)
        setup.check(recreated.settings)
        with signals.handling():
            _train(recreated.cfg, recreated.settings, recreated.overrides, None, plan=False)
        report = again.compare(recreated, s.reproduce)
    typer.echo(report.text)
    if report.mismatch:
        raise Mismatch(report.verdict)
    typer.echo(report.verdict)


@app.command()
def doctor(
    overrides: Overrides = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Check Python, torch, GPUs, budgets, disk and data against the config; warn, never fail."""
    import json

    from spectramind.config.stage import load
    from spectramind.doctor import diagnose, render

    report = diagnose(load(overrides or [])[0])
    typer.echo(json.dumps(report, indent=2, default=str) if as_json else render(report), nl=as_json)


@kaggle_app.command("bundle")
def kaggle_bundle(
    outdir: Annotated[str, typer.Argument(help="A new folder to write the dataset and notebooks into.")],
    owner: Annotated[str, typer.Option(envvar="KAGGLE_USERNAME", show_default=False,
                                       help="Kaggle user owning the dataset and notebooks.")],
    model: Annotated[str | None, typer.Option(help="An exported model folder (`spectramind export`) to ship "
                                                   "in the dataset.", show_default=False)] = None,
    slug: Annotated[str, typer.Option(help="The dataset's slug.")] = "spectramind",
    python_version: Annotated[str, typer.Option(help="Kaggle's Python, for binary wheels.")] = "3.11",
    source: Annotated[str | None, typer.Option(help="The source checkout to build spectramind from.",
                                                  show_default=False)] = None,
) -> None:
    """Write a Kaggle dataset (wheels of spectramind and every dependency but torch, and the exported model)
    plus two offline notebooks: the submission (inference only) and an optional training one."""
    from spectramind.kaggle.bundle import bundle

    done = bundle(outdir, owner, slug, python_version, source, model)
    for wheel in done["wheels"]:
        typer.echo(f"wheel: {wheel}")
    out = done["outdir"]
    typer.echo(f"bundle: {out}; upload with `kaggle datasets create -p {out}`, then `kaggle kernels push -p "
               f"{out}/submission` (and `-p {out}/training` to train on Kaggle)")


@kaggle_app.command("submit")
def kaggle_submit(
    overrides: Overrides = None,
    started: Annotated[float | None, typer.Option(help="When the notebook started (seconds since the epoch): "
                                                       "the time limit counts from there.",
                                                  show_default="now")] = None,
    chunk_planets: Annotated[int, typer.Option(help="Test planets per chunk (one predict command each).")] = 100,
    reserve_min: Annotated[float, typer.Option(help="Minutes kept before trainer.budgets.time_min for the "
                                                    "notebook's own end.")] = 10.0,
) -> None:
    """The submission notebook's work: predict.out with naive rows at once, then the physics fit's, then the
    model's (`run=`), chunk by chunk over test/ while the time limit allows."""
    import time

    from spectramind.kaggle.submit import submit

    done = submit(_run_override(overrides), time.time() if started is None else started, chunk_planets,
                  reserve_min, echo=typer.echo)
    rows = ", ".join(f"{n} {k}" for k, n in done["rows"].items())
    typer.echo(f"submit: {done['planets']} planets ({rows}) in {done['elapsed_s']} s -> {done['submission']}")


ABLATE_EPILOG = (
    "Each point is an ordinary run (`spectramind train` then `spectramind evaluate` in a subprocess): "
    "a complete point is not trained again and a failing point is recorded with its error line. "
    "On a Slurm cluster, pick Hydra's submitit launcher (pip install hydra-submitit-launcher): "
    "spectramind ablate -m optimizer.lr=1e-4,3e-4 hydra/launcher=submitit_slurm hydra.launcher.partition=gpu "
    "hydra.launcher.gpus_per_node=1 hydra.launcher.timeout_min=120. "
    "Beyond a grid, Hydra's Optuna sweeper (pip install 'spectramind[optuna]') proposes the points, each trial "
    "an ordinary point scored by its evaluation (direction maximize unless set): spectramind ablate "
    "hydra/sweeper=optuna hydra.sweeper.n_trials=8 'optimizer.lr=tag(log,interval(1e-4,1e-2))' "
    "'model=choice(residual,cnn1d)'. Exits 1 when any point failed."
)


@app.command(epilog=ABLATE_EPILOG)
def ablate(
    overrides: Annotated[list[str] | None, typer.Argument(
        help="Hydra sweep overrides: a=1,2  b=range(0,3)  c=choice(x,y)  model=glob(*); fixed key=value "
             "overrides apply to every point; hydra/launcher=... and hydra.launcher.* set the launcher; "
             "hydra/sweeper=optuna searches instead (d=interval(1e-4,1e-2), hydra.sweeper.n_trials=N, "
             "hydra.sweeper.direction=minimize|maximize).",
        show_default=False)] = None,
    multirun: Annotated[bool, typer.Option("-m", "--multirun", help="Accepted as in Hydra apps; ablate "
                                           "always sweeps.")] = False,
    parallel: Annotated[int, typer.Option(help="Points run at once (Hydra's joblib launcher).")] = 1,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List a grid's points and their run hashes; "
                                          "run nothing.")] = False,
) -> None:
    """Sweep overrides (a grid, or an Optuna search): train and evaluate every point, then rebuild the
    leaderboard."""
    from spectramind import files
    from spectramind.report.ablate import SWEEP_RECORD
    from spectramind.report.ablate import ablate as run_sweep
    from spectramind.report.leaderboard import build, parse_overrides

    points, sweep_dir = run_sweep(overrides or [], parallel=parallel, dry_run=dry_run)
    for p in points:
        detail = " ".join(f"{k}={v}" for k, v in parse_overrides(p.overrides).items())
        error = f"  error: {p.error}" if p.error else ""
        typer.echo(f"point {p.index:>3}  {p.run_hash or '-':16}  {p.status:8}  {detail}{error}")
    if dry_run:
        return
    failed = sum(p.status == "failed" for p in points)
    done = build(sweep_dir.parents[1])
    typer.echo(f"sweep {sweep_dir}: {len(points) - failed} complete, {failed} failed")
    study = files.read_json(sweep_dir / SWEEP_RECORD).get("sweeper") or {}  # a search's study
    if study.get("best"):
        best = study["best"]
        typer.echo(f"best ({study['direction']}): point {best['index']}  {best['run_hash']}  score {best['score']}")
    typer.echo(f"leaderboard: {done['markdown']} and {done['html']}")
    if failed:
        raise typer.Exit(1)


@app.command()
def report(overrides: Overrides = None) -> None:
    """Rebuild the ablation leaderboard (Markdown, HTML, score plots) from the run folders."""
    from spectramind.config.compose import compose
    from spectramind.report.leaderboard import build

    done = build(compose(overrides or [])["paths"]["output_dir"])
    typer.echo(f"{done['rows']} runs: {done['markdown']} and {done['html']}")
    for path in done["plots"]:
        typer.echo(f"plot: {path}")


# The input stages the convenience path may run, each an ordinary stage with its own run folder.
_INPUT_STAGES = {"simulate": (_simulate, False), "calibrate": (_calibrate, False), "fit": (_fit, True)}


def _build_inputs(command: str, overrides: list[str], params: str | None, s, cfg: dict | None = None) -> None:
    """The CLI's convenience path: run the input stages that are missing or stale, saying so. A DVC stage
    (`--params`) builds nothing: the pipeline declares and orders its inputs. `cfg`: the config `s` was built
    from, which the input stages then run too (else they compose `overrides` again)."""
    if params is not None:
        return
    from spectramind.pipeline import folders_for, missing_inputs

    loaded = (cfg, s) if cfg is not None else None
    for name in missing_inputs(command, s):
        typer.echo(f"{command}: building its missing input with `spectramind {name}`", err=True)
        work, uses_torch = _INPUT_STAGES[name]
        if name == "calibrate":
            folders = folders_for(command, s)
            _run(name, overrides, None, lambda stage, f=folders: _calibrate(stage, f), uses_torch=uses_torch,
                 loaded=loaded)
        else:
            _run(name, overrides, None, work, uses_torch=uses_torch, loaded=loaded)


def _run(command: str, overrides: list[str], params: str | None, work, uses_torch: bool = True,
         loaded: tuple | None = None) -> None:
    """Start a stage (load, validate, hash, snapshot), call `work(stage) -> summary dict`, record the outcome
    (the summary's `status`, "complete" by default: a training run stopped by a guard is "stopped").

    uses_torch=False: a CPU-only data stage, whose snapshot skips importing torch for its CUDA facts (~1.5 s).
    loaded: the (config, settings) already loaded from `overrides` and `params`, or a re-created run's
    (`spectramind reproduce`), which no composition of `overrides` gives.
    """
    with signals.handling():
        _run_stage(command, overrides, params, work, uses_torch, loaded)


def _run_stage(command: str, overrides: list[str], params: str | None, work, uses_torch: bool,
               loaded: tuple | None) -> None:
    """_run's body, under the stop-request handlers: a stage stopped by SIGTERM/SIGINT between two
    pieces of its work is recorded as stopped (stop_reason signal) and the command exits 0; one that
    finished as a signal came ends the command there, before the next stage starts."""
    from spectramind.config.stage import load, start
    from spectramind.errors import Stopped
    from spectramind.pipeline import input_fingerprint

    cfg, s = loaded or load(overrides, params)
    progress.configure(s.log_every_s)
    if command in ("predict", "evaluate"):
        from spectramind.evaluate.predict import require_run

        require_run(s)  # a missing or refused run before any input is built
        _build_inputs(command, overrides, params, s, cfg)
    stage = start(command, cfg, s, overrides, input_fingerprint(command, s), with_torch=uses_torch)
    typer.echo(f"{command}: run {stage.run_hash} in {stage.run_dir}", err=True)
    try:
        summary = dict(work(stage) or {})
    except Stopped as e:
        stage.finish("stopped", stop_reason="signal", message=str(e))
        raise Stopped(f"{command}: stopped cleanly ({e}); nothing half-written, run the command again") from None
    except BaseException as e:
        stage.finish("failed", error=(str(e).strip().splitlines() or [type(e).__name__])[0])
        raise
    status = summary.pop("status", "complete")
    stage.finish(status, **summary)
    if status == "complete" and signals.requested():
        raise Stopped(f"{command}: complete, then stopped ({signals.requested()}) before the next stage")


def _hash(command: str, overrides: list[str]) -> str:
    from spectramind.pipeline import resolve

    return resolve(command, overrides)[1]


def _yaml(cfg: dict) -> str:
    import yaml

    return yaml.safe_dump(cfg, sort_keys=False)


# Each command that takes overrides lists the config groups under its own help too.
for _command in (*app.registered_commands, *config_app.registered_commands):
    if "overrides" in inspect.signature(_command.callback).parameters:
        _command.epilog = "\n\n".join(filter(None, (_command.epilog, GROUPS_HELP)))


# An unwritable place is the config's to fix (exit 2); a full disk, the data's (exit 3).
OS_EXIT_CODES = {errno.EACCES: 2, errno.EPERM: 2, errno.EROFS: 2, errno.ENOSPC: 3, errno.EDQUOT: 3, errno.EFBIG: 3}


def main() -> None:
    from spectramind.errors import SpectraMindError

    try:
        app()
    except (SpectraMindError, OSError) as e:
        code = e.exit_code if isinstance(e, SpectraMindError) else OS_EXIT_CODES.get(e.errno)
        if code is None or os.environ.get("SPECTRAMIND_DEBUG") == "1" or "--debug" in sys.argv:
            raise
        if isinstance(e, OSError):  # where the outputs go cannot be written: the path and the reason
            e = f"{e.filename or 'an output file'}: {e.strerror} (check paths.output_dir: permissions, free space)"
        typer.echo(f"error: {e}" if code else str(e), err=True)  # exit 0: a clean stop
        sys.exit(code)
