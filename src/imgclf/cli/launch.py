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

Not for ``imgclf serve``: a server must give memory back after a burst of requests; nor for
``imgclf predict MODEL.onnx``, which never loads PyTorch (onnxruntime keeps its tensors in its own
arena), so re-executing would only add an interpreter start (about 25 ms). Set
``IMGCLF_MALLOC=system`` to keep glibc's defaults; a ``GLIBC_TUNABLES`` already set is left alone.
Importing imgclf as a library changes nothing (the host program owns its allocator).
"""

from __future__ import annotations

import contextlib
import os
import sys

__all__ = ["ALLOCATOR_TUNABLES", "main", "wants_tuned_allocator"]

# Buffers up to 4 GiB come from the heap, and the heap keeps up to 16 GiB of freed memory.
ALLOCATOR_TUNABLES = "glibc.malloc.mmap_threshold=4294967295:glibc.malloc.trim_threshold=17179869184"
NOT_TUNED_COMMANDS = ("serve",)


def _computes_with_pytorch(argv: list[str]) -> bool:
    """Whether the command may run PyTorch on large tensors (an option's value may be taken for a
    positional argument: the answer is then yes, the safe side)."""
    positional = [item for item in argv if not item.startswith("-")]
    if not positional or positional[0] in NOT_TUNED_COMMANDS:
        return False
    return not (positional[0] == "predict" and len(positional) > 1 and positional[1].lower().endswith(".onnx"))


def _uses_glibc() -> bool:
    # confstr answers at once; platform.libc_ver() reads the interpreter's binary (7 ms).
    try:
        return sys.platform == "linux" and os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")
    except (ValueError, OSError, AttributeError):  # not glibc (musl has no such name)
        return False


def wants_tuned_allocator(argv: list[str], environ: dict[str, str]) -> bool:
    """Whether to re-execute with ``ALLOCATOR_TUNABLES``: glibc on Linux, not asked for already
    or refused, and a command that computes on large tensors with PyTorch."""
    if not _uses_glibc():
        return False
    if environ.get("IMGCLF_MALLOC", "").lower() == "system" or "GLIBC_TUNABLES" in environ:
        return False
    return _computes_with_pytorch(argv)


def main() -> int:
    argv = sys.argv[1:]
    if wants_tuned_allocator(argv, dict(os.environ)):
        environ = {**os.environ, "GLIBC_TUNABLES": ALLOCATOR_TUNABLES}
        # When the interpreter cannot be re-executed (an unusual set-up), run with the defaults.
        with contextlib.suppress(OSError):
            os.execve(sys.executable, [sys.executable, "-m", "imgclf", *argv], environ)
    from imgclf.cli.main import main as run_command

    return run_command(argv)
