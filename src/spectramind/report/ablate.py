"""Ablation sweeps: Hydra's sweep grammar expanded into points, each point an ordinary train + evaluate.

Expansion is Hydra's own parser and BasicSweeper (comma lists, range(), choice(), glob() over config
groups). Each point runs the real CLI in a subprocess, so a crash or a bad config in one point is
recorded as that point's failure and the sweep goes on; a point whose train run is already complete
(its run hash finds the folder) is not trained again.
"""

from __future__ import annotations

import functools
import json
import logging
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


def split_arguments(arguments: list[str]) -> tuple[list[str], list[str]]:
    """(launcher overrides `hydra/...`, `hydra.…`; the sweep's own overrides)."""
    launcher = [a for a in arguments if a.startswith(("hydra/", "hydra."))]
    return launcher, [a for a in arguments if a not in launcher]


def expand(arguments: list[str]) -> list[list[str]]:
    """Every point of the sweep as a list of plain overrides, with `trainer=ablation` unless one is set."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra._internal.utils import create_config_search_path
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from spectramind.config.compose import config_dir

    # The config loader lets glob() list the options of a config group.
    loader = ConfigLoaderImpl(config_search_path=create_config_search_path(str(config_dir())))
    try:
        parsed = OverridesParser.create(config_loader=loader).parse_overrides(list(arguments))
        batches = BasicSweeper.split_arguments(parsed, max_batch_size=None)
    except Exception as e:
        raise ConfigError(f"sweep overrides {arguments}: {str(e).strip().splitlines()[0]}") from e
    extra = [] if any(o.key_or_group == "trainer" for o in parsed) else [DEFAULT_TRAINER]
    return [extra + point for batch in batches for point in batch]


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
    threads = max(1, (os.cpu_count() or 1) // parallel) if parallel > 1 else None
    task = functools.partial(_job, points, threads)
    settings = launch.launcher_overrides(launcher_args, sweep_dir, parallel)
    done = {d["run_hash"]: d for d in launch.launch(task, sorted(first.values()), settings)}
    for p in points:
        if p.status == "pending":
            points[p.index] = Point(**{**done[p.run_hash], "index": p.index, "overrides": p.overrides})


def ablate(arguments: list[str], parallel: int = 1, dry_run: bool = False) -> tuple[list[Point], Path]:
    """Expand, plan and (unless `dry_run`) run the pending points; return the points and the sweep folder."""
    launcher_args, sweep_args = split_arguments(arguments)
    if parallel < 1:
        raise ConfigError(f"--parallel {parallel}: expected a whole number of points at once, >= 1")
    points = plan(expand(sweep_args))
    sweep_dir = output_dir(sweep_args) / SWEEPS_DIR / sweep_id(points)
    if not dry_run:
        run_pending(points, launcher_args, sweep_dir, parallel)
        files.write_json(sweep_dir / SWEEP_RECORD, {"arguments": list(arguments),
                                                 "points": [asdict(p) for p in points]})
    return points, sweep_dir
