"""The folder a run writes: chosen, checked and held before any data is read.

A run refuses a folder it cannot write (under /proc, a read-only mount), a folder holding files
imgclf did not write (naming the first), a folder that already holds a trained model (unless told
to overwrite or resume it), and a folder another run is writing to at the same moment.

What imgclf wrote in a folder is listed in the folder's ``OWNED_FILE``: commands that write
named files into a folder the user gives (``explain``, ``lr-find``) replace only files listed
there, never a file of the user's that happens to have the same name.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

from imgclf.bundle import is_bundle
from imgclf.engine.checkpoint import STATE_FILE, has_training_state
from imgclf.errors import UsageError
from imgclf.files import atomic_write_bytes

__all__ = ["LOCK_FILE", "OWNED_FILE", "check_output", "check_targets", "check_writable", "claim", "data_stem",
           "default_output", "output_lock"]  # fmt: skip

LOCK_FILE = ".imgclf.lock"
OWNED_FILE = ".imgclf-files.json"  # {"files": [names imgclf wrote in this folder]}
# A write killed between creating its temporary file and renaming it leaves ".<name>.<random>.tmp"
# (files._atomic_write): imgclf's own, removed when the folder is next claimed.
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.[^.]+\.tmp$")
# A run killed a moment ago can hold the lock a little longer, through processes it forked (data
# loader workers, the other ranks) that are still exiting: wait this long before giving up.
LOCK_WAIT_S = 3.0


def data_stem(data: str) -> str:
    """DATA's name as a folder name: ``photos.tar.gz`` -> ``photos``."""
    return re.sub(r"[^A-Za-z0-9_-]+", "-", Path(data).name.split(".")[0]).strip("-") or "data"


def default_output(data: str, model: str) -> Path:
    """``runs/<data>-<model>``, numbered ``-2``, ``-3``... when taken."""
    base = Path("runs") / f"{data_stem(data)}-{model}"
    candidate, number = base, 2
    while candidate.exists():
        candidate, number = Path(f"{base}-{number}"), number + 1
    return candidate


def owned_names(folder: Path) -> set[str]:
    """The names imgclf recorded as written by it in ``folder`` (none when it has no record)."""
    try:
        files = json.loads((Path(folder) / OWNED_FILE).read_text(encoding="utf-8")).get("files", [])
    except (OSError, ValueError, AttributeError):
        return set()
    return {name for name in files if isinstance(name, str)}


def claim(folder: Path, names: Iterable[str]) -> None:
    """Record ``names`` as imgclf's in ``folder`` (before writing them: a run killed in between
    leaves only files it may replace), and remove the temporary files of earlier killed writes."""
    folder = Path(folder)
    owned = owned_names(folder) | set(names)
    _refuse_links(folder, owned | {OWNED_FILE})
    for entry in folder.iterdir() if folder.is_dir() else ():
        match = _TEMPORARY.match(entry.name)
        if match and match["name"] in owned and entry.is_file() and not entry.is_symlink():
            entry.unlink(missing_ok=True)
    atomic_write_bytes(folder / OWNED_FILE, json.dumps({"files": sorted(owned)}, indent=1).encode())


def _refuse_links(folder: Path, names: set[str]) -> None:
    """imgclf never writes through a link: one planted under a name it writes (``tensorboard``
    pointing at a system folder, say) would make it write the link's target."""
    for name in sorted(names):
        if (folder / name).is_symlink():
            raise UsageError(f"--output {folder}: {name} is a link; imgclf never writes through links "
                             "(remove it or choose another folder)")  # fmt: skip


def _foreign(folder: Path, ours: set[str]) -> list[str]:
    """Entries of ``folder`` imgclf did not write, sorted."""
    ours = ours | {LOCK_FILE, OWNED_FILE}
    foreign = []
    for entry in folder.iterdir():
        match = _TEMPORARY.match(entry.name)
        if entry.name not in ours and not (match and match["name"] in ours):
            foreign.append(entry.name)
    return sorted(foreign)


def check_targets(folder: Path, names: Iterable[str], option: str = "--output") -> None:
    """Before any work: ``names`` may be written into ``folder``: it is a folder (or does not
    exist yet), and none of them is a file imgclf did not write there."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{option} {folder}: exists and is not a folder")
    if not folder.is_dir():
        return
    owned = owned_names(folder)
    for name in names:
        if name not in owned and ((folder / name).exists() or (folder / name).is_symlink()):
            raise UsageError(f"{option} {folder}: {name} is already there and imgclf did not write it; choose "
                             "another folder (imgclf never replaces files it did not write)")  # fmt: skip


def check_output(output: Path, overwrite: bool, resume: bool) -> None:
    """``output`` may take this run: something to resume, or no trained model to overwrite by
    mistake, and no file imgclf did not write (a bundle of an earlier version counts as its own)."""
    if resume:
        if not has_training_state(output):
            raise UsageError(f"{output}: nothing to resume (no {STATE_FILE})")
        return
    if output.exists() and not output.is_dir():
        raise UsageError(f"--output {output}: exists and is not a folder")
    holds_run = is_bundle(output) or (output / STATE_FILE).exists()
    if output.is_dir() and not holds_run and not (output / OWNED_FILE).exists():
        foreign = _foreign(output, set())
        if foreign:
            raise UsageError(f"--output {output}: holds {foreign[0]}{' and more' if len(foreign) > 1 else ''}, "
                             "which imgclf did not write; choose an empty or new folder (imgclf never replaces "
                             "files it did not write)")  # fmt: skip
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
        # O_NOFOLLOW: a link planted as the lock file would make imgclf create or write its target.
        descriptor = os.open(output / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
        handle = os.fdopen(descriptor, "a+")
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise UsageError(f"--output {output}: {LOCK_FILE} is a link; imgclf never writes through links") from None
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
