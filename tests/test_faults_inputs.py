"""Bad inputs to the real commands: each one is one `error:` line, exit code 2 (config) or 3 (data), no
traceback, and nothing half-written that looks valid. conftest counts them in its faults summary line."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import polars as pl
import pytest
import yaml
from conftest import run_cli
from test_faults import SHIM, SMALL

pytestmark = [pytest.mark.slow, pytest.mark.bad_input]

# The competition's layout read as a user's own data: data=kaggle on a copy of the simulated raw folder.
KAGGLE = ("data=kaggle", "data.num_workers=1", "data.calibrate.airs_bin=3", "data.calibrate.fgs1_bin=12")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """An outputs folder after one small `spectramind train`: raw data, store, baseline and a run."""
    out = tmp_path_factory.mktemp("built") / "out"
    done = run_cli("train", *SMALL, f"paths.output_dir={out}")
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def _copy(built: Path, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(built, out, ignore=shutil.ignore_patterns("*.lock"))
    return out


def _raw(built: Path, tmp_path: Path) -> Path:
    raw = tmp_path / "raw"
    shutil.copytree(built / "data" / "synthetic" / "raw", raw)
    return raw


def _refused(done: subprocess.CompletedProcess, code: int, *absent: Path) -> str:
    """The command failed the way a user can act on; returns its error line."""
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == code, f"exit {done.returncode}, expected {code}:\n{done.stderr[-3000:]}"
    assert len(errors) == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr + done.stdout, done.stderr[-3000:]
    for path in absent:
        assert not path.exists(), f"{path} was written"
    return errors[0]


def _calibrate(raw: Path, tmp_path: Path, **kwargs) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path / "calibrated"
    done = run_cli("calibrate", *KAGGLE, f"data.root={raw}", f"paths.output_dir={out}", **kwargs)
    return done, out / "data" / "kaggle" / "store" / "lightcurves.h5"


def _first_visit(raw: Path) -> Path:
    return sorted((raw / "train").iterdir())[0]


def test_a_truncated_signal_parquet(built, tmp_path):
    raw = _raw(built, tmp_path)
    signal = _first_visit(raw) / "AIRS-CH0_signal_0.parquet"
    signal.write_bytes(signal.read_bytes()[: signal.stat().st_size // 2])
    done, store = _calibrate(raw, tmp_path)
    assert signal.name in _refused(done, 3, store)


def test_a_garbage_calibration_parquet(built, tmp_path):
    raw = _raw(built, tmp_path)
    dark = _first_visit(raw) / "AIRS-CH0_calibration_0" / "dark.parquet"
    dark.write_bytes(np.random.default_rng(0).bytes(4096))
    done, store = _calibrate(raw, tmp_path)
    assert "dark.parquet" in _refused(done, 3, store)


def test_a_missing_calibration_file(built, tmp_path):
    raw = _raw(built, tmp_path)
    flat = _first_visit(raw) / "FGS1_calibration_0" / "flat.parquet"
    flat.unlink()
    done, store = _calibrate(raw, tmp_path)
    assert "flat.parquet" in _refused(done, 3, store)


def test_nan_frames(built, tmp_path):
    raw = _raw(built, tmp_path)
    signal = _first_visit(raw) / "FGS1_signal_0.parquet"
    frame = pl.read_parquet(signal)
    reads = frame.to_numpy().astype(np.float64)
    reads[5:9] = np.nan
    pl.DataFrame(reads, schema=frame.columns).write_parquet(signal)
    done, store = _calibrate(raw, tmp_path)
    assert signal.name in _refused(done, 3, store)


def test_frames_of_the_wrong_shape(built, tmp_path):
    raw = _raw(built, tmp_path)
    signal = _first_visit(raw) / "AIRS-CH0_signal_0.parquet"
    frame = pl.read_parquet(signal)
    frame.select(frame.columns[: frame.width // 2]).write_parquet(signal)
    done, store = _calibrate(raw, tmp_path)
    assert signal.name in _refused(done, 3, store)


def _predict_fit(raw: Path, tmp_path: Path) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path / "predicted"
    submission = out / "submission.csv"
    done = run_cli("predict", "model=fit", *KAGGLE, f"data.root={raw}", f"paths.output_dir={out}",
                   f"predict.out={submission}")
    return done, submission


def test_an_empty_test_folder(built, tmp_path):
    raw = _raw(built, tmp_path)
    for planet in (raw / "test").iterdir():
        shutil.rmtree(planet)
    done, submission = _predict_fit(raw, tmp_path)
    assert "test" in _refused(done, 3, submission)


def test_a_duplicate_planet_id(built, tmp_path):
    raw = _raw(built, tmp_path)
    labels = raw / "train.csv"
    lines = labels.read_text().splitlines()
    labels.write_text("\n".join([*lines, lines[1]]) + "\n")
    done, submission = _predict_fit(raw, tmp_path)
    assert "duplicate planet_id" in _refused(done, 3, submission)


def test_a_missing_star_row(built, tmp_path):
    raw = _raw(built, tmp_path)
    stars = raw / "test_star_info.csv"
    lines = stars.read_text().splitlines()
    stars.write_text("\n".join(lines[:-1]) + "\n")
    done, submission = _predict_fit(raw, tmp_path)
    assert "test_star_info.csv" in _refused(done, 3, submission)


def _train_run(out: Path) -> Path:
    return next(p.parent for p in out.glob("runs/*/checkpoints"))


def _predict_run(out: Path, run: Path) -> tuple[subprocess.CompletedProcess, Path]:
    submission = out / "submission.csv"
    done = run_cli("predict", *SMALL, f"paths.output_dir={out}", f"predict.run={run}", f"predict.out={submission}")
    return done, submission


@pytest.mark.parametrize(("value", "expected"), [(-1.0, "baseline_sigma[3] = -1"), (np.nan, "baseline_sigma[3] = nan")],
                         ids=["negative", "nan"])
def test_a_negative_or_nan_sigma_never_reaches_a_submission(built, tmp_path, value, expected):
    out = _copy(built, tmp_path)
    sidecar = next((out / "data" / "synthetic" / "baseline").glob("baseline_*.h5"))
    with h5py.File(sidecar, "r+") as f:  # the baseline the net scales its sigma from
        for visit in f["visits"].values():
            visit["baseline_sigma"][3] = value
    done, submission = _predict_run(out, _train_run(out))
    assert expected in _refused(done, 3, submission)


def test_a_malicious_run_config(built, tmp_path):
    out = _copy(built, tmp_path)
    run = _train_run(out)
    proof = tmp_path / "pwned"
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["model"]["channels"] = {"_target_": "os.system", "_args_": [f"touch {proof}"]}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    done, submission = _predict_run(out, run)
    assert "_target_" in _refused(done, 2, submission, proof)


def test_an_unknown_override(tmp_path):
    done = run_cli("train", "trainer.max_epoch=3", f"paths.output_dir={tmp_path / 'out'}")
    assert "did you mean 'trainer.max_epochs'" in _refused(done, 2, tmp_path / "out")


def test_a_value_of_the_wrong_type(tmp_path):
    done = run_cli("train", "trainer.max_epochs=lots", f"paths.output_dir={tmp_path / 'out'}")
    assert "trainer.max_epochs" in _refused(done, 2, tmp_path / "out")


def _without_root_overrides():
    """In the child, before exec: drop the capabilities that let root write where the mode bits say no
    (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH), so a read-only folder is read-only to it as to a user."""
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    for cap in (1, 2):
        if prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def test_a_read_only_output_folder(built, tmp_path):
    raw = _raw(built, tmp_path)
    out = tmp_path / "read-only"
    out.mkdir()
    out.chmod(0o555)
    done = subprocess.run([sys.executable, "-m", "spectramind", "calibrate", *KAGGLE, f"data.root={raw}",
                           f"paths.output_dir={out}"], capture_output=True, text=True, timeout=300,
                          preexec_fn=_without_root_overrides if os.getuid() == 0 else None)
    assert str(out) in _refused(done, 2, out / "runs", out / "data")


def test_a_full_disk(built, tmp_path):
    raw = _raw(built, tmp_path)
    out = tmp_path / "full"
    env = {**os.environ, "FAULT_FREE_BYTES": "4096", "FAULT_MARKERS": str(tmp_path)}
    done = subprocess.run([sys.executable, str(SHIM), "calibrate", *KAGGLE, f"data.root={raw}",
                           f"paths.output_dir={out}"], capture_output=True, text=True, timeout=300, env=env)
    store = out / "data" / "kaggle" / "store"
    assert "the disk is full" in _refused(done, 3, store / "lightcurves.h5")
    assert not list(store.glob("*.h5")) + list(store.glob(".*.tmp")), "a partial store was left"


def test_a_corrupt_checkpoint(built, tmp_path):
    out = _copy(built, tmp_path)
    run = _train_run(out)
    (run / "summary.json").unlink()  # an unfinished run: the next train resumes from its checkpoint
    last = run / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    done = run_cli("train", *SMALL, f"paths.output_dir={out}")
    assert "last.pt" in _refused(done, 3, run / "summary.json")
    assert last.stat().st_size == 1000, "the corrupt checkpoint was replaced: the user cannot inspect it"
