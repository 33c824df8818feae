"""dvc.yaml tells the truth: each stage depends on the params, configs and package source it reads, every file
it writes is declared, params.yaml is Hydra's composition of configs/pipeline.yaml, and (slow) a real `dvc repro`
and `dvc exp run` on a small set."""

import json
import math
import os
import shutil
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest
import yaml
from configobj import ConfigObj
from conftest import REPO, SMALL_SET

from spectramind.config.provenance import stage_sources
from spectramind.config.runhash import SECTIONS

BIN = str(Path(sys.executable).parent)
STAGES = ("simulate", "calibrate", "fit", "train", "predict", "evaluate")
SCHEMAS = "src/spectramind/config/schemas"
PIPELINE_FILES = ("dvc.yaml", "params.yaml", ".gitignore", "dvc.lock")


def _env(work: Path | None = None) -> dict:
    """PATH with this venv's `dvc` and `spectramind`; with `work`, the stages import the workspace's own src/."""
    env = {**os.environ, "PATH": BIN + os.pathsep + os.environ.get("PATH", "")}
    if work is not None and not (work / "src").is_symlink():
        env["PYTHONPATH"] = os.pathsep.join([str(work / "src"), *filter(None, [env.get("PYTHONPATH")])])
    return env


def _workspace(root: Path, git: bool, copy: bool) -> Path:
    """The pipeline files in a scratch folder: src/ and configs/ copied (`copy`: the test edits them) or linked."""
    work = root / "work"
    work.mkdir()
    for name in PIPELINE_FILES:
        if (REPO / name).is_file():
            shutil.copy(REPO / name, work / name)
    for name in ("src", "configs"):
        if copy:
            shutil.copytree(REPO / name, work / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            (work / name).symlink_to(REPO / name)
    if git:
        for args in (["init", "-q"], ["config", "user.email", "ci@example.invalid"], ["config", "user.name", "ci"]):
            subprocess.run(["git", *args], cwd=work, check=True)
    subprocess.run(["dvc", "init", "-q"] + ([] if git else ["--no-scm"]), cwd=work, env=_env(), check=True)
    config = ConfigObj(str(work / ".dvc" / "config"))  # dvc init's, with this repository's on top
    config.merge(ConfigObj(str(REPO / ".dvc" / "config")))
    config.write()
    if git:
        subprocess.run(["git", "add", "-A"], cwd=work, check=True)
        subprocess.run(["git", "commit", "-qm", "pipeline"], cwd=work, check=True)
    return work


@pytest.fixture(scope="module")
def stages(tmp_path_factory) -> dict:
    """Each stage as DVC resolves it (params.yaml interpolated): cmd, params, deps, outs, metrics, plots."""
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    work = _workspace(tmp_path_factory.mktemp("dvc"), git=False, copy=False)
    with Repo(str(work)) as repo:
        repo.index.check_graph()  # overlapping outs, cycles, an out that is also another stage's out
        resolved = {}
        for stage in repo.index.stages:
            resolved[stage.name] = {
                "cmd": stage.cmd,
                "params": [key for dep in stage.deps if isinstance(dep, ParamsDependency) for key in dep.params],
                "deps": [dep.def_path for dep in stage.deps if not isinstance(dep, ParamsDependency)],
                "outs": [o.def_path for o in stage.outs if not o.metric and not o.plot],
                "metrics": [o.def_path for o in stage.outs if o.metric],
                "plots": [o.def_path for o in stage.outs if o.plot],
                "cache": {o.def_path: o.use_cache for o in stage.outs},
            }
    return resolved


@pytest.fixture(scope="module")
def params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))


def _compose_pipeline(overrides=(), config_name="pipeline", return_hydra_config=False):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(REPO / "configs"), version_base=None):
            return compose(config_name=config_name, overrides=list(overrides), return_hydra_config=return_hydra_config)
    finally:
        GlobalHydra.instance().clear()


def test_dvc_composes_params_yaml_from_configs_pipeline_yaml():
    hydra = ConfigObj(str(REPO / ".dvc" / "config"))["hydra"]
    assert dict(hydra) == {"enabled": "true", "config_dir": "configs", "config_name": "pipeline"}
    assert (REPO / "configs" / "pipeline.yaml").is_file()


def test_params_yaml_is_a_fresh_composition_of_pipeline_yaml(tmp_path):
    """Byte for byte what `dvc exp run` writes before it runs (dvc.utils.hydra.compose_and_dump, no overrides)."""
    from dvc.utils.hydra import compose_and_dump
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    fresh = tmp_path / "params.yaml"
    compose_and_dump(fresh, str(REPO / "configs"), None, "pipeline", str(REPO), [])
    GlobalHydra.instance().clear()
    assert (REPO / "params.yaml").read_text(encoding="utf-8") == fresh.read_text(encoding="utf-8"), (
        "params.yaml is stale: regenerate it with `spectramind config params --out params.yaml`")


def _leaves(tree, prefix=()):
    for k, v in tree.items():
        if isinstance(v, dict) and v:
            yield from _leaves(v, prefix + (k,))
        else:
            yield prefix + (k,), v


def test_pipeline_yaml_repeats_no_default_of_the_configs_it_composes():
    """Every value configs/pipeline.yaml sets differs from what the root config would give with the same choices."""
    from omegaconf import OmegaConf

    own = yaml.safe_load((REPO / "configs" / "pipeline.yaml").read_text(encoding="utf-8"))
    defaults = own.pop("defaults")
    assert defaults[0] == "config" and defaults[-1] == "_self_", defaults
    choices = []
    for entry in defaults[1:-1]:
        (key, option), = entry.items()
        assert key.startswith("override "), entry
        choices.append(f"{key.removeprefix('override ').strip()}={option}")
    base = OmegaConf.to_container(_compose_pipeline(choices, config_name="config"), resolve=True)
    for path, value in _leaves(own):
        node = base
        for key in path:
            node = node.get(key, KeyError) if isinstance(node, dict) else KeyError
        assert node != value, f"configs/pipeline.yaml repeats the default {'.'.join(path)}: {value!r}"


def _own(name: str) -> str:
    """The stage's paths.output_dir (its run snapshot): evaluate's sits below evaluate.out_dir, beside metrics.json."""
    return "pipeline/evaluate/run" if name == "evaluate" else f"pipeline/{name}"


def test_each_stage_runs_spectramind_on_params_yaml_in_its_own_output_folder(stages):
    assert tuple(stages) == STAGES
    for name, stage in stages.items():
        assert stage["cmd"] == f"spectramind {name} --params params.yaml paths.output_dir={_own(name)}"
        assert _own(name) in stage["outs"], name


def test_stage_params_are_the_sections_the_command_reads(stages):
    for name, stage in stages.items():
        assert name in SECTIONS, f"runhash.SECTIONS has no {name!r}"
        assert sorted(stage["params"]) == sorted(SECTIONS[name]), name


def test_source_deps_are_exactly_the_files_the_stage_runs(stages):
    for name, stage in stages.items():
        listed = [d.removeprefix("src/spectramind/") for d in stage["deps"]
                  if d.startswith("src/spectramind/") and not d.startswith(SCHEMAS + "/")]
        for dep in listed:  # a folder dep would hash __pycache__/*.pyc too
            assert (REPO / "src" / "spectramind" / dep).is_file(), f"{name}: {dep} is not a file"
        assert sorted(listed) == sorted(stage_sources(name)), name


@lru_cache(maxsize=1)
def _choices() -> tuple[str, ...]:
    return tuple(_compose_pipeline(return_hydra_config=True).hydra.runtime.choices)


def _groups_of(section: str) -> set[str]:
    """The config groups whose options compose into `section` (Hydra's own record of the choices it made)."""
    found = set()
    for key in _choices():
        group, _, package = key.partition("@")
        if not group.startswith("hydra/") and (package or group.replace("/", ".")).split(".")[0] == section:
            found.add(group)
    return found


def test_config_deps_are_the_files_behind_the_sections_read(stages):
    for name, stage in stages.items():
        sections = SECTIONS[name]
        expected = {"configs/config.yaml", "configs/pipeline.yaml"}
        for section in sections:
            expected |= {f"configs/{group}" for group in _groups_of(section)}
            if section != "seed":
                assert (REPO / SCHEMAS / f"{section}.json").is_file(), section
                expected.add(f"{SCHEMAS}/{section}.json")
        assert {"configs/data", "configs/calibrate", "configs/split"} <= expected or "data" not in sections
        listed = {d for d in stage["deps"] if d.startswith("configs") or d.startswith(SCHEMAS + "/")}
        assert listed == expected, name
        for dep in listed:
            assert (REPO / dep).exists(), dep


def test_data_flows_through_declared_outs(stages, params):
    """Each stage's inputs are outs of earlier stages, at the paths params.yaml hands the commands."""
    data, predict, evaluate = params["data"], params["predict"], params["evaluate"]
    train_root = "pipeline/train"
    assert predict["run"] == train_root
    reads = {
        "simulate": set(),
        "calibrate": {data["root"]},
        "fit": {data["store"]},
        "train": {data["store"], data["baseline"]},
        "predict": {train_root, data["store"], data["baseline"]},
        "evaluate": {train_root, data["store"], data["baseline"]},
    }
    writes = {"simulate": data["root"], "calibrate": data["store"], "fit": data["baseline"]}
    for name, stage in stages.items():
        data_deps = {d for d in stage["deps"] if not d.startswith(("src/", "configs/"))}
        assert data_deps == reads[name], name
        if name in writes:
            assert writes[name] in stage["outs"], name
    assert Path(predict["out"]).parent.as_posix() == "pipeline/predict"
    out_dir = evaluate["out_dir"]
    ev = stages["evaluate"]
    assert set(ev["outs"]) == {_own("evaluate")} | {
        f"{out_dir}/{n}" for n in ("submission.csv", "predict_summary.json", "spectra.png", "score_per_wavelength.png",
                                          "fit_flags.csv")}
    assert ev["metrics"] == [f"{out_dir}/metrics.json"]
    assert ev["plots"] == [f"{out_dir}/per_bin.csv"]
    # cached, so an experiment's metrics reach `dvc exp show` (pipeline/ is git-ignored)
    assert all(ev["cache"].values())
    # the train stage's curves: DVCLive's files in the fixed folder the pipeline gives it
    live = params["logger"]["dvclive"]["dir"]
    train = stages["train"]
    assert set(params["logger"]) == {"jsonl", "dvclive"}
    assert train["outs"] == [_own("train"), f"{live}/params.yaml"]
    assert train["metrics"] == [f"{live}/metrics.json"] and train["plots"] == [f"{live}/plots/metrics"]
    assert all(train["cache"].values())


# ----------------------------------------------------------------------------------------------- slow: real runs


def _dvc(work: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    result = subprocess.run(["dvc", *args], cwd=work, env=_env(work), capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"dvc {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result


def _undeclared(work: Path) -> list[str]:
    """Files the stages wrote (anything git does not track, outside .dvc/ and __pycache__/) that lie in no
    declared out, metrics or plots file: data/ and pipeline/ first of all, but a stray file anywhere counts."""
    from dvc.repo import Repo

    with Repo(str(work)) as repo:
        declared = [o.def_path for stage in repo.index.stages for o in stage.outs]
    untracked = subprocess.run(["git", "ls-files", "-z", "--others"], cwd=work, check=True, capture_output=True,
                               text=True).stdout.split("\0")
    return sorted(rel for rel in untracked if rel and not rel.startswith(".dvc/") and "__pycache__/" not in rel
                  and not any(rel == out or rel.startswith(out + "/") for out in declared))


def _status(work: Path) -> set[str]:
    return set(json.loads(_dvc(work, "status", "--json").stdout))


def _edited(work: Path, rel: str) -> dict:
    """`dvc status` after appending a comment line to `rel` (then restored)."""
    path = work / rel
    original = path.read_bytes()
    path.write_bytes(original + b"\n# edited\n")
    try:
        return _status(work)
    finally:
        path.write_bytes(original)


def _score(entry: dict) -> float:
    return entry["data"]["metrics"]["pipeline/evaluate/metrics.json"]["data"]["score"]


def _shrink(work: Path) -> None:
    """The workspace's pipeline on conftest's small set (the embedded default is what CI's dvc-repro job and
    the Quickstart run): its pipeline.yaml gets the overrides, params.yaml is composed again, both committed."""
    pipeline = work / "configs" / "pipeline.yaml"
    config = yaml.safe_load(pipeline.read_text(encoding="utf-8"))
    for override in SMALL_SET:
        key, value = override.split("=", 1)
        *parents, leaf = key.split(".")
        node = config
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    pipeline.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    composed = subprocess.run([str(Path(BIN) / "spectramind"), "config", "params", "--out", "params.yaml"],
                              cwd=work, env=_env(work), capture_output=True, text=True)
    assert composed.returncode == 0, composed.stderr
    subprocess.run(["git", "commit", "-qam", "small set"], cwd=work, check=True)


@pytest.mark.slow
def test_dvc_repro_then_exp_run_on_an_override(tmp_path):
    work = _workspace(tmp_path, git=True, copy=True)
    _shrink(work)
    first = _dvc(work, "repro")
    for stage in STAGES:
        assert f"Running stage '{stage}'" in first.stdout, first.stdout
    assert _undeclared(work) == [], "written outside every declared out"
    after = _dvc(work, "status").stdout
    assert "up to date" in after, f"a later stage changed what an earlier one declared:\n{after}"
    metrics = json.loads((work / "pipeline" / "evaluate" / "metrics.json").read_text())
    assert 0.0 <= metrics["score"] <= 1.0
    assert (work / "pipeline" / "predict" / "submission.csv").is_file()

    # README's "From Kaggle": the pipeline's trained run exported through params.yaml
    exported = subprocess.run([str(Path(BIN) / "spectramind"), "export", "--params", "params.yaml",
                               str(tmp_path / "model")], cwd=work, env=_env(work), capture_output=True, text=True)
    assert exported.returncode == 0, exported.stderr
    (trained,) = [p.name for p in (work / "pipeline" / "train" / "runs").iterdir()]
    assert json.loads((tmp_path / "model" / "export.json").read_text())["run"] == trained

    again = _dvc(work, "repro")
    assert "Running stage" not in again.stdout, again.stdout
    assert "score" in _dvc(work, "metrics", "show", "--json").stdout
    _dvc(work, "plots", "show", "--json")

    assert _edited(work, "configs/model/residual.yaml") == {"train", "predict", "evaluate"}
    assert _edited(work, "src/spectramind/models/fit.py") == {"fit", "train", "predict", "evaluate"}
    assert _status(work) == set()

    subprocess.run(["git", "add", "dvc.lock"], cwd=work, check=True)
    subprocess.run(["git", "commit", "-qm", "dvc.lock"], cwd=work, check=True)
    exp = _dvc(work, "exp", "run", "-n", "sgd3", "-S", "optimizer=sgd", "-S", "trainer.max_epochs=3")
    for stage in ("train", "predict", "evaluate"):
        assert f"Running stage '{stage}'" in exp.stdout, exp.stdout
    for stage in ("simulate", "calibrate", "fit"):
        assert f"Running stage '{stage}'" not in exp.stdout, exp.stdout

    shown = json.loads(_dvc(work, "exp", "show", "--json").stdout)
    main = next(row for row in shown if row["rev"] != "workspace")
    (run,) = [rev for e in main["experiments"] for rev in e["revs"] if rev["name"] == "sgd3"]
    params_of = run["data"]["params"]["params.yaml"]["data"]
    assert params_of["optimizer"]["_target_"] == "torch.optim.SGD" and params_of["trainer"]["max_epochs"] == 3
    assert 0.0 <= _score(main) <= 1.0 and 0.0 <= _score(run) <= 1.0
    # the experiment's training curves reach `dvc exp show` (each one's last value) and `dvc plots show`
    curves = run["data"]["metrics"]["pipeline/dvclive/metrics.json"]["data"]
    assert curves["step"] > 0 and math.isfinite(curves["train"]["loss"]) and math.isfinite(curves["val"]["loss"])
    plotted = json.loads(_dvc(work, "plots", "show", "--json").stdout)["data"]
    assert "pipeline/dvclive/plots/metrics/train/loss.tsv" in plotted, sorted(plotted)
