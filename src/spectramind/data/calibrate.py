"""Raw reads of one visit to light curves: reference section 3, vectorised, every step a switch.

The hosts' steps (ADC, crop, masks, non-linearity, dark, CDS, time binning, flat, extraction) plus what the
top solutions found to matter: cosmic-ray rejection along time, a background from the edge rows, optimal
(profile-weighted) extraction with masked pixels filled from the trace profile, and per-bin jitter and PSF
shape estimates. Defaults are judged on the real sample's reads (tests/test_data_calibrate_real.py). Reads
are processed in cache-sized chunks of frames (vectorised inside each chunk), so a full-size visit stays
well under 3 GB.
"""

from __future__ import annotations

import numpy as np

from spectramind.config.settings import Calibrate
from spectramind.data import ariel_format as af

JITTER_COLUMNS = ("fgs1_x", "fgs1_y", "airs_y")  # centroids (pixels)
# With jitter_shape: the AIRS spectral shift (pixels along the dispersion) and the PSF widths (pixels, the
# root of the second moment: AIRS across the trace, FGS1 radial). Each moves light between pixels that the
# flat field and the extraction weigh differently, so each leaves its own imprint on the light curves.
SHAPE_COLUMNS = ("airs_x", "airs_width", "fgs1_width")
# Time since reset (s) of the (first, second) read of a pair that the dark current is scaled by.
DARK_DT = {
    "hosts": {"AIRS-CH0": (0.1, 4.6), "FGS1": (0.1, 0.2)},
    "since_reset": {"AIRS-CH0": (0.1, 4.7), "FGS1": (0.1, 0.4)},
}
_CHUNK_VALUES = 600_000  # ~2.4 MB of float32 per chunk of reads or CDS frames: repeated passes stay in cache
_SCATTER_SAMPLES = 512  # times per pixel the cosmic-ray pass measures the pixel's scatter on


def calibrate_visit(
    raw: dict[str, np.ndarray],
    maps: dict[str, dict],
    adc: dict[str, float],
    axis: dict[str, np.ndarray],
    opts: Calibrate,
) -> dict:
    """Light curves of one visit in electrons per time bin (not yet normalised).

    raw: instrument -> uint16 reads, either whole frames (N, 32, W) or only the pixels `pixels(instrument,
    opts)` names (what ariel_format.read_signal returns when given them); maps: instrument -> calibration
    maps (ariel_format). Returns flux (T, 283) and flux_err (T, 283) (FGS1 first, AIRS in target order),
    time (T,) hours, jitter (T, J) in pixels (columns `jitter_columns(opts)`), cosmic_replaced:
    instrument -> how many CDS values the cosmic-ray pass replaced, and wing_share: instrument -> the
    share of the background rows' level that followed the star and was kept (`wing_share`).
    """
    frames, errs, jitter, replaced, wings = {}, {}, {}, {}, {}
    for instrument, bin_size in (("AIRS-CH0", opts.airs_bin), ("FGS1", opts.fgs1_bin)):
        rows, cols = pixels(instrument, opts)
        cal = {k: v[..., cols] for k, v in maps[instrument].items()}
        bad = bad_pixels(cal, opts)[rows]  # hot-pixel statistics come from every row of the cropped map
        cal = {k: v[..., rows, :] for k, v in cal.items()}
        sign_offset = opts.adc_offset_sign * adc[f"{instrument}_adc_offset"]
        dark_dt = DARK_DT[opts.dark_dt][instrument]
        cds = correlated_double_samples(
            _select(raw[instrument], instrument, rows, cols),
            cal,
            adc[f"{instrument}_adc_gain"],
            sign_offset,
            dark_dt,
            opts,
        )
        replaced[instrument] = reject_cosmic_rays(cds, cal["read"], opts.cosmic_sigma) if opts.cosmic_sigma > 0 else 0
        binned = bin_time(cds, bin_size)
        dark_counts = bin_size * np.clip(cal["dark"], 0.0, None) * (dark_dt[1] - dark_dt[0])
        frames[instrument], errs[instrument], jitter[instrument], wings[instrument] = extract(
            binned, cal, bad, rows, bin_size * 2.0 * cal["read"] ** 2 + dark_counts, instrument, opts
        )
    n = min(len(frames["AIRS-CH0"]), len(frames["FGS1"]))
    airs_t = axis["AIRS-CH0-axis0-h"]
    pair_t = 0.5 * (airs_t[0::2] + airs_t[1::2])
    time = bin_time(pair_t[: n * opts.airs_bin, None], opts.airs_bin)[:, 0] / opts.airs_bin
    regressors = {**jitter["FGS1"], **jitter["AIRS-CH0"]}
    return {
        "flux": np.concatenate([frames["FGS1"][:n], frames["AIRS-CH0"][:n, ::-1]], axis=1),
        "flux_err": np.concatenate([errs["FGS1"][:n], errs["AIRS-CH0"][:n, ::-1]], axis=1),
        "time": time,
        "jitter": np.stack([regressors[name][:n] for name in jitter_columns(opts)], axis=1),
        "cosmic_replaced": replaced,
        "wing_share": wings,
    }


def jitter_columns(opts: Calibrate) -> tuple[str, ...]:
    """The names of the jitter regressors calibrate_visit returns, in order."""
    return JITTER_COLUMNS + (SHAPE_COLUMNS if opts.jitter_shape else ())


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


_LIT = 0.05  # the pixels whose share of a bin's light is this fraction of the bin's brightest pixel's or more:
             # the moments' window (2.4 sigma of a Gaussian trace on each side)


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


def reject_cosmic_rays(cds: np.ndarray, read: np.ndarray, n_sigma: float) -> int:
    """Replace CDS values that stand n_sigma out of their running trend by the trend, in place; returns
    how many.

    The trend of a frame is the median of its four time neighbours (the frame itself left out, so a hit
    never sets its own yardstick, and one hit among the neighbours does not move it). Each pixel is judged
    by its own measured scatter about that trend (a robust MAD), not by a photon-noise model: pointing
    jitter moves PSF-core pixels far beyond Poisson, and a model threshold clipped them (~3 % of FGS1's
    aperture flux on the real reads). The photon + read noise (read: (R, C) e- per read) is only a floor,
    for series too short for their MAD to be sure. Two-sided, and a candidate is confirmed only if it is sharp in
    space too: its excess more than twice that of each of its 8 neighbours. A hit lands on one pixel; a
    jitter or focus excursion moves a whole patch of the PSF (on the real reads a core pixel's 5-sigma
    excursion comes with neighbours at half its size).
    """
    n = len(cds)
    if n < 5:  # the trend needs four neighbours besides the frame judged
        return 0
    series = np.moveaxis(cds, 0, -1)  # (R, C, N) view: each pixel's series is contiguous in the CDS layout
    step = max(1, _CHUNK_VALUES // n)
    sample = slice(None, None, max(1, n // _SCATTER_SAMPLES))
    work = np.empty((3, step, n), np.float32)  # trend, residual, |residual|: reused, never reallocated
    hot = np.empty((step, n), bool)
    found = []  # (row, column, time, residual, trend) of each candidate
    for r in range(series.shape[0]):
        for lo in range(0, series.shape[1], step):
            block = series[r, lo : lo + step]  # (pixels, N)
            trend, residual, size = work[0, : len(block)], work[1, : len(block)], work[2, : len(block)]
            _trend(block, trend, residual, size)
            np.subtract(block, trend, out=residual)
            np.abs(residual, out=size)
            # The MAD of ~500 values pins a pixel's scatter to ~6 %; more would only cost time. The residual
            # about a median of four has 1.3 x the value's own variance.
            scale = np.median(size[:, sample], axis=1) * 1.4826
            floor = 1.3 * (np.maximum(block[:, sample].mean(1), 0.0) + 2.0 * read[r, lo : lo + step] ** 2)
            threshold = np.float32(n_sigma) * np.maximum(scale, np.sqrt(floor)).astype(np.float32)
            np.greater(size, threshold[:, None], out=hot[: len(block)])
            c, t = np.divmod(np.flatnonzero(hot[: len(block)]), n)  # 1-D: ~3x faster than a 2-D nonzero
            found.append((np.full(len(c), r), c + lo, t, residual[c, t], trend[c, t]))
    r, c, t, residual, trend = (np.concatenate(x) for x in zip(*found, strict=True))
    neighbour = np.zeros(len(r))  # the largest same-signed residual among the 8 neighbours
    for dr, dc in [(dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1) if dr or dc]:
        rr, cc = r + dr, c + dc
        inside = (rr >= 0) & (rr < series.shape[0]) & (cc >= 0) & (cc < series.shape[1])
        rr, cc, tt = rr[inside], cc[inside], t[inside]
        near = series[rr, cc, tt] - _median4(*(series[rr, cc, _reflect(tt + k, n)] for k in (-2, -1, 1, 2)))
        neighbour[inside] = np.maximum(neighbour[inside], np.sign(residual[inside]) * near)
    hit = np.abs(residual) > 2.0 * neighbour
    series[r[hit], c[hit], t[hit]] = trend[hit]
    return int(hit.sum())


def _trend(x: np.ndarray, out: np.ndarray, *scratch: np.ndarray) -> None:
    """out (P, N) = per time, the median of x's values 2 and 1 before and 1 and 2 after (reflected at the
    ends). Slices of x itself, no padded copy: at full size the pass is memory-bound."""
    n = x.shape[1]
    _median4(x[:, : n - 4], x[:, 1 : n - 3], x[:, 3 : n - 1], x[:, 4:], out[:, 2 : n - 2],
             *(s[:, 2 : n - 2] for s in scratch))
    ends = np.r_[0, 1, n - 2, n - 1]
    out[:, ends] = _median4(*(x[:, _reflect(ends + k, n)] for k in (-2, -1, 1, 2)))


def _median4(a, b, c, d, out=None, s1=None, s2=None):
    """Elementwise median of four arrays: the mean of the middle two, i.e. of the larger of the pair minima
    and the smaller of the pair maxima (out, s1, s2: optional buffers, so no temporary is allocated)."""
    out = np.minimum(a, b, out=out)
    s1 = np.minimum(c, d, out=s1)
    np.maximum(out, s1, out=out)
    s1 = np.maximum(a, b, out=s1)
    s2 = np.maximum(c, d, out=s2)
    np.minimum(s1, s2, out=s1)
    out += s1
    out *= np.float32(0.5)
    return out


def _reflect(t: np.ndarray, n: int) -> np.ndarray:
    """Indices reflected into [0, n): -1 -> 1, n -> n - 2."""
    return n - 1 - np.abs(n - 1 - np.abs(t))


def bin_time(x: np.ndarray, size: int) -> np.ndarray:
    """Sum consecutive groups of `size` along axis 0 (a trailing partial group is dropped)."""
    n = len(x) // size
    return x[: n * size].reshape(n, size, *x.shape[1:]).sum(1, dtype=np.float64)


def extract(
    binned: np.ndarray,
    cal: dict,
    bad: np.ndarray,
    rows: np.ndarray,
    noise_floor: np.ndarray,
    instrument: str,
    opts: Calibrate,
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], float]:
    """(T, R, C) binned frames of detector rows `rows` -> flux (T, B), its 1-sigma error (T, B), this
    instrument's jitter regressors {name: (T,)} and the share of the edge level kept as the star's
    (wing_share; 0 without background rows or with background_wings off).

    AIRS gives one bin per column (B = C) from the extraction rows; FGS1 one bin from its box.
    bad: (R, C) pixels left out (bad_pixels); noise_floor: (R, C) variance per binned pixel (e-^2) that is
    not the light's: the read noise of both reads and the dark current's shot noise.
    """
    flat = np.where(bad, 1.0, cal["flat"])
    if opts.flat_stage == "after_binning":
        binned = binned / flat
    level = np.zeros((1, 1, binned.shape[2]))
    level_var = np.zeros((1, 1, binned.shape[2]))
    band = np.searchsorted(rows, np.arange(*(opts.airs_rows if instrument == "AIRS-CH0" else opts.fgs1_box)))
    wings = 0.0
    if opts.background_rows > 0:
        edge = np.searchsorted(rows, _edge_rows(opts.background_rows))
        level, level_var = background(binned[:, edge], bad[edge], flat[edge], noise_floor[edge],
                                      opts.background_window)
        if opts.background_wings:
            wings = wing_share(binned[:, edge], bad[edge], binned[:, band], bad[band])
            level, level_var = level * (1.0 - wings), level_var * (1.0 - wings) ** 2
        binned = binned - level
    shape = (len(band), binned.shape[2])  # FGS1: the box's rows x columns

    def layout(x):  # (T, R, C) of the band -> (T, P, B): the pixels of one bin's profile along axis 1
        x = np.broadcast_to(x, (x.shape[0], *shape))
        return x if instrument == "AIRS-CH0" else x.reshape(len(x), -1, 1)

    frames, good = layout(binned[:, band]), ~layout(bad[band][None])[0]
    sky = layout(level)  # what was subtracted: its photons are noise too
    sky_sd = np.sqrt(layout(level_var))
    flat, floor = layout(flat[band][None])[0], layout(noise_floor[band][None])[0] / layout(flat[band][None])[0] ** 2
    if instrument == "AIRS-CH0":
        coords = (np.asarray(rows[band], np.float64)[:, None],)  # across the trace
    else:
        yy, xx = np.mgrid[: shape[0], : shape[1]] + opts.fgs1_box[0]
        coords = (xx.reshape(-1, 1).astype(np.float64), yy.reshape(-1, 1).astype(np.float64))
    profile = trace_profile(frames, good, shape, instrument, opts.profile_smooth)
    lit = good & (profile > _LIT * profile.max(0, keepdims=True))
    moments = [_moments(frames, lit, c) for c in coords]  # [(centre, variance) (T, B)] per axis
    # The bins' moments are averaged with the bins' light over the whole visit as weights: weights that
    # followed each time bin's spectrum would move with the transit's own chromatic depth (the PSF widens
    # and the trace bends with wavelength); a bin with a twentieth of the typical light or less has moments
    # of noise and no weight.
    share = np.clip(np.where(good, frames, 0.0).sum(1).mean(0), 0.0, None)
    share = np.where(share > 0.05 * np.median(share), share, 0.0)
    share = share / max(share.sum(), 1e-12)
    masked = ~good.all(0)  # bins with a masked pixel: their profile follows the pointing
    if not (opts.fill_masked or opts.extraction == "optimal"):
        masked[:] = False
    flux, err = np.zeros((2, len(frames), len(masked)))
    if not masked.all():  # (FGS1's one bin has a masked pixel on the real maps: no static pass then)
        flux, err = _extract_flux(frames, good, profile, sky, sky_sd, flat, floor, opts)
    if masked.any():
        offsets = np.stack([centre @ share for centre, _ in moments], axis=1)  # (T, K): one pointing per bin
        offsets -= offsets.mean(0)
        slopes = profile_slopes(frames, good, profile, offsets, shape, instrument, opts.profile_smooth)
        moved = np.clip(profile[:, masked] + np.tensordot(offsets, slopes[:, :, masked], axes=(1, 0)), 0.0, None)
        moved /= np.maximum(moved.sum(1, keepdims=True), 1e-12)
        pick = (slice(None), slice(None), masked)
        flux[:, masked], err[:, masked] = _extract_flux(
            frames[pick], good[:, masked], moved, sky[pick], sky_sd[pick], flat[:, masked], floor[:, masked], opts
        )
    return flux, err, _regressors(flux, err, moments, share, instrument, opts), wings


def wing_share(edge: np.ndarray, bad_edge: np.ndarray, band: np.ndarray, bad_band: np.ndarray) -> float:
    """The share of the edge rows' level that is the star's own light (its PSF's wings), in [0, 1]: how
    much of it follows the band's light through the visit (the transit, the drift, the pointing).

    The edge rows (T, E, C) hold a sky that does not dim with the star and the wings that do: on the real
    mean frame the outer rows hold ~0.09% of their column's light each, ~1.4% of a column's light over
    AIRS's 16 extraction rows. Subtracting all of it from the band is a constant taken from a dimming
    star: every depth comes out too deep by that share (+1.35% on the simulator's full-size visits). The
    wing light in the band belongs to the star and stays; only the rest is subtracted. One share per
    instrument and visit (a least-squares slope of the edge rows' summed level on the band's relative light,
    beside a level and a linear trend in time that a drifting sky may have); the columns' individual
    shares are too noisy to measure.
    """
    light = np.where(bad_band, 0.0, band).sum((1, 2))                  # (T,) the band's light
    n_good = np.maximum((~bad_edge).sum(0), 1)
    level = (np.where(bad_edge, 0.0, edge).sum(1) / n_good).sum(1)   # (T,) the columns' edge levels, summed
    if len(light) < 10 or not np.mean(light) > 0:  # too few time bins to tell a slope from noise
        return 0.0
    x = np.linspace(-1.0, 1.0, len(light))
    design = np.stack([level.mean() * (light / light.mean() - 1.0), np.ones_like(x), x], axis=1)
    coef, rss, rank, _ = np.linalg.lstsq(design, level, rcond=None)
    if rank < 3:  # a star that never changes: nothing tells its light from the sky's
        return 0.0
    var = float(rss[0]) / (len(light) - 3) * np.linalg.inv(design.T @ design)[0, 0]
    # The posterior mean under a N(0, 1) prior (all subtracted, give or take the whole range): a star
    # whose light barely changes has a slope of noise (var >> 1), and keeps none.
    return float(np.clip(np.nan_to_num(coef[0] / (1.0 + var)), 0.0, 1.0))


def _extract_flux(frames, good, profile, sky, sky_sd, flat, floor, opts: Calibrate):
    """Flux (T, B) and its 1-sigma error of frames (T, P, B), the good pixels (P, B) weighed by the profile
    ((P, B), or (T, P, B) per bin): Horne's (1986) optimal weights, or the box sum (filled: divided by
    the share of the light the good pixels see)."""
    share = np.broadcast_to(profile, frames.shape)
    seen = np.broadcast_to(np.where(good, profile, 0.0).sum(-2), (len(frames), frames.shape[2]))  # (T, B)
    box = np.where(good, frames, 0.0).sum(1)
    if opts.extraction == "box":
        den = np.maximum(seen, 1e-12) if opts.fill_masked else 1.0
        var = np.where(good, _pixel_variance(frames + sky, flat, floor), 0.0).sum(1)
        # The background level is shared by a column's pixels: its error adds coherently (exact for AIRS,
        # an upper bound for FGS1's twelve columns).
        return box / den, np.sqrt(var + np.where(good, sky_sd, 0.0).sum(1) ** 2) / den
    # V from the model flux x profile, not from the data: a weight from the data itself would favour low
    # values and bias the flux down. And from the visit's mean flux, not each time bin's: the profile is
    # an estimate, so the extracted flux is the true one times a factor that depends on the weights, and
    # weights that brighten their sky-limited wings in transit make that factor follow the transit (a
    # median 1.0% per bin under a PSF the smoothed profile misses). The error is sum(w^2 V(t)) / sum(w P)^2,
    # plus the background's.
    flux = box / np.maximum(seen, 1e-12)
    weight = _pixel_variance(flux.mean(0)[None, None, :] * share + sky.mean(0, keepdims=True), flat, floor)
    np.divide(np.where(good, share, 0.0), weight, out=weight)
    den = np.maximum((weight * share).sum(1), 1e-300)
    var = (weight**2 * _pixel_variance(flux[:, None, :] * share + sky, flat, floor)).sum(1) / den**2
    return (weight * frames).sum(1) / den, np.sqrt(var + ((weight * sky_sd).sum(1) / den) ** 2)


def _pixel_variance(signal: np.ndarray, flat: np.ndarray, floor: np.ndarray) -> np.ndarray:
    """Photon + floor variance of flat-fielded pixels: the photons counted are signal x flat."""
    var = np.maximum(signal, 0.0)  # one array, updated in place: at 1,125 bins each temporary is 40 MB
    var /= flat
    var += floor
    return var


def background(values: np.ndarray, bad: np.ndarray, flat: np.ndarray, noise_floor: np.ndarray, window: int):
    """Background level of each column from its edge pixels `values` (T, E, C): each edge pixel's mean over
    a running window of `window` time bins (0: the whole visit), then the median over the column's good
    edge pixels. Returns the level and its variance per time bin, each (T or 1, 1, C).

    A level per time bin (a median of 8 pixels) adds its own noise to every bin: on the real reads ~5e5 e^2
    per column per 144-s bin, 1.6 x the photon + read sigma at the red end. The background moves far
    slower than a bin, so averaging it over time costs nothing and takes that noise away.
    """
    t = len(values)
    span = t if window <= 0 else min(window, t)
    if span == t:
        means = values.mean(0, keepdims=True)
    else:
        csum = np.concatenate([np.zeros((1, *values.shape[1:])), np.cumsum(values, axis=0)])
        lo = np.clip(np.arange(t) - span // 2, 0, t - span)  # centred, shifted inwards at the ends
        means = (csum[lo + span] - csum[lo]) / span
    level = np.nan_to_num(np.nanmedian(np.where(bad, np.nan, means), axis=1))[:, None, :]
    n_good = np.maximum((~bad).sum(0), 1)
    mean_var = np.where(bad, 0.0, _pixel_variance(values, flat, noise_floor / flat**2)).sum(1) / n_good
    var = np.pi / 2 * mean_var / (n_good * span)  # a median's variance is pi/2 x the mean's
    return level, (var.mean(0, keepdims=True) if span == t else var)[:, None, :]


def _moments(frames: np.ndarray, lit: np.ndarray, coord: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centre and variance (T, B) of the light along `coord` (P, 1), over the pixels `lit` (P, B).

    Only where the trace has light: a pixel of the wings reads the sky's noise, whose weight (signed, or
    clipped at zero) does not dim with the star, and the moments would move with the transit (the fit's
    jitter terms would then take part of the depth)."""
    w = np.where(lit, frames, 0.0)
    total = w.sum(1)
    total = np.where(np.abs(total) > 1e-12, total, 1e-12)
    centre = (w * coord).sum(1) / total
    spread = np.clip((w * (coord - centre[:, None, :]) ** 2).sum(1) / total, 0.0, None)
    return centre, spread


def trace_profile(frames: np.ndarray, good: np.ndarray, shape: tuple[int, int], instrument: str, smooth: int):
    """(P, B) fraction of a bin's light in each pixel, from the visit's own frames (T, P, B).

    Each frame is divided by its bin's flux and the results are averaged over time; masked pixels take
    the mean of their neighbours (_fill). Twice: the first pass's flux, from good pixels alone, is scaled
    by the share of light they see, which the second pass knows.
    """
    profile = np.where(good, 1.0, 0.0) / np.maximum(good.sum(0), 1)
    for _ in range(2):
        profile = _fill(_normalised(frames, good, profile).mean(0), good, shape, instrument, smooth)
        profile = np.clip(profile, 0.0, None)
        profile = profile / np.maximum(profile.sum(0), 1e-12)
    return profile


def _normalised(frames: np.ndarray, good: np.ndarray, profile: np.ndarray) -> np.ndarray:
    """frames (T, P, B) divided by each bin's flux as the good pixels and the (P, B) profile tell it."""
    flux = (frames * good).sum(1) / np.maximum((profile * good).sum(0), 1e-12)  # (T, B)
    return frames / np.where(flux > 0, flux, np.inf)[:, None, :]


def _fill(values: np.ndarray, good: np.ndarray, shape: tuple[int, int], instrument: str, smooth: int):
    """(P, B) per-pixel values with the masked ones (and, for AIRS, all) replaced by neighbour means.

    AIRS: the same row's `smooth` nearest columns, where the trace is smooth along the dispersion; FGS1:
    masked pixels only, from their 3 x 3 neighbours (its PSF is not smooth at the pixel scale).
    """
    measured = np.where(good, values, np.nan)
    if instrument == "AIRS-CH0":
        return np.nan_to_num(_nan_box_mean(measured, (1, smooth)))
    image = measured.reshape(shape)
    return np.nan_to_num(np.where(np.isnan(image), _nan_box_mean(image, (3, 3)), image)).reshape(-1, 1)


def _nan_box_mean(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Mean of the non-NaN values in a centred (rows, columns) box around each element (NaN where none)."""
    values, counts = np.nan_to_num(x), (~np.isnan(x)).astype(np.float64)
    for axis, k in enumerate(size):
        kernel = np.ones(k)
        values = np.apply_along_axis(np.convolve, axis, values, kernel, "same")
        counts = np.apply_along_axis(np.convolve, axis, counts, kernel, "same")
    return np.where(counts > 0, values / np.maximum(counts, 1e-12), np.nan)


def profile_slopes(frames, good, profile, offsets: np.ndarray, shape, instrument: str, smooth: int) -> np.ndarray:
    """(K, P, B) how each pixel's share of the light moves per pixel of pointing offset (T, K, centred).

    Filling a masked pixel from the static profile scales the whole light curve by one constant (which the
    out-of-transit normalisation cancels); the profile moved with the pointing restores, bin by bin, the
    light that jitter moves onto and off a masked pixel. The response is measured (least squares over the
    visit's bins, masked pixels filled like the profile), not differentiated: a finite difference across
    a 3-row trace is off by ~20 %.
    """
    residual = _normalised(frames, good, profile) - profile
    slopes = np.linalg.pinv(offsets) @ residual.reshape(len(residual), -1)  # (K, P * B)
    return np.stack([_fill(k.reshape(profile.shape), good, shape, instrument, smooth) for k in slopes])


def _regressors(flux, err, moments, share, instrument: str, opts: Calibrate) -> dict[str, np.ndarray]:
    """Pointing and PSF-shape estimates per time bin (pixels), named as in JITTER_COLUMNS / SHAPE_COLUMNS."""
    if instrument == "FGS1":
        (cx, vx), (cy, vy) = moments
        out = {"fgs1_x": cx[:, 0], "fgs1_y": cy[:, 0]}
        return {**out, "fgs1_width": np.sqrt(vx + vy)[:, 0]} if opts.jitter_shape else out
    [(centre, spread)] = moments
    out = {"airs_y": centre @ share}
    if not opts.jitter_shape:
        return out
    return {**out, "airs_x": spectral_shift(flux, err), "airs_width": np.sqrt(spread @ share)}


def spectral_shift(flux: np.ndarray, err: np.ndarray) -> np.ndarray:
    """(T,) shift (pixels, towards higher columns) of each bin's spectrum (T, C) against the visit's mean.

    The peak of the cross-correlation to first order: the least-squares coefficient of the mean spectrum's
    slope in each bin's relative spectrum, with a quadratic in wavelength fitted beside it so that a
    smooth colour change (the transit depth's own spectrum, a chromatic drift) is not read as a shift.
    """
    mean = flux.mean(0)
    slope = np.gradient(mean) / np.where(mean > 0, mean, np.inf)
    u = np.linspace(-1.0, 1.0, flux.shape[1])
    basis = np.stack([np.ones_like(u), u, u * u, slope], axis=1)  # (C, 4)
    w = np.where(mean > 0, mean, 0.0) / np.maximum(err.mean(0), 1e-12)  # 1 / noise of the relative flux
    relative = flux / np.where(mean > 0, mean, np.inf) - 1.0
    coef, *_ = np.linalg.lstsq(basis * w[:, None], (relative * w).T, rcond=None)
    return -coef[3]  # m(c - d) ~ m - d m'


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
