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
