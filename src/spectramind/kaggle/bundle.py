"""`spectramind kaggle bundle OUTDIR [--model EXPORT]`: a folder to upload as one Kaggle dataset, plus the
two notebooks that use it.

Layout written:
    OUTDIR/dataset-metadata.json    the dataset: `kaggle datasets create -p OUTDIR`
    OUTDIR/*.whl                    spectramind and every runtime dependency but torch (Kaggle's image has
                                    torch built for its CUDA; anything else it may lack or ship too old)
    OUTDIR/model.safetensors ...    with --model: the exported model folder's files (`spectramind export`)
    OUTDIR/submission/              kernel-metadata.json + the scored notebook: installs offline, then
                                    `spectramind kaggle submit` (test/ only, the 9 h limit watched, a file
                                    always written to /kaggle/working/submission.csv)
    OUTDIR/training/                kernel-metadata.json + the optional notebook that trains under
                                    trainer=kaggle_safe and exports the model into its output
Everything the dataset holds sits at the top because `kaggle datasets create` uploads top-level files and
skips folders by default, which also keeps the notebooks' folders (each pushed with `kaggle kernels push -p`)
out of the dataset. The notebooks read their folders from SPECTRAMIND_* environment variables, Kaggle's
by default, so a test can run them against a simulated /kaggle layout.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

import spectramind
from spectramind import files
from spectramind.errors import ConfigError, SpectraMindError

KAGGLE_PYTHON = "3.11"  # the interpreter of Kaggle's current image; binary wheels are fetched for it
# Kaggle's image is Ubuntu 22.04 (glibc 2.35); pip does not widen a --platform to older glibc tags by itself.
KAGGLE_PLATFORMS = (*(f"manylinux_2_{minor}_x86_64" for minor in range(35, 16, -1)), "manylinux2014_x86_64")
LEFT_TO_KAGGLE = ("torch",)  # in Kaggle's image, built for its GPUs; a wheel of ours would be the wrong build
COMPETITION = "ariel-data-challenge-2025"
SUBMISSION_NOTEBOOK, TRAINING_NOTEBOOK = "spectramind-submission.ipynb", "spectramind-training.ipynb"
SUBMISSION = "/kaggle/working/submission.csv"
PROFILE = ["data=kaggle", "trainer=kaggle_safe"]  # both notebooks: the competition's folder, the 9 h budgets
_PROFILE = ", ".join(json.dumps(o) for o in PROFILE)  # as the notebooks' code spells the list's items


def bundle(outdir: str | os.PathLike, owner: str, slug: str = "spectramind", python_version: str = KAGGLE_PYTHON,
           source: str | os.PathLike | None = None, model: str | os.PathLike | None = None) -> dict:
    """Write the dataset folder and its two notebooks into `outdir` (which must not exist or be empty)."""
    outdir = Path(outdir)
    if outdir.exists() and any(outdir.iterdir()):
        raise ConfigError(f"{outdir}: the bundle folder exists and is not empty; name a new folder")
    exported = _check_model(Path(model)) if model is not None else None
    source = Path(source) if source else _source_tree()
    pins = shipped(python_version)
    dataset = f"{owner}/{slug}"
    # Built beside its final place and renamed when complete: a failed build leaves nothing that looks valid.
    with files.atomic_folder(outdir) as staging:
        own = _build_project_wheel(source, staging)
        fetched = _fetch_wheels(pins, staging, python_version)
        if exported is not None:
            for name in exported:
                shutil.copyfile(Path(model) / name, staging / name)
        files.write_json(staging / "dataset-metadata.json", dataset_metadata(dataset, model is not None))
        for folder, name, notebook in (("submission", SUBMISSION_NOTEBOOK, submission_notebook()),
                                       ("training", TRAINING_NOTEBOOK, training_notebook())):
            files.write_json(staging / folder / "kernel-metadata.json", kernel_metadata(owner, dataset, name))
            files.write_text(staging / folder / name, json.dumps(notebook, indent=1) + "\n")
    return {"outdir": str(outdir), "dataset": dataset, "wheels": [own, *fetched], "model": exported or []}


def shipped(python_version: str = KAGGLE_PYTHON) -> dict[str, str]:
    """Canonical name -> installed version of every runtime dependency of spectramind, transitively (markers
    read for `python_version`), except LEFT_TO_KAGGLE and what only they require."""
    from spectramind.kaggle.deps import closure, runtime_requirements

    roots = [r for r in runtime_requirements() if canonicalize_name(Requirement(r).name) not in LEFT_TO_KAGGLE]
    try:
        return closure(roots, python_version)
    except RuntimeError as e:
        raise ConfigError(f"{e}; install spectramind with its dependencies (pip install -e .) to bundle it") from e


def _check_model(folder: Path) -> list[str]:
    """The exported model's files, after the checks predict makes (format, schema, `_target_` allowlist)."""
    from spectramind.evaluate import export
    from spectramind.evaluate.predict import trained_settings

    if not export.is_export(folder):
        raise ConfigError(f"--model {folder}: not an exported model folder (no {export.WEIGHTS}); make one with "
                          "`spectramind export run=<run> OUT`")
    export.read_meta(folder)
    trained_settings(folder)
    return [name for name in export.FILES if (folder / name).is_file()]


def dataset_metadata(dataset: str, with_model: bool) -> dict:
    what = "and a trained model" if with_model else "for offline installs"
    return {"title": "SpectraMind", "id": dataset, "licenses": [{"name": "apache-2.0"}],
            "subtitle": f"spectramind {spectramind.__version__} wheels {what}"}


def kernel_metadata(owner: str, dataset: str, notebook: str) -> dict:
    slug = Path(notebook).stem
    return {
        "id": f"{owner}/{slug}", "title": slug, "code_file": notebook, "language": "python",
        "kernel_type": "notebook", "is_private": True,
        "enable_gpu": True, "machine_shape": "NvidiaTeslaT4", "enable_tpu": False,
        "enable_internet": False,  # code competitions run offline; the wheels come from the dataset
        "dataset_sources": [dataset], "competition_sources": [COMPETITION],
        "kernel_sources": [], "model_sources": [],
    }


PARAMETERS = '''import glob, os, shutil, subprocess, sys, time

STARTED = time.time()  # the 9 h limit counts from about here
# Kaggle's folders unless the environment names others (a test runs this notebook on a simulated layout).
INPUT = os.environ.get("SPECTRAMIND_INPUT", "/kaggle/input")
COMPETITION = os.environ.get("SPECTRAMIND_COMPETITION", f"{INPUT}/ariel-data-challenge-2025")
WORKING = os.environ.get("SPECTRAMIND_WORKING", "/kaggle/working")
PYTHON = os.environ.get("SPECTRAMIND_PYTHON", sys.executable)
EXTRA = os.environ.get("SPECTRAMIND_OVERRIDES", "").split()  # more Hydra overrides, e.g. data.num_workers=2


def attached(name):
    """Files called `name` in the attached inputs: datasets mount at INPUT/<slug> or
    INPUT/datasets/<owner>/<slug> (by kernel age), a notebook's output at INPUT/<slug>/<its folders>."""
    return sorted(glob.glob(f"{INPUT}/*/{name}") + glob.glob(f"{INPUT}/*/*/{name}")
                  + glob.glob(f"{INPUT}/datasets/*/*/{name}"), key=os.path.getmtime)'''

INSTALL = '''wheels = attached("spectramind-*.whl")
if not wheels:
    raise SystemExit(f"no spectramind wheel under {INPUT}: attach the SpectraMind dataset to this notebook")
WHEELS = os.path.dirname(wheels[-1])
subprocess.run([PYTHON, "-m", "pip", "install", "--no-index", "--find-links", WHEELS, "spectramind"],
               check=True)
subprocess.run([PYTHON, "-m", "spectramind", "--version"], check=True)'''

SUBMIT = f'''# The exported model: SPECTRAMIND_MODEL, else the newest export attached (this dataset's, or a training
# notebook's output); with none, the physics fit alone.
exports = attached("export.json")
MODEL = os.environ.get("SPECTRAMIND_MODEL") or (os.path.dirname(exports[-1]) if exports else None)
SUBMISSION = os.path.join(WORKING, "submission.csv")
# The naive rows at once, then the fit's, then the model's, chunk by chunk while the 9 h allow.
command = [PYTHON, "-m", "spectramind", "kaggle", "submit", "--started", str(STARTED),
           {_PROFILE}, f"data.root={{COMPETITION}}", f"predict.out={{SUBMISSION}}",
           *([f"run={{MODEL}}"] if MODEL else []), *EXTRA]
subprocess.run(command, cwd=WORKING, check=True)
print(open(SUBMISSION).readline()[:200])'''

TRAIN = f'''# Stops inside the 9 h budget with a loadable checkpoint; a restarted notebook resumes.
TRAIN = [{_PROFILE}, f"data.root={{COMPETITION}}", *EXTRA]
result = subprocess.run([PYTHON, "-m", "spectramind", "train", *TRAIN], cwd=WORKING)
print("train exited with", result.returncode)'''

EXPORT = '''# The newest finished run of this model and data as a model folder: attach this notebook's output to the
# submission notebook (it finds export.json), or bundle it (`spectramind kaggle bundle OUT --model model/`).
MODEL = os.path.join(WORKING, "model")
shutil.rmtree(MODEL, ignore_errors=True)
subprocess.run([PYTHON, "-m", "spectramind", "export", "run=latest", *TRAIN, MODEL], cwd=WORKING, check=True)'''


def submission_notebook() -> dict:
    intro = ("# SpectraMind: the submission, offline\n"
             f"Installs spectramind {spectramind.__version__} from the attached dataset (internet off), then "
             "calibrates and predicts the test planets only, in chunks: the physics fit first, then the "
             f"exported model where time allows. `{SUBMISSION}` exists from the first minute and is "
             "complete before the 9 h limit.")
    return _notebook(intro, (PARAMETERS, INSTALL, SUBMIT))


def training_notebook() -> dict:
    intro = ("# SpectraMind: training, offline (optional)\n"
             f"Installs spectramind {spectramind.__version__} from the attached dataset, trains under "
             "`trainer=kaggle_safe` (a restarted notebook resumes) and exports the model into "
             "`/kaggle/working/model` for the submission notebook.")
    return _notebook(intro, (PARAMETERS, INSTALL, TRAIN, EXPORT))


def _notebook(intro: str, code: tuple[str, ...]) -> dict:
    cells = [_cell(0, "markdown", intro)] + [_cell(i, "code", text) for i, text in enumerate(code, 1)]
    return {"cells": cells, "nbformat": 4, "nbformat_minor": 5,
            "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                         "language_info": {"name": "python"}}}


def _cell(index: int, kind: str, text: str) -> dict:
    cell = {"cell_type": kind, "id": f"cell-{index}", "metadata": {}, "source": text.splitlines(keepends=True)}
    if kind == "code":
        cell.update(execution_count=None, outputs=[])
    return cell


def _source_tree() -> Path:
    root = Path(spectramind.__file__).resolve().parents[2]
    if not (root / "pyproject.toml").is_file():
        raise ConfigError(f"{root}: no pyproject.toml; bundle from a source checkout (or pass --source)")
    return root


def _pip(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, check=False)


def _new_wheels(wheels: Path, before: set[str], what: str, expected: int = 1) -> list[str]:
    made = sorted(set(p.name for p in wheels.glob("*.whl")) - before)
    if len(made) != expected:
        raise SpectraMindError(f"{what}: expected {expected} new wheel(s) in {wheels}, found {made or 'none'}")
    return made


def _build_project_wheel(source: Path, wheels: Path) -> str:
    before = set(p.name for p in wheels.glob("*.whl"))
    done = _pip(["wheel", "--no-deps", "--wheel-dir", str(wheels), str(source)])
    if done.returncode:
        raise SpectraMindError(f"building the spectramind wheel from {source} failed: {_last_line(done)}")
    return _new_wheels(wheels, before, "spectramind")[0]


def _fetch_wheels(pins: dict[str, str], wheels: Path, python_version: str) -> list[str]:
    """A wheel of each name==version for Kaggle's interpreter and platform: in one `pip download`, which
    takes the published wheel where there is one and the sdist where there is none (antlr4-python3-runtime),
    then a wheel built from each sdist (pure Python, or this interpreter must be Kaggle's)."""
    before = set(p.name for p in wheels.glob("*.whl"))
    sdists = wheels / ".sdists"
    platforms = [arg for platform in KAGGLE_PLATFORMS for arg in ("--platform", platform)]
    done = _pip(["download", "--no-deps", "--dest", str(sdists), "--python-version", python_version,
                 "--implementation", "cp", *platforms, *(f"{name}=={version}" for name, version in pins.items())])
    if done.returncode:
        raise SpectraMindError(f"pip download of the {len(pins)} dependencies failed: {_last_line(done)}")
    for wheel in sdists.glob("*.whl"):
        wheel.rename(wheels / wheel.name)
    here = f"{sys.version_info[0]}.{sys.version_info[1]}"
    for sdist in sorted(p for p in sdists.iterdir() if p.is_file()):
        made = set(p.name for p in wheels.glob("*.whl"))
        built = _pip(["wheel", "--no-deps", "--wheel-dir", str(wheels), str(sdist)])
        if built.returncode:
            raise SpectraMindError(f"no wheel could be built from {sdist.name}: {_last_line(built)}")
        name = _new_wheels(wheels, made, sdist.name)[0]
        if python_version != here and not any(t.abi == "none" for t in parse_wheel_filename(name)[3]):
            raise SpectraMindError(f"{sdist.name}: only a wheel for this interpreter could be built ({name}); "
                                   f"run the bundle under Python {python_version}")
    shutil.rmtree(sdists)
    return _new_wheels(wheels, before, "the dependencies", expected=len(pins))


def _last_line(done: subprocess.CompletedProcess) -> str:
    lines = [line for line in (done.stderr or done.stdout).strip().splitlines() if line.strip()]
    return lines[-1] if lines else f"exit code {done.returncode}"
