"""Hand a list of jobs to a Hydra launcher plugin (joblib on one machine, submitit on a Slurm cluster), or
a search to a Hydra sweeper plugin (Optuna), through Hydra's public compose and plugin API.

A grid's launcher composes its own tiny config (`job: <index>`) rather than SpectraMind's tree, so a
point whose config is bad fails inside its own job (its `spectramind train` says why) instead of inside
the launcher, where it would abort every other job. A sweeper composes SpectraMind's real tree: it
proposes each trial's overrides, and its launcher applies them to the primary config before the job runs.

The one piece of hydra._internal left is `Callbacks`, which a HydraContext needs (the launchers call its
on_job_start/on_job_end) and which Hydra does not export: hence hydra-core <1.4 in pyproject.toml.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from spectramind.errors import ConfigError

CONFIG_NAME = "spectramind_ablate_launcher"
SWEEP_CONFIG = "config"         # a sweeper's primary config: SpectraMind's own tree
SWEEPERS = {"optuna": "hydra_plugins.hydra_optuna_sweeper"}   # `hydra/sweeper=<name>`: its plugin module
OPTUNA_EXTRA = "pip install 'spectramind[optuna]'"


def launcher_overrides(user: Sequence[str], sweep_dir: Path, parallel: int) -> list[str]:
    """Joblib with `parallel` (> 1) workers unless the user picked another launcher (`hydra/launcher=...`);
    one point at a time is Hydra's own basic launcher, which needs no plugin."""
    return _launcher_settings(user, sweep_dir, parallel, "${job}") + list(user)


def _launcher_settings(user: Sequence[str], sweep_dir: Path, parallel: int, subdir: str) -> list[str]:
    """launcher_overrides less the user's own; `subdir`: each job's folder under `sweep_dir`."""
    chosen = [o for o in user if o.startswith("hydra/launcher=")]
    base = [f"hydra.sweep.dir={sweep_dir}", f"hydra.sweep.subdir={subdir}", "hydra.job.name=ablate",
            "hydra.job.chdir=false", "hydra.output_subdir=null", "hydra/job_logging=disabled"]
    if not chosen and parallel > 1:
        if not _installed("hydra_plugins.hydra_joblib_launcher"):
            raise ConfigError(f"ablate --parallel {parallel}: needs Hydra's joblib launcher, which is not "
                              "installed; pip install 'spectramind[joblib]'")
        base += ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={parallel}"]
    return base


def sweeper_choice(user: Sequence[str]) -> str | None:
    """The `hydra/sweeper=<name>` the user picked (the last one wins, as in Hydra), else None."""
    chosen = [o.partition("=")[2] for o in user if o.startswith("hydra/sweeper=")]
    return chosen[-1] if chosen else None


def sweeper_overrides(user: Sequence[str], sweep_dir: Path, parallel: int) -> list[str]:
    """The launcher settings plus the Optuna sweeper's defaults, the user's own settings after them (they win):
    direction maximize (the leaderboard's score: higher is better), one trial per worker in each batch, and a
    seeded sampler, so the same command proposes the same trials and a rerun finds their runs complete."""
    name = sweeper_choice(user)
    if name not in SWEEPERS:
        raise ConfigError(f"ablate hydra/sweeper={name}: not a sweeper ablate drives (a grid needs no "
                          f"hydra/sweeper; a search is hydra/sweeper=optuna, {OPTUNA_EXTRA})")
    if not _installed(SWEEPERS[name]):
        raise ConfigError(f"ablate hydra/sweeper={name}: needs Hydra's Optuna sweeper, which is not installed; "
                          f"{OPTUNA_EXTRA}")
    if any(o.lstrip("+~").startswith(("hydra.sweeper.params", "hydra.sweeper.search_space")) for o in user):
        # Hydra 1.3 cannot merge a dict into the plugin's `params: Optional[Dict] = None` from the command line.
        raise ConfigError("ablate: give the search space as plain overrides, e.g. 'optimizer.lr=interval(1e-4,"
                          "1e-2)', not hydra.sweeper.params")
    defaults = ["hydra.sweeper.direction=maximize", f"hydra.sweeper.n_jobs={parallel}"]
    grid = any(o == "hydra/sweeper/sampler=grid" for o in user)  # optuna's GridSampler takes no seed
    if not grid and not any(o.startswith("hydra.sweeper.sampler.seed=") for o in user):
        defaults.append("hydra.sweeper.sampler.seed=0")
    # A trial's folder is its number (the sweeper's job index), as a grid point's is its index.
    return _launcher_settings(user, sweep_dir, parallel, "${hydra.job.num}") + defaults + list(user)


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its parent package (hydra_plugins) is missing too
        return False


@contextlib.contextmanager
def _composed(config_name: str, overrides: Sequence[str]) -> Iterator[tuple[Any, Any]]:
    """(config with its `hydra` node, HydraContext) from Hydra's compose API over SpectraMind's config folder
    (the tiny launcher config is in Hydra's ConfigStore, always on the search path)."""
    from hydra import compose, initialize_config_dir
    from hydra._internal.callbacks import Callbacks  # no public equivalent (see the module docstring)
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.errors import HydraException
    from hydra.types import HydraContext
    from omegaconf.errors import OmegaConfBaseException

    from spectramind.config.compose import config_dir

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base=None, job_name="ablate"):
            try:
                cfg = compose(config_name, list(overrides), return_hydra_config=True)
            except (HydraException, OmegaConfBaseException) as e:
                raise ConfigError(f"launcher overrides {list(overrides)}: {_first_line(e)}") from e
            HydraConfig.instance().set_config(cfg)
            # The loader is kept by the context: the jobs compose with it even after GlobalHydra is cleared.
            yield cfg, HydraContext(config_loader=GlobalHydra.instance().config_loader(), callbacks=Callbacks(cfg))
    finally:
        GlobalHydra.instance().clear()


def _first_line(e: Exception) -> str:
    return (str(e).strip() or type(e).__name__).splitlines()[0]


def launch(task: Callable[[Any], dict], jobs: Sequence[int], overrides: Sequence[str]) -> list[dict]:
    """Run `task(cfg)` once per job index (cfg.job is the index) through the configured launcher."""
    from hydra.core.config_store import ConfigStore
    from hydra.core.plugins import Plugins

    ConfigStore.instance().store(name=CONFIG_NAME, node={"job": 0})
    with _composed(CONFIG_NAME, overrides) as (cfg, context):
        launcher = Plugins.instance().instantiate_launcher(hydra_context=context, task_function=task,
                                                           config=cfg)
        returns = launcher.launch([[f"job={i}"] for i in jobs], initial_job_idx=0)
    return [r.return_value for r in returns]


def sweep(task: Callable[[Any], float], arguments: Sequence[str], overrides: Sequence[str]) -> None:
    """Let the configured sweeper propose trials over `arguments` (the sweep overrides) and run `task(cfg)`
    for each through its launcher; `task` returns the trial's value (HydraConfig: its overrides, its folder)."""
    from hydra.core.plugins import Plugins
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    with _composed(SWEEP_CONFIG, overrides) as (cfg, context):
        _check_optuna(cfg.hydra.sweeper)
        sweeper = Plugins.instance().instantiate_sweeper(hydra_context=context, task_function=task, config=cfg)
        try:
            sweeper.sweep(arguments=list(arguments))
        except (HydraException, OmegaConfBaseException, ValueError) as e:
            # A trial's overrides the config tree refuses (an unknown key or option), before its job ran.
            raise ConfigError(f"sweep overrides {list(arguments)}: {_first_line(e)}") from e


def direction(value: Any) -> str:
    """The study's one direction as "maximize"/"minimize" (the plugin takes a string, its enum or a list)."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        value = value[0]
    return str(getattr(value, "name", value))


def _check_optuna(settings: Any) -> None:
    """Refuse, in one line, what would fail only after the first trial trained."""
    d = settings.direction
    if isinstance(d, Sequence) and not isinstance(d, str) and len(d) != 1:
        raise ConfigError(f"ablate hydra.sweeper.direction={list(d)}: one direction, on the leaderboard's score")
    if settings.get("storage") and _major("sqlalchemy") >= 2:
        # optuna 2.10 (the newest the plugin allows) fails on SQLAlchemy 2's schema check (AssertionError).
        raise ConfigError(f"ablate hydra.sweeper.storage={settings.storage}: optuna 2.10 stores studies with "
                          "SQLAlchemy < 2; pip install 'sqlalchemy<2', or leave the study in memory")


def _major(package: str) -> int:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return int(version(package).split(".")[0])
    except (PackageNotFoundError, ValueError):
        return 0
