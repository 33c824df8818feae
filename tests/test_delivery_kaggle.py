"""`spectramind kaggle bundle`: a dataset of wheels that installs offline, and a kernel that uses it."""

import json
import os
import subprocess
import sys
import venv
from importlib import metadata
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name

from spectramind import __version__
from spectramind.errors import ConfigError
from spectramind.kaggle.bundle import (
    DEFAULT_WHEELS,
    PREDICT,
    SUBMISSION,
    TRAIN,
    bundle,
    kernel_metadata,
    notebook,
)
from spectramind.kaggle.deps import closure, runtime_requirements

# What the bundle assumes Kaggle's image already has (with everything these require): the premise under test.
KAGGLE_IMAGE = ("torch", "numpy", "pandas", "pyarrow", "h5py", "matplotlib", "rich", "psutil", "PyYAML",
                "jsonschema", "pydantic", "packaging", "polars", "joblib", "cloudpickle")
HERE = f"{sys.version_info[0]}.{sys.version_info[1]}"


def code_cells() -> list[str]:
    return ["".join(c["source"]) for c in notebook()["cells"] if c["cell_type"] == "code"]


def test_kernel_runs_offline_on_a_t4_with_the_dataset_and_competition_attached():
    meta = kernel_metadata("someone", "someone/spectramind-wheels")
    assert meta["enable_internet"] is False
    assert meta["enable_gpu"] is True and meta["machine_shape"] == "NvidiaTeslaT4"
    assert meta["dataset_sources"] == ["someone/spectramind-wheels"]
    assert meta["competition_sources"] == ["ariel-data-challenge-2025"]
    assert meta["code_file"].endswith(".ipynb") and meta["kernel_type"] == "notebook"


def test_notebook_installs_offline_then_trains_then_predicts_the_submission():
    install, train, predict = code_cells()
    for cell in (install, train, predict):
        compile(cell, "<cell>", "exec")  # every cell is valid Python
    assert '"--no-index", "--find-links", WHEELS, "spectramind"' in install
    assert TRAIN == ["spectramind", "train", "trainer=kaggle_safe", "data=kaggle"] and repr(TRAIN) in train
    assert PREDICT[:3] == ["spectramind", "predict", "data=kaggle"] and repr(PREDICT) in predict
    assert SUBMISSION == "/kaggle/working/submission.csv" and SUBMISSION in " ".join(PREDICT)
    assert notebook()["nbformat"] == 4


def test_the_default_wheels_are_what_kaggle_lacks_of_our_dependency_closure():
    ours = closure(runtime_requirements())
    provided = closure(list(KAGGLE_IMAGE))
    assert set(ours) - set(provided) <= {canonicalize_name(n) for n in DEFAULT_WHEELS}


def test_a_non_empty_outdir_is_refused(tmp_path, cli):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty"):
        bundle(tmp_path, owner="someone")
    done = cli("kaggle", "bundle", str(tmp_path), "--owner", "someone")
    assert done.returncode == 2 and "error:" in done.stderr and "not empty" in done.stderr
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_a_package_that_is_not_installed_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="no-such-dependency"):
        bundle(tmp_path / "b", owner="someone", packages=("no-such-dependency",))
    assert not (tmp_path / "b").exists()


def kaggle_like_site(dest: Path) -> Path:
    """A folder of links to the installed packages Kaggle's image provides, and nothing else."""
    dest.mkdir()
    for name in closure(list(KAGGLE_IMAGE)):
        dist = metadata.distribution(name)
        tops = {Path(f).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops:
            source = Path(dist.locate_file(top))
            if source.exists() and not (dest / top).exists():
                (dest / top).symlink_to(source)
    return dest


def offline_env() -> dict:
    """No index, no find-links or constraints from this machine's pip configuration."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    return {**env, "PIP_CONFIG_FILE": os.devnull, "PIP_NO_INDEX": "1"}


@pytest.mark.slow
def test_bundle_installs_offline_into_a_fresh_kaggle_like_venv(tmp_path):
    out = tmp_path / "bundle"
    done = bundle(out, owner="someone", python_version=HERE)
    wheels = out  # at the top: `kaggle datasets create` skips folders
    assert sorted(p.name for p in wheels.glob("*.whl")) == sorted(done["wheels"])
    assert len(done["wheels"]) == 1 + len(DEFAULT_WHEELS)
    dataset = json.loads((out / "dataset-metadata.json").read_text())
    assert dataset["id"] == "someone/spectramind-wheels" == done["dataset"]
    kernel = json.loads((out / "kernel" / "kernel-metadata.json").read_text())
    assert (out / "kernel" / kernel["code_file"]).is_file() and kernel["dataset_sources"] == [dataset["id"]]

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python, site = env_dir / "bin" / "python", kaggle_like_site(tmp_path / "kaggle-image")
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "kaggle-image.pth").write_text(f"{site}\n")
    env = offline_env()
    # ensurepip's old setuptools (Python < 3.12) would shadow the image's; Kaggle has only the one it ships.
    subprocess.run([python, "-m", "pip", "uninstall", "-q", "-y", "setuptools"], env=env, check=True)

    def install(find_links: Path) -> subprocess.CompletedProcess:
        return subprocess.run([python, "-m", "pip", "install", "--no-index", "--find-links", str(find_links),
                               "spectramind"], capture_output=True, text=True, env=env, timeout=300)

    # Without hydra-core's wheel the offline install must fail: the Kaggle-like image really lacks it.
    partial = tmp_path / "partial"
    partial.mkdir()
    for wheel in wheels.glob("*.whl"):
        if not wheel.name.startswith("hydra_core-"):
            (partial / wheel.name).symlink_to(wheel)
    refused = install(partial)
    assert refused.returncode != 0 and "hydra-core" in refused.stdout + refused.stderr

    installed = install(wheels)
    assert installed.returncode == 0, installed.stdout[-2000:] + installed.stderr[-2000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    def spectramind(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([env_dir / "bin" / "spectramind", *args], cwd=elsewhere, capture_output=True,
                              text=True, env=env, timeout=120)

    version = spectramind("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"spectramind {__version__}"
    hashed = spectramind("config", "hash", "trainer=kaggle_safe")  # hydra, the configs and xxhash, installed
    assert hashed.returncode == 0, hashed.stderr
    code = "import hydra, spectramind; print(hydra.__file__); print(spectramind.__file__)"
    where = subprocess.run([python, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert all(path.startswith(purelib) for path in where.stdout.split()), where.stdout
