"""GitHub workflows: valid against GitHub's workflow schema, and running what the project promises CI runs."""

import subprocess
import sys

import pytest
import yaml
from conftest import REPO

WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.yml"))


def check_workflow(*paths):
    """check-jsonschema with the GitHub workflow schema it ships (no network needed)."""
    command = [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows"]
    return subprocess.run([*command, *map(str, paths)], capture_output=True, text=True, timeout=120)


def load(name: str) -> dict:
    return yaml.safe_load((REPO / ".github" / "workflows" / name).read_text())


def steps_text(job: dict) -> str:
    return "\n".join(str(step.get("run", "")) for step in job["steps"])


def test_the_workflows_exist():
    assert {p.name for p in WORKFLOWS} >= {"ci.yml", "docker.yml"}


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_matches_the_github_schema(path):
    result = check_workflow(path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_schema_check_rejects_a_broken_workflow(tmp_path):
    broken = tmp_path / "broken.yml"
    broken.write_text("on: push\njobs:\n  build:\n    steps:\n      - run: echo hi\n")
    result = check_workflow(broken)
    assert result.returncode != 0
    assert "runs-on" in result.stdout + result.stderr


def test_ci_lints_and_tests_every_supported_python_with_slow_tests_too():
    jobs = load("ci.yml")["jobs"]
    assert "ruff check" in steps_text(jobs["lint"])
    assert jobs["tests"]["strategy"]["matrix"]["python-version"] == ["3.10", "3.11", "3.12"]
    # The tests job is .ci/run, so what the README calls CI's tests job is what a developer runs.
    assert [step["run"].strip() for step in jobs["tests"]["steps"] if "run" in step] == ["bash .ci/run"]
    lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    quick, slow = (lines.index(f"python -m pytest -q -p no:cacheprovider{m}") for m in ("", " -m slow"))
    assert quick < slow == len(lines) - 1


def test_ci_smokes_the_ci_fast_profile_and_the_dvc_pipeline():
    jobs = load("ci.yml")["jobs"]
    assert "spectramind train trainer=ci_fast" in steps_text(jobs["smoke"])
    repro = steps_text(jobs["dvc-repro"])
    assert "dvc repro" in repro and "dvc status --json" in repro
    ci_run = (REPO / ".ci" / "run").read_text()
    for job, install in [(j, steps_text(jobs[j])) for j in ("smoke", "dvc-repro")] + [(".ci/run", ci_run)]:
        # torch's CPU build pinned first, then the package with its dev extra, as the README installs it
        assert install.index('"$TORCH" --index-url "$TORCH_INDEX"') < install.index('-e ".[dev]"'), job
    env = load("ci.yml")["env"]
    assert env["TORCH"] == "torch==2.13.0" and env["TORCH_INDEX"] == "https://download.pytorch.org/whl/cpu"
    for name in ("TORCH", "TORCH_INDEX"):  # run outside CI, .ci/run defaults to the workflow's values
        assert f"{name}=${{{name}:-{env[name]}}}" in ci_run


def test_ci_runs_the_quick_tests_on_the_locked_pins():
    """One job installs with requirements/runtime.lock.txt as constraints: the pins the Docker image ships."""
    job = load("ci.yml")["jobs"]["locked"]
    setup = next(step for step in job["steps"] if str(step.get("uses", "")).startswith("actions/setup-python"))
    assert setup["with"]["python-version"] == "3.11"  # what the lock is resolved for (its header)
    assert "--python-version 3.11 " in (REPO / "requirements" / "runtime.lock.txt").read_text().splitlines()[1]
    install = steps_text(job)
    assert install.index('"$TORCH" --index-url "$TORCH_INDEX"') < install.index(
        'uv pip install --python "$(command -v python)" -c requirements/runtime.lock.txt -e ".[dev]"')
    assert "pip check" in install
    assert [line.strip() for line in install.splitlines()][-1] == "python -m pytest -q -p no:cacheprovider"


def test_the_build_needs_only_its_backend_and_the_declared_licence_is_shipped():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11 on

    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert project["build-system"]["requires"] == ["hatchling>=1.21"]
    torch = next(d for d in project["project"]["dependencies"] if d.startswith("torch"))
    from packaging.requirements import Requirement

    assert Requirement(torch).specifier.contains("2.13.0") and not Requirement(torch).specifier.contains("2.4.1")
    assert project["project"]["license"] == "Apache-2.0"
    text = (REPO / "LICENSE").read_text()
    assert text.startswith("Copyright 2026 SpectraMind contributors\n")
    assert "Apache License\n                           Version 2.0, January 2004" in text


def test_docker_workflow_builds_on_main_and_pushes_only_with_secrets():
    flow = load("docker.yml")
    triggers = flow.get("on", flow.get(True))  # YAML 1.1 reads a bare `on` key as True
    assert triggers["push"]["branches"] == ["main"]
    job = flow["jobs"]["image"]
    assert "secrets.REGISTRY_USERNAME" in job["env"]["CAN_PUSH"]
    uses = {str(step.get("uses", "")).split("@")[0]: step for step in job["steps"]}
    assert uses["docker/build-push-action"]["with"]["push"] == "${{ env.CAN_PUSH == 'true' }}"
    assert uses["docker/login-action"]["if"] == "env.CAN_PUSH == 'true'"
