"""Calibration defaults judged on the real reads: the first 50 reads of planet 342072318 with its own maps.

Twenty-five CDS frames, one per time bin: enough for per-column noise figures (median over columns) and
for injected cosmic rays, not for a transit. Skipped where ../shared/ariel-real-sample is absent.
"""

import dataclasses

import numpy as np
import pytest
from conftest import REAL_SAMPLE, make_settings

from spectramind.data import ariel_format as af
from spectramind.data import calibrate as cal

PLANET = 342072318
RED_END = slice(263, 283)  # the 20 longest-wavelength AIRS bins (target order), the faintest columns


@pytest.fixture(scope="module")
def real():
    sample = REAL_SAMPLE
    if not (sample / f"first_frames_{PLANET}.npz").is_file():
        pytest.skip(f"real competition sample not found at {sample}")
    frames = np.load(sample / f"first_frames_{PLANET}.npz")
    adc = af.read_adc(sample)
    # The sample holds decoded electrons; the calibration starts from the ADC's integer counts.
    raw = {
        inst: np.rint((frames[key].astype(np.float64) - adc[f"{inst}_adc_offset"]) * adc[f"{inst}_adc_gain"])
        .astype(np.uint16)
        for inst, key in (("AIRS-CH0", "airs_first50"), ("FGS1", "fgs1_first50"))
    }
    visit = af.Visit("train", PLANET, 0, sample / "train" / str(PLANET), "_0")
    maps = {inst: af.read_calibration(visit, inst) for inst in af.INSTRUMENTS}
    axis = {"AIRS-CH0-axis0-h": af.read_axis_info(sample)["AIRS-CH0-axis0-h"][:50]}
    return raw, maps, adc, axis


def kaggle_opts(**changes):
    """data=kaggle's calibration, one CDS frame per time bin."""
    return dataclasses.replace(make_settings("data=kaggle").data.calibrate, airs_bin=1, fgs1_bin=1, **changes)


def cds_frames(real, instrument, opts):
    """The CDS frames (N, R, C) of the pixels calibration uses, their rows, the read-noise map and the band."""
    raw, maps, adc, _ = real
    rows, cols = cal.pixels(instrument, opts)
    maps = {k: v[..., cols][..., rows, :] for k, v in maps[instrument].items()}
    cds = cal.correlated_double_samples(
        raw[instrument][:, rows][:, :, cols], maps, adc[f"{instrument}_adc_gain"], adc[f"{instrument}_adc_offset"],
        cal.DARK_DT[opts.dark_dt][instrument], opts,
    )
    band = np.searchsorted(rows, np.arange(*(opts.airs_rows if instrument == "AIRS-CH0" else opts.fgs1_box)))
    return cds, maps["read"], band


def scatter(flux):
    """Per-bin standard deviation about a quadratic in time (the visit's first minutes drift a little)."""
    t = np.arange(len(flux), dtype=np.float64)
    basis = np.stack([np.ones_like(t), t, t * t], axis=1)
    residual = flux - basis @ np.linalg.lstsq(basis, flux, rcond=None)[0]
    return residual.std(0) * np.sqrt(len(flux) / (len(flux) - 3))


@pytest.mark.parametrize("instrument", af.INSTRUMENTS)
def test_cosmic_ray_pass_leaves_the_real_flux_alone(real, instrument):
    """Jitter moves FGS1's core pixels far beyond Poisson; a Poisson threshold took ~3 % of the flux."""
    opts = kaggle_opts()
    cds, read, band = cds_frames(real, instrument, opts)
    cleaned = cds.copy()
    cal.reject_cosmic_rays(cleaned, read, opts.cosmic_sigma)
    changed = np.abs(cleaned[:, band] - cds[:, band]).sum() / cds[:, band].sum()
    assert changed < 5e-4


@pytest.mark.parametrize("instrument", af.INSTRUMENTS)
def test_cosmic_rays_injected_into_the_real_reads_are_found(real, instrument):
    opts = kaggle_opts()
    cds, read, band = cds_frames(real, instrument, opts)
    rng = np.random.default_rng(11)
    found = total = 0
    for _ in range(20):  # ten hits at a time, so that two rarely meet in one pixel's neighbourhood
        hit = cds.copy()
        t, r, c = rng.integers(0, len(cds), 10), rng.choice(band, 10), rng.integers(0, cds.shape[2], 10)
        energy = rng.uniform(3e3, 2e4, 10).astype(np.float32)
        hit[t, r, c] += energy
        cal.reject_cosmic_rays(hit, read, opts.cosmic_sigma)
        found += int((np.abs(hit[t, r, c] - cds[t, r, c]) < 0.5 * energy).sum())
        total += 10
    assert found / total >= 0.95


def test_real_column_noise_matches_photon_plus_read_with_a_constant_background(real):
    """The per-bin median of 8 edge pixels adds its own noise to every column; a level constant in time
    adds none, so the columns' scatter is the photon + read-noise model's."""
    box = kaggle_opts(extraction="box")
    constant = cal.calibrate_visit(*real, box)
    per_bin = cal.calibrate_visit(*real, dataclasses.replace(box, background_window=1))
    none = cal.calibrate_visit(*real, dataclasses.replace(box, background_rows=0))
    model = np.median(none["flux_err"], axis=0)  # photon + read noise alone

    def noise(out, bins):  # pooled over the columns: RMS of scatter / model
        return np.sqrt(np.mean((scatter(out["flux"]) / model)[bins] ** 2))

    red = slice(200, 283)  # the faint third of the spectrum, where the edge median's noise weighs most
    assert abs(noise(constant, slice(1, 283)) - 1) < 0.05 and abs(noise(constant, red) - 1) < 0.05
    assert abs(np.median(constant["flux_err"][:, 1:] / none["flux_err"][:, 1:]) - 1) < 0.01
    assert noise(per_bin, red) > 1.2


def test_optimal_extraction_is_less_noisy_than_the_box_on_the_real_reads(real):
    box = cal.calibrate_visit(*real, kaggle_opts(extraction="box"))
    optimal = cal.calibrate_visit(*real, kaggle_opts(extraction="optimal"))

    def relative(out, key):
        return (scatter(out["flux"]) if key == "scatter" else np.median(out["flux_err"], 0)) / out["flux"].mean(0)

    for key, fgs1 in (("scatter", 0.93), ("model", 0.85)):  # FGS1's scatter is mostly its jitter's
        ratio = relative(optimal, key) / relative(box, key)
        assert ratio[0] < fgs1 and np.median(ratio[RED_END]) < 0.93, key  # FGS1 and the red end
        assert np.median(ratio[1:]) < 1.0, key
    # The model error of the optimal flux is its real scatter, column by column (FGS1 aside: jitter).
    assert abs(np.median(scatter(optimal["flux"])[1:] / np.median(optimal["flux_err"][:, 1:], 0)) - 1) < 0.05


def test_jitter_regressors_on_the_real_reads_are_finite_and_plausible(real):
    out = cal.calibrate_visit(*real, kaggle_opts())
    jitter = dict(zip(cal.jitter_columns(kaggle_opts()), out["jitter"].T, strict=True))
    assert set(cal.JITTER_COLUMNS + cal.SHAPE_COLUMNS) == set(jitter)
    assert np.isfinite(out["jitter"]).all()
    assert 15 < jitter["airs_y"].mean() < 17 and 1.0 < jitter["airs_width"].mean() < 2.5  # rows 15-16, ~3 wide
    assert np.abs(jitter["airs_x"]).max() < 0.5 and 1.5 < jitter["fgs1_width"].mean() < 3.5
