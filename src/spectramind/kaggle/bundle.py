"""`spectramind kaggle bundle OUTDIR`: a folder to upload as a Kaggle dataset, plus the kernel that uses it.

Layout written:
    OUTDIR/dataset-metadata.json        the dataset: `kaggle datasets create -p OUTDIR`
    OUTDIR/*.whl                        spectramind and the dependencies Kaggle's image lacks
    OUTDIR/kernel/kernel-metadata.json  internet off, a T4, the dataset and the competition attached
    OUTDIR/kernel/spectramind-kaggle.ipynb  install offline, train, predict /kaggle/working/submission.csv
The wheels sit at the top because `kaggle datasets create` uploads top-level files and skips folders by
default, which also keeps kernel/ (pushed with `kaggle kernels push -p OUTDIR/kernel`) out of the dataset.
The notebook needs no internet: `pip install --no-index --find-links <wheels> spectramind`, and every
other dependency must already be in Kaggle's image (torch, numpy, pandas, pyarrow, h5py, matplotlib,
rich, psutil, PyYAML, jsonschema, pydantic: all there today).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from packaging.utils import parse_wheel_filename

import spectramind
from spectramind import files
from spectramind.errors import ConfigError, SpectraMindError

# Our dependencies (and theirs) that Kaggle's image does not ship, or may ship too old. Kaggle's image
# lacks hydra-core; omegaconf, antlr4 and xxhash arrive there with torchtune and datasets but are
# bundled anyway (pip keeps an installed version that satisfies us, so an extra wheel costs nothing).
DEFAULT_WHEELS = ("hydra-core", "omegaconf", "antlr4-python3-runtime", "hydra-joblib-launcher", "typer",
                  "annotated-doc", "shellingham", "xxhash")
KAGGLE_PYTHON = "3.11"  # the interpreter of Kaggle's current image; binary wheels are fetched for it
# Kaggle's image is Ubuntu 22.04 (glibc 2.35); pip does not widen a --platform to older glibc tags by itself.
KAGGLE_PLATFORMS = (*(f"manylinux_2_{minor}_x86_64" for minor in range(35, 16, -1)), "manylinux2014_x86_64")
COMPETITION = "ariel-data-challenge-2025"
NOTEBOOK = "spectramind-kaggle.ipynb"
SUBMISSION = "/kaggle/working/submission.csv"
TRAIN = ["spectramind", "train", "trainer=kaggle_safe", "data=kaggle"]
PREDICT = ["spectramind", "predict", "data=kaggle", "trainer=kaggle_safe", "predict.run=latest",
           f"predict.out={SUBMISSION}"]


def bundle(outdir: str | os.PathLike, owner: str, slug: str = "spectramind-wheels",
           packages: tuple[str, ...] | list[str] = DEFAULT_WHEELS, python_version: str = KAGGLE_PYTHON,
           source: str | os.PathLike | None = None) -> dict:
    """Write the dataset folder and its kernel into `outdir` (which must not exist or be empty)."""
    outdir = Path(outdir)
    if outdir.exists() and any(outdir.iterdir()):
        raise ConfigError(f"{outdir}: the bundle folder exists and is not empty; name a new folder")
    source = Path(source) if source else _source_tree()
    versions = {name: _installed_version(name) for name in packages}
    outdir.parent.mkdir(parents=True, exist_ok=True)
    # Built beside its final place and renamed when complete: a failed build leaves nothing that looks valid.
    staging = Path(tempfile.mkdtemp(prefix=f".{outdir.name}.", dir=outdir.parent))
    try:
        own = _build_project_wheel(source, staging)
        fetched = [_fetch_wheel(name, version, staging, python_version) for name, version in versions.items()]
        dataset = f"{owner}/{slug}"
        files.write_json(staging / "dataset-metadata.json", dataset_metadata(dataset))
        files.write_json(staging / "kernel" / "kernel-metadata.json", kernel_metadata(owner, dataset))
        files.write_text(staging / "kernel" / NOTEBOOK, json.dumps(notebook(), indent=1) + "\n")
        if outdir.exists():
            outdir.rmdir()
        staging.chmod(0o755)  # mkdtemp makes it private; the bundle is meant to be shared
        os.replace(staging, outdir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {"outdir": str(outdir), "dataset": dataset, "wheels": [own, *fetched]}


def dataset_metadata(dataset: str) -> dict:
    return {"title": "SpectraMind wheels", "id": dataset, "licenses": [{"name": "apache-2.0"}],
            "subtitle": f"spectramind {spectramind.__version__} and the dependencies Kaggle's image lacks"}


def kernel_metadata(owner: str, dataset: str) -> dict:
    slug = Path(NOTEBOOK).stem
    return {
        "id": f"{owner}/{slug}", "title": slug, "code_file": NOTEBOOK, "language": "python",
        "kernel_type": "notebook", "is_private": True,
        "enable_gpu": True, "machine_shape": "NvidiaTeslaT4", "enable_tpu": False,
        "enable_internet": False,  # code competitions run offline; the wheels come from the dataset
        "dataset_sources": [dataset], "competition_sources": [COMPETITION],
        "kernel_sources": [], "model_sources": [],
    }


def notebook() -> dict:
    """Install offline, train under kaggle_safe, predict; each a subprocess (DDP cannot start in-kernel)."""
    install = """import glob, os, subprocess, sys

# The dataset mounts at /kaggle/input/<slug> or /kaggle/input/datasets/<owner>/<slug>, by kernel age.
found = sorted(glob.glob("/kaggle/input/*/spectramind-*.whl")
               + glob.glob("/kaggle/input/datasets/*/*/spectramind-*.whl"))
if not found:
    raise SystemExit("no spectramind wheel under /kaggle/input: attach the wheels dataset to this notebook")
WHEELS = os.path.dirname(found[-1])
subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--find-links", WHEELS, "spectramind"],
               check=True)
subprocess.run(["spectramind", "--version"], check=True)"""
    train = f"""# Stops inside the 9 h budget with a loadable checkpoint; a restarted notebook resumes.
result = subprocess.run({TRAIN!r})
print("train exited with", result.returncode)"""
    predict = f"""# Predicts from the best checkpoint even when training stopped early.
subprocess.run({PREDICT!r}, check=True)
assert os.path.getsize({SUBMISSION!r}) > 0, "predict wrote no submission"
print(open({SUBMISSION!r}).readline()[:200])"""
    intro = ("# SpectraMind on Kaggle, offline\n"
             f"Installs spectramind {spectramind.__version__} from the attached dataset of wheels "
             f"(internet off), trains under `trainer=kaggle_safe`, then writes `{SUBMISSION}`. "
             "Re-running continues an unfinished run.")
    cells = [_cell("markdown", intro)] + [_cell("code", text) for text in (install, train, predict)]
    return {"cells": cells, "nbformat": 4, "nbformat_minor": 5,
            "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                         "language_info": {"name": "python"}}}


def _cell(kind: str, text: str) -> dict:
    cell = {"cell_type": kind, "metadata": {}, "source": text.splitlines(keepends=True)}
    if kind == "code":
        cell.update(execution_count=None, outputs=[])
    return cell


def _source_tree() -> Path:
    root = Path(spectramind.__file__).resolve().parents[2]
    if not (root / "pyproject.toml").is_file():
        raise ConfigError(f"{root}: no pyproject.toml; bundle from a source checkout (or pass --source)")
    return root


def _installed_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError as e:
        raise ConfigError(f"--package {name}: not installed here, so its version is unknown; "
                          f"expected a dependency of spectramind") from e


def _pip(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, check=False)


def _new_wheel(wheels: Path, before: set[str], what: str) -> str:
    made = sorted(set(p.name for p in wheels.glob("*.whl")) - before)
    if len(made) != 1:
        raise SpectraMindError(f"{what}: expected one new wheel in {wheels}, found {made or 'none'}")
    return made[0]


def _build_project_wheel(source: Path, wheels: Path) -> str:
    before = set(p.name for p in wheels.glob("*.whl"))
    done = _pip(["wheel", "--no-deps", "--wheel-dir", str(wheels), str(source)])
    if done.returncode:
        raise SpectraMindError(f"building the spectramind wheel from {source} failed: {_last_line(done)}")
    return _new_wheel(wheels, before, "spectramind")


def _fetch_wheel(name: str, version: str, wheels: Path, python_version: str) -> str:
    """A wheel of name==version for Kaggle's interpreter: a published wheel, else one built from the sdist."""
    before = set(p.name for p in wheels.glob("*.whl"))
    pin = f"{name}=={version}"
    platforms = [arg for platform in KAGGLE_PLATFORMS for arg in ("--platform", platform)]
    done = _pip(["download", "--no-deps", "--only-binary=:all:", "--dest", str(wheels),
                 "--python-version", python_version, "--implementation", "cp", *platforms, pin])
    if done.returncode:  # no published wheel (antlr4-python3-runtime ships only an sdist): build one
        done = _pip(["wheel", "--no-deps", "--wheel-dir", str(wheels), pin])
        if done.returncode:
            raise SpectraMindError(f"no wheel for {pin} could be fetched or built: {_last_line(done)}")
        built = _new_wheel(wheels, before, pin)
        here = f"{sys.version_info[0]}.{sys.version_info[1]}"
        if python_version != here and not any(t.abi == "none" for t in parse_wheel_filename(built)[3]):
            raise SpectraMindError(f"{pin}: only a wheel for this interpreter could be built ({built}); "
                                   f"run the bundle under Python {python_version}")
        return built
    return _new_wheel(wheels, before, pin)


def _last_line(done: subprocess.CompletedProcess) -> str:
    lines = [line for line in (done.stderr or done.stdout).strip().splitlines() if line.strip()]
    return lines[-1] if lines else f"exit code {done.returncode}"
