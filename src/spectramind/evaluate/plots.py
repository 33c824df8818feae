"""PNG figures for `evaluate`: predicted vs true spectra with sigma bands, and the score per wavelength."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from spectramind import files


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers, CI or Kaggle
    import matplotlib.pyplot as plt

    return plt


def spectra(path: Path, wavelength: np.ndarray, ids, y: np.ndarray, mu: np.ndarray, sigma: np.ndarray,
            n_planets: int) -> Path:
    """One panel per planet (the first `n_planets`): truth, prediction, 1-sigma band; FGS1 as a point."""
    plt = _pyplot()
    n = min(n_planets, len(ids))
    fig, axes = plt.subplots(n, 1, figsize=(9, 2.6 * n), squeeze=False)
    for ax, i in zip(axes[:, 0], range(n), strict=True):
        wl = wavelength[1:]
        ax.fill_between(wl, mu[i, 1:] - sigma[i, 1:], mu[i, 1:] + sigma[i, 1:], color="tab:blue", alpha=0.25,
                        label="prediction ± 1σ")
        ax.plot(wl, mu[i, 1:], color="tab:blue", lw=1)
        ax.plot(wl, y[i, 1:], color="black", lw=1, label="truth")
        ax.errorbar([wl[0] - 0.05], [mu[i, 0]], yerr=[sigma[i, 0]], fmt="o", color="tab:orange", ms=3,
                    label="FGS1 (0.7 µm) prediction")
        ax.plot([wl[0] - 0.05], [y[i, 0]], "kx", ms=5)
        ax.set_title(f"planet {ids[i]}", fontsize=9)
        ax.set_ylabel("transit depth")
    axes[-1, 0].set_xlabel("wavelength (µm); FGS1 drawn at the left edge")
    axes[0, 0].legend(fontsize=7, loc="upper right")
    return _save(fig, plt, path)


def score_per_wavelength(path: Path, per_bin: pd.DataFrame) -> Path:
    """Mean element score per bin (unclipped) and the 1-sigma coverage per bin against its 68% target."""
    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 5), sharex=True)
    airs = per_bin.iloc[1:]
    top.plot(airs["wavelength_um"], airs["score"], lw=1)
    top.axhline(per_bin["score"].iloc[0], color="tab:orange", ls="--", lw=1, label="FGS1 (weight 57.8)")
    top.set_ylabel("mean score")
    top.legend(fontsize=7)
    bottom.plot(airs["wavelength_um"], airs["within_1sigma"], lw=1)
    bottom.axhline(0.6827, color="black", ls=":", lw=1, label="68.3% (honest sigma)")
    bottom.set_ylabel("share |z| < 1")
    bottom.set_xlabel("wavelength (µm)")
    bottom.legend(fontsize=7)
    return _save(fig, plt, path)


def _save(fig, plt, path: Path) -> Path:
    fig.tight_layout()
    with files.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path
