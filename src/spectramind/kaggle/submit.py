"""`spectramind kaggle submit`: the scored notebook's work, a submission.csv (predict.out) that exists
whatever happens and improves as time allows.

The test planets are worked through in chunks, each its own raw folder of links into `data.root` (its
sample_submission.csv cut to the chunk), so each chunk is an ordinary `spectramind predict` in a subprocess
that calibrates the chunk's test/ planets only and validates what it writes:
1. the submission is written at once with the metric's naive prediction for every planet (a score of 0
   for them, never the cliff of a confident wrong one);
2. chunk by chunk, `predict model=fit` (calibration and the physics fit), the submission rewritten after each;
3. chunk by chunk, the trained model (`predict.run`: an export, a run folder, a hash) on the same stores,
   replacing the fit's rows wherever it succeeds.
A chunk starts only while the time since the notebook started, plus GROWTH x the slowest chunk of its phase
so far, stays inside `trainer.budgets.time_min` less the reserve, and its command is stopped at that limit:
planets the model cannot reach in time keep the fit's rows, planets the fit cannot reach the naive row.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from spectramind import files, metric
from spectramind.config.stage import load
from spectramind.data import ariel_format as af
from spectramind.errors import ConfigError
from spectramind.evaluate import submission

GROWTH = 1.5          # a chunk may take this much longer than the slowest one of its phase so far
STOP_GRACE_S = 30     # after SIGTERM at the limit, how long a chunk's command has to stop cleanly
FOLDER = "submit"     # under paths.output_dir: one folder per chunk (raw links, store, baseline, CSVs)
WL, SIGMA = submission.default_columns()[1:af.N_BINS + 1], submission.default_columns()[af.N_BINS + 1:]


def submit(overrides: list[str], started: float, chunk_planets: int, reserve_min: float,
           clock: Callable[[], float] = time.time, echo: Callable[[str], None] = print) -> dict:
    """Write predict.out as described above; returns a summary (also written to <output_dir>/submit/)."""
    from spectramind.evaluate import export
    from spectramind.evaluate.predict import require_run, resolve_run

    s = load(overrides)[1]
    if s.predict.out is None:
        raise ConfigError("predict.out: required, the submission's path (on Kaggle /kaggle/working/submission.csv)")
    if chunk_planets < 1:
        raise ConfigError(f"--chunk-planets: expected at least 1, got {chunk_planets}")
    folder = resolve_run(s) if s.predict.run is not None else None
    chosen = export.read_meta(folder)["overrides"] if folder is not None and export.is_export(folder) else []
    model_overrides = [*chosen, *overrides, f"predict.run={folder}"]
    if folder is not None:
        require_run(load(model_overrides)[1])  # before any work: the export's settings are consistent
    fit_overrides = [*(o for o in chosen if not o.startswith("model")), *overrides, "model=fit", "predict.run=null"]
    budget = s.trainer.budgets.time_min
    limit = started + (math.inf if budget is None else budget * 60 - reserve_min * 60)

    root, out, work = Path(s.data.root), Path(s.predict.out), Path(s.paths.output_dir) / FOLDER
    sample = root / "sample_submission.csv"
    columns = submission.sample_columns(sample)
    ids = submission.sample_ids(sample)
    naive_mean, naive_sigma = metric.naive_stats(af.read_targets(root).to_numpy())
    rows = {pid: (np.full(af.N_BINS, naive_mean), np.full(af.N_BINS, naive_sigma)) for pid in ids}
    source = dict.fromkeys(ids, "naive")

    def write() -> None:
        submission.write(out, ids, np.stack([rows[p][0] for p in ids]), np.stack([rows[p][1] for p in ids]),
                         expected_ids=ids, columns=columns)

    write()
    chunks = [ids[i:i + chunk_planets] for i in range(0, len(ids), chunk_planets)]
    phases = [("fit", fit_overrides)] + ([("model", model_overrides)] if folder is not None else [])
    timings: dict[str, list[float]] = {}
    for phase, phase_overrides in phases:
        spent = timings.setdefault(phase, [])
        for i, chunk in enumerate(chunks):
            if phase == "model" and not all(source[p] == "fit" for p in chunk):
                continue  # the fit never reached it: no store to predict from
            if clock() + GROWTH * max(spent, default=0.0) > limit:
                echo(f"submit: {phase} stops before chunk {i + 1}/{len(chunks)}, the time limit is near")
                break
            where = work / f"chunk_{i:03d}"
            if phase == "fit":
                _link_chunk(root, where / "raw", chunk)
                if folder is not None and (folder / export.CALIBRATION).is_file():
                    _place_calibration(folder / export.CALIBRATION, [*phase_overrides, *_paths(where, phase)])
            began = clock()
            argv = [sys.executable, "-m", "spectramind", "predict", *phase_overrides, *_paths(where, phase)]
            problem = _run(argv, timeout=limit - began)
            spent.append(clock() - began)
            if problem is None:
                frame = submission.read(where / f"{phase}.csv").set_index("planet_id")
                for pid in chunk:
                    rows[pid] = (frame.loc[pid, WL].to_numpy(np.float64), frame.loc[pid, SIGMA].to_numpy(np.float64))
                    source[pid] = phase
                write()
            state = "done" if problem is None else f"kept the {'naive' if phase == 'fit' else 'fit'} rows ({problem})"
            echo(f"submit: {phase} chunk {i + 1}/{len(chunks)} ({len(chunk)} planets) in {spent[-1]:.0f} s: {state}")
    counts = {k: sum(v == k for v in source.values()) for k in ("model", "fit", "naive")}
    summary = {"submission": str(out), "planets": len(ids), "rows": counts, "chunks": len(chunks),
               "seconds": {k: [round(t, 1) for t in v] for k, v in timings.items()},
               "elapsed_s": round(clock() - started, 1), "model": str(folder) if folder else None}
    files.write_json(work / "summary.json", summary)
    return summary


def _paths(where: Path, phase: str) -> list[str]:
    return [f"data.root={where / 'raw'}", f"data.store={where / 'store'}", f"data.baseline={where / 'baseline'}",
            f"predict.out={where / f'{phase}.csv'}"]


def _link_chunk(root: Path, dest: Path, planet_ids: list[int]) -> None:
    """A raw folder holding only `planet_ids` of root/test, as links (folders are made, files linked: the
    content fingerprint does not follow linked folders), with the sample submission cut to them."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for p in root.iterdir():
        if p.is_file() and p.name != "sample_submission.csv":
            (dest / p.name).symlink_to(p.resolve())
    for pid in planet_ids:
        for folder, _, names in os.walk(root / "test" / str(pid)):
            target = dest / Path(folder).relative_to(root)
            target.mkdir(parents=True, exist_ok=True)
            for name in names:
                (target / name).symlink_to(Path(folder, name).resolve())
    sample = pd.read_csv(root / "sample_submission.csv")
    sample[sample["planet_id"].isin(planet_ids)].to_csv(dest / "sample_submission.csv", index=False)


def _place_calibration(path: Path, overrides: list[str]) -> None:
    """The export's label calibration where `predict model=fit` looks for it (named by the fit's settings
    and code, both the export's and this package's), so the fallback rows are calibrated too."""
    from spectramind.models.baseline import calibration_path

    dest = calibration_path(load(overrides)[1])
    dest.parent.mkdir(parents=True, exist_ok=True)
    with files.atomic_path(dest) as tmp:
        shutil.copyfile(path, tmp)


def _run(argv: list[str], timeout: float) -> str | None:
    """Run a command in its own process group, stopped (SIGTERM, then SIGKILL) at `timeout` seconds; None
    when it succeeded, else why not in a few words."""
    if timeout <= 0:
        return "no time left"
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.communicate(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
        return "stopped at the time limit"
    if proc.returncode:
        lines = [line for line in err.strip().splitlines() if line.strip()]
        return lines[-1] if lines else f"exit code {proc.returncode}"
    return None
