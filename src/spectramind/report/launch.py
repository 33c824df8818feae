"""Hand a list of jobs to a Hydra launcher plugin: joblib on one machine, submitit on a Slurm cluster.

The launcher composes its own tiny config (`job: <index>`) rather than SpectraMind's tree, so a point
whose config is bad fails inside its own job (its `spectramind train` says why) instead of inside the
launcher, where it would abort every other job.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from spectramind.errors import ConfigError

CONFIG_NAME = "spectramind_ablate_launcher"


def launcher_overrides(user: Sequence[str], sweep_dir: Path, parallel: int) -> list[str]:
    """Joblib with `parallel` (> 1) workers unless the user picked another launcher (`hydra/launcher=...`);
    one point at a time is Hydra's own basic launcher, which needs no plugin."""
    chosen = [o for o in user if o.startswith("hydra/launcher=")]
    base = [f"hydra.sweep.dir={sweep_dir}", "hydra.sweep.subdir=${job}", "hydra.job.name=ablate",
            "hydra.job.chdir=false", "hydra.output_subdir=null", "hydra/job_logging=disabled"]
    if not chosen and parallel > 1:
        if not _installed("hydra_plugins.hydra_joblib_launcher"):
            raise ConfigError(f"ablate --parallel {parallel}: needs Hydra's joblib launcher, which is not "
                              "installed; pip install 'spectramind[joblib]'")
        base += ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={parallel}"]
    return base + list(user)


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its parent package (hydra_plugins) is missing too
        return False


def launch(task: Callable[[Any], dict], jobs: Sequence[int], overrides: Sequence[str]) -> list[dict]:
    """Run `task(cfg)` once per job index (cfg.job is the index) through the configured launcher."""
    from hydra._internal.callbacks import Callbacks
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path
    from hydra.core.config_store import ConfigStore
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.plugins import Plugins
    from hydra.errors import HydraException
    from hydra.types import HydraContext, RunMode
    from omegaconf.errors import OmegaConfBaseException

    ConfigStore.instance().store(name=CONFIG_NAME, node={"job": 0})
    GlobalHydra.instance().clear()
    hydra = Hydra.create_main_hydra2("ablate", create_config_search_path(None))
    try:
        try:
            cfg = hydra.compose_config(CONFIG_NAME, list(overrides), run_mode=RunMode.MULTIRUN)
        except (HydraException, OmegaConfBaseException) as e:
            first = str(e).strip().splitlines()[0]
            raise ConfigError(f"launcher overrides {list(overrides)}: {first}") from e
        HydraConfig.instance().set_config(cfg)
        context = HydraContext(config_loader=hydra.config_loader, callbacks=Callbacks(cfg))
        launcher = Plugins.instance().instantiate_launcher(hydra_context=context, task_function=task,
                                                           config=cfg)
        returns = launcher.launch([[f"job={i}"] for i in jobs], initial_job_idx=0)
    finally:
        GlobalHydra.instance().clear()
    return [r.return_value for r in returns]
