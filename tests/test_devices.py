import pytest
import torch

from spectramind.devices import resolve_device
from spectramind.errors import ConfigError


def test_auto_and_cpu_resolve_on_this_machine():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto", "trainer.device").type == expected
    assert resolve_device("cpu", "trainer.device") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_a_gpu_names_the_key():
    with pytest.raises(ConfigError, match="^predict.device: expected a visible CUDA GPU"):
        resolve_device("cuda", "predict.device")
