"""The reader against genuine competition files, the writer's round trip, and bad input named clearly."""

import shutil

import numpy as np
import pandas as pd
import polars as pl
import pytest

from spectramind.data import ariel_format as af
from spectramind.errors import DataError

REAL_PLANET = 342072318


def test_real_tables_read_with_their_columns(real_sample):
    adc = af.read_adc(real_sample)
    assert adc == {
        "FGS1_adc_offset": -1000.0,
        "FGS1_adc_gain": 0.4369,
        "AIRS-CH0_adc_offset": -1000.0,
        "AIRS-CH0_adc_gain": 0.4369,
    }
    axis = af.read_axis_info(real_sample)
    assert len(axis["AIRS-CH0-axis0-h"]) == 11250 and len(axis["FGS1-axis0-h"]) == 135000
    assert set(np.unique(axis["AIRS-CH0-integration_time"])) == {0.1, 4.5}
    train = af.read_star_info(real_sample, "train")
    assert len(train) == 1100 and list(train.columns) == list(af.STAR_COLUMNS)
    test = af.read_star_info(real_sample, "test")  # the real file stores planet ids as floats
    assert test.index.dtype == np.int64 and list(test.index) == [1103775]
    sample = pd.read_csv(real_sample / "sample_submission.csv")
    assert list(sample.columns) == ["planet_id", *af.TARGET_COLUMNS, *af.SIGMA_COLUMNS]


def test_target_wl_k_is_airs_column_322_minus_k_on_the_real_axis(real_sample):
    wl = af.read_wavelengths(real_sample)
    axis_um = af.read_axis_info(real_sample)["AIRS-CH0-axis2-um"]
    assert wl[0] == 0.7
    k = np.arange(2, 284)
    assert np.allclose(wl[k - 1], axis_um[322 - k], rtol=0, atol=1e-12)
    assert np.allclose(wl[1:], axis_um[af.AIRS_CROP][::-1])


def test_real_calibration_maps_read_with_shapes_and_dtypes(real_sample):
    visit = af.Visit("train", REAL_PLANET, 0, real_sample / "train" / str(REAL_PLANET), "_0")
    for inst, width in (("AIRS-CH0", 356), ("FGS1", 32)):
        maps = af.read_calibration(visit, inst)
        assert maps["dead"].dtype == bool and maps["dead"].shape == (32, width)
        assert maps["linear_corr"].shape == (6, 32, width)
        assert 0.99 < np.median(maps["linear_corr"][1]) < 1.01  # ascending: c1 ~ 1


def write_tiny_visit(folder, suffix="_0", reads=4):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for inst, w in af.WIDTH.items():
        af.write_signal(
            folder / f"{inst}_signal{suffix}.parquet", rng.integers(0, 65535, (reads, 32, w), dtype=np.uint16)
        )
        for name in af.CALIBRATION_FILES:
            rows = 192 if name == "linear_corr" else 32
            arr = np.zeros((rows, w), bool) if name == "dead" else np.ones((rows, w))
            af.write_map(folder / f"{inst}_calibration{suffix}" / f"{name}.parquet", arr)


def test_signal_round_trips_and_visits_are_listed_in_both_spellings(tmp_path):
    write_tiny_visit(tmp_path / "train" / "11", "_0")
    write_tiny_visit(tmp_path / "train" / "11", "_1")
    write_tiny_visit(tmp_path / "train" / "7", "")  # the 2024 spelling, one visit, no suffix
    visits = af.list_visits(tmp_path, "train")
    assert [(v.planet_id, v.visit, v.suffix) for v in visits] == [(7, 0, ""), (11, 0, "_0"), (11, 1, "_1")]
    raw = np.random.default_rng(0).integers(0, 65535, (4, 32, 356), dtype=np.uint16)
    assert np.array_equal(af.read_signal(visits[1], "AIRS-CH0", expect_reads=4), raw)
    assert af.list_visits(tmp_path, "test") == []


@pytest.mark.parametrize(
    "damage, message",
    [
        ("truncate", "not a readable parquet file"),
        ("missing_map", "dead.parquet: file not found"),
        ("wrong_rows", "3 rows, expected"),
        ("nan_frames", "NaN or inf values"),
        ("wrong_map_shape", "shape (31, 356), expected (32, 356)"),
    ],
)
def test_bad_files_raise_data_error_naming_the_file(tmp_path, damage, message):
    folder = tmp_path / "train" / "5"
    write_tiny_visit(folder)
    signal = folder / "AIRS-CH0_signal_0.parquet"
    if damage == "truncate":
        signal.write_bytes(signal.read_bytes()[:500])
    elif damage == "missing_map":
        (folder / "AIRS-CH0_calibration_0" / "dead.parquet").unlink()
    elif damage == "wrong_rows":
        af.write_signal(signal, np.zeros((3, 32, 356), np.uint16))
    elif damage == "nan_frames":
        values = np.full((4, 32 * 356), 7.0)
        values[1, 5] = np.nan
        pl.DataFrame({f"column_{i}": c for i, c in enumerate(values.T)}).write_parquet(signal)
    elif damage == "wrong_map_shape":
        af.write_map(folder / "AIRS-CH0_calibration_0" / "flat.parquet", np.ones((31, 356)))
    visit = af.list_visits(tmp_path, "train")[0]
    with pytest.raises(DataError) as err:
        af.read_signal(visit, "AIRS-CH0")
        af.read_calibration(visit, "AIRS-CH0")
    text = str(err.value)
    assert message in text and str(folder) in text and "\n" not in text


def test_missing_table_and_bad_csv_are_named(tmp_path, real_sample):
    with pytest.raises(DataError, match="adc_info.csv: file not found"):
        af.read_adc(tmp_path)
    shutil.copy(real_sample / "train_star_info.csv", tmp_path / "train_star_info.csv")
    df = pd.read_csv(tmp_path / "train_star_info.csv").drop(columns=["sma"])
    df.to_csv(tmp_path / "train_star_info.csv", index=False)
    with pytest.raises(DataError, match="train_star_info.csv: missing columns sma"):
        af.read_star_info(tmp_path, "train")


def test_signal_reads_only_the_pixels_asked_for(tmp_path):
    write_tiny_visit(tmp_path / "train" / "3")
    visit = af.list_visits(tmp_path, "train")[0]
    whole = af.read_signal(visit, "AIRS-CH0")
    rows, cols = np.array([0, 1, 17, 31]), np.arange(39, 321)
    part = af.read_signal(visit, "AIRS-CH0", expect_reads=4, pixels=(rows, cols))
    assert part.shape == (4, 4, 282)
    assert np.array_equal(part, whole[:, rows][:, :, cols])


def test_float_column_outside_the_pixels_read_is_still_refused(tmp_path):
    folder = tmp_path / "train" / "5"
    write_tiny_visit(folder)
    values = np.full((4, 32 * 32), 7.0)
    values[2, 1000] = np.inf  # pixel (31, 8): outside the rows and columns read below
    pl.DataFrame({f"column_{i}": c for i, c in enumerate(values.T)}).write_parquet(folder / "FGS1_signal_0.parquet")
    visit = af.list_visits(tmp_path, "train")[0]
    with pytest.raises(DataError, match="column_1000 holds NaN or inf values"):
        af.read_signal(visit, "FGS1", pixels=(np.arange(10, 22), np.arange(10, 22)))
