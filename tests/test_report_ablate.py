"""Ablation sweeps: Hydra's expansion, run hashes, the launcher, failures recorded, the done-when sweep."""

import json
import math
import operator
import re

import pytest
from conftest import SMALL_SET

from spectramind.errors import ConfigError
from spectramind.pipeline import resolve
from spectramind.report import ablate, launch
from spectramind.report.ablate import SWEEP_RECORD, SWEEPS_DIR, Point, expand, split_arguments


def test_expand_uses_hydra_grammar_and_adds_the_ablation_profile():
    points = expand(["seed=range(1,3)", "optimizer=glob(adam*)", "trainer.max_epochs=choice(1,2)",
                     "paths.output_dir=/x"])
    assert len(points) == 8
    assert all(p[0] == "trainer=ablation" and "paths.output_dir=/x" in p for p in points)
    assert {p[2] for p in points} == {"optimizer=adam", "optimizer=adamw"}  # glob over the config group
    assert points[0] == ["trainer=ablation", "seed=1", "optimizer=adam", "trainer.max_epochs=1",
                         "paths.output_dir=/x"]
    assert expand(["trainer=ci_fast", "seed=1,2"]) == [["trainer=ci_fast", "seed=1"],
                                                       ["trainer=ci_fast", "seed=2"]]


def test_bad_sweep_syntax_is_a_config_error():
    with pytest.raises(ConfigError, match="seed=range"):
        expand(["seed=range(1,"])


def test_launcher_overrides_are_split_from_the_sweep():
    launcher, sweep = split_arguments(["seed=1,2", "hydra/launcher=submitit_slurm",
                                       "hydra.launcher.partition=gpu"])
    assert launcher == ["hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu"]
    assert sweep == ["seed=1,2"]
    assert "hydra/launcher=joblib" not in launch.launcher_overrides(launcher, "/s", 2)
    assert "hydra.launcher.n_jobs=3" in launch.launcher_overrides([], "/s", 3)


def test_joblib_launcher_runs_every_job_in_its_own_folder(tmp_path):
    # operator.attrgetter is importable in joblib's worker processes, unlike a function defined here.
    done = launch.launch(operator.attrgetter("job"), [0, 3, 5], launch.launcher_overrides([], tmp_path, 2))
    assert done == [0, 3, 5]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0", "3", "5"]


def test_one_point_at_a_time_needs_no_launcher_plugin(tmp_path, monkeypatch):
    monkeypatch.setattr(launch, "_installed", lambda module: False)  # hydra-joblib-launcher not installed
    settings = launch.launcher_overrides([], tmp_path, 1)
    assert not any(o.startswith("hydra/launcher=") for o in settings)
    assert launch.launch(operator.attrgetter("job"), [0, 2], settings) == [0, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0", "2"]
    with pytest.raises(ConfigError, match=r"--parallel 2: needs Hydra's joblib launcher.*spectramind\[joblib\]"):
        launch.launcher_overrides([], tmp_path, 2)


def test_unknown_launcher_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="launcher"):
        settings = launch.launcher_overrides(["hydra/launcher=nope"], tmp_path, 1)
        launch.launch(operator.attrgetter("job"), [0], settings)


def test_data_is_prepared_once_per_dataset_and_shared_folders_run_serially(monkeypatch, tmp_path):
    calls = []

    def fake_cli(args, log_file, env):
        calls.append(args)
        return "calibrate exited 3: no data" if "seed=3" in args and args[0] == "calibrate" else None

    monkeypatch.setattr(ablate, "_cli", fake_cli)
    same = [Point(i, [f"lr={i}"], f"h{i}", data_store="out/store", data_key="k1") for i in range(3)]
    assert ablate.prepare_data(same, [0, 1, 2], tmp_path) is True
    assert [c[0] for c in calls] == ["calibrate", "fit"]  # one dataset, built once before any point starts
    simulated = [Point(0, ["lr=0"], "h0", data_store="out/store", data_key="k9", simulated=True)]
    calls.clear()
    ablate.prepare_data(simulated, [0], tmp_path)
    assert [c[0] for c in calls] == ["simulate", "calibrate", "fit"]
    seeds = [Point(i, [f"seed={i + 2}"], f"h{i}", data_store="out/store", data_key=f"k{i}") for i in range(2)]
    assert ablate.prepare_data(seeds, [0, 1], tmp_path) is False  # two datasets, one folder: take turns
    assert [p.status for p in seeds] == ["pending", "failed"] and seeds[1].error.endswith("no data")


def test_dry_run_lists_points_with_their_train_run_hashes_and_writes_nothing(cli, tmp_path):
    out = tmp_path / "out"
    result = cli("ablate", "-m", "seed=1,2", "trainer.max_epochs=1,0", f"paths.output_dir={out}", "--dry-run")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("point")]
    assert len(lines) == 4
    for line, seed, epochs in zip(lines, (1, 1, 2, 2), (1, 0, 1, 0), strict=True):
        overrides = ["trainer=ablation", f"seed={seed}", f"trainer.max_epochs={epochs}",
                     f"paths.output_dir={out}"]
        if epochs:
            assert line.split()[2] == resolve("train", overrides)[1] and "pending" in line
        else:
            assert line.split()[2] == "-" and "failed" in line and "max_epochs" in line
    assert not out.exists()


def test_refused_points_are_recorded_as_failed_and_the_sweep_goes_on(cli, tmp_path):
    result = cli("ablate", "-m", "trainer.max_epochs=0,-1", f"paths.output_dir={tmp_path}")
    assert result.returncode == 1
    assert "0 complete, 2 failed" in result.stdout
    record = json.loads(next((tmp_path / SWEEPS_DIR).glob(f"*/{SWEEP_RECORD}")).read_text())
    assert [p["status"] for p in record["points"]] == ["failed", "failed"]
    board = (tmp_path / "ablation_leaderboard.md").read_text()
    assert len(re.findall(r"^\| \d", board, re.M)) == 2 and "expected a value >= 1" in board


def test_a_point_whose_inputs_fail_to_build_is_recorded_with_its_error_line(cli, tmp_path):
    """Point 0 is refused by the schema; point 1 is planned (it has a hash) but its calibrate fails."""
    result = cli("ablate", "-m", "trainer=ci_fast", "trainer.max_epochs=0,1", "data=kaggle",
                 f"data.root={tmp_path / 'no-such-data'}", f"paths.output_dir={tmp_path}")
    assert result.returncode == 1 and "0 complete, 2 failed" in result.stdout
    rows = _table((tmp_path / "ablation_leaderboard.md").read_text())
    planned = next(r for r in rows if re.match(r"[0-9a-f]{16} ", r[1]))
    assert planned[2] == "failed" and "calibrate exited" in planned[-1] and "no-such-data" in planned[-1]
    assert next(r for r in rows if r is not planned)[1] == "(no folder)"


def _table(board: str) -> list[list[str]]:
    return [[c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]] for line in board.splitlines()
            if re.match(r"^\| \d", line)]


@pytest.mark.slow
def test_four_point_ci_fast_sweep_then_rerun_trains_nothing(cli, tmp_path):
    """The issue's done-when: 4 runs finish, 4 rows in score order, the same sweep again trains nothing."""
    # Parameters that leave the data alone: the points share one simulated set, built once up front.
    sweep = ["ablate", "-m", "trainer=ci_fast", "optimizer.lr=1e-3,3e-3", "optimizer.weight_decay=0,0.01",
             *SMALL_SET, "data.num_workers=0", f"paths.output_dir={tmp_path}", "--parallel", "2"]
    first = cli(*sweep, timeout=1800)
    assert first.returncode == 0, first.stdout + first.stderr
    summaries = sorted((tmp_path / "runs").glob("*/summary.json"))
    assert len(summaries) == 4
    assert all(json.loads(p.read_text())["status"] == "complete" for p in summaries)
    rows = _table((tmp_path / "ablation_leaderboard.md").read_text())
    assert len(rows) == 4
    scores = [float(r[3]) for r in rows]
    assert scores == sorted(scores, reverse=True) and rows[0][0].endswith("★")
    assert len(list((tmp_path / "diagnostics" / "ablation").glob("score_vs_*.png"))) == 2

    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("*") if p.is_file()}
    again = cli(*sweep, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count(" complete ") == 4 and "Launching jobs" not in again.stdout + again.stderr
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # no run folder file was touched


def test_submitit_local_launcher_drives_the_same_jobs(tmp_path):
    """submitit_local is submitit_slurm's code path without Slurm: the jobs are pickled and run elsewhere."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    settings = launch.launcher_overrides(["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=2"],
                                         tmp_path, 1)
    assert launch.launch(operator.attrgetter("job"), [1, 2], settings) == [1, 2]
    assert (tmp_path / ".submitit").is_dir()


# Optuna searches (hydra/sweeper=optuna, the [optuna] extra, which [dev] has).


def _fake_trials(monkeypatch, seen: list) -> None:
    """Points that 'train' without training: run_point records the point, its score is a function of its lr
    (highest at lr=1e-3), read back by the run hash as the real score is."""
    scores = {}

    def fake_run_point(point, log_dir, threads=None):
        seen.append(list(point.overrides))
        lr = float(next(o for o in point.overrides if o.startswith("optimizer.lr=")).partition("=")[2])
        scores[point.run_hash] = -abs(math.log10(lr) + 3)
        point.trained = point.evaluated = True
        point.status = "complete"
        return point

    monkeypatch.setattr(ablate, "prepare_data", lambda points, waiting, sweep_dir: True)
    monkeypatch.setattr(ablate, "run_point", fake_run_point)
    monkeypatch.setattr(ablate, "score", lambda out, run_hash: scores.get(run_hash))


@pytest.mark.parametrize("direction", ["maximize", "minimize"])
def test_optuna_trials_reach_the_points_and_the_direction_picks_the_best(monkeypatch, tmp_path, direction):
    seen = []
    _fake_trials(monkeypatch, seen)
    extra = [] if direction == "maximize" else ["hydra.sweeper.direction=minimize"]  # maximize: the default
    points, sweep_dir = ablate.ablate(["hydra/sweeper=optuna", "hydra.sweeper.n_trials=4", *extra,
                                       "optimizer.lr=tag(log, interval(1e-4,1e-2))", "seed=3",
                                       f"paths.output_dir={tmp_path}"])
    assert len(seen) == 4 and [p.index for p in points] == [0, 1, 2, 3]
    lrs = {float(o.partition("=")[2]) for overrides in seen for o in overrides if o.startswith("optimizer.lr=")}
    assert len(lrs) == 4 and all(1e-4 <= lr <= 1e-2 for lr in lrs)  # four proposals, not one point four times
    for overrides in seen:  # the sweeper's proposal plus the fixed overrides and the default profile
        assert {"trainer=ablation", "seed=3", f"paths.output_dir={tmp_path}"} < set(overrides)
    record = json.loads((sweep_dir / SWEEP_RECORD).read_text())
    assert [p["overrides"] for p in record["points"]] == seen and all(p.status == "complete" for p in points)
    pick = max if direction == "maximize" else min
    best = pick(points, key=lambda p: p.score)
    assert record["sweeper"]["direction"] == direction and record["sweeper"]["best"]["index"] == best.index
    # The value each trial returned is the score Optuna optimised: its best value is that point's.
    results = (sweep_dir / "optimization_results.yaml").read_text()
    assert f"best_value: {best.score}" in results


def test_a_failed_trial_is_the_worst_value_and_the_search_goes_on(monkeypatch, tmp_path):
    seen = []
    _fake_trials(monkeypatch, seen)
    points, sweep_dir = ablate.ablate(["hydra/sweeper=optuna", "hydra.sweeper.n_trials=3",
                                       "trainer.max_epochs=choice(0,-1)", f"paths.output_dir={tmp_path}"])
    assert seen == [] and [p.status for p in points] == ["failed"] * 3  # the schema refused each: no training
    assert all("max_epochs" in p.error for p in points)
    assert json.loads((sweep_dir / SWEEP_RECORD).read_text())["sweeper"]["best"] is None
    failed = Point(0, [], status="failed")
    assert ablate.objective(failed, "maximize") == -math.inf and ablate.objective(failed, "minimize") == math.inf
    assert ablate.objective(Point(0, [], score=math.nan), "maximize") == -math.inf  # NaN would abort the study


def test_missing_optuna_plugin_or_unknown_sweeper_is_one_line(cli, tmp_path, monkeypatch):
    monkeypatch.setattr(launch, "_installed", lambda module: False)  # hydra-optuna-sweeper not installed
    with pytest.raises(ConfigError, match=r"needs Hydra's Optuna sweeper.*pip install 'spectramind\[optuna\]'") as e:
        ablate.ablate(["hydra/sweeper=optuna", "optimizer.lr=interval(1e-4,1e-2)", f"paths.output_dir={tmp_path}"])
    assert "\n" not in str(e.value)
    result = cli("ablate", "hydra/sweeper=nevergrad", "seed=1,2", f"paths.output_dir={tmp_path}")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().count("\n") == 0 and "spectramind[optuna]" in result.stderr
    assert not (tmp_path / SWEEPS_DIR).exists()


def test_what_optuna_cannot_do_from_here_is_one_line(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    with pytest.raises(ConfigError, match="plain overrides"):  # Hydra 1.3 cannot merge it from the command line
        ablate.ablate(["hydra/sweeper=optuna", "+hydra.sweeper.params.seed=choice(1,2)"])
    with pytest.raises(ConfigError, match="lists a grid's points"):
        ablate.ablate(["hydra/sweeper=optuna", "seed=choice(1,2)", f"paths.output_dir={tmp_path}"], dry_run=True)
    with pytest.raises(ConfigError, match="interval.*is a search space, not a grid.*hydra/sweeper=optuna"):
        expand(["optimizer.lr=interval(1e-4,1e-2)"])
    with pytest.raises(ConfigError, match="one direction"):
        launch._check_optuna(OmegaConf.create({"direction": ["maximize", "minimize"], "storage": None}))
    monkeypatch.setattr(launch, "_major", lambda package: 2)  # optuna 2.10's RDB storage fails on SQLAlchemy 2
    with pytest.raises(ConfigError, match=r"sqlalchemy<2"):
        launch._check_optuna(OmegaConf.create({"direction": "maximize", "storage": "sqlite:///s.db"}))


@pytest.mark.slow
def test_optuna_search_on_ci_fast_scores_its_trials_then_rerun_trains_nothing(cli, tmp_path):
    """A real study: 2 trials, each trained and evaluated; sweep.json and the leaderboard list them, the best
    is the highest score; the same command proposes the same trials again (a seeded sampler) and reuses them."""
    sweep = ["ablate", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=2", "trainer=ci_fast",
             "optimizer.lr=tag(log, interval(1e-4,1e-2))", *SMALL_SET, "data.num_workers=0",
             f"paths.output_dir={tmp_path}"]
    first = cli(*sweep, timeout=1800)
    assert first.returncode == 0, first.stdout + first.stderr
    record = json.loads(next((tmp_path / SWEEPS_DIR).glob(f"*/{SWEEP_RECORD}")).read_text())
    points = record["points"]
    assert [p["status"] for p in points] == ["complete", "complete"]
    assert all(isinstance(p["score"], float) for p in points) and points[0]["overrides"] != points[1]["overrides"]
    best = max(points, key=lambda p: p["score"])
    assert record["sweeper"]["direction"] == "maximize" and record["sweeper"]["best"]["index"] == best["index"]
    assert f"best (maximize): point {best['index']}  {best['run_hash']}" in first.stdout
    rows = _table((tmp_path / "ablation_leaderboard.md").read_text())
    assert len(rows) == 2 and rows[0][0].endswith("★") and rows[0][1].startswith(f"[{best['run_hash']}]")

    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("*") if p.is_file()}
    again = cli(*sweep, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count(" complete ") == 2
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # no run folder file was touched
