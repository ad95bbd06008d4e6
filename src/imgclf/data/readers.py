"""Where encoded image bytes come from: a folder on disk, a zip archive or a tar archive.

A reader lists the files it holds as POSIX-style relative paths and returns their bytes. The
folder layout rules (classes, splits, junk) live in ``layout.py`` and work the same for all.
"""

from __future__ import annotations

import os
import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Protocol

from imgclf.errors import BadImageError, DataError

__all__ = [
    "read_image_file",
    "ARCHIVE_SUFFIXES",
    "FolderReader",
    "ImageReader",
    "TarReader",
    "ZipReader",
    "open_reader",
]

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
# A tar archive (no random access once compressed) is read into memory in one pass; above this
# size the user is asked to extract it, so a huge archive never fills memory silently.
MAX_TAR_BYTES = 4 * 1024**3
# No image file is this large (the decoder's pixel limit refuses far smaller ones); a member that
# claims or inflates to more is a decompression bomb, refused before it is inflated.
MAX_MEMBER_BYTES = 256 * 1024**2


def check_member_name(archive: Path, name: str) -> None:
    """Refuse members that would point outside the archive's folder if it were extracted:
    absolute paths, drive letters and ``..`` components (imgclf never extracts, but says so)."""
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or (parts and ":" in parts[0]) or ".." in parts:
        raise DataError(f"{archive}: member {name!r} points outside the archive (absolute path or '..'); refused")


class ImageReader(Protocol):
    """Anything that can list relative file paths and return a file's bytes."""

    def list_files(self) -> list[str]: ...

    def read(self, key: str) -> bytes: ...

    def describe(self, key: str) -> str: ...


class FolderReader:
    """Files below a folder; keys are paths relative to it (absolute keys are allowed too)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._joined_to = "" if self.root == Path(".") else str(self.root)  # "a.jpg", not "./a.jpg", in messages
        self.skipped: list[tuple[str, str]] = []  # (folder, reason): links not followed by list_files

    def list_files(self) -> list[str]:
        """Every file below the root. Links to folders are followed (a class folder may live
        elsewhere), except a link to a folder already read, to the root or to a folder above it:
        one ``up -> ..`` link would otherwise list the tree again and again."""
        keys, self.skipped = [], []
        root_identity = _identity(self.root)
        ancestors = {_identity(folder) for folder in self.root.resolve().parents}
        seen = {root_identity}
        for folder, subfolders, files in os.walk(self.root, followlinks=True):
            subfolders.sort()
            kept = []
            for name in subfolders:
                identity = _identity(Path(folder) / name)
                if identity is None or identity in seen or identity in ancestors:
                    reason = "a link to a folder read already or above the data: not followed"
                    self.skipped.append((str(Path(folder) / name), reason))
                    continue
                seen.add(identity)
                kept.append(name)
            subfolders[:] = kept
            relative = Path(folder).relative_to(self.root)
            keys.extend((relative / name).as_posix() for name in sorted(files))
        return keys

    def read(self, key: str) -> bytes:
        # os.path.join, not Path: two Path objects a file cost 3 us, 3% of decoding a 32 px JPEG.
        return read_image_file(os.path.join(self._joined_to, key))

    def describe(self, key: str) -> str:
        return str(self.root / key)


READ_CHUNK_BYTES = 1 << 20  # what a file that grew after its size was read is read on in


def _read_up_to(descriptor: int, size: int, limit: int, source: str) -> bytes:
    """A file's bytes: as many as it has (reading ``limit + 1`` at once allocates that much for
    every file: 13% of predict --output's throughput on 10,000 small JPEGs), then, until the end of
    the file, the rest up to ``limit + 1`` if it grew since. Plain ``os.read`` calls: a buffered
    file object took 14 us a small JPEG against 11-12 this way (a 32 px JPEG decodes in about 110)."""
    try:
        chunks = [os.read(descriptor, size + 1)]
        total = len(chunks[0])
        while chunks[-1] and total <= limit:
            chunks.append(os.read(descriptor, min(READ_CHUNK_BYTES, limit + 1 - total)))
            total += len(chunks[-1])
    except OSError as error:
        raise BadImageError(source, f"cannot read file ({error.strerror})") from None
    return chunks[0] if len(chunks) == 2 and not chunks[1] else b"".join(chunks)


def read_image_file(path: str | Path, limit: int = MAX_MEMBER_BYTES) -> bytes:
    """The bytes of one image file, or a BadImageError naming it. Only a regular file is read, and
    only when it is within ``limit`` bytes: a FIFO named ``x.png`` would block the reader forever and
    ``/dev/zero`` (or a link to it) would fill memory. Opened without blocking, and checked on the
    open file itself, so a file swapped after a check cannot slip through."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise BadImageError(str(path), "file not found (moved or deleted?)") from None
    except OSError as error:
        raise BadImageError(str(path), f"cannot read file ({error.strerror})") from None
    try:
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode):
            raise BadImageError(str(path), f"not a regular file ({_file_kind(status.st_mode)}): not read")
        if status.st_size > limit:
            raise BadImageError(str(path), f"{status.st_size:,} bytes: over the {limit:,}-byte limit for one image")
        data = _read_up_to(descriptor, status.st_size, limit, str(path))
    finally:
        os.close(descriptor)
    if len(data) > limit:  # grew while being read
        raise BadImageError(str(path), f"over the {limit:,}-byte limit for one image")
    return data


def _file_kind(mode: int) -> str:
    kinds = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder"))  # fmt: skip
    return next((name for test, name in kinds if test(mode)), "not a plain file")


def _identity(folder: Path) -> tuple[int, int] | None:
    """(device, inode) of the folder a path leads to; None when it cannot be read."""
    try:
        status = folder.stat()
    except OSError:
        return None
    return status.st_dev, status.st_ino


class ZipReader:
    """Members of a zip archive, read on demand (each worker process opens its own handle)."""

    def __init__(self, path: Path, max_member_bytes: int = MAX_MEMBER_BYTES):
        self.path = Path(path)
        self.max_member_bytes = max_member_bytes
        self._handle: zipfile.ZipFile | None = None
        self._pid = -1
        try:
            with zipfile.ZipFile(self.path) as archive:
                members = [info for info in archive.infolist() if not info.is_dir()]
        except (zipfile.BadZipFile, OSError) as error:
            raise DataError(f"{self.path}: not a readable zip archive ({error})") from None
        for info in members:
            check_member_name(self.path, info.filename)
            if info.file_size > max_member_bytes:
                raise DataError(
                    f"{self.path}: member {info.filename!r} inflates to {info.file_size:,} bytes, over the "
                    f"{max_member_bytes:,}-byte limit for one image (a zip bomb?); refused"
                )
        self._names = [info.filename for info in members]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_handle": None, "_pid": -1}

    def list_files(self) -> list[str]:
        return list(self._names)

    def read(self, key: str) -> bytes:
        if self._handle is None or self._pid != os.getpid():
            self._handle = zipfile.ZipFile(self.path)
            self._pid = os.getpid()
        try:
            with self._handle.open(key) as member:  # read at most the limit: headers can lie
                data = member.read(self.max_member_bytes + 1)
        except (KeyError, zipfile.BadZipFile, OSError) as error:
            raise BadImageError(self.describe(key), f"cannot read archive member ({error})") from None
        if len(data) > self.max_member_bytes:
            raise BadImageError(self.describe(key), f"inflates past {self.max_member_bytes:,} bytes; refused")
        return data

    def describe(self, key: str) -> str:
        return f"{self.path}:{key}"


class TarReader:
    """Members of a (possibly compressed) tar archive, read into memory in one sequential pass."""

    def __init__(self, path: Path, max_bytes: int = MAX_TAR_BYTES):
        self.path = Path(path)
        self._members: dict[str, bytes] = {}
        self.skipped: list[tuple[str, str]] = []  # links and devices: listed as ignored, never read
        total = 0
        try:
            with tarfile.open(self.path) as archive:
                for member in archive:
                    if not member.isfile():  # links, devices and folders are never read
                        if not member.isdir():
                            kind = "a link" if member.issym() or member.islnk() else "not a regular file"
                            self.skipped.append((f"{self.path}:{member.name}", f"{kind} in the archive: not read"))
                        continue
                    check_member_name(self.path, member.name)
                    if member.size > MAX_MEMBER_BYTES:
                        raise DataError(
                            f"{self.path}: member {member.name!r} holds {member.size:,} bytes, over the "
                            f"{MAX_MEMBER_BYTES:,}-byte limit for one image; refused"
                        )
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
