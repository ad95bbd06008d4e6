"""The ``imgclf`` program's entry point: glibc's allocator settings for large tensors, then the CLI.

glibc's malloc serves every buffer over its mmap threshold (at most 32 MiB when set through
``mallopt``) with a fresh ``mmap`` and returns it to the system when freed, so each training step
of a 224 px network faults its activation buffers in again, page by page. Measured on 2 CPU cores
(EfficientNet-Lite0, 224 px, channels-last; ``bench/allocator.py``): with the settings below,
training steps (batch 32) ran at 15.0 instead of 9.9 images/s with a tenth of the page faults, and
forward passes at batch 64 at 66.3 instead of 41.2; at batch 8 (buffers under the threshold) they
change nothing (54.3 against 52.0). Peak memory grows by a third (5.5 against 4.1 GB). ``mallopt``
cannot set a threshold above 32 MiB (tried: 11.2 images/s training), so the settings go in
``GLIBC_TUNABLES``, which glibc reads only when a process starts: the program re-executes itself
once with them.

Not for ``imgclf serve``: a server must give memory back after a burst of requests. Set
``IMGCLF_MALLOC=system`` to keep glibc's defaults; a ``GLIBC_TUNABLES`` already set is left alone.
Importing imgclf as a library changes nothing (the host program owns its allocator).
"""

from __future__ import annotations

import contextlib
import os
import platform
import sys

__all__ = ["ALLOCATOR_TUNABLES", "main", "wants_tuned_allocator"]

# Buffers up to 4 GiB come from the heap, and the heap keeps up to 16 GiB of freed memory.
ALLOCATOR_TUNABLES = "glibc.malloc.mmap_threshold=4294967295:glibc.malloc.trim_threshold=17179869184"
NOT_TUNED_COMMANDS = ("serve",)


def _command(argv: list[str]) -> str | None:
    return next((item for item in argv if not item.startswith("-")), None)


def wants_tuned_allocator(argv: list[str], environ: dict[str, str]) -> bool:
    """Whether to re-execute with ``ALLOCATOR_TUNABLES``: glibc on Linux, not asked for already
    or refused, and a command that computes on large tensors."""
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return False
    if environ.get("IMGCLF_MALLOC", "").lower() == "system" or "GLIBC_TUNABLES" in environ:
        return False
    return _command(argv) not in NOT_TUNED_COMMANDS


def main() -> int:
    argv = sys.argv[1:]
    if wants_tuned_allocator(argv, dict(os.environ)):
        environ = {**os.environ, "GLIBC_TUNABLES": ALLOCATOR_TUNABLES}
        # When the interpreter cannot be re-executed (an unusual set-up), run with the defaults.
        with contextlib.suppress(OSError):
            os.execve(sys.executable, [sys.executable, "-m", "imgclf", *argv], environ)
    from imgclf.cli.main import main as run_command

    return run_command(argv)
