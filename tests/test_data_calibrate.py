"""Calibration steps on crafted reads: each switch is shown to do its job (and to matter)."""

import dataclasses

import numpy as np
import pytest
from conftest import make_settings

from spectramind.data import calibrate as cal
from spectramind.data import instrument as ins
from spectramind.data import simulate as sim
from spectramind.data.ariel_format import AIRS_CROP

GAIN, OFFSET = ins.ADC["gain"], ins.ADC["offset"]
N_PAIRS = 8
# The shipped YAML's calibration, with short bins and every optional step off; the AIRS rows are the
# 12 rows (10, 22) the expected values below are worked out for.
BASE = dataclasses.replace(
    make_settings().data.calibrate,
    airs_bin=2,
    fgs1_bin=2,
    mask_hot=False,
    linearity=False,
    background_rows=0,
    cosmic_sigma=0.0,
    fill_masked=False,
    extraction="box",
    airs_rows=(10, 22),
)


def maps_for(width, dark=0.0, beta=None):
    shape = (32, width)
    beta = np.full(shape, 1e-12) if beta is None else beta
    return {
        "dark": np.full(shape, dark),
        "dead": np.zeros(shape, bool),
        "flat": np.ones(shape),
        "read": np.full(shape, 13.0),
        "linear_corr": sim.linearity_coefficients(beta),
    }


def encode(charge, beta=None, offset=OFFSET, dither=True):
    """Reads -> uint16, through the simulator's non-linearity and ADC; a +-0.5-count dither keeps the
    rounding from biasing every pixel of a flat image the same way."""
    measured = charge if beta is None else sim.apply_nonlinearity(charge, beta)
    noise = np.random.default_rng(9).uniform(-0.5, 0.5, np.shape(charge)) if dither else 0.0
    return np.clip(np.rint((measured - offset) * GAIN + noise), 0, 65535).astype(np.uint16)


def reads_from(image, dark, dt=(0.1, 4.6), beta=None):
    """(P, 32, W) e- per CDS -> (2P, 32, W) cumulative reads with dark current."""
    first = image * (dt[0] / (dt[1] - dt[0])) + dark * dt[0]
    second = first + image + dark * (dt[1] - dt[0])
    charge = np.stack([first, second], axis=1).reshape(-1, *image.shape[1:])
    return encode(charge, beta)


def visit(airs_image=None, fgs_image=None, airs_maps=None, fgs_maps=None, beta=None):
    airs_image = np.full((N_PAIRS, 32, 356), 100.0) if airs_image is None else airs_image
    fgs_image = np.full((len(airs_image), 32, 32), 100.0) if fgs_image is None else fgs_image
    airs_maps = airs_maps or maps_for(356)
    fgs_maps = fgs_maps or maps_for(32)
    raw = {
        "AIRS-CH0": reads_from(airs_image, airs_maps["dark"], beta=beta),
        "FGS1": reads_from(fgs_image, fgs_maps["dark"], dt=(0.1, 0.2)),
    }
    adc = {
        "AIRS-CH0_adc_gain": GAIN,
        "AIRS-CH0_adc_offset": OFFSET,
        "FGS1_adc_gain": GAIN,
        "FGS1_adc_offset": OFFSET,
    }
    pairs = len(airs_image)
    axis = {"AIRS-CH0-axis0-h": np.repeat(np.arange(pairs) * 0.1, 2) + np.tile([0, 1e-5], pairs)}
    return raw, {"AIRS-CH0": airs_maps, "FGS1": fgs_maps}, adc, axis


def run(v, **changes):
    return cal.calibrate_visit(*v, dataclasses.replace(BASE, **changes))


def test_adc_decode_round_trips_within_one_count():
    electrons = np.random.default_rng(0).uniform(0, 1.4e5, (4, 32, 32))
    decoded = encode(electrons, dither=False).astype(np.float64) / GAIN + OFFSET
    assert np.abs(decoded - electrons).max() <= 0.5 / GAIN + 1e-9


def test_linearity_correction_undoes_the_simulated_non_linearity():
    beta = np.random.default_rng(1).uniform(0.7, 1.3, (32, 356)) * ins.NONLINEARITY_BETA
    coef = sim.linearity_coefficients(beta)
    q = np.random.default_rng(2).uniform(0, 1.2e5, (5, 32, 356))
    measured = sim.apply_nonlinearity(q, beta)
    corrected = cal.horner(coef, measured)
    assert np.abs(corrected - q).max() < 0.05  # e-, against up to ~100 e- of non-linearity
    assert np.abs(measured - q).max() > 50


def test_output_layout_fgs1_first_then_airs_in_target_order():
    image = np.full((N_PAIRS, 32, 356), 50.0)
    image[:, 15, 320] = 5000.0  # detector column 320 is target wl_2 (column 322 - k)
    image[:, 15, 39] = 9000.0  # column 39 is wl_283
    out = run(visit(airs_image=image), airs_rows=(10, 22))
    assert out["flux"].shape == (N_PAIRS // 2, 283)
    per_cds = out["flux"][0] / 2
    assert per_cds[1] == pytest.approx(5000 + 11 * 50, rel=5e-3)
    assert per_cds[282] == pytest.approx(9000 + 11 * 50, rel=5e-3)
    assert per_cds[0] == pytest.approx(100 * 144, rel=5e-3)
    assert np.all(np.abs(per_cds[2:282] - 12 * 50) < 12)  # FGS1 box 12 x 12 pixels of 100 e-


def test_switch_linearity_and_adc_offset_sign():
    beta = np.full((32, 356), 2 * ins.NONLINEARITY_BETA)
    image = np.full((N_PAIRS, 32, 356), 60000.0)
    v = visit(airs_image=image, airs_maps=maps_for(356, beta=beta), beta=beta)
    truth = 60000.0 * 12 * 2
    on, off = run(v, linearity=True)["flux"][0, 1], run(v, linearity=False)["flux"][0, 1]
    assert abs(on - truth) < abs(off - truth) / 20
    flipped = run(v, linearity=True, adc_offset_sign=-1)["flux"][0, 1]
    assert abs(flipped - on) > 20  # the offset sign matters only through the non-linearity


def test_switch_dark_dt_convention():
    dark = np.full((32, 356), 10.0)
    v = visit(airs_maps=maps_for(356, dark=dark))
    hosts = run(v, dark_dt="hosts")["flux"][0, 1]
    since_reset = run(v, dark_dt="since_reset")["flux"][0, 1]
    assert hosts == pytest.approx(100 * 12 * 2, rel=5e-3)  # simulated with the hosts' convention
    assert hosts - since_reset == pytest.approx(10 * 0.1 * 12 * 2, rel=0.05)


def test_switch_flat_stage():
    airs = maps_for(356, dark=np.full((32, 356), 5.0))
    airs["flat"] = np.full((32, 356), 0.5)
    v = visit(airs_maps=airs)
    after = run(v, flat_stage="after_binning")["flux"][0, 1]
    before = run(v, flat_stage="before_cds")["flux"][0, 1]
    assert after == pytest.approx(100 / 0.5 * 12 * 2, rel=5e-3)
    # Before CDS the dark (4.5 s x 5 e-/s per CDS) meets flat-fielded reads: off by dark * (1/flat - 1).
    assert before - after == pytest.approx(5 * 4.5 * (1 / 0.5 - 1) * 12 * 2, rel=0.02)


def test_switch_hot_pixel_masking_and_sigma():
    dark = np.random.default_rng(3).normal(0.01, 0.001, (32, 356))
    dark[15, 200] = 2.0
    assert cal.hot_pixels(dark, 5.0)[15, 200] and cal.hot_pixels(dark, 5.0).sum() == 1
    assert not cal.hot_pixels(dark, 5000.0).any()
    image = np.full((N_PAIRS, 32, 356), 100.0)
    image[:, 15, 200] = 1e5  # a pixel the dark map calls hot, in the trace
    v = visit(airs_image=image, airs_maps=maps_for(356, dark=dark))
    col = 321 - 200  # AIRS column 200 in target order (bins 1..282 hold columns 320..39)
    masked = run(v, mask_hot=True)["flux"][0, col]
    kept = run(v, mask_hot=False)["flux"][0, col]
    assert masked == pytest.approx(100 * 11 * 2, rel=5e-3) and kept > 1e5
    assert run(v, mask_hot=True, hot_sigma=5000.0)["flux"][0, col] == pytest.approx(kept)


def test_switch_fill_masked_restores_the_column_flux_from_the_profile():
    profile = np.exp(-0.5 * ((np.arange(32) - 15.5) / 1.5) ** 2)
    image = np.broadcast_to(1e4 * profile[None, :, None], (N_PAIRS, 32, 356)).copy()
    airs = maps_for(356)
    airs["dead"][15, 100] = True
    v = visit(airs_image=image, airs_maps=airs)
    col = 321 - 100
    truth = 1e4 * profile[10:22].sum() * 2
    filled = run(v, fill_masked=True)["flux"][0, col]
    dropped = run(v, fill_masked=False)["flux"][0, col]
    assert filled == pytest.approx(truth, rel=1e-3)
    assert dropped == pytest.approx(truth - 1e4 * profile[15] * 2, rel=1e-3)


def test_switch_background_rows_removes_a_uniform_background():
    image = np.full((N_PAIRS, 32, 356), 40.0)
    image[:, 14:18, :] += 1000.0
    v = visit(airs_image=image)
    with_bg = run(v, background_rows=4, airs_rows=(10, 22))["flux"][0, 1]
    without = run(v, background_rows=0, airs_rows=(10, 22))["flux"][0, 1]
    assert with_bg == pytest.approx(4 * 1000 * 2, rel=5e-3)
    assert without == pytest.approx((4 * 1000 + 12 * 40) * 2, rel=5e-3)


def test_switch_cosmic_sigma_rejects_a_hit_but_keeps_a_transit():
    rng = np.random.default_rng(4)
    n = 40
    level = 10000.0 * np.r_[np.ones(15), np.full(10, 0.98), np.ones(15)]  # a 2 % dip over 10 frames
    image = level[:, None, None] + rng.normal(0, 100, (n, 32, 356))
    image[22, 15, 150] += 8000.0
    image[5, 3, 40] -= 3000.0  # a bad read below the trend: rejection is two-sided
    cds = image.astype(np.float32)
    cleaned = cds.copy()
    count = cal.reject_cosmic_rays(cleaned, np.full((32, 356), 13.0), 5.0)
    assert abs(cleaned[22, 15, 150] - level[22]) < 500 and abs(cleaned[5, 3, 40] - level[5]) < 500
    changed = np.argwhere(cleaned != cds)
    assert count == len(changed) and 2 <= count < 20  # both outliers, and a handful of noise values at most
    assert np.allclose(cleaned.mean((1, 2)), cds.mean((1, 2)), atol=1.0)


def test_cosmic_rays_judge_each_pixel_by_its_own_scatter():
    """A pixel that jitter makes 30x noisier than Poisson keeps its values; a hit on a quiet pixel goes."""
    rng = np.random.default_rng(6)
    n = 400
    cds = rng.normal(1000.0, 30.0, (n, 6, 8)).astype(np.float32)
    wobble = rng.normal(0.0, 1.0, n).astype(np.float32)
    cds[:, 2, 3] += 900.0 * wobble  # a PSF-core pixel moving with the pointing
    cds[:, 2, 4] -= 900.0 * wobble  # its neighbour takes the light it loses
    cds[100, 4, 6] += 3000.0
    cleaned = cds.copy()
    assert cal.reject_cosmic_rays(cleaned, np.full((6, 8), 5.0), 5.0) <= 3
    assert np.array_equal(cleaned[:, 2, 3:5], cds[:, 2, 3:5])
    assert abs(cleaned[100, 4, 6] - 1000.0) < 150


def trace(n, centre=15.5, width=1.3, level=3000.0, rng=None, background=0.0):
    """(n, 32, 356) AIRS CDS images of a Gaussian trace across the rows (centre, width: scalars or (n,)),
    `level` e- per column, plus `background` e- per pixel; photon + read noise when rng is given."""
    rows = np.arange(32)[None, :]
    centre, width = np.broadcast_to(centre, (n,))[:, None], np.broadcast_to(width, (n,))[:, None]
    profile = np.exp(-0.5 * ((rows - centre) / width) ** 2)
    profile /= profile.sum(1, keepdims=True)
    image = level * profile[:, :, None] + np.broadcast_to(background, (n,))[:, None, None]
    image = np.broadcast_to(image, (n, 32, 356)).copy()
    if rng is not None:
        image += rng.normal(0.0, 1.0, image.shape) * np.sqrt(image + 2 * 13.0**2)
    return image


def test_switch_extraction_optimal_is_less_noisy_than_the_box_and_as_accurate():
    rng = np.random.default_rng(7)
    v = visit(airs_image=trace(60, rng=rng))
    box, optimal = run(v, airs_bin=1, extraction="box"), run(v, airs_bin=1, extraction="optimal")

    def noise(out):
        return out["flux"][:, 1:].std(0)

    assert np.median(noise(optimal) / noise(box)) < 0.85  # read noise weighs on the wings the box adds up
    for out in (box, optimal):
        assert abs(np.median(noise(out) / out["flux_err"][:, 1:].mean(0)) - 1) < 0.1  # its error is its scatter
        assert abs(np.median(out["flux"][:, 1:]) / 3000.0 - 1) < 5e-3  # the light in the rows, unbiased


@pytest.mark.parametrize("extraction", ["optimal", "box"])
def test_masked_pixels_are_filled_bin_by_bin_from_the_moving_profile(extraction):
    """A dead pixel in the trace core reads nothing; the pointing moves the trace across it. Filled from the
    profile moved by each bin's centroid, the column follows the light; a fill constant in time would keep
    the jitter imprint (0.1 px of motion moves ~3 % of the column's light across the pixel)."""
    n = 24
    centre = 15.5 + 0.1 * np.sin(np.arange(n) / 3.0)
    image = trace(n, centre=centre)
    image[:, 15, 100] = 0.0
    airs = maps_for(356)
    airs["dead"][15, 100] = True
    v = visit(airs_image=image, airs_maps=airs)
    col = 321 - 100
    filled = run(v, airs_bin=1, fgs1_bin=1, extraction=extraction, fill_masked=True)["flux"][:, col]
    dropped = run(v, airs_bin=1, fgs1_bin=1, extraction="box", fill_masked=False)["flux"][:, col]
    # The ADC's rounding alone scatters a column by ~0.1 %.
    assert np.ptp(filled / filled.mean()) < 0.4 * np.ptp(dropped / dropped.mean())
    assert np.abs(filled / 3000.0 - 1).max() < 4e-3  # the dead pixel's light restored in every bin


def test_switch_background_window_follows_a_slow_background_or_holds_it_constant():
    n = 40
    background = np.linspace(20.0, 80.0, n)  # e- per pixel, rising through the visit
    v = visit(airs_image=trace(n, background=background))
    constant = run(v, airs_bin=1, fgs1_bin=1, background_rows=4, background_window=0)["flux"][:, 1]
    running = run(v, airs_bin=1, fgs1_bin=1, background_rows=4, background_window=3)["flux"][:, 1]
    assert np.abs(running[1:-1] / 3000.0 - 1).max() < 8e-3  # the ends' windows sit one bin inwards
    assert np.ptp(running[1:-1]) < 0.05 * np.ptp(constant)
    # The whole visit's mean level: right on average, off by the background's swing at the ends.
    assert abs(constant.mean() / 3000.0 - 1) < 2e-3 and np.ptp(constant) == pytest.approx(12 * 60, rel=0.03)


def test_jitter_regressors_follow_the_spectral_shift_and_the_psf_widths():
    n = 16
    shift = 0.2 * np.sin(np.arange(n) / 2.0)  # pixels along the dispersion
    width = 1.3 + 0.2 * np.cos(np.arange(n) / 2.0)
    columns = np.arange(356)[None, :] - shift[:, None]
    spectrum = 3000.0 * (1.0 + 0.3 * np.sin(2 * np.pi * columns / 23.0))  # lines to cross-correlate on
    airs = trace(n, width=width, level=1.0) * spectrum[:, None, :]
    grid = np.arange(32)
    fgs_sigma = 2.0 + 0.3 * np.sin(np.arange(n) / 2.0)
    g = np.exp(-0.5 * ((grid[None, :] - 15.5) / fgs_sigma[:, None]) ** 2)
    fgs = 1e4 * g[:, :, None] * g[:, None, :]
    opts = {"airs_bin": 1, "fgs1_bin": 1, "jitter_shape": True, "fill_masked": True}
    out = run(visit(airs_image=airs, fgs_image=fgs), **opts)
    jitter = dict(zip(cal.jitter_columns(dataclasses.replace(BASE, **opts)), out["jitter"].T, strict=True))
    assert np.corrcoef(jitter["airs_x"], shift)[0, 1] > 0.99
    assert np.polyfit(shift, jitter["airs_x"], 1)[0] == pytest.approx(1.0, abs=0.15)
    assert np.corrcoef(jitter["airs_width"], width)[0, 1] > 0.99
    assert np.corrcoef(jitter["fgs1_width"], fgs_sigma)[0, 1] > 0.99
    assert np.ptp(jitter["airs_y"]) < 0.01  # the widths do not move the centroid
    assert run(visit(), jitter_shape=False)["jitter"].shape[1] == len(cal.JITTER_COLUMNS)


def test_airs_pointing_regressors_do_not_follow_a_chromatic_transit():
    """No jitter; a PSF that widens and a trace that bends along the dispersion; a transit whose depth
    changes with wavelength; a sky and photon and read noise. Column weights that followed each bin's
    spectrum, or the wings' noise clipped at zero (a weight that does not dim with the star), would move
    airs_y and airs_width in transit, and the fit's jitter terms would take part of the depth."""
    n = 200
    columns = np.arange(356)
    width = 1.0 + 0.8 * columns / 355
    centre = 14.5 + 2.0 * columns / 355
    profile = np.exp(-0.5 * ((np.arange(32)[:, None] - centre) / width) ** 2)
    profile /= profile.sum(0, keepdims=True)
    depth = 0.05 * (1.0 + 0.8 * np.sin(columns / 40.0))
    in_transit = (np.arange(n) >= 70) & (np.arange(n) < 130)
    light = 3000.0 * (1.0 - np.outer(in_transit, depth))
    opts = {"airs_bin": 1, "fgs1_bin": 1, "jitter_shape": True, "background_rows": 4}
    image = light[:, None, :] * profile[None] + 40.0  # and a sky the calibration subtracts
    image += np.random.default_rng(4).normal(0.0, 1.0, image.shape) * np.sqrt(image + 2 * 13.0**2)
    out = run(visit(airs_image=image), **opts)
    jitter = dict(zip(cal.jitter_columns(dataclasses.replace(BASE, **opts)), out["jitter"].T, strict=True))
    for name in ("airs_y", "airs_width"):
        step = jitter[name][in_transit].mean() - jitter[name][~in_transit].mean()
        assert abs(step) < 1e-3, name  # before: 3.5-4.5e-3 for airs_width (the clipped sky noise of the wings)


def test_background_rows_keep_the_psf_wings_that_dim_with_the_star():
    """A PSF whose wings reach the background rows (6% of the light, as on the real mean frame), a flat sky
    and a transit. The edge rows' whole level subtracted from the band is a constant taken from a dimming
    star, and every depth comes out too deep; the share of it that follows the star is measured and kept."""
    n, depth = 200, 0.02
    rows = np.arange(32)[:, None]
    core = np.exp(-0.5 * ((rows - 15.5) / 1.2) ** 2)
    wing = 1.0 / (1.0 + ((rows - 15.5) / 8.0) ** 2)
    psf = 0.94 * core / core.sum() + 0.06 * wing / wing.sum()
    in_transit = (np.arange(n) >= 70) & (np.arange(n) < 130)
    star = 3e4 * (1.0 - depth * in_transit)[:, None, None] * psf[None]
    sky = 40.0
    v = visit(airs_image=np.broadcast_to(star + sky, (n, 32, 356)))
    edge = np.r_[0:4, 28:32]
    truth = (3e4 * psf[edge]).mean() / ((3e4 * psf[edge]).mean() + sky)  # ~0.36 of the edge level is starlight

    def relative_bias(**changes):
        out = run(v, airs_bin=1, fgs1_bin=1, extraction="optimal", background_rows=4, **changes)
        flux = out["flux"][:, 1:]
        measured = 1.0 - flux[in_transit].mean(0) / flux[~in_transit].mean(0)
        return measured.mean() / depth - 1.0, out["wing_share"]["AIRS-CH0"]

    bias, share = relative_bias(background_wings=True)
    assert share == pytest.approx(truth, abs=0.02)
    assert abs(bias) < 1e-3
    assert relative_bias(background_wings=False)[0] > 5e-3  # the whole edge level subtracted: +0.7%


def test_optimal_weights_that_do_not_follow_the_transit_keep_each_bins_depth():
    """A PSF whose width changes from column to column, which the trace profile (smoothed along the
    dispersion) misses: the extracted flux is the true one times a factor set by the weights. Weights
    from each time bin's own flux change in transit, and so does the factor: each bin's depth was off by
    a median 1.0% (up to 3.6%). Weights from the visit's mean flux leave it constant."""
    n, depth = 200, 0.02
    width = np.random.default_rng(3).uniform(0.8, 1.8, 356)
    profile = np.exp(-0.5 * ((np.arange(32)[:, None] - 15.5) / width) ** 2)
    profile /= profile.sum(0, keepdims=True)
    in_transit = (np.arange(n) >= 70) & (np.arange(n) < 130)
    image = 2e5 * (1.0 - depth * in_transit)[:, None, None] * profile[None] + 2000.0
    flux = run(visit(airs_image=image), airs_bin=1, fgs1_bin=1, extraction="optimal", background_rows=4)["flux"]
    measured = 1.0 - flux[in_transit, 1:].mean(0) / flux[~in_transit, 1:].mean(0)
    assert np.abs(measured / depth - 1.0).max() < 2e-3


def test_a_star_that_never_changes_keeps_no_background_as_its_own():
    """Light that only has noise in time: its slope is noise (~0.1 here), and the edge level is subtracted
    but for that noise's share."""
    rng = np.random.default_rng(6)
    for _ in range(3):
        image = 500.0 + rng.normal(0.0, 1.0, (200, 32, 356)) * np.sqrt(500.0 + 2 * 13.0**2)
        shares = run(visit(airs_image=image), airs_bin=1, fgs1_bin=1, background_rows=4)["wing_share"]
        assert shares["AIRS-CH0"] < 0.3 and shares["FGS1"] < 0.3
    assert run(visit(), background_rows=4)["wing_share"] == {"AIRS-CH0": 0.0, "FGS1": 0.0}  # too few bins


def test_switch_bin_sizes_and_extraction_windows():
    v = visit()
    assert run(v, airs_bin=1, fgs1_bin=1)["flux"].shape == (N_PAIRS, 283)
    assert run(v, airs_bin=4, fgs1_bin=4)["flux"].shape == (N_PAIRS // 4, 283)
    narrow = run(v, airs_rows=(14, 18), fgs1_box=(14, 18))["flux"][0]
    assert narrow[1] == pytest.approx(100 * 4 * 2, rel=2e-2) and narrow[0] == pytest.approx(100 * 16 * 2, rel=2e-2)


def test_fgs1_centre_of_light_follows_the_pointing():
    grid = np.arange(32)
    shift = np.linspace(-0.5, 0.5, N_PAIRS)
    gx = np.exp(-0.5 * ((grid[None, :] - 15.5 - shift[:, None]) / 2.0) ** 2)
    gy = np.exp(-0.5 * ((grid - 15.5) / 2.0) ** 2)
    image = 1e4 * gy[None, :, None] * gx[:, None, :]
    out = run(visit(fgs_image=image), airs_bin=1, fgs1_bin=1)
    assert np.corrcoef(out["jitter"][:, 0], shift)[0, 1] > 0.99
    assert np.ptp(out["jitter"][:, 1]) < 0.05


def test_airs_crop_keeps_the_282_target_columns():
    assert len(range(356)[AIRS_CROP]) == 282


@pytest.mark.parametrize(
    "changes",
    [{}, {"background_rows": 4, "airs_rows": (8, 24)}, {"background_rows": 2, "fgs1_box": (12, 20), "mask_hot": True}],
)
def test_pixels_read_alone_calibrate_exactly_like_whole_frames(changes):
    rng = np.random.default_rng(5)
    airs_maps, fgs_maps = maps_for(356, dark=rng.uniform(0, 1, (32, 356))), maps_for(32)
    airs_maps["dead"][9, 50] = fgs_maps["dead"][13, 13] = True
    v = visit(
        airs_image=rng.uniform(50, 5000, (N_PAIRS, 32, 356)),
        fgs_image=rng.uniform(50, 5000, (N_PAIRS, 32, 32)),
        airs_maps=airs_maps,
        fgs_maps=fgs_maps,
    )
    opts = dataclasses.replace(BASE, **changes)
    cropped = {}
    for inst, frames in v[0].items():
        rows, cols = cal.pixels(inst, opts)
        cropped[inst] = frames[:, rows][:, :, cols]
    whole, alone = cal.calibrate_visit(*v, opts), cal.calibrate_visit(cropped, *v[1:], opts)
    assert cropped["AIRS-CH0"].shape[1:] == (
        len(range(*opts.airs_rows)) + 2 * opts.background_rows,
        282,
    )
    for key in whole:
        assert np.array_equal(whole[key], alone[key]), key


def test_pixels_leave_out_rows_that_feed_nothing():
    rows, cols = cal.pixels("FGS1", dataclasses.replace(BASE, background_rows=3, fgs1_box=(10, 22)))
    assert list(rows) == [0, 1, 2, *range(10, 22), 29, 30, 31] and list(cols) == list(range(10, 22))
    with pytest.raises(ValueError, match="expected whole frames"):
        cal.calibrate_visit({"AIRS-CH0": np.zeros((4, 5, 5), np.uint16), "FGS1": None}, *visit()[1:], BASE)
