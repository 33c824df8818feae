"""dvc.yaml: one source of truth for parameters, and a real `dvc repro` on the embedded default."""

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from spectramind.config.stage import resolve

BIN = str(Path(sys.executable).parent)


def _workspace(tmp_path: Path, git: bool) -> Path:
    """A copy of the pipeline files with the package source linked in (dvc.yaml lists it as deps)."""
    work = tmp_path / "work"
    work.mkdir()
    for name in ("dvc.yaml", "params.yaml", ".gitignore"):
        shutil.copy(REPO / name, work / name)
    for name in ("src", "configs"):
        (work / name).symlink_to(REPO / name)
    env = _env()
    if git:
        subprocess.run(["git", "init", "-q"], cwd=work, check=True)
        subprocess.run(["git", "config", "user.email", "ci@example.invalid"], cwd=work, check=True)
        subprocess.run(["git", "config", "user.name", "ci"], cwd=work, check=True)
    subprocess.run(["dvc", "init", "-q"] + ([] if git else ["--no-scm"]), cwd=work, env=env, check=True)
    if git:
        subprocess.run(["git", "add", "-A"], cwd=work, check=True)
        subprocess.run(["git", "commit", "-qm", "pipeline"], cwd=work, check=True)
    return work


def _env() -> dict:
    return {**os.environ, "PATH": BIN + os.pathsep + os.environ.get("PATH", "")}


def _commands(work: Path) -> dict[str, list[str]]:
    from dvc.repo import Repo

    with Repo(str(work)) as repo:
        return {stage.name: shlex.split(stage.cmd) for stage in repo.index.stages}


def _declared(work: Path) -> dict[str, set[str]]:
    stages = yaml.safe_load((work / "dvc.yaml").read_text())["stages"]
    return {name: set(stage["params"]) for name, stage in stages.items()}


def _hashes(work: Path) -> dict[str, str]:
    hashes = {}
    for name, argv in _commands(work).items():
        assert argv[:2] == ["spectramind", name], argv
        hashes[name] = resolve(name, argv[2:])[1]
    return hashes


def _leaves(tree, prefix=()):
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from _leaves(v, prefix + (k,))
        else:
            yield prefix + (k,), v


def test_every_param_reaches_the_run_hash_of_the_stages_that_declare_it(tmp_path):
    work = _workspace(tmp_path, git=False)
    params = yaml.safe_load((work / "params.yaml").read_text())
    base, declared = _hashes(work), _declared(work)
    changes = {int: lambda v: v * 2, float: lambda v: v * 2, str: lambda v: {"ci_fast": "ablation",
               "residual": "cnn1d", "test": "val"}[v]}
    for path, value in _leaves(params):
        edited = yaml.safe_load((work / "params.yaml").read_text())
        node = edited
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = changes[type(value)](value)
        (work / "params.yaml").write_text(yaml.safe_dump(edited))
        after = _hashes(work)
        for stage, hash_ in after.items():
            reads = path[0] in declared[stage]
            assert (hash_ != base[stage]) == reads, f"{'.'.join(path)} -> {stage}"
        (work / "params.yaml").write_text(yaml.safe_dump(params))
    assert _hashes(work) == base


def _dvc(work: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    result = subprocess.run(["dvc", *args], cwd=work, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"dvc {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.mark.slow
def test_dvc_repro_runs_once_then_only_what_a_param_change_touches(tmp_path):
    work = _workspace(tmp_path, git=True)
    first = _dvc(work, "repro")
    for stage in ("simulate", "calibrate", "train", "predict", "evaluate"):
        assert f"Running stage '{stage}'" in first.stdout
    metrics = json.loads((work / "pipeline" / "evaluate" / "metrics.json").read_text())
    assert 0.0 <= metrics["score"] <= 1.0
    assert (work / "pipeline" / "predict" / "submission.csv").is_file()

    again = _dvc(work, "repro")
    assert "Running stage" not in again.stdout

    shown = _dvc(work, "metrics", "show", "--json")
    assert "score" in shown.stdout
    _dvc(work, "plots", "show", "--json")

    params = yaml.safe_load((work / "params.yaml").read_text())
    params["train"]["lr"] = params["train"]["lr"] * 2
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    status = json.loads(_dvc(work, "status", "--json").stdout)
    assert set(status) == {"train", "predict", "evaluate"}
    diff = _dvc(work, "params", "diff", "--json").stdout
    assert "train.lr" in diff

    subprocess.run(["git", "checkout", "--", "params.yaml"], cwd=work, check=True)
    exp = _dvc(work, "exp", "run", "-S", "train.max_epochs=1")
    assert "Running stage 'train'" in exp.stdout and "Running stage 'simulate'" not in exp.stdout
