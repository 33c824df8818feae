"""Compose the config tree with Hydra's compose API and Hydra's own override grammar."""

from __future__ import annotations

import difflib
from importlib import resources
from pathlib import Path
from typing import Any

from spectramind.errors import ConfigError


def config_dir() -> Path:
    """The config tree: inside the installed wheel, else the repository's top-level `configs/`."""
    packaged = Path(str(resources.files("spectramind"))) / "configs"
    if (packaged / "config.yaml").is_file():
        return packaged
    return Path(__file__).resolve().parents[3] / "configs"


def options(group: str) -> list[str]:
    """The options of a config group: the names of its YAML files (none for a folder that is no group)."""
    return sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))


def leaf_keys(tree: Any, prefix: str = "") -> list[str]:
    """Dotted paths of every key in a nested dict (inner nodes included)."""
    if not isinstance(tree, dict):
        return []
    keys = []
    for k, v in tree.items():
        path = f"{prefix}{k}"
        keys.append(path)
        keys.extend(leaf_keys(v, path + "."))
    return keys


def nearest(key: str, candidates: list[str]) -> str | None:
    match = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    return match[0] if match else None


def compose(overrides: list[str] | tuple[str, ...] = (), config_name: str = "config", resolve: bool = True) -> dict:
    """The resolved config as plain dicts and lists; any user mistake becomes a one-line ConfigError.
    resolve=False: interpolations such as ${trainer.max_epochs} as written (`config show`)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
            try:
                cfg = hydra_compose(config_name=config_name, overrides=list(overrides))
            except (HydraException, OmegaConfBaseException) as e:
                base = hydra_compose(config_name=config_name)
                raise ConfigError(_override_message(e, overrides, OmegaConf.to_container(base))) from e
        return OmegaConf.to_container(cfg, resolve=resolve, throw_on_missing=resolve)
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(_first_line(e)) from e
    finally:
        GlobalHydra.instance().clear()


def override_keys(overrides) -> tuple[str, ...]:
    """The dotted keys that overrides set, as Hydra's parser reads them (compose has already accepted them)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return tuple(o.key_or_group for o in OverridesParser.create().parse_overrides(list(overrides)))


def _first_line(e: Exception) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]


def _unparsable(override: str) -> bool:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        OverridesParser.create().parse_override(override)
    except Exception:
        return True
    return False


def _override_message(e: Exception, overrides, base: dict) -> str:
    """Hydra's first line, plus the nearest valid key when an override names a key that does not exist."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    message = _first_line(e)
    choices = getattr(e, "options", None)  # MissingConfigException: the group's valid choices
    if not choices and message.startswith("In '") and "Could not load '" in message:  # an option in a list
        choices = options(message.split("Could not load '")[1].split("'")[0].rsplit("/", 1)[0])
    if choices:
        return f"{message} (expected one of: {', '.join(sorted(choices))})"
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except Exception:
        bad = next((o for o in overrides if _unparsable(o)), None)
        return f"override '{bad}': {message}" if bad else message
    known = leaf_keys(base)
    for o in parsed:
        key = o.key_or_group
        if o.is_add() or o.is_delete() or key in known or key.startswith("hydra"):
            continue
        if "." not in key and (config_dir() / key).is_dir():
            continue  # a group choice: Hydra's message names the missing option
        hint = nearest(key, known)
        expected = f"did you mean '{hint}'?" if hint else "use '+key=value' to add a new key"
        return f"override '{o.input_line}': unknown key '{key}' ({expected})"
    return message
