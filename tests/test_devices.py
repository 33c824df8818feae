import pytest
import torch

from spectramind.devices import process_count, resolve_device
from spectramind.errors import ConfigError


def test_auto_and_cpu_resolve_on_this_machine():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto", "trainer.device").type == expected
    assert resolve_device("cpu", "trainer.device") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_a_gpu_names_the_key():
    with pytest.raises(ConfigError, match="^predict.device: expected a visible CUDA GPU"):
        resolve_device("cuda", "predict.device")


@pytest.mark.parametrize(("visible", "device", "expected"), [(2, "auto", 2), (2, "cuda", 2), (1, "auto", 1),
                                                             (2, "cpu", 1), (0, "auto", 1)])
def test_devices_auto_is_one_process_per_visible_gpu_when_training_on_cuda(monkeypatch, visible, device, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: visible > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)
    assert process_count("auto", device) == expected
    assert process_count(3, device) == 3  # a number is taken as given


def test_kaggle_safe_uses_every_gpu_and_the_schema_refuses_other_words():
    from conftest import make_settings

    assert make_settings("trainer=kaggle_safe").trainer.devices == "auto"
    with pytest.raises(ConfigError, match="trainer.devices"):
        make_settings("trainer.devices=all")
