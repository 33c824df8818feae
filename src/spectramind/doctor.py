"""`spectramind doctor`: what this machine offers against what the resolved config asks of it.

Reports the interpreter, torch and CUDA, each GPU and its memory, the trainer budgets in force, free disk
and host memory, and the data found at `data.root` and `data.store`. Anything that would make the run
fail or behave differently than the profile intends becomes a warning; the doctor itself never fails.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from spectramind import files
from spectramind.data.store import MANIFEST_NAME

GIB = 2**30
# Files the competition's layout has at its root (reference section 1); train.csv only where labels exist.
ROOT_FILES = ("adc_info.csv", "axis_info.parquet", "wavelengths.csv", "train_star_info.csv",
              "test_star_info.csv")
SIGNALS = ("AIRS-CH0_signal", "FGS1_signal")  # each as <name>_<k>.parquet, or <name>.parquet (2024)


def diagnose(cfg: dict) -> dict:
    """Facts about the environment and the data for a resolved config, and the warnings they raise."""
    report = {
        "python": sys.version.split()[0],
        "on_kaggle": bool(os.environ.get("KAGGLE_KERNEL_RUN_TYPE")) or Path("/kaggle/input").is_dir(),
        **_accelerator(),
        "trainer": _trainer(cfg["trainer"]),
        "resources": _resources(cfg),
        "data": _data(cfg["data"], Path(cfg["paths"]["output_dir"])),
    }
    report["warnings"] = warnings(report)
    return report


def _accelerator() -> dict:
    import torch

    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            free, total = torch.cuda.mem_get_info(i)
            gpus.append({"index": i, "name": props.name, "capability": f"{props.major}.{props.minor}",
                         "memory_gib": round(total / GIB, 2), "free_gib": round(free / GIB, 2)})
    return {"torch": torch.__version__, "cuda": torch.version.cuda, "gpus": gpus}


def _trainer(trainer: dict) -> dict:
    budgets = trainer["budgets"]
    time_min = budgets["time_min"]
    return {
        "name": trainer["name"], "device": trainer["device"], "precision": trainer["precision"],
        "budgets": budgets,
        # The loop plans against the budget less the reserve it keeps for prediction.
        "train_time_min": None if time_min is None else time_min - budgets["predict_reserve_min"],
    }


def _resources(cfg: dict) -> dict:
    import psutil

    where = _existing_ancestor(Path(cfg["paths"]["output_dir"]).resolve())
    memory = psutil.virtual_memory()
    return {"output_dir": cfg["paths"]["output_dir"], "disk_checked_at": str(where),
            "free_disk_gib": round(shutil.disk_usage(where).free / GIB, 2),
            "host_memory_gib": round(memory.total / GIB, 2),
            "available_memory_gib": round(memory.available / GIB, 2)}


def _existing_ancestor(path: Path) -> Path:
    while not path.exists():
        path = path.parent
    return path


def _data(data: dict, output_dir: Path) -> dict:
    root, store = Path(data["root"]), Path(data["store"])
    found = {"name": data["name"], "root": str(root), "root_exists": root.is_dir(),
             "store": str(store), "store_exists": store.is_dir()}
    if root.is_dir():
        found["missing_files"] = [name for name in ROOT_FILES if not (root / name).is_file()]
        for split in ("train", "test"):
            planets = [p for p in (root / split).iterdir() if p.is_dir()] if (root / split).is_dir() else []
            found[f"{split}_planets"] = len(planets)
            found[f"{split}_planets_without_signal"] = sum(not _has_signals(p) for p in planets)
    if store.is_dir():
        from spectramind.data.prepare import FINGERPRINT_CACHE, source_fingerprint

        manifest = files.read_json(store / MANIFEST_NAME)  # written last by calibrate: it marks a complete store
        found["store_complete"] = bool(manifest)
        if manifest:
            found["store_planets"] = len(manifest.get("planets", []))
            found["store_splits"] = {name: len(ids) for name, ids in manifest.get("splits", {}).items()}
            source = manifest.get("source_fingerprint")
            held = tuple(manifest.get("folders", ("train", "test")))
            found["store_matches_root"] = None if source is None else source == source_fingerprint(
                root, held, output_dir / FINGERPRINT_CACHE)
    return found


def _has_signals(planet: Path) -> bool:
    return all(any(planet.glob(f"{name}*.parquet")) for name in SIGNALS)


def warnings(report: dict) -> list[str]:
    """One line per problem: what is wrong, where, and what the config expected."""
    out = []
    trainer, res, data = report["trainer"], report["resources"], report["data"]
    budgets = trainer["budgets"]
    if not report["gpus"] and (trainer["name"] == "kaggle_safe" or trainer["device"] == "cuda"):
        out.append(f"trainer={trainer['name']} expects a GPU (device={trainer['device']}) but torch sees "
                   f"none (torch {report['torch']}, CUDA build {report['cuda'] or 'none'}): "
                   "training would run on the CPU")
    if report["gpus"] and budgets["gpu_memory_gib"] is not None:
        for g in (g for g in report["gpus"] if g["memory_gib"] < budgets["gpu_memory_gib"]):
            out.append(f"GPU {g['index']} ({g['name']}) has {g['memory_gib']} GiB, less than "
                       f"trainer.budgets.gpu_memory_gib={budgets['gpu_memory_gib']}")
    if res["free_disk_gib"] < budgets["min_free_disk_gib"]:
        out.append(f"low disk: {res['free_disk_gib']} GiB free at {res['disk_checked_at']}, below "
                   f"trainer.budgets.min_free_disk_gib={budgets['min_free_disk_gib']}")
    if budgets["host_memory_gib"] is not None and budgets["host_memory_gib"] > res["host_memory_gib"]:
        out.append(f"trainer.budgets.host_memory_gib={budgets['host_memory_gib']} exceeds this machine's "
                   f"{res['host_memory_gib']} GiB of RAM")
    out.extend(_data_warnings(data))
    return out


def _data_warnings(data: dict) -> list[str]:
    if not data["root_exists"]:  # simulated data is made on first use; any other data must be there
        synthetic = data["name"] == "synthetic"
        return [] if synthetic else [f"data.root={data['root']} does not exist (data={data['name']}): "
                                     "point data.root at the competition folder"]
    out = []
    if data["missing_files"]:
        out.append(f"data.root={data['root']} lacks {', '.join(data['missing_files'])} "
                   "(expected the competition's layout)")
    if data["train_planets"] + data["test_planets"] == 0:
        out.append(f"data.root={data['root']} has no planet folders under train/ or test/")
    for split in ("train", "test"):
        lacking = data[f"{split}_planets_without_signal"]
        if lacking:
            out.append(f"{lacking} of {data[f'{split}_planets']} planet folders under {data['root']}/{split} "
                       "lack an AIRS-CH0 or FGS1 signal parquet")
    if data["store_exists"] and not data["store_complete"]:
        out.append(f"data.store={data['store']} has no {MANIFEST_NAME}: an unfinished calibration, "
                   "which the next run repeats")
    if data.get("store_matches_root") is False:
        out.append(f"data.store={data['store']} was calibrated from other data than "
                   f"data.root={data['root']}: the next run calibrates again")
    return out


def render(report: dict) -> str:
    """The report as aligned text lines, warnings last."""
    t, r, d = report["trainer"], report["resources"], report["data"]
    gpus = [f"{g['index']}: {g['name']} (sm {g['capability']}), {g['memory_gib']} GiB, "
            f"{g['free_gib']} GiB free" for g in report["gpus"]] or ["none"]
    lines = [
        f"python      {report['python']}",
        f"torch       {report['torch']} (CUDA build {report['cuda'] or 'none'})",
        *(f"gpu         {g}" for g in gpus),
        f"kaggle      {'yes' if report['on_kaggle'] else 'no'}",
        f"trainer     {t['name']} (device={t['device']}, precision={t['precision']})",
        "budgets     " + ", ".join(f"{k}={v}" for k, v in t["budgets"].items()),
        f"train time  {'unbounded' if t['train_time_min'] is None else str(t['train_time_min']) + ' min'} "
        "(budget less the prediction reserve)",
        f"disk        {r['free_disk_gib']} GiB free at {r['disk_checked_at']}",
        f"memory      {r['host_memory_gib']} GiB RAM, {r['available_memory_gib']} GiB available",
        f"data        {d['name']}: root {d['root']} ({_root_state(d)})",
    ]
    if d["root_exists"]:
        lines.append(f"planets     train {d['train_planets']}, test {d['test_planets']}")
    lines.append(f"store       {d['store']} ({_store_state(d)})")
    lines += [f"warning: {w}" for w in report["warnings"]] or ["no warnings"]
    return "\n".join(lines) + "\n"


def _root_state(data: dict) -> str:
    if data["root_exists"]:
        return "found"
    return "not yet simulated: made on first use" if data["name"] == "synthetic" else "missing"


def _store_state(data: dict) -> str:
    if not data["store_exists"]:
        return "missing"
    if not data["store_complete"]:
        return "incomplete"
    splits = ", ".join(f"{name} {n}" for name, n in data["store_splits"].items())
    return f"{data['store_planets']} planets" + (f"; splits {splits}" if splits else "")
