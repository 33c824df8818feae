"""The physics baseline: one joint model per visit, both instruments at once; no training.

    F_n(t) = c_n [1 + s_n(t)] T(t; D_n, u1(lambda_n), u2(lambda_n), t0, a/Rs, i)

- c_n, a free level per bin (the star's spectrum seen through the instrument);
- s_n(t), the systematics, linear in their coefficients: a smooth surface in time and wavelength
  (Legendre polynomials of degree 1..K in time times powers 0..L of the normalised AIRS wavelength, which
  holds the gain drift f(t) g(lambda) and its cross terms) plus the standardised pointing-jitter estimates
  with a free coefficient per bin (or, by the config, coefficients smooth in wavelength); FGS1 has its own
  drift polynomial and jitter terms, the squares of its centroid offsets among them;
- T, the quadratic limb-darkened transit: t0 per instrument, a/Rs and i with Gaussian priors on the star
  info, u1 and u2 linear in wavelength across AIRS (their values at the two ends are fitted, each pair
  kept inside the physical triangle) with FGS1's own pair, and one depth D_n = (Rp/Rs)^2 per bin.

Levenberg-Marquardt over all of it, in torch, vectorised over visits and bins. The Jacobian has L columns
per bin (D_n, c_n and the bin's jitter coefficients) and a few dozen shared ones, so the normal equations
are solved through the Schur complement of the bins' L x L blocks: exact, and O(N P^2) rather than
O((L N + P)^3). Derivatives:
the limb darkening's exactly (the occulted flux is linear in `occultation_basis`), the depth's and the
sky separation's by forward differences, the orbit's by the chain rule through z.

Sigma is the posterior standard deviation of D_n with every shared parameter marginalised (the Schur
term), scaled by sqrt(reduced chi^2) and a red-noise factor of the residuals (the shared part by the
white light's, FGS1's by FGS1's own). A visit the fit should not be trusted on gets a reason in REASONS
and a widened sigma: being unsure costs a little, being wrong and sure costs the whole score.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from spectramind.config.settings import Fit
from spectramind.data.calibrate import JITTER_COLUMNS
from spectramind.physics.transit import (
    occultation_basis,
    occulted_fraction,
    quadratic_ld_coefficients,
    transit_flux,
)
from spectramind.physics.wavelengths import target_wavelengths_um

# Indices into the per-visit star vector [Rs, Ms, Ts, Mp, e, P, sma, i].
TS, PERIOD, SMA, INC = 2, 5, 6, 7
# Why a visit's sigma was widened: the flags `fit` returns, in this order.
REASONS = ("no_transit", "t0_at_edge", "not_converged", "poor_chi2", "ld_at_bound", "fgs1_vs_airs")
HARD = 3  # the first three make the depths unusable (failed_sigma_*); poor_chi2, ld_at_bound make them less
          # certain (soft_sigma_factor); fgs1_vs_airs widens FGS1 alone
_DEPTH_RANGE = (1e-8, 0.25)  # (Rp/Rs)^2: the transit model needs 0 < Rp/Rs < 1
_H_Z, _H_P = 1e-6, 1e-7      # forward-difference steps in z and Rp/Rs (stellar radii)
_SETTLED = 1e-3             # chi^2 change below which the fit has settled
_P_NODES = 16                # Chebyshev nodes in Rp/Rs the AIRS bins' transit is interpolated from
# Shared parameters, in order: t0 FGS1, t0 AIRS (h), a/Rs, b^2 (the squared impact parameter: z is linear
# in it, so a central transit, where z is flat in b and i, still has a gradient), FGS1 (u1, u2), AIRS
# (u1, u2) at the blue and the red end; then the systematics' coefficients.
T0_F, T0_A, A_RS, B2, U_FGS1, U_AIRS, N_TRANSIT = 0, 1, 2, 3, 4, 6, 10
# FGS1's centroids among a store's jitter columns (every store's columns begin with JITTER_COLUMNS).
_FGS1_CENTROIDS = [JITTER_COLUMNS.index("fgs1_x"), JITTER_COLUMNS.index("fgs1_y")]


class PhysicsFit(nn.Module):
    """forward(batch) -> (mu, sigma), each (visits, bins); `fit(batch)` also returns the diagnostics."""

    TARGET = "spectramind.models.fit.PhysicsFit"

    def __init__(self, fit: Fit, n_time: int | None = None, n_bins: int = 283, n_star: int | None = None):
        super().__init__()
        self.n_bins = n_bins
        self.settings = fit
        wl = torch.from_numpy(target_wavelengths_um(n_bins))
        self.register_buffer("wavelength", wl, persistent=False)
        airs = wl[1:]
        # Normalised AIRS wavelength in [-1, 1]; FGS1's row is 0 and unused (its terms are its own).
        self.register_buffer("wl_norm", torch.cat([torch.zeros(1, dtype=wl.dtype),
                                                   (2 * airs - airs.max() - airs.min())
                                                   / (airs.max() - airs.min()).clamp_min(1e-12)]),
                             persistent=False)

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.fit(batch)
        return out["mu"].float(), out["sigma"].float()

    @torch.no_grad()
    def fit(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """mu, sigma (B, N) and the diagnostics: t0 (B, 2), a_rs, inc, u (B, 6), white_snr, beta, chi2 (B, N),
        flags (B, len(REASONS)) and failed (B, N) (bins whose sigma was widened)."""
        fs = self.settings
        flux = batch["flux"].double().transpose(1, 2)            # (B, N, T)
        err = batch["flux_err"].double().transpose(1, 2)
        time = batch["time"].double()                            # (B, T) hours
        star = batch["star"].double()
        valid = torch.isfinite(flux) & torch.isfinite(err) & (err > 0)
        weight = torch.where(valid, 1.0 / err.clamp_min(1e-12) ** 2, torch.zeros_like(err))
        flux = torch.where(valid, flux, torch.ones_like(flux))
        model = _JointModel(self, time, star, batch.get("jitter"))

        start = model.start(flux, weight)
        res = _levenberg_marquardt(model, flux, weight, start, fs.iterations)
        z = (flux - res["model"]) * weight.sqrt()
        mad = torch.where(weight > 0, z.abs(), torch.nan).nanmedian(-1, keepdim=True).values * 1.4826
        keep = z.abs() <= fs.outlier_sigma * torch.nan_to_num(mad, nan=1.0).clamp_min(1e-30)
        res = _levenberg_marquardt(model, flux, weight * keep, res, max(2, fs.iterations // 3))
        return self._honest(model, res, time)

    def _honest(self, model: _JointModel, res: dict, time: torch.Tensor) -> dict:
        """Sigma from the marginal posterior, red noise and chi^2; the reasons to distrust a visit."""
        fs = self.settings
        w, resid = res["weight"], res["resid"]
        mask = w > 0
        n_used = mask.sum(-1)
        chi2 = (w * resid**2).sum(-1) / (n_used - model.n_local).clamp_min(1)   # (B, N) per bin
        beta = torch.maximum(_red_noise_factor(resid * mask, mask),
                             _prayer_bead_factor(resid * mask, res["gain"], res["var_local"].sqrt()))
        beta = _smooth_bins(beta, fs.red_noise_window)
        local = (res["var_local"] * chi2.clamp_min(1.0)).sqrt() * beta
        # The shared parameters' error moves every bin alike; its red noise is the white light's.
        white = (resid * w).sum(1) / w.sum(1).clamp_min(1e-30)
        white_beta = _red_noise_factor(white[:, None], mask.any(1)[:, None])[:, 0]
        chi2_all = (w * resid**2).sum((1, 2)) / (n_used.sum(1) - model.n_local * resid.shape[1]).clamp_min(1)
        scale = (chi2_all.clamp_min(1.0).sqrt() * white_beta)[:, None].expand_as(local).clone()
        # FGS1's shared terms (its t0, limb darkening, drift and jitter) are set by FGS1's light alone.
        scale[:, 0] = chi2[:, 0].clamp_min(1.0).sqrt() * beta[:, 0]
        shared = res["var_shared"].sqrt() * scale
        sigma = local.hypot(shared) * fs.sigma_scale
        depth = res["local"][..., 0]

        flags = torch.zeros(depth.shape[0], len(REASONS), dtype=torch.bool, device=depth.device)
        snr = _white_snr(depth, sigma, res)
        flags[:, 0] = ~(snr > fs.min_transit_snr)
        flags[:, 1] = _at_edge(model, res["shared"], depth, time, fs.edge_margin)
        flags[:, 2] = ~res["converged"]
        flags[:, 3] = chi2[:, 1:].median(1).values > fs.max_chi2
        flags[:, 4] = res["ld_at_bound"]
        sigma, flags[:, 5] = _check_fgs1(depth, sigma, fs)

        failed_bin = _broken(depth, sigma, n_used)
        smooth = _running_median(torch.where(failed_bin, depth[:, 1:2].expand_as(depth), depth), 9)
        failed_bin |= _spectral_outliers(depth, sigma, fs.spectral_outlier_sigma)
        mu = torch.where(failed_bin, smooth, depth)
        hard = flags[:, :HARD].any(1, keepdim=True)
        widened = torch.maximum(torch.nan_to_num(sigma, nan=0.0) * fs.failed_sigma_factor,
                                torch.full_like(sigma, fs.failed_sigma_min))
        soft = flags[:, [REASONS.index("poor_chi2"), REASONS.index("ld_at_bound")]].any(1, keepdim=True)
        sigma = torch.where(soft, sigma * fs.soft_sigma_factor, sigma)
        failed = failed_bin | hard
        shared_p = res["shared"]
        return {"mu": torch.nan_to_num(mu, nan=0.0).clamp_min(0.0), "sigma": torch.where(failed, widened, sigma),
                "t0": shared_p[:, T0_F:T0_A + 1], "a_rs": shared_p[:, A_RS], "inc": _inclination(shared_p),
                "u": shared_p[:, U_FGS1:N_TRANSIT], "white_snr": snr, "beta": beta, "chi2": chi2,
                "flags": flags, "failed": failed}


class _JointModel:
    """The model F_n(t) of one batch of visits and its Jacobian, split into per-bin and shared columns."""

    def __init__(self, owner: PhysicsFit, time: torch.Tensor, star: torch.Tensor, jitter: torch.Tensor | None):
        fs = owner.settings
        self.settings = fs
        self.time = time
        self.star = star
        B, T = time.shape
        N = owner.n_bins
        dtype, device = time.dtype, time.device
        self.wl = owner.wavelength.to(device=device, dtype=dtype)
        wn = owner.wl_norm.to(device=device, dtype=dtype)
        self.red_share = ((wn + 1) / 2)[None, :, None]   # interpolation weight of the red end's LD per bin
        self.is_fgs1 = torch.zeros(N, dtype=torch.bool, device=device)
        self.is_fgs1[0] = True
        self.instrument = self.is_fgs1.logical_not().long()     # per bin: 0 FGS1, 1 AIRS (rows of z)
        centre = time.mean(1, keepdim=True)
        tn = (time - centre) / (time - centre).abs().amax(1, keepdim=True).clamp_min(1e-9)
        self.legendre = _legendre(tn, fs.drift_time_degree)[..., 1:]              # (B, T, K)
        jit = torch.zeros(B, T, 0, dtype=dtype, device=device)
        squares = []
        if fs.use_jitter and jitter is not None and jitter.shape[-1] > 0:
            j = torch.nan_to_num(jitter.double().to(device))
            j = j - j.mean(1, keepdim=True)
            jit = _standardised(j)
            if j.shape[-1] >= len(_FGS1_CENTROIDS):
                # FGS1's box cuts its PSF's wings: the light it keeps falls with the square of the offset
                # (FGS1's error on the simulator's full-size visits: 5.7 -> 4.4 oracle sigmas). FGS1's own
                # terms: AIRS's bins would only pay for them in sigma.
                squares = list(_standardised(j[..., _FGS1_CENTROIDS] ** 2).unbind(-1))
        # Per bin, the jitter's coefficients are local parameters beside D_n and c_n (each column's response
        # to a pointing shift depends on its own PSF and spectral slope); else shared and smooth in wavelength.
        per_bin = fs.jitter_wavelength_degree is None
        self.jitter = jit if per_bin else jit[..., :0]                              # (B, T, J) local
        self.n_local = 2 + self.jitter.shape[-1]
        shared_jit = [] if per_bin else list(jit.unbind(-1))
        airs_terms = [(p, fs.drift_wavelength_degree) for p in self.legendre.unbind(-1)]
        airs_terms += [(x, fs.jitter_wavelength_degree) for x in shared_jit]
        fgs1_terms = [*self.legendre.unbind(-1), *shared_jit, *squares]
        columns = []
        airs_row = (~self.is_fgs1).to(dtype)[None, :, None]
        for series, degree in airs_terms:
            for power in range(degree + 1):
                columns.append(series[:, None, :] * (wn**power)[None, :, None] * airs_row)
        fgs1_row = self.is_fgs1.to(dtype)[None, :, None]
        columns += [series[:, None, :] * fgs1_row for series in fgs1_terms]
        self.features = (torch.stack(columns, -1) if columns
                         else torch.zeros(B, N, T, 0, dtype=dtype, device=device))   # (B, N, T, S)
        self.n_shared = N_TRANSIT + self.features.shape[-1]
        # Gaussian priors on the orbit (and on the limb darkening, when the config gives a width).
        # The grey-atmosphere coefficients start the fit (and centre its prior when it has one) at FGS1
        # and at AIRS's blue and red ends (target order runs blue to red).
        guess_u1, guess_u2 = quadratic_ld_coefficients(self.wl[[0, 1, N - 1]].cpu(), star[:, TS:TS + 1].cpu())
        u_start = torch.stack([guess_u1[:, 0], guess_u2[:, 0], guess_u1[:, 1], guess_u1[:, 2],
                               guess_u2[:, 1], guess_u2[:, 2]], -1).to(device=device, dtype=dtype)
        self.u_start = u_start
        self.prior_mean = torch.zeros(B, self.n_shared, dtype=dtype, device=device)
        self.prior_precision = torch.zeros(B, self.n_shared, dtype=dtype, device=device)
        b0 = star[:, SMA] * torch.cos(torch.deg2rad(star[:, INC]))
        sigma_b = star[:, SMA] * torch.sin(torch.deg2rad(star[:, INC])) * math.radians(fs.inc_prior_width_deg)
        self.prior_mean[:, A_RS], self.prior_mean[:, B2] = star[:, SMA], b0**2
        self.prior_precision[:, A_RS] = (fs.sma_prior_width * star[:, SMA]).clamp_min(1e-9) ** -2
        self.prior_precision[:, B2] = torch.maximum(2 * b0.abs() * sigma_b, sigma_b**2).clamp_min(1e-12) ** -2
        if fs.ld_prior_width is not None:
            self.prior_mean[:, U_FGS1:N_TRANSIT] = u_start
            self.prior_precision[:, U_FGS1:N_TRANSIT] = max(fs.ld_prior_width, 1e-9) ** -2

    # -- parameters ------------------------------------------------------------------------------------
    def start(self, flux: torch.Tensor, weight: torch.Tensor) -> dict:
        """Starting values: t0 from the white light, orbit and limb darkening from the star info."""
        fs, star = self.settings, self.star
        B = flux.shape[0]
        shared = torch.zeros(B, self.n_shared, dtype=flux.dtype, device=flux.device)
        orbit = [star[:, i:i + 1] for i in (PERIOD, SMA, INC)]
        white, white_w = _white_light(flux[:, 1:], weight[:, 1:])
        # A level and a linear trend only: a cubic baseline would absorb part of a long transit and pull the
        # starting t0 and depths towards a worse minimum.
        trend = self.legendre[..., :1]
        design = torch.cat([torch.ones_like(self.time)[..., None], trend], -1)
        u1, u2 = self.u_start[:, 2:4].mean(1), self.u_start[:, 4:6].mean(1)
        t0, amplitude = _find_t0(white, white_w, self.time, design, orbit, u1, u2, fs.t0_grid)
        shared[:, T0_F], shared[:, T0_A] = t0, t0
        shared[:, A_RS], shared[:, B2] = star[:, SMA], self.prior_mean[:, B2]
        shared[:, U_FGS1:N_TRANSIT] = self.u_start
        # Each bin's own depth and level at that shape: flux ~ c + c a (T - 1) + drift, linear in c, c a.
        white_depth = (amplitude * 0.12**2).clamp(1e-4, 0.1)[:, None].expand(-1, flux.shape[1])
        ones = torch.ones_like(white_depth)
        no_jitter = white_depth.new_zeros(*white_depth.shape, self.n_local - 2)
        shape = self.evaluate(torch.cat([torch.stack([white_depth, ones], -1), no_jitter], -1), shared)
        drift = trend[:, None].expand(-1, flux.shape[1], -1, -1)
        design = torch.cat([torch.ones_like(shape)[..., None], (shape - 1)[..., None], drift], -1)
        Aw = design.transpose(-1, -2) * weight[..., None, :]
        normal = Aw @ design
        theta = torch.linalg.solve(normal + _ridge(normal), Aw @ flux[..., None])[..., 0]
        level, scale = theta[..., 0], theta[..., 1] / theta[..., 0]
        ok = torch.isfinite(scale) & (level > 0)
        depth = torch.where(ok, (white_depth * scale).clamp(1e-4, 0.1), white_depth)
        local = torch.cat([torch.stack([depth, torch.where(ok, level, ones)], -1), no_jitter], -1)
        return {"local": local.contiguous(), "shared": shared}

    def constrain(self, local: torch.Tensor, shared: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Parameters moved into their valid range; also whether a limb-darkening pair hit its bounds."""
        local = torch.cat([local[..., :1].clamp(*_DEPTH_RANGE), local[..., 1:]], -1)
        shared = shared.clone()
        shared[:, A_RS] = shared[:, A_RS].clamp_min(1.5)
        shared[:, B2] = torch.minimum(shared[:, B2].clamp_min(0.0), shared[:, A_RS] ** 2)   # 0 <= b <= a
        at_bound = torch.zeros(shared.shape[0], dtype=torch.bool, device=shared.device)
        for i1, i2 in ((U_FGS1, U_FGS1 + 1), (U_AIRS, U_AIRS + 2), (U_AIRS + 1, U_AIRS + 3)):
            u1, u2, hit = _physical_ld(shared[:, i1], shared[:, i2])
            shared[:, i1], shared[:, i2] = u1, u2
            at_bound |= hit
        return local, shared, at_bound

    def _ld(self, shared: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """u1, u2 per bin (B, N, 1)."""
        red = self.red_share
        u = shared[:, U_AIRS:N_TRANSIT, None, None]                    # u1 blue, u1 red, u2 blue, u2 red
        u1, u2 = u[:, 0] * (1 - red) + u[:, 1] * red, u[:, 2] * (1 - red) + u[:, 3] * red
        fgs1 = self.is_fgs1[None, :, None]
        return (torch.where(fgs1, shared[:, U_FGS1, None, None], u1),
                torch.where(fgs1, shared[:, U_FGS1 + 1, None, None], u2))

    def _separation(self, shared: torch.Tensor):
        """z (B, 2, T) for FGS1 and AIRS, and its derivatives in t0, a/Rs and b^2.

        z^2 = a^2 sin^2(phase) + b^2 cos^2(phase) on the near side of the orbit (circular)."""
        t0 = shared[:, T0_F:T0_A + 1, None]
        period = self.star[:, PERIOD, None, None]
        a, b2 = shared[:, A_RS, None, None], shared[:, B2, None, None]
        rate = 2.0 * math.pi / (24.0 * period)
        phase = rate * (self.time[:, None, :] - t0)
        s, c = torch.sin(phase), torch.cos(phase)
        near = c > 0
        z = torch.where(near, (a**2 * s**2 + b2 * c**2).clamp_min(1e-30).sqrt(), torch.full_like(phase, 1e3))
        zs = z.clamp_min(1e-12)
        dz_dt0 = torch.where(near, -(a**2 - b2) * s * c / zs * rate, 0.0)
        dz_da = torch.where(near, a * s**2 / zs, 0.0)
        dz_db2 = torch.where(near, c**2 / (2 * zs), 0.0)
        return z, dz_dt0, dz_da, dz_db2

    def _basis(self, z: torch.Tensor, p: torch.Tensor, derivatives: bool):
        """occultation_basis per bin (B, N, T, 3), with its z and p derivatives when asked.

        FGS1 exactly; AIRS from exact values on Chebyshev nodes spanning its bins' Rp/Rs, interpolated to
        each bin (the AIRS bins share z(t) and differ only in Rp/Rs: 16 nodes instead of 282 bins, with
        an interpolation error far below any noise away from the contact points and ~1e-7 near them)."""
        fgs1 = occultation_basis(z[:, 0], p[:, :1])                                  # (B, T, 3)
        zf = [fgs1, (occultation_basis(z[:, 0] + _H_Z, p[:, :1]) - fgs1) / _H_Z,
              (occultation_basis(z[:, 0], p[:, :1] + _H_P) - fgs1) / _H_P] if derivatives else [fgs1]
        pa = p[:, 1:]
        lo, hi = pa.amin(1, keepdim=True), pa.amax(1, keepdim=True)
        mid, half = (hi + lo) / 2, ((hi - lo) / 2).clamp_min(1e-4)
        k = torch.arange(_P_NODES, dtype=p.dtype, device=p.device)
        x_nodes = torch.cos(math.pi * (k + 0.5) / _P_NODES)
        nodes = (mid + half * x_nodes).clamp(1e-6, 1.0 - 1e-6)                      # (B, M)
        grid = occultation_basis(z[:, 1, :, None], nodes[:, None, :])                # (B, T, M, 3)
        bary = torch.sin(math.pi * (k + 0.5) / _P_NODES) * (-1.0) ** k               # Chebyshev weights

        def weights(q):                                                             # (B, N-1, M)
            x = ((q - mid) / half)[..., None] - x_nodes
            x = torch.where(x.abs() < 1e-13, torch.full_like(x, 1e-13), x)
            w = bary / x
            return w / w.sum(-1, keepdim=True)

        w_p = weights(pa)
        airs = [torch.einsum("bnm,btmc->bntc", w_p, grid)]
        if derivatives:
            grid_z = occultation_basis(z[:, 1, :, None] + _H_Z, nodes[:, None, :])
            airs.append(torch.einsum("bnm,btmc->bntc", w_p, (grid_z - grid) / _H_Z))
            airs.append(torch.einsum("bnm,btmc->bntc", (weights(pa + _H_P) - w_p) / _H_P, grid))
        return [torch.cat([f[:, None], a], 1) for f, a in zip(zf, airs, strict=True)]

    def _per_bin(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 2, T) per instrument -> (B, N, T) per bin."""
        return x[:, self.instrument]

    def evaluate(self, local: torch.Tensor, shared: torch.Tensor) -> torch.Tensor:
        z = self._separation(shared)[0]
        u1, u2 = self._ld(shared)
        (basis,) = self._basis(z, local[..., 0].sqrt(), derivatives=False)
        transit = 1.0 - occulted_fraction(basis, u1, u2)
        return local[..., 1, None] * self._systematics(local, shared) * transit

    def _systematics(self, local: torch.Tensor, shared: torch.Tensor) -> torch.Tensor:
        """1 + s_n(t) (B, N, T): the shared surface and each bin's own jitter terms."""
        own = torch.einsum("btj,bnj->bnt", self.jitter, local[..., 2:])
        return 1.0 + (self.features * shared[:, None, None, N_TRANSIT:]).sum(-1) + own

    def jacobian(self, local: torch.Tensor, shared: torch.Tensor):
        """Model (B, N, T), per-bin columns (B, N, T, L) [D, c, jitter...] and shared columns (B, N, T, P)."""
        z, dz_dt0, dz_da, dz_db2 = (self._per_bin(x) if i else x
                                   for i, x in enumerate(self._separation(shared)))
        u1, u2 = self._ld(shared)
        p = local[..., 0].sqrt()
        basis, basis_dz, basis_dp = self._basis(z, p, derivatives=True)
        blocked = occulted_fraction(basis, u1, u2)
        transit = 1.0 - blocked
        d_dz = -occulted_fraction(basis_dz, u1, u2)       # the occulted flux is linear in the basis
        d_dp = -occulted_fraction(basis_dp, u1, u2)
        lam_e, lam_d, eta = basis.unbind(-1)
        omega = 1.0 - u1 / 3.0 - u2 / 6.0
        d_du1 = -((lam_d - lam_e) / omega + blocked / (3.0 * omega))
        d_du2 = -((2.0 * lam_d - 2.0 * lam_e + eta) / omega + blocked / (6.0 * omega))
        level = local[..., 1, None]
        syst = self._systematics(local, shared)
        scale = level * syst                                                        # dF/dT
        model = scale * transit
        local_cols = torch.cat([torch.stack([scale * d_dp / (2.0 * p[..., None]), syst * transit], -1),
                                (level * transit)[..., None] * self.jitter[:, None]], -1)
        fgs1 = self.is_fgs1[None, :, None].to(z.dtype)
        airs = 1 - fgs1
        red = self.red_share
        dz = scale * d_dz
        columns = [dz * dz_dt0 * fgs1, dz * dz_dt0 * airs, dz * dz_da, dz * dz_db2,
                   scale * d_du1 * fgs1, scale * d_du2 * fgs1,
                   scale * d_du1 * airs * (1 - red), scale * d_du1 * airs * red,
                   scale * d_du2 * airs * (1 - red), scale * d_du2 * airs * red]
        shared_cols = torch.cat([torch.stack(columns, -1), (level * transit)[..., None] * self.features], -1)
        return model, local_cols, shared_cols


def _levenberg_marquardt(model: _JointModel, flux, weight, start: dict, iterations: int) -> dict:
    """Minimise chi^2 + the priors' penalty; per visit, a step is taken only where it lowers the cost."""
    local, shared, at_bound = model.constrain(start["local"], start["shared"])
    B = flux.shape[0]
    damping = torch.full((B,), 1e-3, dtype=flux.dtype, device=flux.device)

    def cost(F, shared_p):
        prior = (model.prior_precision * (shared_p - model.prior_mean) ** 2).sum(-1)
        return (weight * (flux - F) ** 2).sum((1, 2)) + prior

    done = torch.zeros(B, dtype=torch.bool, device=flux.device)
    for _ in range(iterations):
        F, Jl, Jg = model.jacobian(local, shared)
        current = cost(F, shared)
        normal = _normal_equations(Jl, Jg, flux - F, weight, model, shared)
        step_l, step_g = _bounded_step(model, normal, local, shared, damping)
        trial_l, trial_g, trial_bound = model.constrain(local + step_l, shared + step_g)
        trial = cost(model.evaluate(trial_l, trial_g), trial_g)
        better = torch.isfinite(trial) & (trial <= current) & ~done
        local = torch.where(better[:, None, None], trial_l, local)
        shared = torch.where(better[:, None], trial_g, shared)
        at_bound = torch.where(better, trial_bound, at_bound)
        damping = torch.where(better, (damping / 3).clamp_min(1e-9), damping * 4)
        # chi^2 is in units of the noise: a gain below _SETTLED moves nothing that matters. A visit that
        # has settled stays as it is while the others go on.
        done |= (better & (current - trial < _SETTLED)) | (damping > 1e4)
        if bool(done.all()):
            break
    F, Jl, Jg = model.jacobian(local, shared)
    A, Bm, C, gl, gg = _normal_equations(Jl, Jg, flux - F, weight, model, shared)
    A_inv = torch.linalg.inv(A + _ridge(A))
    E = A_inv @ Bm                                                          # (B, N, L, P)
    S = C - (Bm.transpose(-1, -2) @ E).sum(1)
    S_inv = torch.linalg.pinv(S)
    K = E[..., 0, :]                                                        # d(D_n)/d(shared), up to sign
    var_shared = ((K @ S_inv) * K).sum(-1).clamp_min(0)
    gain = (A_inv[..., :1, :] @ (Jl.transpose(-1, -2) * weight[..., None, :]))[..., 0, :]
    # Converged: the full Gauss-Newton step from here would lower chi^2 by less than 1, i.e. the optimum
    # lies within one sigma of where the fit stopped.
    final_l, final_g = _bounded_step(model, (A, Bm, C, gl, gg), local, shared, torch.zeros_like(damping))
    predicted = (gl * final_l).sum((1, 2)) + (gg * final_g).sum(1)
    converged = torch.isfinite(predicted) & (predicted < 1.0) & torch.isfinite(local).all(-1).all(-1)
    return {"local": local, "shared": shared, "model": F, "resid": flux - F, "weight": weight,
            "var_local": A_inv[..., 0, 0].clamp_min(0), "var_shared": var_shared, "gain": gain,
            "white_gain": K, "cov_shared": S_inv, "converged": converged, "ld_at_bound": at_bound}


def _normal_equations(Jl, Jg, resid, weight, model: _JointModel, shared):
    """The blocks of J^T W J and J^T W r: per bin (A, B, g_local) and shared (C, g_shared), priors in C."""
    Wl = Jl * weight[..., None]
    A = Wl.transpose(-1, -2) @ Jl                                           # (B, N, L, L)
    Bm = Wl.transpose(-1, -2) @ Jg                                          # (B, N, L, P)
    Wg = Jg * weight[..., None]
    C = torch.einsum("bntp,bntq->bpq", Wg, Jg) + torch.diag_embed(model.prior_precision)
    gl = (Wl * resid[..., None]).sum(-2)                                    # (B, N, L)
    gg = (Wg * resid[..., None]).sum((1, 2)) - model.prior_precision * (shared - model.prior_mean)
    return A, Bm, C, gl, gg


def _ridge(M):
    """A tiny relative ridge: keeps an all-masked bin (zero weights) solvable."""
    scale = 1e-12 * M.diagonal(dim1=-2, dim2=-1).sum(-1) + 1e-30
    return scale[..., None, None] * torch.eye(M.shape[-1], dtype=M.dtype, device=M.device)


def _bounded_step(model: _JointModel, normal, local, shared, damping):
    """The damped step with the shared parameters it would push through their bounds held where they are
    (b^2 at 0 for a central transit, limb darkening on the triangle's edge): their gradient there is no
    sign of a fit that has not converged."""
    step_l, step_g = _schur_solve(*normal, damping)
    _, allowed, _ = model.constrain(local + step_l, shared + step_g)
    held = (allowed - (shared + step_g)).abs() > 1e-12 * (1.0 + shared.abs())
    if bool(held.any()):
        step_l, step_g = _schur_solve(*normal, damping, held)
    return step_l, step_g


def _schur_solve(A, Bm, C, gl, gg, damping, held=None):
    """The damped Gauss-Newton step (per-bin, shared) by the Schur complement of the bins' L x L blocks;
    shared parameters `held` (B, P) do not move."""
    lam = damping[:, None, None]
    A_d = A + lam[..., None] * torch.diag_embed(A.diagonal(dim1=-2, dim2=-1)) + _ridge(A)
    diagonal = C.diagonal(dim1=-2, dim2=-1)
    C_d = C + lam * torch.diag_embed(diagonal) + _ridge(C)
    if held is not None:
        C_d = C_d + torch.diag_embed(held * 1e12 * (diagonal.abs() + 1.0))
    A_inv = torch.linalg.inv(A_d)
    E = A_inv @ Bm
    S = C_d - (Bm.transpose(-1, -2) @ E).sum(1)
    rhs = gg - (E.transpose(-1, -2) @ gl[..., None])[..., 0].sum(1)
    step_g = torch.linalg.solve(S + _ridge(S), rhs[..., None])[..., 0]
    step_l = (A_inv @ (gl[..., None] - Bm @ step_g[:, None, :, None]))[..., 0]
    return step_l, step_g


def _physical_ld(u1, u2):
    """(u1, u2) moved into Kipping's triangle u1 >= 0, u1 + u2 <= 1, u1 + 2 u2 >= 0; and where it moved."""
    a, b = u1.clone(), u2.clone()
    for _ in range(3):  # alternating projections onto the three half-planes (converges in a few)
        a = a.clamp_min(0.0)
        excess = (a + b - 1.0).clamp_min(0.0) / 2
        a, b = a - excess, b - excess
        short = (-(a + 2 * b)).clamp_min(0.0) / 5
        a, b = a + short, b + 2 * short
    a = a.clamp_min(0.0)
    return a, b, ((a - u1).abs() + (b - u2).abs()) > 1e-9


def _legendre(x: torch.Tensor, degree: int) -> torch.Tensor:
    """(..., degree + 1) Legendre polynomials P_0..P_degree of x in [-1, 1] (Bonnet's recursion)."""
    out = [torch.ones_like(x), x]
    for k in range(1, degree):
        out.append(((2 * k + 1) * x * out[k] - k * out[k - 1]) / (k + 1))
    return torch.stack(out[:degree + 1], -1)


def _white_light(flux, weight):
    """Inverse-variance mean over bins (B, N, T) -> (B, T), with its weight."""
    w = weight.sum(1)
    return (flux * weight).sum(1) / w.clamp_min(1e-30), w


def _find_t0(white, w, time, X, orbit, u1, u2, points):
    """Mid-transit time (B,) by least squares on a coarse grid, a fine grid, then a parabola; and the
    best trial's transit amplitude (depth in units of the trial depth 0.12^2)."""
    lo, hi = time.amin(1, keepdim=True), time.amax(1, keepdim=True)
    step = (hi - lo) / (points - 1)
    grid = lo + step * torch.arange(points, dtype=time.dtype, device=time.device)
    best = _grid_chi2(white, w, time, X, orbit, u1, u2, grid)[0].argmin(1, keepdim=True)
    centre = grid.gather(1, best)
    fine = centre + step * torch.linspace(-1.5, 1.5, 31, dtype=time.dtype, device=time.device)
    chi2, amplitude = _grid_chi2(white, w, time, X, orbit, u1, u2, fine)
    k = chi2.argmin(1, keepdim=True).clamp(1, fine.shape[1] - 2)
    c_m, c_0, c_p = chi2.gather(1, k - 1), chi2.gather(1, k), chi2.gather(1, k + 1)
    curvature = (c_m - 2 * c_0 + c_p).clamp_min(1e-30)
    shift = (0.5 * (c_m - c_p) / curvature).clamp(-1, 1)
    t0 = (fine.gather(1, k) + shift * (fine[:, 1:2] - fine[:, :1]))[:, 0]
    return t0, amplitude.gather(1, k)[:, 0]


def _grid_chi2(white, w, time, X, orbit, u1, u2, grid):
    """(B, G) chi^2 of white = baseline + a (transit(t0) - 1) for each trial t0, and the amplitude a."""
    tr = transit_flux(time[:, None, :], grid, *orbit, torch.full_like(grid, 0.12), u1[:, None], u2[:, None])
    A = torch.cat([X[:, None].expand(-1, grid.shape[1], -1, -1), (tr - 1)[..., None]], dim=-1)
    AtW = A.transpose(-1, -2) * w[:, None, None, :]
    normal = AtW @ A
    theta = torch.linalg.solve(normal + _ridge(normal), AtW @ white[:, None, :, None])[..., 0]
    resid = white[:, None] - (A @ theta[..., None])[..., 0]
    return (w[:, None] * resid**2).sum(-1), theta[..., -1]


def _white_snr(depth, sigma, res):
    """The AIRS white-light depth over its error (the shared parameters' error counted once), (B,)."""
    w = sigma[:, 1:].clamp_min(1e-30) ** -2
    w = w / w.sum(1, keepdim=True)
    mean = (w * depth[:, 1:]).sum(1)
    k = (w[..., None] * res["white_gain"][:, 1:]).sum(1)                     # (B, P)
    var = (w**2 * sigma[:, 1:] ** 2).sum(1) + ((k[:, None, :] @ res["cov_shared"]) @ k[..., None])[:, 0, 0]
    return mean / var.clamp_min(1e-30).sqrt()


def _inclination(shared):
    """Degrees, from a/Rs and b^2."""
    return torch.rad2deg(torch.arccos((shared[:, B2].sqrt() / shared[:, A_RS]).clamp(0, 1)))


def _at_edge(model: _JointModel, shared, depth, time, margin):
    """The transit (first to last contact) does not lie inside the visit with `margin` x T14 to spare."""
    period = model.star[:, PERIOD]
    a, b = shared[:, A_RS], shared[:, B2].sqrt()
    rp = depth[:, 1:].median(1).values.clamp_min(0).sqrt()
    chord = ((1 + rp) ** 2 - b**2).clamp_min(0).sqrt() / (a**2 - b**2).clamp_min(1e-12).sqrt()
    t14 = 24.0 * period / math.pi * torch.asin(chord.clamp(0, 1))
    t0 = shared[:, T0_A]
    lo, hi = time.amin(1), time.amax(1)
    return (t0 - t14 / 2 - margin * t14 < lo) | (t0 + t14 / 2 + margin * t14 > hi)


def _check_fgs1(depth, sigma, fs: Fit):
    """FGS1 (0.7 um) checked against AIRS's blue end: a gap larger than the spectrum's slope allows and
    their sigmas explain widens FGS1's sigma to cover it (the cliff: one confident wrong FGS1 value
    costs the whole planet). Returns the new sigma and the flag (B,)."""
    blue = depth[:, 1:11].median(1).values
    blue_sigma = sigma[:, 1:11].median(1).values / 10**0.5
    gap = (depth[:, 0] - blue).abs()
    allowed = fs.fgs1_airs_tolerance * blue + fs.fgs1_airs_sigma * sigma[:, 0].hypot(blue_sigma)
    flag = gap > allowed
    widened = sigma.clone()
    widened[:, 0] = torch.where(flag, sigma[:, 0].hypot(gap), sigma[:, 0])
    return widened, flag


def _prayer_bead_factor(resid, gain, formal, shifts=24):
    """beta >= 1 per series: the depth's scatter when the residuals are cyclically shifted and fitted again.

    The fit is linear around its solution, so refitting a shifted residual series is a projection with the
    depth's row of the least-squares solution (`gain`); correlated noise on the transit's time scale,
    which time-binning of the residuals misses, moves the depth and shows here.
    """
    T = resid.shape[-1]
    steps = sorted({max(1, round(T * k / shifts)) for k in range(1, shifts)} - {T})
    moved = torch.stack([(gain * torch.roll(resid, k, dims=-1)).sum(-1) for k in steps])
    return ((moved.pow(2).mean(0)).sqrt() / formal.clamp_min(1e-30)).clamp_min(1.0)


def _red_noise_factor(resid, mask):
    """beta >= 1 per series: scatter of time-binned residuals against the white-noise expectation.

    For bin sizes n from 2 up to a quarter of the series, beta_n = std(binned) / (std(unbinned) / sqrt(n)
    * sqrt(M / (M - 1))) with M bins; the mean over n is returned (Pont, Zucker & Queloz 2006).
    """
    T = resid.shape[-1]
    count = mask.sum(-1).clamp_min(2)
    sigma1 = (resid.pow(2).sum(-1) / (count - 1)).sqrt()
    ratios = []
    for n in sorted({round(2 * (T / 8) ** (k / 5)) for k in range(6)}):
        m = T // n
        if n < 2 or m < 3:
            continue
        binned = resid[..., : m * n].reshape(*resid.shape[:-1], m, n).mean(-1)
        expected = sigma1 / n**0.5 * (m / (m - 1)) ** 0.5
        ratios.append(binned.std(-1) / expected.clamp_min(1e-30))
    if not ratios:
        return torch.ones_like(sigma1)
    return torch.stack(ratios).mean(0).clamp_min(1.0)


def _broken(depth, sigma, n_used):
    """Bins whose fit broke down: non-finite, too few points left, or a depth stuck at a bound."""
    return ~(torch.isfinite(depth) & torch.isfinite(sigma) & (n_used > 5)
             & (depth > 10 * _DEPTH_RANGE[0]) & (depth < _DEPTH_RANGE[1]))


def _running_median(depth, window):
    """Running median over the AIRS bins (B, N); FGS1 (bin 0) is kept as it is."""
    airs = torch.nn.functional.pad(depth[:, None, 1:], (window // 2, window // 2), mode="reflect")[:, 0]
    return torch.cat([depth[:, :1], airs.unfold(-1, window, 1).median(-1).values], dim=1)


def _spectral_outliers(depth, sigma, threshold):
    """AIRS bins unlike their neighbours: a spike against the mean of the two adjacent bins (in units of
    the sigmas and of the spectrum's robust spike scatter), or a sigma far below its neighbours' (a fit
    collapsed onto a bound). Molecular bands span many bins and curve smoothly; a bad column or a
    diverged fit is one bin."""
    airs, s = depth[:, 1:], sigma[:, 1:]
    padded = torch.nn.functional.pad(airs[:, None], (1, 1), mode="replicate")[:, 0]
    padded_s = torch.nn.functional.pad(s[:, None], (1, 1), mode="replicate")[:, 0]
    spike = airs - (padded[:, :-2] + padded[:, 2:]) / 2
    scatter = 1.4826 * spike.abs().median(1, keepdim=True).values
    noise = torch.sqrt(s**2 + (padded_s[:, :-2] ** 2 + padded_s[:, 2:] ** 2) / 4 + scatter**2)
    flagged = spike.abs() > threshold * noise
    flagged |= s < 0.3 * _running_median(sigma, 9)[:, 1:]
    return torch.cat([torch.zeros_like(flagged[:, :1]), flagged], dim=1)



def _standardised(x: torch.Tensor) -> torch.Tensor:
    """(B, T, J) series with zero mean and unit spread along time (a flat one stays zero)."""
    x = x - x.mean(1, keepdim=True)
    return x / x.std(1, keepdim=True).clamp_min(1e-12)


def _smooth_bins(beta, window):
    """Running median of the AIRS bins' red-noise factors (each alone is noisy); FGS1 keeps its own."""
    if window <= 1 or beta.shape[-1] < window + 1:
        return beta
    airs = beta[:, 1:]
    padded = torch.nn.functional.pad(airs[:, None], (window // 2, window // 2), mode="replicate")[:, 0]
    smoothed = padded.unfold(-1, window, 1).median(-1).values
    return torch.cat([beta[:, :1], torch.maximum(smoothed, torch.ones_like(smoothed))], dim=1)
