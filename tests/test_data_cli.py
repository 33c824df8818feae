"""Bad input through the real CLI: exit code 3, one line naming the file and the problem, no store left."""

import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import polars as pl
import pytest
from test_data_format import write_tiny_visit

from spectramind.data import ariel_format as af


def raw_folder(tmp_path, planet=5, star_planet=5):
    root = tmp_path / "raw"
    write_tiny_visit(root / "train" / str(planet))
    af.write_csv(
        root / "adc_info.csv",
        pd.DataFrame([{c: (0.4369 if "gain" in c else -1000.0) for c in af.ADC_COLUMNS}]),
    )
    af.write_axis_info(
        root / "axis_info.parquet",
        np.arange(4) / 3600,
        np.tile([0.1, 4.5], 2),
        np.linspace(4.07, 1.63, 356),
        np.arange(4) / 3600,
    )
    af.write_csv(
        root / "train_star_info.csv",
        pd.DataFrame(
            [[star_planet, 1.0, 1.0, 5800.0, 1.0, 0.0, 4.0, 10.0, 89.0]],
            columns=["planet_id", *af.STAR_COLUMNS],
        ),
    )
    return root


def calibrate(cli, tmp_path, root):
    return cli(
        "calibrate",
        "data=kaggle",
        f"data.root={root}",
        f"paths.output_dir={tmp_path / 'out'}",
        "data.calibrate.airs_bin=1",
        "data.calibrate.fgs1_bin=1",
        cwd=tmp_path,
    )


def assert_one_line_error(result, *fragments):
    assert result.returncode == 3, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_empty_folder(cli, tmp_path):
    (tmp_path / "raw").mkdir()
    assert_one_line_error(calibrate(cli, tmp_path, tmp_path / "raw"), "raw: no raw folder (axis_info.parquet missing)")


def test_a_layout_without_planet_folders(cli, tmp_path):
    root = raw_folder(tmp_path)
    shutil.rmtree(root / "train")
    assert_one_line_error(calibrate(cli, tmp_path, root), "raw: no planet folders")


@pytest.mark.slow
def test_truncated_signal_leaves_no_store(cli, tmp_path):
    root = raw_folder(tmp_path)
    signal = root / "train" / "5" / "FGS1_signal_0.parquet"
    signal.write_bytes(signal.read_bytes()[:300])
    result = calibrate(cli, tmp_path, root)
    assert_one_line_error(result, "FGS1_signal_0.parquet", "not a readable parquet file")
    store = tmp_path / "out" / "data" / "kaggle" / "store"
    assert not (store / "lightcurves.h5").exists() and not (store / "manifest.json").exists()
    assert not list(store.glob("*.tmp")) if store.exists() else True


@pytest.mark.slow
def test_unknown_planet_id(cli, tmp_path):
    root = raw_folder(tmp_path, planet=5, star_planet=6)
    assert_one_line_error(calibrate(cli, tmp_path, root), "train_star_info.csv", "unknown planet id 5")


@pytest.mark.slow
def test_nan_calibration_map(cli, tmp_path):
    root = raw_folder(tmp_path)
    flat = np.ones((32, 356))
    flat[3, 4] = np.nan
    af.write_map(root / "train" / "5" / "AIRS-CH0_calibration_0" / "flat.parquet", flat)
    assert_one_line_error(calibrate(cli, tmp_path, root), "flat.parquet", "NaN or inf")


def assert_no_store(tmp_path):
    store = tmp_path / "out" / "data" / "kaggle" / "store"
    assert not (store / "lightcurves.h5").exists() and not (store / "manifest.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    "damage, fragments",
    [
        ("nan_frames", ("AIRS-CH0_signal_0.parquet", "column_5 holds NaN or inf values")),
        ("wrong_shape", ("FGS1_signal_0.parquet", "1000 columns, expected 1024 (32 x 32)")),
    ],
)
def test_nan_frames_and_wrong_shapes_leave_no_store(cli, tmp_path, damage, fragments):
    root = raw_folder(tmp_path)
    folder = root / "train" / "5"
    if damage == "nan_frames":  # a signal that went through floats with a missing value
        values = np.full((4, 32 * 356), 7.0)
        values[1, 5] = np.nan
        frame = pl.DataFrame({f"column_{i}": c for i, c in enumerate(values.T)})
        frame.write_parquet(folder / "AIRS-CH0_signal_0.parquet")
    else:
        values = np.zeros((4, 1000), np.uint16)
        pl.DataFrame({f"column_{i}": c for i, c in enumerate(values.T)}).write_parquet(folder / "FGS1_signal_0.parquet")
    assert_one_line_error(calibrate(cli, tmp_path, root), *fragments)
    assert_no_store(tmp_path)


@pytest.mark.slow
def test_calibrate_runs_without_importing_torch(cli, tmp_path):
    """A CPU-only data stage: torch's import (~1.5 s) would be a sixth of the default calibration."""
    small = ["data.simulate.n_train=2", "data.simulate.n_test=0", "data.simulate.airs_reads=60"]
    args = [*small, "data.simulate.fgs1_reads=240", "data.num_workers=0", f"paths.output_dir={tmp_path}"]
    assert cli("simulate", *args, cwd=tmp_path).returncode == 0
    code = (
        "import sys\nfrom spectramind.cli import main\n"
        f"sys.argv = ['spectramind', 'calibrate', *{args!r}]\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "print('torch imported:', 'torch' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert "torch imported: False" in result.stdout
    assert (tmp_path / "data" / "synthetic" / "store" / "manifest.json").is_file()


def test_visit_shorter_than_one_time_bin(cli, tmp_path):
    root = raw_folder(tmp_path)  # 4 reads: 2 CDS frames
    result = cli("calibrate", "data=kaggle", f"data.root={root}", f"paths.output_dir={tmp_path}", cwd=tmp_path)
    assert_one_line_error(result, "axis_info.parquet: 2 AIRS-CH0 CDS frames per visit", "data.calibrate.airs_bin=30")
    assert not (tmp_path / "data" / "kaggle" / "store" / "lightcurves.h5").exists()
