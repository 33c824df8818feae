"""Learned models: each forward(batch) -> (mu, sigma), both (B, bins), sigma > 0 by construction.

- `ResidualNet` corrects the physics baseline's depths and calibrates its sigma from the baseline's
  outputs plus star info (the batch's `baseline_mu`/`baseline_sigma`, from the baseline sidecar; the
  baseline is fitted on the fly when they are absent). Its last layer starts at zero, so an untrained
  net predicts exactly the baseline.
- `CNN1D` and `SpectralTransformer` work end to end on the light curves: a temporal encoder per bin
  (shared weights), then mixing across wavelength (convolutions, or attention over bin tokens).

Constructors take the trainer's `n_time`, `n_bins`, `n_star` and their own sizes; batches hold
flux (B, T, bins), time (B, T), star (B, n_star) as the light-curve dataset yields them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from spectramind.config.settings import Fit
from spectramind.models.fit import PhysicsFit
from spectramind.physics.wavelengths import target_wavelengths_um

# Typical scales of the star-info fields [Rs, Ms, Ts, Mp, e, P, sma, i, ...]: features are
# asinh(value / scale), which keeps every field O(1) without statistics from the data.
_STAR_SCALES = (1.0, 1.0, 5800.0, 1.0, 0.1, 5.0, 10.0, 90.0)
_SOFTPLUS_ONE = math.log(math.e - 1.0)  # softplus(_SOFTPLUS_ONE) == 1
DEPTH_SCALE = 0.01                      # typical transit depth: the unit of the networks' inputs and outputs


def star_features(star: torch.Tensor) -> torch.Tensor:
    scales = torch.ones(star.shape[-1], dtype=star.dtype, device=star.device)
    known = min(len(_STAR_SCALES), star.shape[-1])
    scales[:known] = torch.tensor(_STAR_SCALES[:known], dtype=star.dtype, device=star.device)
    return torch.asinh(torch.nan_to_num(star) / scales)


def positive(raw: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """scale x a positive factor that is 1 when raw is 0 (never below 1e-4 x scale)."""
    return scale * (F.softplus(raw + _SOFTPLUS_ONE) + 1e-4)


def normalised_curves(batch: dict[str, torch.Tensor], n_points: int | None = None) -> torch.Tensor:
    """(B, bins, T') light curves divided by their median over time, minus 1 (transit dips are negative),
    in units of a typical depth; optionally averaged down to `n_points` time points."""
    flux = torch.nan_to_num(batch["flux"].float(), nan=1.0).transpose(1, 2)
    curves = (flux / flux.median(-1, keepdim=True).values.clamp_min(1e-6) - 1.0) / DEPTH_SCALE
    if n_points is not None and curves.shape[-1] != n_points:
        curves = F.adaptive_avg_pool1d(curves, n_points)
    return curves


class ResidualNet(nn.Module):
    """mu = baseline_mu + baseline_sigma x delta; sigma = baseline_sigma x a learned factor (AIRS only with
    `fgs1_from_baseline`: FGS1's are the baseline's).

    Dilated convolutions across wavelength see each bin with its neighbours (a learned, noise-aware
    smoothing: real spectra vary over many bins, the baseline's noise from bin to bin), plus a context
    vector (the spectrum's level and noise scale, the star) added to every position.
    """

    def __init__(self, n_time: int | None, n_bins: int, n_star: int, *, channels: int, layers: int, kernel: int,
                 dropout: float, fgs1_from_baseline: bool, fit: Fit):
        super().__init__()
        self.n_bins = n_bins
        self.fgs1_from_baseline = fgs1_from_baseline
        self.inp = nn.Conv1d(4, channels, 1)
        self.context = nn.Linear(2 + n_star, channels)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv1d(channels, channels, kernel, padding=kernel // 2 * 2**i, dilation=2**i),
                          nn.GELU(), nn.Dropout(dropout))
            for i in range(layers))
        self.head = nn.Conv1d(channels, 2, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        wl = torch.from_numpy(target_wavelengths_um(n_bins)).float()
        self.register_buffer("wavelength", (wl - wl.mean()) / wl.std(), persistent=False)
        self.baseline = PhysicsFit(fit, n_bins=n_bins)  # when a batch carries no precomputed baseline

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        if "baseline_mu" in batch:
            mu0, s0 = batch["baseline_mu"].float(), batch["baseline_sigma"].float()
        else:
            mu0, s0 = self.baseline(batch)
        s0 = s0.clamp_min(1e-7)
        level = mu0[:, 1:].mean(1, keepdim=True)
        unit = s0[:, 1:].median(1, keepdim=True).values
        # Per bin: the spectrum's shape in units of the typical noise and of its own, its relative noise,
        # its wavelength. Per spectrum: level and noise scale, and the star.
        x = torch.stack([(mu0 - level) / unit, ((mu0 - level) / s0).clamp(-50, 50), torch.log(s0 / unit),
                         self.wavelength.expand_as(mu0)], dim=1)
        context = torch.cat([level / DEPTH_SCALE, torch.log(unit / DEPTH_SCALE),
                             star_features(batch["star"].float())], dim=1)
        h = self.inp(x) + self.context(context)[..., None]
        for block in self.blocks:
            h = h + block(h)
        delta, log_factor = self.head(h).unbind(1)
        mu, sigma = mu0 + s0 * delta, positive(log_factor, s0)
        if self.fgs1_from_baseline:
            mu, sigma = (torch.cat([base[:, :1], new[:, 1:]], 1) for base, new in ((mu0, mu), (s0, sigma)))
        return mu, sigma


class _Heads(nn.Module):
    """Per-bin features (B, bins, C) -> mu around DEPTH_SCALE and sigma around DEPTH_SCALE / 10."""

    def __init__(self, channels: int):
        super().__init__()
        self.out = nn.Linear(channels, 2)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, raw = self.out(features).float().unbind(-1)
        return DEPTH_SCALE * (1.0 + mu), positive(raw, DEPTH_SCALE / 10)


class CNN1D(nn.Module):
    """Temporal convolutions per bin (its curve and the white light as two channels), then across bins."""

    def __init__(self, n_time: int | None, n_bins: int, n_star: int, *, channels: int, time_points: int,
                 kernel: int, wavelength_kernel: int, dropout: float):
        super().__init__()
        self.time_points = time_points
        c = channels
        self.temporal = nn.Sequential(
            nn.Conv1d(2, c, kernel, padding=kernel // 2), nn.GELU(), nn.MaxPool1d(2),
            nn.Conv1d(c, c, kernel, padding=kernel // 2), nn.GELU(), nn.MaxPool1d(2),
            nn.Conv1d(c, c, kernel, padding=kernel // 2), nn.GELU())
        self.star = nn.Linear(n_star, 2 * c)
        self.spectral = nn.Sequential(
            nn.Conv1d(2 * c, 2 * c, wavelength_kernel, padding=wavelength_kernel // 2), nn.GELU(),
            nn.Dropout(dropout),
            nn.Conv1d(2 * c, 2 * c, wavelength_kernel, padding=wavelength_kernel // 2), nn.GELU())
        self.heads = _Heads(2 * c)

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        curves = normalised_curves(batch, self.time_points)                    # (B, N, T')
        b, n, t = curves.shape
        white = curves[:, 1:].mean(1, keepdim=True).expand(-1, n, -1)
        x = torch.stack([curves, white], dim=2).reshape(b * n, 2, t)
        h = self.temporal(x)                                                   # (B*N, C, T'')
        h = torch.cat([h.mean(-1), h.amax(-1)], dim=-1).reshape(b, n, -1)      # (B, N, 2C)
        h = h + self.star(star_features(batch["star"].float()))[:, None]
        h = self.spectral(h.transpose(1, 2)).transpose(1, 2)
        return self.heads(h)


class SpectralTransformer(nn.Module):
    """Each bin a token (its down-sampled light curve, embedded), plus a star token; attention across bins."""

    def __init__(self, n_time: int | None, n_bins: int, n_star: int, *, d_model: int, heads: int, layers: int,
                 time_points: int, dropout: float):
        super().__init__()
        self.time_points = time_points
        self.embed = nn.Linear(2 * time_points, d_model)
        self.position = nn.Parameter(torch.zeros(1, n_bins, d_model))
        nn.init.normal_(self.position, std=0.02)
        self.star = nn.Linear(n_star, d_model)
        layer = nn.TransformerEncoderLayer(d_model, heads, 4 * d_model, dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.heads = _Heads(d_model)

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        curves = normalised_curves(batch, self.time_points)                    # (B, N, T')
        white = curves[:, 1:].mean(1, keepdim=True).expand_as(curves)
        tokens = self.embed(torch.cat([curves, white], dim=-1)) + self.position
        star = self.star(star_features(batch["star"].float()))[:, None]
        h = self.encoder(torch.cat([star, tokens], dim=1))[:, 1:]
        return self.heads(self.norm(h))
