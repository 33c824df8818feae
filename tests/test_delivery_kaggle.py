"""`spectramind kaggle bundle` and `kaggle submit`: one dataset of wheels and the exported model that installs
offline, a submission notebook that always leaves a valid submission.csv inside the 9 h, a training notebook."""

import json
import os
import re
import subprocess
import sys
import venv
from importlib import metadata
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from test_export import read_sorted, train_and_export

from spectramind import __version__
from spectramind.data import ariel_format as af
from spectramind.errors import ConfigError
from spectramind.evaluate import export, submission
from spectramind.kaggle import submit as submit_module
from spectramind.kaggle.bundle import (
    PROFILE,
    SUBMISSION,
    bundle,
    dataset_metadata,
    kernel_metadata,
    shipped,
    submission_notebook,
    training_notebook,
)
from spectramind.kaggle.deps import closure, runtime_requirements
from spectramind.models import calibration as cal

HERE = f"{sys.version_info[0]}.{sys.version_info[1]}"


def code_cells(notebook: dict) -> list[str]:
    return ["".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "code"]


@pytest.mark.parametrize("notebook", ["spectramind-submission.ipynb", "spectramind-training.ipynb"])
def test_each_notebook_runs_offline_on_a_t4_with_the_dataset_and_competition_attached(notebook):
    meta = kernel_metadata("someone", "someone/spectramind", notebook)
    assert meta["enable_internet"] is False
    assert meta["enable_gpu"] is True and meta["machine_shape"] == "NvidiaTeslaT4"
    assert meta["dataset_sources"] == ["someone/spectramind"]
    assert meta["competition_sources"] == ["ariel-data-challenge-2025"]
    assert meta["code_file"] == notebook and meta["kernel_type"] == "notebook"
    assert meta["id"] == f"someone/{Path(notebook).stem}"


def test_the_dataset_metadata_is_what_kaggle_accepts():
    for with_model in (False, True):
        meta = dataset_metadata("someone/spectramind", with_model)
        assert 6 <= len(meta["title"]) <= 50 and 20 <= len(meta["subtitle"]) <= 80
        assert re.fullmatch(r"[^/]+/[a-z0-9][a-z0-9-]{2,49}", meta["id"])
        assert meta["licenses"] == [{"name": "apache-2.0"}]


def test_the_submission_notebook_installs_offline_and_submits_only_and_the_training_one_trains_and_exports():
    sub, train = submission_notebook(), training_notebook()
    for notebook in (sub, train):
        nbformat.validate(nbformat.from_dict(notebook))
        for cell in code_cells(notebook):
            compile(cell, "<cell>", "exec")  # every cell is valid Python
    parameters, install, run = code_cells(sub)
    assert '"--no-index", "--find-links", WHEELS, "spectramind"' in install
    assert '"kaggle", "submit", "--started", str(STARTED)' in run and "cwd=WORKING" in run
    assert ", ".join(f'"{o}"' for o in PROFILE) in run and PROFILE == ["data=kaggle", "trainer=kaggle_safe"]
    assert '"SPECTRAMIND_WORKING", "/kaggle/working"' in parameters and SUBMISSION == "/kaggle/working/submission.csv"
    assert '"train"' not in run and '"export"' not in run  # inference only
    assert code_cells(train)[:2] == [parameters, install]
    training, exporting = code_cells(train)[2:]
    assert '"spectramind", "train", *TRAIN' in training and '"trainer=kaggle_safe"' in training
    assert '"spectramind", "export", "run=latest", *TRAIN, MODEL' in exporting


def test_the_bundle_ships_every_runtime_dependency_but_torch():
    wheels = shipped(HERE)
    ours = [canonicalize_name(Requirement(r).name) for r in runtime_requirements()]
    assert set(ours) - {"torch"} <= set(wheels) and "torch" not in wheels
    # What the old bundle left to Kaggle's image is shipped now.
    assert {"h5py", "polars", "pandas", "numpy", "matplotlib", "safetensors", "hydra-core"} <= set(wheels)
    only_torch = set(closure(["torch"])) - set(closure([r for r in runtime_requirements() if "torch" not in r]))
    assert only_torch and not only_torch & set(wheels), "what only torch needs stays with Kaggle's torch"
    assert all(wheels[name] == metadata.version(name) for name in wheels)


def test_a_non_empty_outdir_or_a_model_that_is_no_export_is_refused(tmp_path, cli):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty"):
        bundle(tmp_path, owner="someone")
    done = cli("kaggle", "bundle", str(tmp_path), "--owner", "someone")
    assert done.returncode == 2 and "error:" in done.stderr and "not empty" in done.stderr
    assert (tmp_path / "keep.txt").read_text() == "mine"
    with pytest.raises(ConfigError, match="not an exported model folder"):
        bundle(tmp_path / "b", owner="someone", model=tmp_path)
    assert not (tmp_path / "b").exists()


def _raw(folder: Path, ids: list[int]) -> Path:
    """A competition layout with just what `kaggle submit` reads itself (the predict commands are faked)."""
    (folder / "test").mkdir(parents=True)
    pd.DataFrame([[p, *np.ones(2 * af.N_BINS)] for p in ids], columns=submission.default_columns()).to_csv(
        folder / "sample_submission.csv", index=False)
    labels = np.array([np.full(af.N_BINS, 0.01), np.full(af.N_BINS, 0.03)])
    pd.DataFrame([[1, *labels[0]], [2, *labels[1]]], columns=["planet_id", *af.TARGET_COLUMNS]).to_csv(
        folder / "train.csv", index=False)
    (folder / "axis_info.parquet").write_bytes(b"")
    for p in ids:
        (folder / "test" / str(p) / "AIRS-CH0_calibration_0").mkdir(parents=True)
        (folder / "test" / str(p) / "AIRS-CH0_signal_0.parquet").write_bytes(b"")
        (folder / "test" / str(p) / "AIRS-CH0_calibration_0" / "dark.parquet").write_bytes(b"")
    return folder


def test_submit_writes_the_naive_rows_first_then_the_fit_then_the_model_while_time_allows(tmp_path, monkeypatch):
    from test_export import _crafted

    raw = _raw(tmp_path / "input", [11, 22, 33])
    model = _crafted(tmp_path / "model")
    cal.save(model / export.CALIBRATION, [cal.Calibration((0.0, 0.0), (1.0, 1.0), (0.0, 0.0))])
    meta = json.loads((model / export.META).read_text())
    (model / export.META).write_text(json.dumps({**meta, "calibration": export.CALIBRATION}))
    out = tmp_path / "working" / "submission.csv"
    overrides = [*PROFILE, f"data.root={raw}", f"paths.output_dir={tmp_path / 'outputs'}", f"predict.out={out}",
                 f"predict.run={model}"]
    now, calls = [0.0], []
    # Minutes each chunk's command takes, and whether it fails: the fit of chunk 2 fails, the model's chunk 3
    # would cross the 540 - 10 minute limit after a 200-minute chunk 1.
    plan = {("fit", 0): (60, None), ("fit", 1): (60, "boom"), ("fit", 2): (60, None), ("model", 0): (200, None)}

    def fake_run(argv, timeout):
        args = dict(a.split("=", 1) for a in argv if "=" in a)
        phase = "fit" if args.get("model") == "fit" else "model"
        chunk = int(Path(args["data.root"]).parent.name.split("_")[1])
        if not calls:  # before any predict command: the naive submission, valid, for every planet
            naive = submission.read(out)
            assert sorted(naive.planet_id) == [11, 22, 33]
            assert np.allclose(naive["wl_1"], 0.02) and np.allclose(naive["sigma_1"], 0.01)
        calls.append((phase, chunk, timeout))
        assert args["predict.run"] == ("null" if phase == "fit" else str(model))
        assert list(pd.read_csv(Path(args["data.root"]) / "sample_submission.csv").planet_id) == [[11, 22, 33][chunk]]
        assert (Path(args["data.root"]) / "test" / str([11, 22, 33][chunk]) / "AIRS-CH0_calibration_0"
                / "dark.parquet").is_symlink()
        minutes, problem = plan[(phase, chunk)]
        now[0] += minutes * 60
        if problem is None:
            value = {"fit": 1.0, "model": 2.0}[phase]
            submission.write(args["predict.out"], [[11, 22, 33][chunk]], np.full((1, 283), value),
                             np.full((1, 283), value / 10))
        return problem

    monkeypatch.setattr(submit_module, "_run", fake_run)
    said = []
    done = submit_module.submit(overrides, started=0.0, chunk_planets=1, reserve_min=10, clock=lambda: now[0],
                                echo=said.append)
    assert [(p, c) for p, c, _ in calls] == [("fit", 0), ("fit", 1), ("fit", 2), ("model", 0)]
    assert calls[-1][2] == (540 - 10 - 180) * 60  # stopped at the limit, whatever it would take
    assert done["rows"] == {"model": 1, "fit": 1, "naive": 1}
    assert any("model stops before chunk 3/3" in line for line in said)
    final = submission.read(out).set_index("planet_id")
    assert np.allclose([final.loc[p, "wl_1"] for p in (11, 22, 33)], [2.0, 0.02, 1.0])
    # The fit's fallback rows are calibrated with the export's label calibration, placed where it looks.
    assert list((tmp_path / "outputs" / "submit" / "chunk_000" / "baseline").glob("calibration_*.npz"))
    with pytest.raises(ConfigError, match="predict.out: required"):
        submit_module.submit(overrides[:-2], started=0.0, chunk_planets=1, reserve_min=10)


def torch_only_venv(where: Path) -> Path:
    """A fresh venv (no system site packages) that sees torch and what torch needs, linked from here, and
    nothing else: the part of Kaggle's image the bundle does not ship."""
    venv.EnvBuilder(with_pip=True).create(where)
    python = where / "bin" / "python"
    site = where / "torch-site"
    site.mkdir()
    for name in closure(["torch"]):
        dist = metadata.distribution(name)
        for top in {Path(f).parts[0] for f in dist.files or [] if not str(f).startswith("..")}:
            source = Path(dist.locate_file(top))
            if source.exists() and not (site / top).exists():
                (site / top).symlink_to(source)
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "torch-site.pth").write_text(f"{site}\n")
    # ensurepip's old setuptools (Python < 3.12) would shadow the one torch requires; Kaggle has only its own.
    subprocess.run([python, "-m", "pip", "uninstall", "-q", "-y", "setuptools"], check=True,
                   env={**os.environ, "PIP_CONFIG_FILE": os.devnull})
    return python


def offline(monkeypatch) -> dict:
    """No index, no find-links or constraints from this machine's pip configuration (also for the kernel)."""
    for key in [k for k in os.environ if k.startswith("PIP_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    return dict(os.environ)


@pytest.mark.slow
def test_the_submission_notebook_runs_offline_on_a_simulated_kaggle_layout(tmp_path, monkeypatch):
    from nbclient import NotebookClient

    overrides, model = train_and_export(tmp_path / "here")
    expected = tmp_path / "from_run.csv"
    done = subprocess.run([sys.executable, "-m", "spectramind", "predict", "run=latest", *overrides,
                           f"predict.out={expected}"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    kaggle = tmp_path / "kaggle"
    (kaggle / "working").mkdir(parents=True)
    (kaggle / "input").mkdir()
    (kaggle / "input" / "ariel-data-challenge-2025").symlink_to(tmp_path / "here" / "outputs" / "data" / "synthetic"
                                                                / "raw")
    dataset = kaggle / "input" / "spectramind"
    made = bundle(dataset, owner="someone", python_version=HERE, model=model)
    assert sorted(p.name for p in dataset.glob("*.whl")) == sorted(made["wheels"])
    assert json.loads((dataset / "dataset-metadata.json").read_text())["id"] == "someone/spectramind"
    assert {p.name for p in dataset.iterdir()} >= set(made["model"]) >= {export.WEIGHTS, export.CALIBRATION}

    python = torch_only_venv(tmp_path / "venv")
    env = offline(monkeypatch)
    # Without h5py's wheel (the old bundle left it to Kaggle's image) the offline install fails: the venv
    # has nothing the bundle does not bring.
    partial = tmp_path / "partial"
    partial.mkdir()
    for wheel in dataset.glob("*.whl"):
        if not wheel.name.startswith("h5py-"):
            (partial / wheel.name).symlink_to(wheel)
    refused = subprocess.run([python, "-m", "pip", "install", "--no-index", "--find-links", str(partial),
                              "spectramind"], capture_output=True, text=True, env=env, timeout=300)
    assert refused.returncode != 0 and "h5py" in refused.stdout + refused.stderr

    for key, value in {"SPECTRAMIND_INPUT": kaggle / "input", "SPECTRAMIND_WORKING": kaggle / "working",
                       "SPECTRAMIND_PYTHON": python, "SPECTRAMIND_OVERRIDES": "data.num_workers=0",
                       "OMP_NUM_THREADS": "1"}.items():
        monkeypatch.setenv(key, str(value))
    notebook = nbformat.read(dataset / "submission" / "spectramind-submission.ipynb", as_version=4)
    NotebookClient(notebook, timeout=900, kernel_name="python3",
                   resources={"metadata": {"path": str(kaggle / "working")}}).execute()

    written = kaggle / "working" / "submission.csv"
    sample = kaggle / "input" / "ariel-data-challenge-2025" / "sample_submission.csv"
    frame = submission.read(written)
    submission.validate(frame, submission.sample_ids(sample), submission.sample_columns(sample))
    summary = json.loads((kaggle / "working" / "outputs" / "submit" / "summary.json").read_text())
    assert summary["rows"] == {"model": 2, "fit": 0, "naive": 0} and summary["model"] == str(dataset)
    ours, theirs = read_sorted(written), read_sorted(expected)
    np.testing.assert_allclose(ours[theirs.columns].to_numpy(), theirs.to_numpy(), rtol=1e-5, atol=0)
    where = subprocess.run([python, "-c", "import spectramind; print(spectramind.__file__, spectramind.__version__)"],
                           capture_output=True, text=True, env=env, check=True).stdout.split()
    assert where[1] == __version__ and "/venv/lib/" in where[0], "spectramind is the bundle's wheel, installed"
