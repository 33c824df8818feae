"""The installed dependency closure of spectramind: the wheels a Kaggle bundle ships, at the installed versions."""

from __future__ import annotations

from importlib import metadata

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def closure(roots: list[str], python_version: str | None = None) -> dict[str, str]:
    """Canonical name -> installed version for `roots` and everything they require, transitively.

    Markers are evaluated for `python_version` ("3.12") when given, so the closure can be taken
    for a target interpreter other than the running one. Extras named in a requirement are followed.
    """
    env = {}
    if python_version:
        env = {"python_version": python_version, "python_full_version": f"{python_version}.0"}
    found: dict[str, str] = {}
    seen: set[tuple[str, frozenset]] = set()
    queue = [(Requirement(r), "") for r in roots]
    while queue:
        req, extra = queue.pop()
        if req.marker and not req.marker.evaluate({**env, "extra": extra}):
            continue
        name = canonicalize_name(req.name)
        if (name, frozenset(req.extras)) in seen:
            continue
        seen.add((name, frozenset(req.extras)))
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError as e:
            raise RuntimeError(f"{req.name} (required as '{req}') is not installed here") from e
        found[name] = dist.version
        for wanted in [""] + sorted(req.extras):
            queue.extend((Requirement(r), wanted) for r in dist.requires or [] if _for_extra(r, wanted))
    return dict(sorted(found.items()))


def _for_extra(line: str, extra: str) -> bool:
    """Base requirements when `extra` is empty, else only those that the extra adds."""
    return ("extra ==" in line.replace('"', "'")) == bool(extra)


def runtime_requirements(package: str = "spectramind") -> list[str]:
    """The package's own runtime requirements (its extras left out)."""
    return [r for r in metadata.requires(package) or [] if "extra ==" not in r.replace('"', "'")]
