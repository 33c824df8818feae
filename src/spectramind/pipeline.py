"""What each stage reads: the fingerprint of its inputs (part of its run hash), and which earlier stages
the CLI's convenience path (`spectramind train` / `predict` / `evaluate` on a fresh machine) must run
first. The stage functions themselves never build an input; they name the command that makes it.
"""

from __future__ import annotations

from pathlib import Path

import xxhash

from spectramind import files
from spectramind.config.settings import Settings

ORDER = ("simulate", "calibrate", "fit")  # the stages that make inputs, in the order they run


def folders_for(command: str, s: Settings) -> tuple[str, ...]:
    """The raw folders `command` needs calibrated: predicting the submission needs only test/."""
    from spectramind.evaluate.predict import split_folders

    split = {"predict": s.predict.split, "evaluate": s.evaluate.split}.get(command)
    return split_folders(split) if split else ("train", "test")


def input_fingerprint(command: str, s: Settings) -> str:
    """The content fingerprint of what `command` reads ("absent" parts where an input is not there yet)."""
    from spectramind.data.prepare import FOLDERS, fingerprint_cache, source_fingerprint
    from spectramind.data.store import H5_NAME

    store = Path(s.data.store)
    if command == "simulate":
        return ""  # its output is defined by its settings and its code, both already in the hash
    if command == "calibrate":
        root = Path(s.data.root)
        return source_fingerprint(root, FOLDERS, fingerprint_cache(s)) if root.is_dir() else "absent"
    parts = [files.tree_fingerprint(store / H5_NAME)]  # uncached: one file, small beside the raw folder
    if command in ("predict", "evaluate") and s.predict.run is not None:
        from spectramind.evaluate import export
        from spectramind.evaluate.predict import resolve_run

        try:
            folder = resolve_run(s)  # the trained run, by its hash; an exported model, by its content
            parts.append(export.fingerprint(folder) if export.is_export(folder) else folder.name)
        except Exception:
            parts.append("absent")
    return xxhash.xxh3_64("\n".join(parts).encode()).hexdigest()


def missing_inputs(command: str, s: Settings) -> list[str]:
    """The input stages to run before `command`, in order (empty when every input is current)."""
    from spectramind.data.prepare import store_problem
    from spectramind.data.simulate import marker_for, read_marker
    from spectramind.models.baseline import NEEDS_BASELINE, sidecar_path

    needed = []
    if s.data.simulate is not None and read_marker(s.data.root) != marker_for(s.data.simulate, s.seed):
        needed.append("simulate")
    folders = folders_for(command, s)
    if needed or store_problem(s, folders, check_source=Path(s.data.root).is_dir()):
        needed.append("calibrate")
    if command != "calibrate" and s.model.target in NEEDS_BASELINE and (needed or not sidecar_path(s).is_file()):
        needed.append("fit")
    return needed


def resolve(command: str, overrides: list[str] | tuple[str, ...] = ()) -> tuple[dict, str]:
    """The validated config and the run hash `command` would have with its inputs as they are now."""
    from spectramind.config.stage import load, run_hash

    cfg, s = load(list(overrides))
    return cfg, run_hash(command, cfg, input_fingerprint(command, s))
