"""Where and how a run computes: the device it asked for, and the seeds its layers draw from."""

from __future__ import annotations

import contextlib
import random
import signal
import threading
from collections.abc import Iterator

import numpy as np
import torch

from imgclf.errors import UsageError

__all__ = ["resolve_device", "seed_everything", "stop_on_signals"]


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


@contextlib.contextmanager
def stop_on_signals(console_print, stop_exception: type[Exception]) -> Iterator[None]:
    """While inside: the first Ctrl-C (SIGINT) or SIGTERM raises ``stop_exception`` (training
    ends and the run ships what it has), a second one interrupts as usual. Only the main thread
    can own signal handlers; elsewhere (a server's worker thread) nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}

    def request_stop(number, frame) -> None:
        for other in previous:  # the next signal ends the process as it would have
            signal.signal(other, signal.default_int_handler if other == signal.SIGINT else previous[other])
        console_print(f"{signal.Signals(number).name}: finishing with the best weights so far "
                      "(again to abandon the run)")  # fmt: skip
        raise stop_exception

    for number in previous:
        signal.signal(number, request_stop)
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
