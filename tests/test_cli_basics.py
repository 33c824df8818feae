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
