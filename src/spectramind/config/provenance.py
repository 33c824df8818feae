"""Which package source each stage runs, and its digest: part of the run hash, recorded in env.json.

A stage's source set is the closure of the `spectramind` modules its entry module imports (at module
level or inside functions, read from the source with `ast`), plus the foundation every stage runs
(compose, validate, hash, snapshot) and the command line's own file. So an edit to `models/fit.py`
gives new fit, train, predict and evaluate runs and leaves simulate and calibrate alone; dvc.yaml lists
the same files (a test keeps the two equal).
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import xxhash

from spectramind import __version__

PACKAGE = Path(__file__).resolve().parents[1]
FOUNDATION = "spectramind.config.stage"
ENTRY = {
    "simulate": "spectramind.data.simulate",
    "calibrate": "spectramind.data.prepare",
    "fit": "spectramind.models.baseline",
    "train": "spectramind.train.setup",
    "predict": "spectramind.evaluate.predict",
    "evaluate": "spectramind.evaluate.evaluate",
}
# Every stage runs through the command line: the file itself belongs to each (its lazy imports are the
# stages' own entry points, so its closure is not followed).
CLI = "spectramind.cli"
# The stages that instantiate `_target_` sections (model, loss, optimizer, scheduler).
INSTANTIATES = ("train", "predict", "evaluate")


def _path(module: str, package: Path) -> Path | None:
    parts = module.split(".")[1:]
    base = package.joinpath(*parts)
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    file = base.with_suffix(".py")
    return file if file.is_file() else None


@cache  # each stage's sources share most files: parse each once per process
def _imports(path: Path, module: str) -> frozenset[str]:
    """Every `spectramind.*` module named by an import in `path` (a `from x import y` names x.y if a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                anchor = module.split(".")[: -node.level] if path.name != "__init__.py" else module.split(".")
                base = ".".join(anchor[: len(anchor) - (node.level - 1)] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return frozenset(m for m in found if m == "spectramind" or m.startswith("spectramind."))


@cache
def stage_sources(stage: str, package: Path = PACKAGE) -> tuple[str, ...]:
    """Paths (relative to the package folder, POSIX) of the source files `stage` runs; every file for a
    command that is not a pipeline stage."""
    if stage not in ENTRY:
        return tuple(sorted(p.relative_to(package).as_posix() for p in package.rglob("*.py")))
    seen: dict[str, Path] = {}
    queue = [ENTRY[stage], FOUNDATION, "spectramind"]
    if stage in INSTANTIATES:  # what Hydra imports by name: every allowlisted class or function of ours
        from spectramind.config.schema import allowed_targets

        queue += [t.rsplit(".", 1)[0] for t in allowed_targets() if t.startswith("spectramind.")]
    while queue:
        module = queue.pop()
        if module in seen:
            continue
        path = _path(module, package)
        if path is None:
            continue
        seen[module] = path
        parent = module.rsplit(".", 1)[0]
        queue.extend(_imports(path, module) | ({parent} if "." in module else set()))
    seen[CLI] = _path(CLI, package)
    return tuple(sorted(p.relative_to(package).as_posix() for p in seen.values()))


@cache
def code_digest(stage: str, package: Path = PACKAGE) -> str:
    """xxh3-64 over the package version and the path and bytes of every source file `stage` runs."""
    h = xxhash.xxh3_64(__version__.encode())
    for rel in stage_sources(stage, package):
        h.update(b"\0" + rel.encode() + b"\0")
        h.update((package / rel).read_bytes())
    return h.hexdigest()
