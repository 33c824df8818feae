"""Raw reads of one visit to light curves: reference section 3, vectorised, every step a switch.

The hosts' steps (ADC, crop, masks, non-linearity, dark, CDS, time binning, flat, extraction) plus what the
top solutions found to matter: cosmic-ray rejection along time, masked pixels filled from the trace profile,
background from the edge rows, and per-bin jitter estimates. Reads are processed in cache-sized chunks of
frames (vectorised inside each chunk), so a full-size visit stays well under 3 GB.
"""

from __future__ import annotations

import numpy as np

from spectramind.config.settings import Calibrate
from spectramind.data import ariel_format as af

JITTER_COLUMNS = ("fgs1_x", "fgs1_y", "airs_y")
# Time since reset (s) of the (first, second) read of a pair that the dark current is scaled by.
DARK_DT = {
    "hosts": {"AIRS-CH0": (0.1, 4.6), "FGS1": (0.1, 0.2)},
    "since_reset": {"AIRS-CH0": (0.1, 4.7), "FGS1": (0.1, 0.4)},
}
_CHUNK_VALUES = 600_000  # ~2.4 MB of float32 per chunk of reads or CDS frames: repeated passes stay in cache


def calibrate_visit(
    raw: dict[str, np.ndarray],
    maps: dict[str, dict],
    adc: dict[str, float],
    axis: dict[str, np.ndarray],
    opts: Calibrate,
) -> dict[str, np.ndarray]:
    """Light curves of one visit in electrons per time bin (not yet normalised).

    raw: instrument -> uint16 reads, either whole frames (N, 32, W) or only the pixels `pixels(instrument,
    opts)` names (what ariel_format.read_signal returns when given them); maps: instrument -> calibration
    maps (ariel_format). Returns flux (T, 283) and flux_err (T, 283) (FGS1 first, AIRS in target order),
    time (T,) hours, jitter (T, 3) in pixels (JITTER_COLUMNS).
    """
    frames, errs, jitter = {}, {}, {}
    for instrument, bin_size in (("AIRS-CH0", opts.airs_bin), ("FGS1", opts.fgs1_bin)):
        rows, cols = pixels(instrument, opts)
        cal = {k: v[..., cols] for k, v in maps[instrument].items()}
        bad = bad_pixels(cal, opts)[rows]  # hot-pixel statistics come from every row of the cropped map
        cal = {k: v[..., rows, :] for k, v in cal.items()}
        sign_offset = opts.adc_offset_sign * adc[f"{instrument}_adc_offset"]
        cds = correlated_double_samples(
            _select(raw[instrument], instrument, rows, cols),
            cal,
            adc[f"{instrument}_adc_gain"],
            sign_offset,
            DARK_DT[opts.dark_dt][instrument],
            opts,
        )
        if opts.cosmic_sigma > 0:
            cds = reject_cosmic_rays(cds, cal["read"], opts.cosmic_sigma)
        binned = bin_time(cds, bin_size)
        frames[instrument], errs[instrument], jitter[instrument] = extract(
            binned, cal, bad, rows, bin_size, instrument, opts
        )
    n = min(len(frames["AIRS-CH0"]), len(frames["FGS1"]))
    airs_t = axis["AIRS-CH0-axis0-h"]
    pair_t = 0.5 * (airs_t[0::2] + airs_t[1::2])
    time = bin_time(pair_t[: n * opts.airs_bin, None], opts.airs_bin)[:, 0] / opts.airs_bin
    return {
        "flux": np.concatenate([frames["FGS1"][:n], frames["AIRS-CH0"][:n, ::-1]], axis=1),
        "flux_err": np.concatenate([errs["FGS1"][:n], errs["AIRS-CH0"][:n, ::-1]], axis=1),
        "time": time,
        "jitter": np.concatenate([jitter["FGS1"][:n], jitter["AIRS-CH0"][:n]], axis=1),
    }


def pixels(instrument: str, opts: Calibrate) -> tuple[np.ndarray, np.ndarray]:
    """The detector rows and columns calibration uses; no other pixel feeds the flux or the jitter.

    Rows: AIRS's extraction rows or FGS1's box, plus the background's edge rows. Columns: AIRS's 282
    target columns, FGS1's box. With kaggle.yaml's switches that is 59% of AIRS and 23% of FGS1.
    """
    band = opts.airs_rows if instrument == "AIRS-CH0" else opts.fgs1_box
    rows = np.union1d(np.arange(*band), _edge_rows(opts.background_rows))
    columns = np.arange(af.WIDTH[instrument])
    return rows, columns[af.AIRS_CROP] if instrument == "AIRS-CH0" else columns[slice(*opts.fgs1_box)]


def _select(raw: np.ndarray, instrument: str, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    if raw.shape[1:] == (len(rows), len(cols)):
        return raw
    if raw.shape[1:] == (af.ROWS, af.WIDTH[instrument]):
        return raw[:, rows][:, :, cols]
    raise ValueError(f"{instrument} reads of shape {raw.shape[1:]}: expected whole frames or pixels()")


def _edge_rows(n: int) -> np.ndarray:
    return np.r_[0:n, af.ROWS - n : af.ROWS]


def correlated_double_samples(
    raw: np.ndarray, cal: dict, gain: float, offset: float, dark_dt: tuple[float, float], opts: Calibrate
) -> np.ndarray:
    """ADC decode, non-linearity, (flat,) dark and CDS: (N, R, C) uint16 -> (N/2, R, C) float32 e-.

    Every step after the non-linearity is linear per pixel, so it is applied to the CDS frames (half the
    data, one pass): the ADC scale, the flat (before_cds) and the dark difference of the pair's two reads.
    The ADC decode is folded into the non-linearity's coefficients, so raw counts go through one Horner.
    """
    n, rows, w = raw.shape
    # Time-fastest memory, like the reader's: the CDS writes, the cosmic-ray pass and the time binning
    # all run along contiguous memory, and no 0.2 GB transpose happens anywhere.
    cds = np.empty((rows, w, n // 2), dtype=np.float32).transpose(2, 0, 1)
    coef = decoded_polynomial(cal["linear_corr"], 1.0 / gain, offset).astype(np.float32)
    scale = np.float32(1.0) if opts.linearity else np.float32(1.0 / gain)  # the offset cancels in the CDS
    if opts.flat_stage == "before_cds":  # the winner's order: the dark map then meets flat-fielded reads
        scale = scale * _inverse_flat(cal["flat"]).astype(np.float32)
    dark = (cal["dark"] * (dark_dt[1] - dark_dt[0])).astype(np.float32)
    step = max(2, _CHUNK_VALUES // (rows * w) // 2 * 2)  # even: whole CDS pairs per chunk
    for lo in range(0, n, step):
        x = raw[lo : lo + step].astype(np.float32)  # order "K": keeps the reader's layout, compact in memory
        if opts.linearity:
            x = horner(coef, x)
        out = cds[lo // 2 : (lo + len(x)) // 2]
        np.subtract(x[1::2], x[0::2], out=out)
        out *= scale
        out -= dark
    return cds


def decoded_polynomial(linear_corr: np.ndarray, a: float, b: float) -> np.ndarray:
    """Coefficients q (ascending) with sum_k q_k r^k = sum_j c_j (a r + b)^j: decode + correction in one."""
    q = linear_corr[-1:].astype(np.float64)
    for c in linear_corr[-2::-1]:
        shifted = np.zeros((len(q) + 1, *q.shape[1:]))
        shifted[1:] += a * q  # q(r) * (a r + b) + c
        shifted[:-1] += b * q
        shifted[0] += c
        q = shifted
    return q


def horner(coef: np.ndarray, x: np.ndarray) -> np.ndarray:
    """sum_k coef[k] * x**k per pixel, coef (K, 32, W) ascending, x (..., 32, W)."""
    acc = coef[-1] * x
    for c in coef[-2:0:-1]:
        acc += c
        acc *= x
    acc += coef[0]
    return acc


def reject_cosmic_rays(cds: np.ndarray, read: np.ndarray, n_sigma: float) -> np.ndarray:
    """Replace CDS values n_sigma above the mean of their two time neighbours by that mean, in place.

    A hit adds charge to one CDS frame only; comparing with the neighbours (not a global median) keeps
    the transit itself, which moves slowly, from being clipped. The noise of the difference comes from
    the photon + read-noise model: var(x - (a + b)/2) = 1.5 var(x).
    """
    sigma = np.sqrt(1.5 * (np.maximum(cds.mean(0), 0.0) + 2.0 * read.astype(np.float32) ** 2))
    threshold = np.float32(n_sigma) * sigma
    for r in range(cds.shape[1]):  # one detector row at a time: its pixels' time series are contiguous
        block = cds[:, r]
        neighbours = np.empty_like(block)
        np.add(block[:-2], block[2:], out=neighbours[1:-1])
        neighbours[1:-1] *= np.float32(0.5)
        neighbours[0], neighbours[-1] = block[1], block[-2]
        np.copyto(block, neighbours, where=block - neighbours > threshold[r])
    return cds


def bin_time(x: np.ndarray, size: int) -> np.ndarray:
    """Sum consecutive groups of `size` along axis 0 (a trailing partial group is dropped)."""
    n = len(x) // size
    return x[: n * size].reshape(n, size, *x.shape[1:]).sum(1, dtype=np.float64)


def extract(
    binned: np.ndarray, cal: dict, bad: np.ndarray, rows: np.ndarray, bin_size: int, instrument: str, opts: Calibrate
):
    """(T, R, C) binned frames of detector rows `rows` -> flux (T, B), its 1-sigma error (T, B), jitter (T, J).

    AIRS gives one bin per column (B = C) from the extraction rows; FGS1 one bin from its box.
    bad: (R, C) pixels left out of the flux (bad_pixels).
    """
    flat = np.where(bad, 1.0, cal["flat"])
    if opts.flat_stage == "after_binning":
        binned = binned / flat
    # Photon + read noise of each binned pixel, in the flat-fielded units of `binned`.
    var = (np.maximum(binned, 0.0) * flat + bin_size * 2.0 * cal["read"] ** 2) / flat**2
    bg_var = np.zeros((len(binned), binned.shape[2]))
    if opts.background_rows > 0:
        edge = np.searchsorted(rows, _edge_rows(opts.background_rows))
        edge_values = np.where(bad[edge], np.nan, binned[:, edge])
        binned = binned - np.nan_to_num(np.nanmedian(edge_values, axis=1))[:, None, :]
        # The median's own noise (pi/2 x the mean's variance) is shared by every pixel of the column.
        n_edge = np.maximum((~bad[edge]).sum(0), 1)
        bg_var = np.pi / 2 * np.nan_to_num(np.nanmean(np.where(bad[edge], np.nan, var[:, edge]), axis=1)) / n_edge
    if instrument == "AIRS-CH0":
        band = np.searchsorted(rows, np.arange(*opts.airs_rows))
        frames, var, bad = binned[:, band], var[:, band], bad[band]  # (T, R, W): pixels along axis 1
        bg_var = (~bad).sum(0) ** 2 * bg_var
        positions = rows[band][:, None].astype(np.float64)
    else:
        band = np.searchsorted(rows, np.arange(*opts.fgs1_box))  # the columns are the box's already
        bg_var = ((~bad[band]).sum(0) ** 2 * bg_var).sum(1, keepdims=True)
        frames = binned[:, band].reshape(len(binned), -1, 1)
        var = var[:, band].reshape(len(binned), -1, 1)
        bad = bad[band].reshape(-1, 1)
        box = slice(*opts.fgs1_box)
        yy, xx = np.mgrid[box, box]
        positions = np.stack([xx.ravel(), yy.ravel()], axis=1).astype(np.float64)
    good = ~bad
    scale = np.ones(frames.shape[2])
    if opts.fill_masked:
        # Masked pixels take the column's flux times their share of the time-median profile.
        profile = np.clip(np.median(frames, axis=0), 0.0, None)
        total = profile.sum(0)
        scale = np.where(good.any(0), total / np.maximum((profile * good).sum(0), 1e-12), 1.0)
    flux = (frames * good).sum(1) * scale
    err = np.sqrt((var * good).sum(1) + bg_var) * scale
    weights = np.clip(frames * good, 0.0, None)
    if instrument == "AIRS-CH0":
        centre = (weights * positions).sum((1, 2)) / np.maximum(weights.sum((1, 2)), 1e-12)
        jitter = centre[:, None]
    else:
        w2 = weights[:, :, 0]
        jitter = w2 @ positions / np.maximum(w2.sum(1, keepdims=True), 1e-12)
    return flux, err, jitter


def bad_pixels(cal: dict, opts: Calibrate) -> np.ndarray:
    """Dead pixels, pixels without a positive flat, and (mask_hot) hot pixels of the maps given."""
    bad = cal["dead"] | (cal["flat"] <= 0)
    if opts.mask_hot:
        bad = bad | hot_pixels(cal["dark"], opts.hot_sigma)
    return bad


def hot_pixels(dark: np.ndarray, n_sigma: float) -> np.ndarray:
    """Pixels whose dark current lies n_sigma above the sigma-clipped mean of the map."""
    values = dark.ravel()
    keep = np.ones(values.shape, dtype=bool)
    for _ in range(5):  # iterated clipping converges in a few passes
        mean, std = values[keep].mean(), values[keep].std()
        new = np.abs(values - mean) <= n_sigma * std
        if (new == keep).all():
            break
        keep = new
    return dark > mean + n_sigma * std


def _inverse_flat(flat: np.ndarray) -> np.ndarray:
    return np.where(flat > 0, 1.0 / np.where(flat > 0, flat, 1.0), 1.0)


def transit_duration_h(period_days: float, sma: float, inc_deg: float, rp: float = 0.15) -> float:
    """First-to-fourth-contact duration (h) of a circular orbit; rp is a generous planet radius."""
    b = sma * np.cos(np.radians(inc_deg))
    chord = np.sqrt(max((1 + rp) ** 2 - b * b, 0.0)) / (sma * np.sin(np.radians(inc_deg)))
    return float(24.0 * period_days / np.pi * np.arcsin(min(1.0, chord)))


def out_of_transit(time: np.ndarray, flux: np.ndarray, duration_h: float) -> tuple[np.ndarray, float]:
    """Mask of time bins clear of the transit, and the transit centre (h) found by a box search.

    The centre minimises the mean white-light flux (AIRS bins summed) inside a window of the expected
    duration; bins farther than half a duration plus a margin from it are out of transit. If fewer than
    three remain (a transit longer than the visit), the first and last fifth of the visit are used.
    """
    white = flux[:, 1:].sum(1)
    inside = np.abs(time[None, :] - time[:, None]) < duration_h / 2  # (centre, bin)
    means = (inside * white).sum(1) / np.maximum(inside.sum(1), 1)
    t0 = float(time[np.argmin(means)])
    step = float(np.median(np.diff(time))) if len(time) > 1 else 0.0
    oot = np.abs(time - t0) > duration_h / 2 + 0.1 * duration_h + step
    if oot.sum() < 3:
        edge = max(1, len(time) // 5)
        oot = np.zeros(len(time), dtype=bool)
        oot[:edge] = oot[-edge:] = True
    return oot, t0
