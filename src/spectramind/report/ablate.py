"""Ablation sweeps: Hydra's sweep grammar expanded into points, each point an ordinary train + evaluate.

Expansion is Hydra's own override parser, expanded as its BasicSweeper does (comma lists, range(), choice(),
glob() over config groups). Each point runs the real CLI in a subprocess, so a crash or a bad config in one
point is recorded as that point's failure and the sweep goes on; a point whose train run is already complete
(its run hash finds the folder) is not trained again. With `hydra/sweeper=optuna` Hydra's Optuna sweeper
proposes the points instead (`search`): each trial is such a point, its value the point's score.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import math
import os
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import xxhash

from spectramind import files
from spectramind.errors import ConfigError, SpectraMindError

SWEEPS_DIR = "ablation"          # outputs/ablation/<sweep id>/: sweep.json and one log folder per point
SWEEP_RECORD = "sweep.json"
TRIAL_RECORD = "point.json"      # a sweeper's trial, in its job folder: the point it ran, for sweep.json
DATA_KEYS = ("seed", "data", "fit")  # what a point's data_key hashes: a search over these changes the data
DEFAULT_TRAINER = "trainer=ablation"

log = logging.getLogger(__name__)


@dataclass
class Point:
    index: int
    overrides: list[str]
    run_hash: str | None = None
    trained: bool = False         # its train run is complete
    evaluated: bool = False       # its metrics.json exists
    status: str = "pending"       # pending, complete or failed
    error: str | None = None      # the one line that says why it failed
    data_store: str | None = None  # the calibrated store it reads (points of one outputs folder share it)
    data_key: str | None = None    # what that store must hold: the data and fit sections and the seed
    simulated: bool = False        # its data is the simulated set (made by `spectramind simulate`)
    score: float | None = None     # its evaluation's score (metrics.json), the leaderboard's metric


def split_arguments(arguments: list[str]) -> tuple[list[str], list[str]]:
    """(launcher and sweeper overrides `hydra/...`, `hydra.…`, `+hydra.…`; the sweep's own overrides)."""
    launcher = [a for a in arguments if a.lstrip("+~").startswith(("hydra/", "hydra."))]
    return launcher, [a for a in arguments if a not in launcher]


def expand(arguments: list[str]) -> list[list[str]]:
    """Every point of the sweep as a list of plain overrides, with `trainer=ablation` unless one is set."""
    parsed = _parse(arguments)
    # Hydra's BasicSweeper.split_arguments (internal) in public terms: one list of `key=value` per key
    # (a later override of a key replaces it, in place), their product the points.
    choices: dict[str, list[str]] = {}
    for o in parsed:
        key = o.get_key_element()
        if o.is_sweep_override() and not o.is_discrete_sweep():
            raise ConfigError(f"sweep overrides {arguments}: {o.input_line} is a search space, not a grid; "
                              "search it with hydra/sweeper=optuna")
        values = o.sweep_string_iterator() if o.is_sweep_override() else [o.get_value_element_as_str()]
        choices[key] = [f"{key}={v}" for v in values]
    return [_with_trainer(parsed, list(point)) for point in itertools.product(*choices.values())]


def _parse(arguments: list[str]) -> list:
    """Hydra's overrides, its grammar read with a config loader over the config tree so glob() can list
    the options of a config group; a syntax error is one ConfigError line."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from spectramind.config.compose import config_dir

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
            parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
            return parser.parse_overrides(list(arguments))
    except Exception as e:
        raise ConfigError(f"sweep overrides {arguments}: {str(e).strip().splitlines()[0]}") from e
    finally:
        GlobalHydra.instance().clear()


def _with_trainer(parsed: list, overrides: list[str]) -> list[str]:
    return overrides if any(o.key_or_group == "trainer" for o in parsed) else [DEFAULT_TRAINER, *overrides]


def run_folder(output_dir: str | os.PathLike, run_hash: str) -> Path:
    from spectramind.config.runhash import run_dir

    return run_dir(output_dir, run_hash)


def plan(points: list[list[str]]) -> list[Point]:
    """Resolve each point: its run hash and what is already done, or the config error that stops it."""
    from spectramind.config.runhash import evaluations
    from spectramind.config.stage import load, run_hash
    from spectramind.pipeline import input_fingerprint

    planned = []
    for i, overrides in enumerate(points):
        point = Point(i, overrides)
        try:
            cfg, s = load(overrides)
            point.run_hash = run_hash("train", cfg, input_fingerprint("train", s))
        except SpectraMindError as e:
            point.status, point.error = "failed", str(e)
        else:
            point.data_store, point.simulated = s.data.store, s.data.simulate is not None
            data = json.dumps([cfg["data"], cfg["fit"], cfg["seed"]], sort_keys=True)
            point.data_key = xxhash.xxh3_64(data.encode()).hexdigest()
            folder = run_folder(s.paths.output_dir, point.run_hash)
            point.trained = files.read_json(folder / "summary.json").get("status") == "complete"
            point.evaluated = point.trained and point.run_hash in evaluations(s.paths.output_dir)
            point.status = "complete" if point.evaluated else "pending"
        planned.append(point)
    return planned


def output_dir(arguments: list[str]) -> Path:
    """The outputs folder the points write to (only `paths.` overrides can move it)."""
    from spectramind.config.compose import compose

    return Path(compose([a for a in arguments if a.startswith("paths.")])["paths"]["output_dir"])


def sweep_id(points: list[Point]) -> str:
    """Same points, same id: running the sweep again reuses its folder."""
    return xxhash.xxh3_64(json.dumps([p.overrides for p in points]).encode()).hexdigest()


def _error_line(text: str) -> str:
    """The CLI's `error: ...` line, else the last line (a traceback's exception)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines or ["no output"])[-1].removeprefix("error:").strip()


def _cli(args: list[str], log_file: Path, env: dict) -> str | None:
    """Run `spectramind <args>` with its output in `log_file`; None on success, else its error line."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "w", encoding="utf-8") as out:
        done = subprocess.run([sys.executable, "-m", "spectramind", *args], stdout=out,
                              stderr=subprocess.STDOUT, env=env, check=False)
    if done.returncode == 0:
        return None
    return f"{args[0]} exited {done.returncode}: {_error_line(log_file.read_text(encoding='utf-8'))}"


def _env(threads: int | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "SPECTRAMIND_DEBUG"}
    if threads:
        env.setdefault("OMP_NUM_THREADS", str(threads))  # N points on a few cores: no oversubscription
    return env


def prepare_data(points: list[Point], waiting: list[int], sweep_dir: Path) -> bool:
    """Simulate/calibrate each dataset the points need once, one at a time, before any point starts:
    points running at once would otherwise write the same data folder together. Returns False when two
    datasets must take turns in one folder (e.g. a swept seed re-simulates the embedded default), so the
    points cannot run in parallel."""
    stores = {}
    for point in (points[i] for i in waiting):
        if point.data_key in stores:
            continue
        stores[point.data_key] = point.data_store
        error = None
        for stage in ("simulate", "calibrate", "fit"):  # the inputs of train; simulate only for simulated data
            if error is None and (stage != "simulate" or point.simulated):
                error = _cli([stage, *point.overrides], sweep_dir / f"data_{point.data_key}_{stage}.log", _env())
        for other in points:
            if error and other.data_key == point.data_key and other.status == "pending":
                other.status, other.error = "failed", error
    return len(set(stores.values())) == len(stores)


def run_point(point: Point, log_dir: Path, threads: int | None = None) -> Point:
    """Train (unless complete), then evaluate one point in subprocesses; a failure is recorded, not raised."""
    env = _env(threads)
    error = None if point.trained else _cli(["train", *point.overrides], log_dir / "train.log", env)
    if error is None and not point.evaluated:
        # The point's own overrides select the same data (and outputs); the model comes from the run.
        error = _cli(["evaluate", *point.overrides, f"run={point.run_hash}"], log_dir / "evaluate.log", env)
    point.trained = point.trained or error is None or not error.startswith("train")
    point.evaluated = error is None
    point.status, point.error = ("complete", None) if error is None else ("failed", error)
    return point


def _job(points: list[Point], threads: int | None, cfg) -> dict:
    """The launcher's task function (picklable): run point `cfg.job` with its logs in Hydra's job folder."""
    from hydra.core.hydra_config import HydraConfig

    point = run_point(points[cfg.job], Path(HydraConfig.get().runtime.output_dir), threads)
    return asdict(point)


def run_pending(points: list[Point], launcher_args: list[str], sweep_dir: Path, parallel: int) -> None:
    """Run every pending point through the launcher, one job per run hash (two points that resolve to
    the same run must not train one folder at once); the points are updated in place."""
    from spectramind.report import launch

    pending = [p.index for p in points if p.status == "pending"]
    if pending and not prepare_data(points, pending, sweep_dir):
        log.warning("ablate: the points need different datasets in one data folder; one point at a time")
        parallel = 1
    # The run hashes know the inputs by content: plan again now that every input exists.
    points[:] = [p if p.status == "failed" else Point(**{**asdict(q), "index": p.index})
                 for p, q in zip(points, plan([p.overrides for p in points]), strict=True)]
    first = {p.run_hash: p.index for p in reversed(points) if p.status == "pending"}
    first = {h: i for h, i in first.items() if points[i].status == "pending"}  # less those whose data failed
    if not first:
        return
    task = functools.partial(_job, points, _threads(parallel))
    settings = launch.launcher_overrides(launcher_args, sweep_dir, parallel)
    done = {d["run_hash"]: d for d in launch.launch(task, sorted(first.values()), settings)}
    for p in points:
        if p.status == "pending":
            points[p.index] = Point(**{**done[p.run_hash], "index": p.index, "overrides": p.overrides})


def _threads(parallel: int) -> int | None:
    """Torch threads per point when `parallel` run at once on this machine's cores (no oversubscription)."""
    return max(1, (os.cpu_count() or 1) // parallel) if parallel > 1 else None


def score(output_dir: str | os.PathLike, run_hash: str | None) -> float | None:
    """The score of the newest evaluation of train run `run_hash` (None when it has none)."""
    from spectramind.config.runhash import evaluations

    evaluated = evaluations(output_dir).get(run_hash) if run_hash else None
    return files.read_json(run_folder(output_dir, evaluated) / "metrics.json").get("score") if evaluated else None


def ablate(arguments: list[str], parallel: int = 1, dry_run: bool = False) -> tuple[list[Point], Path]:
    """Expand, plan and (unless `dry_run`) run the pending points; return the points and the sweep folder.
    With `hydra/sweeper=optuna` the sweeper proposes the points instead (`search`)."""
    from spectramind.report import launch

    launcher_args, sweep_args = split_arguments(arguments)
    if parallel < 1:
        raise ConfigError(f"--parallel {parallel}: expected a whole number of points at once, >= 1")
    if launch.sweeper_choice(launcher_args) not in (None, "basic"):  # basic: Hydra's grid, which expand() is
        return search(arguments, parallel, dry_run)
    points, out = plan(expand(sweep_args)), output_dir(sweep_args)
    sweep_dir = out / SWEEPS_DIR / sweep_id(points)
    if not dry_run:
        run_pending(points, launcher_args, sweep_dir, parallel)
        for p in points:
            p.score = score(out, p.run_hash) if p.evaluated else None
        files.write_json(sweep_dir / SWEEP_RECORD, {"arguments": list(arguments),
                                                 "points": [asdict(p) for p in points]})
    return points, sweep_dir


def search(arguments: list[str], parallel: int = 1, dry_run: bool = False) -> tuple[list[Point], Path]:
    """A search driven by a Hydra sweeper plugin (Optuna): it proposes each trial's overrides from the sweep
    overrides (interval(), choice(), range(), tag(log, interval())), each trial is one ordinary point and its
    value the point's score. sweep.json lists the trials as points, with the study's direction and best."""
    from spectramind.report import launch

    launcher_args, sweep_args = split_arguments(arguments)
    parsed = _parse(sweep_args)
    sweep_args = _with_trainer(parsed, sweep_args)
    sweep_dir = output_dir(sweep_args) / SWEEPS_DIR / xxhash.xxh3_64(json.dumps(arguments).encode()).hexdigest()
    if dry_run:
        raise ConfigError("ablate --dry-run lists a grid's points; a sweeper proposes its trials as they finish")
    if parallel > 1 and any(o.is_sweep_override() and o.key_or_group.split(".")[0] in DATA_KEYS for o in parsed):
        # Trials at once would rebuild one data folder under each other's training (prepare_data's case).
        log.warning("ablate: the search changes the data (%s); one trial at a time", ", ".join(DATA_KEYS))
        parallel = 1
    settings = launch.sweeper_overrides(launcher_args, sweep_dir, parallel)
    for old in [*sweep_dir.glob(f"*/{TRIAL_RECORD}"), *sweep_dir.glob("locks/store_*.json")]:
        old.unlink()  # this run's records: an earlier run may have had more trials, or its data changed since
    try:
        launch.sweep(functools.partial(_trial, sweep_dir, _threads(parallel)), sweep_args, settings)
    finally:
        points = trials(sweep_dir)  # what ran, even when the sweeper stopped part way
        if points:
            files.write_json(sweep_dir / SWEEP_RECORD, {"arguments": list(arguments),
                                                     "sweeper": _study(settings, points),
                                                     "points": [asdict(p) for p in points]})
    return points, sweep_dir


def _trial(sweep_dir: Path, threads: int | None, cfg) -> float:
    """The sweeper's task function (picklable): the trial's overrides (HydraConfig's task overrides, which
    the sweeper proposed) run as one point with its logs in the job folder; returns its objective value."""
    from hydra.core.hydra_config import HydraConfig

    from spectramind.report import launch

    hydra = HydraConfig.get()
    log_dir = Path(hydra.runtime.output_dir)
    point = run_trial(hydra.job.num, list(hydra.overrides.task), sweep_dir, log_dir, threads)
    files.write_json(log_dir / TRIAL_RECORD, asdict(point))
    return objective(point, launch.direction(hydra.sweeper.direction))


def run_trial(index: int, overrides: list[str], sweep_dir: Path, log_dir: Path, threads: int | None) -> Point:
    """One trial as a grid point: plan, build its data, train and evaluate (none of it when its run is
    complete), then read its score. Locks let trials run at once: one builds a dataset while the others
    wait for it, and two trials the sampler gave the same values train their one run folder once."""
    point = _plan_one(index, overrides)
    if point.status == "pending":
        _prepare_once(point, sweep_dir)
    if point.status == "pending":
        point = _plan_one(index, overrides)  # the run hash knows the inputs by content: now they exist
        with files.locked(sweep_dir / "locks" / f"run_{point.run_hash}"):
            point = _plan_one(index, overrides)  # another trial may have finished this run meanwhile
            if point.status == "pending":
                run_point(point, log_dir, threads)
    point.score = score(output_dir(overrides), point.run_hash) if point.evaluated else None
    return point


def _prepare_once(point: Point, sweep_dir: Path) -> None:
    """prepare_data for one trial, under its data folder's lock; skipped when this run of the sweep last
    built that folder with the same data (the grid builds each dataset once; trials come one by one)."""
    built = _store_record(sweep_dir, point.data_store)
    with files.locked(built):
        if files.read_json(built).get("data_key") != point.data_key:
            prepare_data([point], [0], sweep_dir)
            if point.status == "pending":
                files.write_json(built, {"data_key": point.data_key})


def _store_record(sweep_dir: Path, store: str | None) -> Path:
    return sweep_dir / "locks" / f"store_{xxhash.xxh3_64(str(store).encode()).hexdigest()}.json"


def _plan_one(index: int, overrides: list[str]) -> Point:
    point = plan([overrides])[0]
    point.index = index
    return point


def objective(point: Point, direction: str) -> float:
    """The trial's value: its score, else the worst value for the direction. Never NaN nor an exception:
    the plugin raises either out of the whole sweep (hydra-optuna-sweeper 1.2, and 1.3 unless
    max_failure_rate allows it), where a grid records the failed point and goes on."""
    if point.score is not None and not math.isnan(point.score):
        return float(point.score)
    return -math.inf if direction == "maximize" else math.inf


def trials(sweep_dir: Path) -> list[Point]:
    """The points the trials recorded in their job folders, by trial number."""
    records = (files.read_json(p) for p in sweep_dir.glob(f"*/{TRIAL_RECORD}"))
    return sorted((Point(**r) for r in records if r), key=lambda p: p.index)


def _study(settings: list[str], points: list[Point]) -> dict:
    """The sweeper, its direction and its best trial (the best score in that direction), for sweep.json."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from spectramind.report import launch

    last = [o for o in settings if o.startswith("hydra.sweeper.direction=")][-1]
    direction = launch.direction(OverridesParser.create().parse_override(last).value())  # maximize, [maximize]
    scored = [p for p in points if p.score is not None and not math.isnan(p.score)]
    pick = max if direction == "maximize" else min
    best = pick(scored, key=lambda p: p.score) if scored else None
    return {"name": launch.sweeper_choice(settings), "direction": direction,
            "best": None if best is None else {"index": best.index, "run_hash": best.run_hash,
                                               "score": best.score, "overrides": best.overrides}}
