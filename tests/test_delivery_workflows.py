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
    runs = [step.get("run", "").strip() for step in jobs["tests"]["steps"]]
    assert runs.index("pytest") < runs.index("pytest -m slow")


def test_ci_smokes_the_ci_fast_profile_and_the_dvc_pipeline():
    jobs = load("ci.yml")["jobs"]
    assert "spectramind train trainer=ci_fast" in steps_text(jobs["smoke"])
    repro = steps_text(jobs["dvc-repro"])
    assert "dvc repro" in repro and "dvc status --json" in repro
    for job in ("tests", "smoke", "dvc-repro"):
        install = steps_text(jobs[job])
        # torch pinned first, then the package with its dev extra, as README and .ci/run install it
        assert install.index('pip install "$TORCH"') < install.index('pip install -e ".[dev]"'), job
    assert load("ci.yml")["env"]["TORCH"] == "torch==2.13.0"


def test_docker_workflow_builds_on_main_and_pushes_only_with_secrets():
    flow = load("docker.yml")
    triggers = flow.get("on", flow.get(True))  # YAML 1.1 reads a bare `on` key as True
    assert triggers["push"]["branches"] == ["main"]
    job = flow["jobs"]["image"]
    assert "secrets.REGISTRY_USERNAME" in job["env"]["CAN_PUSH"]
    uses = {str(step.get("uses", "")).split("@")[0]: step for step in job["steps"]}
    assert uses["docker/build-push-action"]["with"]["push"] == "${{ env.CAN_PUSH == 'true' }}"
    assert uses["docker/login-action"]["if"] == "env.CAN_PUSH == 'true'"
