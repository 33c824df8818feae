"""The torch device a config's `device` value (auto, cpu or cuda) names on this machine."""

from __future__ import annotations

import torch

from spectramind.errors import ConfigError


def resolve_device(name: str, key: str, local_rank: int = 0) -> torch.device:
    """`auto` takes the GPU when one is visible; `cuda` without one is the user's mistake (`key` names it)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{key}: expected a visible CUDA GPU for 'cuda', found none; use {key}=cpu or auto")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def process_count(devices: int | str, device: str) -> int:
    """Training processes for `trainer.devices`: a number as given; `auto`, one per visible GPU when training
    runs on CUDA (Kaggle's T4 x2: two DDP processes), else one."""
    if devices != "auto":
        return int(devices)
    return torch.cuda.device_count() if resolve_device(device, "trainer.device").type == "cuda" else 1
