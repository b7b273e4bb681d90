"""Devices: a params device string (``auto | cpu | cuda[:N]``) resolved to a torch device, in one place."""

from __future__ import annotations

import torch

from tasks.errors import ConfigError


def resolve_device(spec: str, key: str) -> torch.device:
    """A params device string resolved: ``auto`` is CUDA when present, else CPU.

    ``key`` names the params key in errors (``train.device``, ``gait.device``).
    """
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(spec)
    except RuntimeError:
        raise ConfigError(f"{key}: {spec!r} is not a torch device (auto | cpu | cuda[:N])") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{key} asks for CUDA but torch sees no GPU (use auto or cpu)")
    return dev
