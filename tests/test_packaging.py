"""The wheel ships the config tree: an installed `spectramind` finds its configs from any folder."""

import os
import subprocess
import sys
import zipfile

import pytest
from conftest import REPO


@pytest.mark.slow
def test_installed_wheel_finds_its_configs_from_another_folder(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheels), str(REPO)], check=True, timeout=300)
    wheel = next(wheels.glob("spectramind-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "spectramind/configs/config.yaml" in names
    assert "spectramind/configs/trainer/kaggle_safe.yaml" in names
    assert "spectramind/config/schemas/trainer.json" in names

    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, timeout=300)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target)}
    where = subprocess.run([sys.executable, "-c", "from spectramind.config.compose import config_dir; "
                            "print(config_dir())"], cwd=elsewhere, env=env, capture_output=True, text=True, check=True)
    assert where.stdout.strip().startswith(str(target))
    shown = subprocess.run([sys.executable, "-m", "spectramind", "config", "show", "trainer=ci_fast"], cwd=elsewhere,
                           env=env, capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert "name: ci_fast" in shown.stdout
