"""SpectraMind: Ariel raw frames to calibrated light curves to scored transmission spectra."""

__version__ = "0.1.0"
