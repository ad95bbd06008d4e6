"""The folder a run writes: chosen, checked and held before any data is read.

A run refuses a folder it cannot write (under /proc, a read-only mount), a folder that already
holds a trained model (unless told to overwrite or resume it), and a folder another run is
writing to at the same moment.
"""

from __future__ import annotations

import contextlib
import re
import tempfile
import time
from pathlib import Path

from imgclf.bundle import is_bundle
from imgclf.engine.checkpoint import STATE_FILE, has_training_state
from imgclf.errors import UsageError

__all__ = ["LOCK_FILE", "check_output", "check_writable", "default_output", "output_lock"]

LOCK_FILE = ".imgclf.lock"
# A run killed a moment ago can hold the lock a little longer, through processes it forked (data
# loader workers, the other ranks) that are still exiting: wait this long before giving up.
LOCK_WAIT_S = 3.0


def default_output(data: str, model: str) -> Path:
    """``runs/<data>-<model>``, numbered ``-2``, ``-3``... when taken."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", Path(data).name.split(".")[0]).strip("-") or "data"
    base = Path("runs") / f"{stem}-{model}"
    candidate, number = base, 2
    while candidate.exists():
        candidate, number = Path(f"{base}-{number}"), number + 1
    return candidate


def check_output(output: Path, overwrite: bool, resume: bool) -> None:
    """``output`` may take this run: something to resume, or no trained model to overwrite by mistake."""
    if resume:
        if not has_training_state(output):
            raise UsageError(f"{output}: nothing to resume (no {STATE_FILE})")
        return
    if output.exists() and not output.is_dir():
        raise UsageError(f"--output {output}: exists and is not a folder")
    holds_run = is_bundle(output) or (output / STATE_FILE).exists()
    if holds_run and not overwrite:
        raise UsageError(
            f"--output {output}: already holds a trained model; pass --overwrite to replace "
            "it, --resume to continue it, or choose another folder"
        )


def check_writable(output: Path) -> None:
    """Before any data is read: the output folder can be made and written to (not under /proc,
    not on a read-only mount)."""
    missing = [folder for folder in (output, *output.parents) if not folder.exists()]
    try:
        output.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=output):
            pass
    except OSError as error:
        raise UsageError(f"--output {output}: cannot write there ({error.strerror or error})") from None
    finally:
        for folder in missing:  # innermost first: the run makes them again when it writes
            with contextlib.suppress(OSError):
                folder.rmdir()


@contextlib.contextmanager
def output_lock(output: Path):
    """Hold the output folder for one run: a second run into the same folder (in this process or
    another) stops at once instead of both reporting a bundle that only one of them wrote. An
    advisory ``flock``, released by the system when the process ends, even by SIGKILL."""
    try:
        output.mkdir(parents=True, exist_ok=True)
        handle = open(output / LOCK_FILE, "a+")  # noqa: SIM115 - held for the whole run
    except OSError as error:
        raise UsageError(f"--output {output}: cannot write there ({error.strerror or error})") from None
    try:
        _wait_for_lock(handle, output)
        try:
            yield
        finally:
            # Removed while still held: a run that opens the path later makes a new file and locks it.
            (output / LOCK_FILE).unlink(missing_ok=True)
    finally:
        handle.close()


def _wait_for_lock(handle, output: Path) -> None:
    import fcntl  # POSIX only: imported where used

    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise UsageError(f"--output {output}: another imgclf run is writing to it; wait for it or "
                                 "choose another folder") from None  # fmt: skip
            time.sleep(0.1)
