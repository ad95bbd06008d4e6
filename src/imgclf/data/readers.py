"""Where encoded image bytes come from: a folder on disk, a zip archive or a tar archive.

A reader lists the files it holds as POSIX-style relative paths and returns their bytes. The
folder layout rules (classes, splits, junk) live in ``layout.py`` and work the same for all.
"""

from __future__ import annotations

import os
import tarfile
import zipfile
from pathlib import Path
from typing import Protocol

from imgclf.errors import BadImageError, DataError

__all__ = ["ARCHIVE_SUFFIXES", "FolderReader", "ImageReader", "TarReader", "ZipReader", "open_reader"]

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
# A tar archive (no random access once compressed) is read into memory in one pass; above this
# size the user is asked to extract it, so a huge archive never fills memory silently.
MAX_TAR_BYTES = 4 * 1024**3


class ImageReader(Protocol):
    """Anything that can list relative file paths and return a file's bytes."""

    def list_files(self) -> list[str]: ...

    def read(self, key: str) -> bytes: ...

    def describe(self, key: str) -> str: ...


class FolderReader:
    """Files below a folder; keys are paths relative to it (absolute keys are allowed too)."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def list_files(self) -> list[str]:
        keys = []
        for folder, subfolders, files in os.walk(self.root, followlinks=True):
            subfolders.sort()
            relative = Path(folder).relative_to(self.root)
            keys.extend((relative / name).as_posix() for name in sorted(files))
        return keys

    def read(self, key: str) -> bytes:
        path = self.root / key
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise BadImageError(str(path), "file not found (moved or deleted?)") from None
        except OSError as error:
            raise BadImageError(str(path), f"cannot read file ({error.strerror})") from None

    def describe(self, key: str) -> str:
        return str(self.root / key)


class ZipReader:
    """Members of a zip archive, read on demand (each worker process opens its own handle)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._handle: zipfile.ZipFile | None = None
        self._pid = -1
        try:
            with zipfile.ZipFile(self.path) as archive:
                self._names = [info.filename for info in archive.infolist() if not info.is_dir()]
        except (zipfile.BadZipFile, OSError) as error:
            raise DataError(f"{self.path}: not a readable zip archive ({error})") from None

    def __getstate__(self) -> dict:
        return {"path": self.path, "_names": self._names, "_handle": None, "_pid": -1}

    def list_files(self) -> list[str]:
        return list(self._names)

    def read(self, key: str) -> bytes:
        if self._handle is None or self._pid != os.getpid():
            self._handle = zipfile.ZipFile(self.path)
            self._pid = os.getpid()
        try:
            return self._handle.read(key)
        except (KeyError, zipfile.BadZipFile, OSError) as error:
            raise BadImageError(self.describe(key), f"cannot read archive member ({error})") from None

    def describe(self, key: str) -> str:
        return f"{self.path}:{key}"


class TarReader:
    """Members of a (possibly compressed) tar archive, read into memory in one sequential pass."""

    def __init__(self, path: Path, max_bytes: int = MAX_TAR_BYTES):
        self.path = Path(path)
        self._members: dict[str, bytes] = {}
        total = 0
        try:
            with tarfile.open(self.path) as archive:
                for member in archive:
                    if not member.isfile():
                        continue
                    total += member.size
                    if total > max_bytes:
                        raise DataError(
                            f"{self.path}: archive holds over {max_bytes / 1024**3:.0f} GiB; "
                            "extract it and pass the folder instead"
                        )
                    handle = archive.extractfile(member)
                    self._members[member.name] = handle.read() if handle else b""
        except (tarfile.TarError, OSError, EOFError) as error:
            raise DataError(f"{self.path}: not a readable tar archive ({error})") from None

    def list_files(self) -> list[str]:
        return list(self._members)

    def read(self, key: str) -> bytes:
        return self._members[key]

    def describe(self, key: str) -> str:
        return f"{self.path}:{key}"


def open_reader(path: Path) -> ImageReader:
    """A reader for a folder or an archive (chosen by its suffix)."""
    if path.is_dir():
        return FolderReader(path)
    name = path.name.lower()
    if name.endswith(".zip"):
        return ZipReader(path)
    if name.endswith(ARCHIVE_SUFFIXES):
        return TarReader(path)
    raise DataError(f"{path}: not a folder, an archive ({', '.join(ARCHIVE_SUFFIXES)}) or a .csv file")
