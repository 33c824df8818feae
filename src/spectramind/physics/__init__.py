"""Physics shared by the simulator and the models: transit light curves and transmission spectra."""
