"""User mistakes in overrides or config: exit code 2, one line naming the key, no traceback."""

import pytest

from spectramind.config.compose import compose
from spectramind.config.schema import allowed_targets, validate
from spectramind.errors import ConfigError


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("trainer.max_epoch=3", "did you mean 'trainer.max_epochs'"),
        ("+trainer.max_epoch=3", "trainer.max_epoch: unknown key (did you mean 'trainer.max_epochs'?)"),
        ("trainer.max_epochs=-3", "trainer.max_epochs: expected a value >= 1, got -3"),
        ("trainer.budgets.time_min=0", "trainer.budgets.time_min: expected a value > 0, got 0"),
        ("trainer.precision=fp8", "trainer.precision: expected one of 'fp32', 'fp16', 'bf16', got 'fp8'"),
        ("seed=abc", "seed: expected a value of type integer, got 'abc'"),
        ("~seed", "seed: required key is missing"),
        ("trainer=nope", "expected one of: ablation, ci_fast, defaults, kaggle_safe"),
        ("trainer.max_epochs=[1", "override 'trainer.max_epochs=[1'"),
    ],
)
def test_bad_override_exits_2_with_one_line(cli, override, expected):
    result = cli("config", "validate", override)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]
    assert "Traceback" not in result.stderr


def test_debug_shows_the_traceback(cli):
    result = cli("--debug", "config", "validate", "trainer.max_epochs=-3")
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "ConfigError" in result.stderr


def test_good_config_validates(cli):
    result = cli("config", "validate", "trainer=kaggle_safe")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("config ok (run hash ")


def test_every_profile_validates():
    for profile in ("defaults", "kaggle_safe", "ci_fast", "ablation"):
        validate(compose([f"trainer={profile}"]))


def test_unregistered_target_is_refused(cli):
    result = cli("config", "validate", "+trainer.grad_clip._target_=os.system")
    assert result.returncode == 2
    assert "trainer.grad_clip._target_: expected one of the registered targets" in result.stderr
    assert "got 'os.system'" in result.stderr


def test_allowlist_only_names_package_or_torch_callables():
    for target in allowed_targets():
        assert target.startswith(("spectramind.", "torch.")), target


def test_registered_target_is_accepted_where_declared():
    cfg = compose([])
    cfg["evil"] = {"_target_": "subprocess.run"}
    with pytest.raises(ConfigError, match="evil._target_"):
        validate(cfg)
