"""Run hashes, run-folder snapshots and the outputs index.

The run hash is xxh3-64 over the canonical JSON (sorted keys) of the config sections the command reads
less their volatile fields, together with the command, the content fingerprint of its input data and
the digest of the package source it runs. The same inputs give the same hash on any machine, so a second
run of the same thing finds the first run's folder; a changed value, input byte or line of code does not.
"""

from __future__ import annotations

import copy
import json
import os
import time
from pathlib import Path

import xxhash

from spectramind import files

INDEX_NAME = "run_hash_summary_v50.json"

# Where outputs go, how many processes read data and how progress and metrics are reported change nothing
# about the result (a finished run is not trained again to add a TensorBoard log).
VOLATILE = ("paths", "data.root", "data.store", "data.baseline", "data.num_workers", "trainer.progress_bar",
            "trainer.log_every_s", "log_every_s", "logger", "predict.out", "evaluate.out_dir")

# The sections each command reads: a change elsewhere (say predict.batch_size) must not make a
# finished training run look new. Commands not listed hash the whole config.
SECTIONS = {
    "simulate": ("seed", "data"),
    "calibrate": ("seed", "data"),
    "fit": ("seed", "data", "fit"),
    "train": ("seed", "data", "fit", "trainer", "model", "loss", "optimizer", "scheduler"),
    "predict": ("seed", "data", "fit", "trainer", "model", "loss", "optimizer", "scheduler", "predict"),
    "evaluate": ("seed", "data", "fit", "trainer", "model", "loss", "optimizer", "scheduler", "predict",
                 "evaluate"),
}


def canonical(cfg: dict) -> str:
    stable = copy.deepcopy(cfg)
    for dotted in VOLATILE:
        *parents, leaf = dotted.split(".")
        node = stable
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return json.dumps(stable, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=True)


def run_hash(cfg: dict, command: str, data_fingerprint: str, code: str) -> str:
    """`code`: provenance.code_digest(command), the version and source of what the command runs."""
    sections = SECTIONS.get(command)
    read = cfg if sections is None else {k: v for k, v in cfg.items() if k in sections}
    h = xxhash.xxh3_64()
    for part in (command, canonical(read), data_fingerprint, code):
        h.update(part.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()


def run_dir(output_dir: str | os.PathLike, hash_: str) -> Path:
    return Path(output_dir) / "runs" / hash_


def snapshot(cfg: dict, overrides: list[str], command: str, hash_: str, env: dict) -> Path:
    """Write config.yaml, overrides.yaml and env.json into the run folder and index the run."""
    import yaml

    folder = run_dir(cfg["paths"]["output_dir"], hash_)
    files.write_text(folder / "config.yaml", yaml.safe_dump(cfg, sort_keys=True))
    files.write_text(folder / "overrides.yaml", yaml.safe_dump(list(overrides)))
    files.write_json(folder / "env.json", env)
    index_run(cfg["paths"]["output_dir"], hash_, {"command": command, "status": "started"})
    return folder


def index_run(output_dir: str | os.PathLike, hash_: str, fields: dict) -> dict:
    """Merge `fields` into the run's entry of the outputs index (locked: concurrent writers lose nothing)."""
    def change(index: dict) -> None:
        entry = index.setdefault(hash_, {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        entry.update(fields)
        entry["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")

    return files.update_json(Path(output_dir) / INDEX_NAME, change)


def evaluations(output_dir: str | os.PathLike) -> dict[str, str]:
    """The newest complete evaluation of each training run, from the outputs index: trained run hash ->
    the evaluate run's hash (its folder holds metrics.json; the training run's folder is never written)."""
    index = files.read_json(Path(output_dir) / INDEX_NAME)
    newest: dict[str, tuple[str, str]] = {}
    for hash_, entry in index.items():
        trained = entry.get("evaluated_run")
        if entry.get("command") == "evaluate" and entry.get("status") == "complete" and trained:
            newest[trained] = max(newest.get(trained, ("", "")), (entry.get("updated", ""), hash_))
    return {trained: hash_ for trained, (_, hash_) in newest.items()}
