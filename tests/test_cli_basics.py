"""The CLI's front door: version, help, config show."""

import yaml

from spectramind import __version__


def test_version(cli):
    result = cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"spectramind {__version__}"


def test_help_lists_every_command_with_a_line(cli):
    result = cli("--help")
    assert result.returncode == 0
    commands = result.stdout.split("Commands:")[1].splitlines()
    names = {line.split()[0] for line in commands if line.startswith("  ")}
    assert {"config", "train"} <= names
    for line in commands:
        if line.startswith("  ") and not line.startswith("   "):
            assert len(line.split(None, 1)) == 2, f"command without a description: {line!r}"


def test_config_show_applies_group_and_key_overrides(cli, tmp_path):
    result = cli("config", "show", "trainer=ci_fast", "trainer.max_epochs=3", "+extra_note=1", cwd=tmp_path)
    assert result.returncode == 2  # an added key must still pass the schema
    result = cli("config", "show", "trainer=ci_fast", "trainer.max_epochs=3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    cfg = yaml.safe_load(result.stdout)
    assert cfg["trainer"]["name"] == "ci_fast" and cfg["trainer"]["max_epochs"] == 3
    assert cfg["trainer"]["batch_size"] == 8


def _root_groups() -> dict[str, list[str]]:
    """group -> its options, straight from the shipped YAML files (the root config's choice first)."""
    from spectramind.config.compose import config_dir

    root = yaml.safe_load((config_dir() / "config.yaml").read_text())
    picks = [e for e in root["defaults"] if isinstance(e, dict)]
    chosen = {k: v if isinstance(v, list) else [v] for e in picks for k, v in e.items()}
    files = {g: sorted(p.stem for p in (config_dir() / g).glob("*.yaml")) for g in chosen}
    return {g: [*chosen[g], *(o for o in files[g] if o not in chosen[g])] for g in chosen}


def test_help_of_the_app_and_of_each_command_lists_the_config_groups_and_options(cli):
    expected = _root_groups()
    assert expected["trainer"][0] == "defaults" and {"ci_fast", "kaggle_safe", "ablation"} <= set(expected["trainer"])
    for args in (["--help"], ["train", "--help"], ["predict", "--help"], ["config", "show", "--help"]):
        result = cli(*args)
        assert result.returncode == 0, result.stderr
        for group, options in expected.items():
            assert f"    {group}: {' | '.join(options)}\n" in result.stdout, (args, group)
    assert "Config groups" not in cli("kaggle", "bundle", "--help").stdout  # takes no overrides


def test_config_groups_gives_each_option_its_first_comment_line(cli):
    from spectramind.config.compose import config_dir

    result = cli("config", "groups")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for group, options in _root_groups().items():
        for i, option in enumerate(options):
            first = (config_dir() / group / f"{option}.yaml").read_text().splitlines()[0].lstrip("# ")
            row = next(line for line in lines if line[2:].startswith(f"{group}={option} "))
            assert row.startswith("*" if i == 0 else " ") and row.endswith(first), row


def test_config_show_keeps_interpolations_and_resolve_gives_the_values(cli, tmp_path):
    shown = yaml.safe_load(cli("config", "show", "trainer.max_epochs=3", cwd=tmp_path).stdout)
    assert shown["scheduler"]["max_epochs"] == "${trainer.max_epochs}"
    assert shown["trainer"]["log_every_s"] == "${log_every_s}"
    resolved = cli("config", "show", "--resolve", "trainer.max_epochs=3", cwd=tmp_path)
    assert resolved.returncode == 0, resolved.stderr
    values = yaml.safe_load(resolved.stdout)
    assert values["scheduler"]["max_epochs"] == 3 and values["trainer"]["log_every_s"] == values["log_every_s"]
    assert cli("config", "show", "trainer.max_epochs=0").returncode == 2  # validated either way


def _complete(shell: str, words: str, tmp_path) -> list[str]:
    """What `spectramind`'s completion answers (typer's protocol: zsh gets the whole line, bash the words)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(sys.executable).parent / "spectramind"
    env = {**os.environ, "_SPECTRAMIND_COMPLETE": f"complete_{shell}"}
    if shell == "zsh":
        env["_TYPER_COMPLETE_ARGS"] = words
    else:
        env.update(COMP_WORDS=words, COMP_CWORD=str(len(words.split(" ")) - 1))  # a trailing space: a new word
    done = subprocess.run([str(script)], env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_shell_completion_completes_commands(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    assert _complete("bash", "spectramind con", tmp_path) == ["config"]
    script = Path(sys.executable).parent / "spectramind"
    assert "--install-completion" in subprocess.run([str(script), "--help"], capture_output=True, text=True).stdout


def test_shell_completion_completes_groups_and_their_options(tmp_path):
    groups = _root_groups()
    zsh = " ".join(_complete("zsh", "spectramind train tr", tmp_path))
    assert '"trainer="' in zsh
    zsh = " ".join(_complete("zsh", "spectramind train trainer=c", tmp_path))
    assert '"trainer=ci_fast"' in zsh and "kaggle_safe" not in zsh
    zsh = " ".join(_complete("zsh", "spectramind config show logger=[jsonl,t", tmp_path))
    assert '"logger=[jsonl,tensorboard"' in zsh
    # bash splits at "=": the word before it is the group, and the answer is the bare option
    assert _complete("bash", "spectramind train model = ", tmp_path) == groups["model"]
    assert _complete("bash", "spectramind train model = r", tmp_path) == [
        o for o in groups["model"] if o.startswith("r")]
    assert set(_complete("bash", "spectramind predict trainer=ci_fast optimizer = a", tmp_path)) == {
        o for o in groups["optimizer"] if o.startswith("a")}
