"""Validate a resolved config against the JSON Schema assembled from `schemas/<top-level key>.json`.

Each fragment describes one top-level section (trainer, data, model, ...). Every `_target_` in a
fragment is an `enum`: the union of those enums is the allowlist that any `_target_` anywhere in the
config must belong to, so a shared file or an override cannot instantiate an arbitrary callable.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from spectramind.config.compose import leaf_keys, nearest
from spectramind.errors import ConfigError

_FRAGMENTS = Path(__file__).with_name("schemas")

_ROOT_PROPERTIES = {
    "seed": {"type": "integer", "minimum": 0, "description": "global random seed"},
    "log_every_s": {"type": "number", "exclusiveMinimum": 0,
                    "description": "seconds between plain progress lines off a terminal"},
    "paths": {
        "type": "object",
        "additionalProperties": False,
        "required": ["output_dir"],
        "properties": {"output_dir": {"type": "string", "minLength": 1}},
    },
}


@lru_cache(maxsize=1)
def root_schema() -> dict:
    properties = dict(_ROOT_PROPERTIES)
    for fragment in sorted(_FRAGMENTS.glob("*.json")):
        properties[fragment.stem] = json.loads(fragment.read_text(encoding="utf-8"))
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "additionalProperties": False,
        "required": sorted(properties),
        "properties": properties,
    }


def allowed_targets(schema: Any = None) -> set[str]:
    schema = root_schema() if schema is None else schema
    found: set[str] = set()
    if isinstance(schema, dict):
        target = schema.get("properties", {}).get("_target_") if "properties" in schema else None
        if isinstance(target, dict):
            found.update(target.get("enum", []))
        for value in schema.values():
            found |= allowed_targets(value)
    elif isinstance(schema, list):
        for value in schema:
            found |= allowed_targets(value)
    return found


def validate(cfg: dict, prefer: tuple[str, ...] = ()) -> None:
    """Raise ConfigError with one line (key, what was expected, what came) for the first problem.

    Errors at keys named in `prefer` (the user's overrides) come first: a bad value that other keys
    interpolate should be reported where the user typed it.
    """
    from jsonschema import Draft202012Validator

    check_targets(cfg, allowed_targets())
    validator = Draft202012Validator(root_schema())
    def rank(e):
        dotted = ".".join(map(str, e.absolute_path))
        return (dotted not in prefer, len(e.absolute_path), dotted)

    errors = sorted(validator.iter_errors(cfg), key=rank)
    if errors:
        raise ConfigError(_describe(errors[0], cfg))


def check_targets(node: Any, allowed: set[str], path: str = "") -> None:
    """Refuse a `_target_` outside `allowed` anywhere in `node`, nested nodes included."""
    if isinstance(node, dict):
        target = node.get("_target_")
        if target is not None and target not in allowed:
            where = f"{path}._target_" if path else "_target_"
            raise ConfigError(
                f"{where}: expected one of the registered targets ({', '.join(sorted(allowed))}), "
                f"got {target!r}"
            )
        for k, v in node.items():
            check_targets(v, allowed, f"{path}.{k}" if path else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            check_targets(v, allowed, f"{path}[{i}]")


def _describe(error, cfg: dict) -> str:
    path = ".".join(str(p) for p in error.absolute_path)
    where = path or "<root>"
    kind, schema, value = error.validator, error.schema, error.instance
    if kind == "additionalProperties":
        extra = sorted(set(value) - set(schema.get("properties", {})))[0]
        key = f"{path}.{extra}" if path else extra
        hint = nearest(key, leaf_keys(_known_keys(schema, path)) or [])
        valid = ", ".join(sorted(schema.get("properties", {})))
        suggestion = f"did you mean '{hint}'?" if hint else f"expected one of: {valid}"
        return f"{key}: unknown key ({suggestion})"
    if kind == "required":
        missing = error.message.split("'")[1] if "'" in error.message else error.message
        key = f"{path}.{missing}" if path else missing
        return f"{key}: required key is missing"
    expected = {
        "type": lambda: f"a value of type {schema['type']}",
        "minimum": lambda: f"a value >= {schema['minimum']}",
        "exclusiveMinimum": lambda: f"a value > {schema['exclusiveMinimum']}",
        "maximum": lambda: f"a value <= {schema['maximum']}",
        "exclusiveMaximum": lambda: f"a value < {schema['exclusiveMaximum']}",
        "enum": lambda: "one of " + ", ".join(map(repr, schema["enum"])),
        "const": lambda: repr(schema["const"]),
        "minLength": lambda: f"a string of at least {schema['minLength']} characters",
        "minItems": lambda: f"a list of at least {schema['minItems']} items",
        "maxItems": lambda: f"a list of at most {schema['maxItems']} items",
        "pattern": lambda: f"a string matching {schema['pattern']}",
        "multipleOf": lambda: f"a multiple of {schema['multipleOf']}",
    }.get(kind, lambda: error.message)()
    return f"{where}: expected {expected}, got {value!r}"


def _known_keys(schema: dict, path: str) -> dict:
    """The valid keys at `path`, as a nested dict of dotted names, for typo suggestions."""
    def tree(s: dict) -> dict:
        return {k: tree(v) if isinstance(v, dict) and "properties" in v else None
                for k, v in s.get("properties", {}).items()}

    nested: Any = tree(schema)
    for part in reversed(path.split(".") if path else []):
        nested = {part: nested}
    return nested
