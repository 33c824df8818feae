"""The quadratic limb-darkened transit against brute-force integration, and its shapes and gradients."""

import numpy as np
import pytest
import torch

from spectramind.physics.transit import occultation_basis, occulted_fraction, quadratic_ld_coefficients, transit_flux


def brute_force(z, p, u1, u2, n=100_000):
    """Blocked fraction by integrating the limb-darkened disk over annuli (no elliptic integrals)."""
    r = (np.arange(n) + 0.5) / n
    mu = np.sqrt(1 - r * r)
    intensity = 1 - u1 * (1 - mu) - u2 * (1 - mu) ** 2
    if z < 1e-12:
        arc = np.where(r < p, np.pi, 0.0)
    else:
        c = np.clip((r * r + z * z - p * p) / (2 * r * z), -1, 1)
        arc = np.where(r <= p - z, np.pi, np.arccos(c))
    return np.sum(intensity * 2 * r * arc) / np.sum(intensity * 2 * np.pi * r)


@pytest.mark.parametrize("p", [0.01, 0.1, 0.2, 0.5, 0.7])
def test_matches_brute_force_including_singular_configurations(p):
    for z in (0.0, 0.05, p, 0.3, 1 - p, 0.9, 1.0, 1.0 + p - 1e-3, 1.2 + p):
        zt, pt = (torch.tensor(v, dtype=torch.float64) for v in (z, p))
        got = float(occulted_fraction(occultation_basis(zt, pt), 0.4, 0.25))
        assert got == pytest.approx(brute_force(z, p, 0.4, 0.25), abs=2e-7), (z, p)


def test_uniform_disk_depth_is_the_area_ratio_and_flux_is_one_out_of_transit():
    t = torch.linspace(-6, 6, 1201, dtype=torch.float64)
    flux = transit_flux(t, 0.0, 4.0, 10.0, 90.0, 0.1, 0.0, 0.0)
    assert flux.min().item() == pytest.approx(1 - 0.01, abs=1e-12)
    assert torch.all(flux[(t.abs() > 3.5)] == 1.0)


def test_shapes_broadcast_bins_and_planets():
    t = np.linspace(0, 7.5, 50)
    rp = np.full(283, 0.1)
    assert transit_flux(t, 3.7, 3.0, 8.0, 88.0, rp, 0.3, 0.2).shape == (283, 50)
    batch = transit_flux(t, torch.full((4, 1), 3.7), 3.0, 8.0, 88.0, torch.full((4, 283), 0.1), 0.3, 0.2)
    assert batch.shape == (4, 283, 50)
    assert transit_flux(t, 3.7, 3.0, 8.0, 88.0, 0.1, 0.3, 0.2).dtype == torch.float64  # numpy float64 in
    assert (
        transit_flux(torch.tensor(t, dtype=torch.float32), 3.7, 3.0, 8.0, 88.0, 0.1, 0.3, 0.2).dtype
        == torch.float32
    )


def test_gradients_are_finite_everywhere_including_centre_and_contacts():
    p = 0.1
    # z passes exactly through 0, p and 1 - p for this grid (b = 0, a = 10, P chosen so z = phase * a).
    rp = torch.tensor(p, dtype=torch.float64, requires_grad=True)
    inc = torch.tensor(90.0, dtype=torch.float64, requires_grad=True)
    u = torch.tensor([0.4, 0.2], dtype=torch.float64, requires_grad=True)
    t = torch.linspace(-3, 3, 601, dtype=torch.float64)
    flux = transit_flux(t, 0.0, 3.0, 10.0, inc, rp, u[0], u[1])
    flux.sum().backward()
    assert all(torch.isfinite(g).all() for g in (rp.grad, inc.grad, u.grad))
    assert rp.grad.item() < 0  # a bigger planet blocks more light


def test_gradcheck_in_float64():
    t = torch.linspace(-2.5, 2.5, 41, dtype=torch.float64)

    def f(rp, u1, u2, inc):
        return transit_flux(t, 0.1, 3.0, 8.0, inc, rp, u1, u2)

    args = tuple(torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in (0.12, 0.35, 0.2, 88.5))
    assert torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-5)


def test_limb_darkening_is_weaker_in_the_red_and_for_hotter_stars():
    wl = np.array([0.7, 2.0, 3.9])
    u1, u2 = quadratic_ld_coefficients(wl, 5800.0)
    total = (u1 + u2).numpy()
    assert np.all(np.diff(total) < 0)
    assert 0.4 < total[0] < 0.8 and 0.1 < total[-1] < 0.4
    hot = sum(quadratic_ld_coefficients(2.0, 6900.0)).item()
    cool = sum(quadratic_ld_coefficients(2.0, 4300.0)).item()
    assert hot < cool
    assert quadratic_ld_coefficients(wl, np.array([[4300.0], [6900.0]]))[0].shape == (2, 3)
