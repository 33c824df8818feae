"""The Ariel data layer: raw layout, simulator, calibration, HDF5 store and torch dataset."""
