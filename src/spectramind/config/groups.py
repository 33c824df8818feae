"""The config groups and their options, read from the shipped config tree (never a list kept in code):
for `--help` and `spectramind config groups`."""

from __future__ import annotations

from spectramind.config.compose import config_dir, options

MANY = "several at once: logger=[jsonl,tensorboard]"


def groups() -> dict[str, list[str]]:
    """Each group the root config picks from (`group=option`) and its options, the root's choice first.
    Groups that other configs pull in as parts (data's calibrate/ and split/) are no choice of their own."""
    found = {}
    for group, first in sorted(_root_choices().items()):
        found[group] = [*first, *(n for n in options(group) if n not in first)]
    return found


def _root_choices() -> dict[str, list[str]]:
    """The options the root config's defaults list picks, per group (a list where it picks several)."""
    import yaml

    root = yaml.safe_load((config_dir() / "config.yaml").read_text(encoding="utf-8"))
    picked = {}
    for entry in root["defaults"]:
        if isinstance(entry, dict):
            ((group, option),) = entry.items()
            picked[group] = option if isinstance(option, list) else [option]
    return picked


def description(group: str, option: str) -> str:
    """The option's first comment line, which says what it is."""
    for line in (config_dir() / group / f"{option}.yaml").read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("#").strip()
        if line.strip():
            break
    return ""


def help_text() -> str:
    """The groups and their options as a help epilog (`\\b`: Click keeps the lines as they are)."""
    lines = [f"Config groups, as group=option (the first is the default; {MANY}):"]
    lines += [f"  {group}: {' | '.join(names)}" for group, names in groups().items()]
    return "\b\n" + "\n".join(lines)


def listing() -> str:
    """`spectramind config groups`: every option of every group with its description, one line each."""
    found = groups()
    width = max(len(f"{g}={o}") for g, names in found.items() for o in names)
    lines = []
    for group, names in found.items():
        for i, option in enumerate(names):
            mark = "*" if i == 0 else " "
            lines.append(f"{mark} {f'{group}={option}':<{width}}  {description(group, option)}")
    return "\n".join(lines) + f"\n(* the default; {MANY})\n"


def complete(before: list[str], incomplete: str) -> list[tuple[str, str]]:
    """Shell completion of an override: a group's name, then its options with their descriptions
    (`trainer=c` -> `trainer=ci_fast`; in a list, its last item: `logger=[jsonl,d` -> `logger=[jsonl,dvclive`).
    `before` are the words typed before it. Bash splits a word at `=` (COMP_WORDBREAKS) and replaces only the
    text after it: there the group is the word before the `=`, and the completions are bare option names."""
    found = groups()
    if len(before) > 1 and before[-1] == "=":
        group, typed, lead = before[-2], incomplete, ""
    else:
        group, eq, typed = incomplete.partition("=")
        if not eq:
            return [(f"{g}=", " | ".join(names)) for g, names in found.items() if g.startswith(group)]
        lead = f"{group}="
    cut = max(typed.rfind(","), typed.rfind("[")) + 1
    return [(f"{lead}{typed[:cut]}{option}", description(group, option))
            for option in found.get(group, []) if option.startswith(typed[cut:])]
