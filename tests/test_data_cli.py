"""Bad input through the real CLI: exit code 3, one line naming the file and the problem, no store left."""

import numpy as np
import pandas as pd
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
    assert_one_line_error(calibrate(cli, tmp_path, tmp_path / "raw"), "raw: no planet folders")


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
