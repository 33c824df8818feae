"""Calibration speed on one full-size planet-visit (11,250 AIRS and 135,000 FGS1 reads), against a plain
numpy implementation of the hosts' steps written here as the reference, then the 9-hour extrapolation.

Prints JSON: wall and CPU seconds per visit (median of --repeats runs, each in a fresh process so peak
RSS is per visit; on a shared machine the CPU seconds travel better than the wall seconds),
the parquet-reading share (also with the files evicted from the page cache, as Kaggle reads them), the
speed-up (both sides reading cached files), peak RSS of both, and whether calibrating the hidden test set
(1,100 planets x 1.1 visits on a 4-CPU Kaggle notebook) plus prediction fits the trainer's reserve.
Usage: python benchmarks/bench_calibrate.py [--repeats N] [--predict-seconds-per-planet S] [--root RAW]
[--set key=value ...]  (--root: the first train visit of an existing raw folder instead of a simulated one,
so a before/after comparison reads the same bytes; --set: calibration overrides, e.g. data.calibrate.airs_bin=5)
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
HIDDEN_VISITS = 1100 * 1.1
KAGGLE_CPUS = 4


def make_visit(folder: Path) -> Path:
    """One full-size visit, from the synthetic set's simulator settings with the competition's sizes."""
    import dataclasses

    from spectramind.config.stage import load
    from spectramind.data.simulate import simulate

    shipped = load(["data=synthetic"])[1].data.simulate
    full_size = dataclasses.replace(shipped, n_train=1, n_test=0, two_visit_fraction=0.0, airs_reads=11250,
                                    fgs1_reads=135000)
    return simulate(folder / "raw", full_size, seed=1, num_workers=0, progress=False)["root"]


def run_package(root: str, overrides: list[str]) -> dict:
    """The package's path for one visit: only the pixels used are read, chunked float32, kaggle.yaml's switches."""
    from spectramind.config.stage import load
    from spectramind.data import ariel_format as af
    from spectramind.data import calibrate as cal
    from spectramind.data.prepare import read_visit

    opts = load(["data=kaggle", *overrides])[1].data.calibrate
    adc, axis = af.read_adc(root), af.read_axis_info(root)
    started, cpu = time.perf_counter(), time.process_time()
    visit = af.list_visits(root, "train")[0]
    raw, maps = read_visit(visit, axis, opts)
    read_s = time.perf_counter() - started
    out = cal.calibrate_visit(raw, maps, adc, axis, opts)
    return {
        "seconds": time.perf_counter() - started,
        "cpu_seconds": time.process_time() - cpu,
        "read_seconds": read_s,
        "shape": list(out["flux"].shape),
    }


def run_reference(root: str, overrides: list[str]) -> dict:
    """The hosts' steps in plain numpy (float64, whole arrays, masked arrays), non-linearity included. The
    hosts read with pandas (through pyarrow); polars here, the package's own parquet reader, as pyarrow is
    no dependency of ours."""
    import pandas as pd
    import polars as pl

    root = Path(root)
    folder = next((root / "train").iterdir())
    adc = pd.read_csv(root / "adc_info.csv")
    started, cpu = time.perf_counter(), time.process_time()
    light = {}
    for inst, w, dt, n_bin in (("AIRS-CH0", 356, (0.1, 4.6), 30), ("FGS1", 32, (0.1, 0.2), 360)):
        raw = pl.read_parquet(folder / f"{inst}_signal_0.parquet").to_numpy()
        x = raw.astype(np.float64) / adc[f"{inst}_adc_gain"][0] + adc[f"{inst}_adc_offset"][0]
        x = x.reshape(-1, 32, w)
        cal = {
            n: pl.read_parquet(folder / f"{inst}_calibration_0" / f"{n}.parquet").to_numpy()
            for n in ("dark", "dead", "flat", "linear_corr")
        }
        cal["linear_corr"] = cal["linear_corr"].reshape(6, 32, w)
        if inst == "AIRS-CH0":
            x = x[:, :, 39:321]
            cal = {n: v[..., 39:321] for n, v in cal.items()}
        dark = cal["dark"]
        hot = np.abs(dark - dark.mean()) > 5 * dark.std()
        mask = np.broadcast_to(cal["dead"] | hot, x.shape)
        x = np.ma.masked_where(mask, x)
        coef = np.flip(cal["linear_corr"], axis=0)
        corrected = np.zeros_like(x.data)
        for c in coef:  # np.polyval's order, over whole arrays
            corrected = corrected * x.data + c
        x = np.ma.masked_where(mask, corrected)
        steps = np.where(np.arange(len(x)) % 2 == 0, dt[0], dt[1])[:, None, None]
        x = x - dark * steps
        cds = x[1::2] - x[0::2]
        n = len(cds) // n_bin
        binned = cds[: n * n_bin].reshape(n, n_bin, *cds.shape[1:]).sum(axis=1)
        binned = binned / cal["flat"]
        light[inst] = binned[:, 10:22].sum(axis=1) if inst == "AIRS-CH0" else binned[:, 10:22, 10:22].sum((1, 2))
    return {
        "seconds": time.perf_counter() - started,
        "cpu_seconds": time.process_time() - cpu,
        "shape": [len(light["FGS1"]), 283],
    }


def evict_from_page_cache(root: str) -> None:
    """Drop the raw files from the OS page cache: a Kaggle run reads each input file once, cold."""
    for path in Path(root).rglob("*.parquet"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def peak_rss_kib() -> int:
    """This process's own peak RSS. Not getrusage's ru_maxrss: Linux carries that over fork and exec, so a
    child would report at least its parent's size (the benchmark holds a whole simulated visit)."""
    status = Path("/proc/self/status")
    if status.is_file():
        return int(next(line for line in status.read_text().splitlines() if line.startswith("VmHWM:")).split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # elsewhere: an upper bound


def measure(which: str, root: str, repeats: int, cold: bool = False, overrides: tuple[str, ...] = ()) -> dict:
    """Run `which` in fresh processes; median seconds and the largest peak RSS (GiB)."""
    runs = []
    for _ in range(repeats):
        if cold:
            evict_from_page_cache(root)
        cmd = [sys.executable, __file__, "--child", which, root, *(f"--set={o}" for o in overrides)]
        runs.append(json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout))
    return {
        "seconds_per_visit": round(statistics.median(r["seconds"] for r in runs), 3),
        "cpu_seconds_per_visit": round(statistics.median(r["cpu_seconds"] for r in runs), 3),
        "read_seconds": round(statistics.median(r.get("read_seconds", float("nan")) for r in runs), 3),
        "peak_rss_gib": round(max(r["peak_rss_gib"] for r in runs), 3),
        "light_curve_shape": runs[0]["shape"],
    }


def extrapolate(seconds: float, peak_rss_gib: float, predict_s_per_planet: float) -> dict:
    profile = yaml.safe_load((REPO / "configs/trainer/kaggle_safe.yaml").read_text())["budgets"]
    processes = max(1, min(KAGGLE_CPUS, int(profile["host_memory_gib"] // max(peak_rss_gib, 1e-3))))
    calibrate_min = HIDDEN_VISITS * seconds / processes / 60
    predict_min = 1100 * predict_s_per_planet / 60
    reserve = profile["predict_reserve_min"]
    return {
        "hidden_visits": HIDDEN_VISITS,
        "processes": processes,
        "calibrate_min": round(calibrate_min, 1),
        "predict_s_per_planet": predict_s_per_planet,  # --predict-seconds-per-planet: bench_fit.py measures it
        "predict_min": round(predict_min, 1),
        "predict_reserve_min": reserve,
        "fits_reserve": calibrate_min + predict_min <= reserve,
        "fits_9h": calibrate_min + predict_min <= profile["time_min"],
        "note": "assumes a Kaggle CPU as fast as this machine's; processes bounded by 4 CPUs and host RAM",
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--predict-seconds-per-planet", type=float, default=1.0)
    parser.add_argument("--root", help="an existing raw folder (competition layout) to calibrate instead")
    parser.add_argument("--set", action="append", default=[], help="a calibration override (Hydra syntax)")
    parser.add_argument("--child", nargs=2)
    args = parser.parse_args()
    if args.child:
        which, root = args.child
        result = (run_package if which == "package" else run_reference)(root, args.set)
        result["peak_rss_gib"] = peak_rss_kib() / 2**20
        print(json.dumps(result))
        return
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        started = time.perf_counter()
        root = args.root or make_visit(Path(tmp))
        simulate_s = time.perf_counter() - started
        package = measure("package", root, args.repeats, overrides=tuple(args.set))
        package_cold = measure("package", root, args.repeats, cold=True, overrides=tuple(args.set))
        reference = measure("reference", root, args.repeats)
    speedup = reference["seconds_per_visit"] / package["seconds_per_visit"]
    cpu_speedup = reference["cpu_seconds_per_visit"] / package["cpu_seconds_per_visit"]
    print(
        json.dumps(
            {
                "benchmark": "calibrate one full-size planet-visit",
                "cpus": os.cpu_count(),
                "load_average_1m": round(os.getloadavg()[0], 2),
                "simulate_full_visit_s": None if args.root else round(simulate_s, 1),
                "overrides": args.set,
                "package": package,
                "package_cold_page_cache": package_cold,
                "reference_numpy": reference,
                "speedup": round(speedup, 2),
                "cpu_speedup": round(cpu_speedup, 2),
                "goals": {
                    "seconds_per_visit_max": 2.0,
                    "speedup_min": 4.0,
                    "peak_rss_gib_max": 3.0,
                    "met": package["seconds_per_visit"] <= 2.0 and speedup >= 4.0 and package["peak_rss_gib"] < 3.0,
                },
                # Kaggle reads cold, and with one process per CPU a visit costs its CPU time when that is more.
                "extrapolation": extrapolate(
                    max(package_cold["seconds_per_visit"], package_cold["cpu_seconds_per_visit"]),
                    max(package["peak_rss_gib"], package_cold["peak_rss_gib"]),
                    args.predict_seconds_per_planet,
                ),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
