"""Image-folder layout rules: which files are images, which folders are classes and splits.

``root/<class>/<image>`` gives one pool that imgclf splits itself; ``root/train/<class>/...``
with ``val/`` (or ``valid/``, ``validation/``) and/or ``test/`` gives the splits as they are
(``train/`` alone: a validation split is carved from it).
Images may sit deeper inside a class folder. Hidden files and folders and OS junk
(``.ipynb_checkpoints``, ``__MACOSX``, ``.DS_Store``, ``Thumbs.db``) are never classes or images.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

__all__ = ["IMAGE_SUFFIXES", "FolderLayout", "SPLIT_NAMES", "expand_image_paths", "is_junk", "parse_layout"]

IMAGE_SUFFIXES = frozenset(
    {
        ".jpg",
        ".jpeg",
        ".jpe",
        ".jfif",
        ".png",
        ".bmp",
        ".gif",
        ".tif",
        ".tiff",
        ".webp",
        ".ppm",
        ".pgm",
        ".pbm",
        ".pnm",
        ".mpo",
        ".heic",  # read with pillow-heif installed; otherwise each file is skipped saying so
        ".heif",
        ".avif",
    }
)
JUNK_NAMES = frozenset({"__MACOSX", "__pycache__", "Thumbs.db", "desktop.ini", "$RECYCLE.BIN"})
# Folder names that mean "this is a split", mapped to imgclf's split names.
SPLIT_NAMES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}


def is_junk(part: str) -> bool:
    """Hidden entries (``.DS_Store``, ``.ipynb_checkpoints``, ``._x.jpg``) and OS leftovers."""
    return part.startswith(".") or part in JUNK_NAMES


@dataclass
class FolderLayout:
    """Files grouped by split and class name, and everything left out with the reason."""

    splits: dict[str, list[tuple[str, str]]]  # split -> [(key, class name)]
    ignored: list[tuple[str, str]] = field(default_factory=list)  # (key, reason)

    @property
    def has_given_splits(self) -> bool:
        return "train" in self.splits and "pool" not in self.splits


def _strip_common_top_folder(parts_list: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
    """An archive often wraps everything in one folder (``cifar10/train/cat/1.jpg``)."""
    while parts_list and all(len(parts) >= 3 for parts in parts_list):
        tops = {parts[0] for parts in parts_list}
        if len(tops) != 1 or next(iter(tops)).lower() in SPLIT_NAMES:
            break
        parts_list = [parts[1:] for parts in parts_list]
    return parts_list


def parse_layout(keys: list[str], strip_top_folder: bool = False) -> FolderLayout:
    """Group relative file paths into splits and classes; report what was left out."""
    ignored: list[tuple[str, str]] = []
    kept: list[tuple[str, tuple[str, ...]]] = []
    for key in keys:
        parts = PurePosixPath(key).parts
        if any(is_junk(part) for part in parts):
            ignored.append((key, "hidden file or OS junk"))
        elif PurePosixPath(key).suffix.lower() not in IMAGE_SUFFIXES:
            ignored.append((key, "not an image file extension"))
        else:
            kept.append((key, parts))
    parts_list = [parts for _, parts in kept]
    if strip_top_folder:
        parts_list = _strip_common_top_folder(parts_list)
    tops = {parts[0].lower() for parts in parts_list if len(parts) >= 3}
    given = {SPLIT_NAMES[top] for top in tops if top in SPLIT_NAMES}
    # train/ with val/ or test/; or train/ alone (a validation split is then carved from it), as
    # long as no other top folder holds images: a class may well be called "train".
    use_split_folders = "train" in given and (len(given) > 1 or all(top in SPLIT_NAMES for top in tops))
    splits: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for (key, _), parts in zip(kept, parts_list):
        if use_split_folders:
            split = SPLIT_NAMES.get(parts[0].lower())
            if split is None or len(parts) < 3:
                ignored.append((key, "outside the train/val/test folders"))
                continue
            splits[split].append((key, parts[1]))
        elif len(parts) >= 2:
            splits["pool"].append((key, parts[0]))
        else:
            ignored.append((key, "not inside a class folder"))
    return FolderLayout(splits=dict(splits), ignored=ignored)


def expand_image_paths(inputs: list[str]) -> list[Path]:
    """Files as given (whatever their extension); folders searched for image files, in order."""
    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            paths.extend(map(Path, image_files_below(path)))
        else:
            paths.append(path)  # a missing file becomes a per-file error in the result
    return paths


def image_files_below(folder: str | Path) -> list[str]:
    """The image files below ``folder``, in the order of their path components (``a/b/x.jpg``
    before ``a/c.jpg``), each named as ``str(Path(...))`` names it. Links to folders are not
    followed and unreadable folders are skipped, as os.walk does. Names are strings and the order
    comes from sorting each folder's entries, not all the paths: a Path a file, or a sort key a file,
    costs 0.3-0.4 KB while millions of files are listed."""
    root = str(Path(folder))  # normalised as Path does it, so the joined names need no Path either
    found: list[str] = []
    _add_image_files(root, "" if root == "." else root, found)  # "cat/1.jpg", not "./cat/1.jpg"
    return found


def _add_image_files(folder: str, prefix: str, found: list[str]) -> None:
    try:
        with os.scandir(folder) as scan:
            entries = sorted(scan, key=lambda entry: entry.name)
    except OSError:
        return
    for entry in entries:
        if is_junk(entry.name):
            continue
        name = os.path.join(prefix, entry.name) if prefix else entry.name
        try:
            is_folder = entry.is_dir()
        except OSError:
            continue
        if is_folder:
            if not entry.is_symlink():
                _add_image_files(entry.path, name, found)
        elif os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES:
            found.append(name)
