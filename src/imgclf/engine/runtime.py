"""Where and how a run computes: the device it asked for, and the seeds its layers draw from."""

from __future__ import annotations

import random

import numpy as np
import torch

from imgclf.errors import UsageError

__all__ = ["resolve_device", "seed_everything"]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device must be auto, cpu, cuda or cuda:N, not {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for, but PyTorch sees no CUDA GPU here")
    return device


def seed_everything(seed: int) -> None:
    """Seeds the global generators that layers (dropout, init) draw from."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
