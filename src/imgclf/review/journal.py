"""The review's changes to a data folder or CSV: moves only, each logged before it is made, all
undoable.

A folder: relabelling moves the file into the other class's folder (same split); removing moves
it into ``.imgclf-review/trash/`` inside the data folder (hidden: imgclf never reads it as data).
A CSV (or JSON lines listing): the first change keeps the original bytes in
``.imgclf-review/<name>.original``; relabelling rewrites the row's label cell, removing drops the
row (the image file stays where it is). Every change is a line of ``.imgclf-review/journal.jsonl``
written and fsynced before the change itself, so a crash between the two leaves a line whose
move did not happen, which ``undo`` recognises by the file being still where it was. ``undo``
restores the tree exactly (byte for byte: files are moved back, folders the review made are
removed, the listing's original bytes are put back) and removes ``.imgclf-review``.
Archives are read-only and refused.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import shutil
from pathlib import Path

from imgclf.data.dataset import JSON_LINES, LABEL_SET_COLUMNS, PATH_COLUMNS
from imgclf.errors import DataError, UsageError
from imgclf.files import atomic_write_bytes, free_path

__all__ = ["REVIEW_FOLDER", "ReviewJournal", "open_journal"]

REVIEW_FOLDER = ".imgclf-review"
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
LABEL_COLUMNS = ("label", "class")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class ReviewJournal:
    """Keep, relabel and remove for one data folder or listing (see the module docstring)."""

    def __init__(self, data: Path):
        self.data = data
        self.listing = data if data.is_file() else None
        self.root = data.parent if self.listing else data
        self.folder = self.root / REVIEW_FOLDER
        self.path = self.folder / "journal.jsonl"

    def entries(self) -> list[dict]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def decided(self) -> set[str]:
        """Files a decision was recorded for (by their path before the change)."""
        return {entry["file"] for entry in self.entries()}

    def _log(self, entry: dict) -> None:
        self.folder.mkdir(exist_ok=True)
        with open(self.path, "a") as journal:
            journal.write(json.dumps(entry) + "\n")
            journal.flush()
            os.fsync(journal.fileno())

    def keep(self, file: str) -> dict:
        entry = {"action": "keep", "file": file}
        self._log(entry)
        return entry

    def relabel(self, file: str, label: str) -> dict:
        if self.listing is not None:
            return self._edit_listing(file, "relabel", label)
        source = self.root / file
        parts = Path(file).parts
        if len(parts) < 2:
            raise UsageError(f"{source}: not inside a class folder")
        target_folder = self.root.joinpath(*parts[:-2], label)
        return self._move(file, "relabel", target_folder, label)

    def remove(self, file: str) -> dict:
        if self.listing is not None:
            return self._edit_listing(file, "remove", None)
        return self._move(file, "remove", (self.folder / "trash" / file).parent, None)

    def _move(self, file: str, action: str, target_folder: Path, label: str | None) -> dict:
        source = self.root / file
        if not source.is_file():
            raise UsageError(f"{source}: no such file (moved since the review began?)")
        made = [str(folder.relative_to(self.root)) for folder in reversed([target_folder, *target_folder.parents])
                if self.root in folder.parents and not folder.exists()]  # fmt: skip
        target = free_path(target_folder / source.name)
        entry = {"action": action, "file": file, "to": str(target.relative_to(self.root)), "label": label,
                 "sha256": _sha256(source), "made_folders": made}  # fmt: skip
        self._log(entry)
        target_folder.mkdir(parents=True, exist_ok=True)
        os.replace(source, target)
        return entry

    def _edit_listing(self, file: str, action: str, label: str | None) -> dict:
        original = self.folder / f"{self.listing.name}.original"
        if not original.exists():
            self.folder.mkdir(exist_ok=True)
            atomic_write_bytes(original, self.listing.read_bytes())
        entry = {"action": action, "file": file, "label": label}
        self._log(entry)
        atomic_write_bytes(self.listing, _edited_listing(self.listing, file, label, action == "remove"))
        return entry

    def undo(self) -> int:
        """Put everything back as it was before the first change; returns how many changes were undone."""
        entries = self.entries()
        if self.listing is not None:
            original = self.folder / f"{self.listing.name}.original"
            if original.exists():
                atomic_write_bytes(self.listing, original.read_bytes())
        else:
            for entry in reversed(entries):
                if entry["action"] != "keep":
                    self._move_back(entry)
        shutil.rmtree(self.folder, ignore_errors=True)
        return sum(1 for entry in entries if entry["action"] != "keep")

    def undo_last(self, file: str) -> None:
        """Undo the latest decision about ``file`` alone (the page's U key)."""
        entries = self.entries()
        index = max((i for i, entry in enumerate(entries) if entry["file"] == file), default=None)
        if index is None:
            raise UsageError(f"{file}: no decision to undo")
        entry = entries.pop(index)
        if self.listing is None and entry["action"] != "keep":
            self._move_back(entry)
        atomic_write_bytes(self.path, "".join(json.dumps(kept) + "\n" for kept in entries).encode("utf-8"))
        if self.listing is not None:  # the original listing with the remaining edits made again
            original = (self.folder / f"{self.listing.name}.original").read_bytes()
            atomic_write_bytes(self.listing, original)
            for kept in entries:
                if kept["action"] != "keep":
                    atomic_write_bytes(self.listing, _edited_listing(self.listing, kept["file"], kept["label"],
                                                                     kept["action"] == "remove"))  # fmt: skip

    def _move_back(self, entry: dict) -> None:
        source, target = self.root / entry["to"], self.root / entry["file"]
        if target.exists() and not source.exists():
            return  # logged, but the move itself never happened (a crash between the two)
        if not source.is_file() or _sha256(source) != entry["sha256"]:
            raise DataError(f"{source}: changed or gone since the review moved it there; undo stops before it "
                            f"(put it back at {target} by hand, then run --undo again)")  # fmt: skip
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, target)
        for folder in reversed(entry["made_folders"]):
            with contextlib.suppress(OSError):  # not empty: something else lives there now
                (self.root / folder).rmdir()


def _edited_listing(listing: Path, file: str, label: str | None, drop: bool) -> bytes:
    """The CSV or JSON lines listing with ``file``'s row relabelled or dropped."""
    target = (listing.parent / file).resolve()

    def is_target(cell: str) -> bool:
        return (listing.parent / cell).resolve() == target

    if listing.suffix.lower() in JSON_LINES:
        lines = []
        for line in listing.read_text().splitlines():
            record = json.loads(line) if line.strip() else None
            if record is not None and is_target(str(record.get("path", ""))):
                if drop:
                    continue
                record.pop("labels", None)
                record["label"] = label
                line = json.dumps(record)
            lines.append(line)
        return ("\n".join(lines) + "\n").encode("utf-8")
    rows = list(csv.reader(io.StringIO(listing.read_bytes().decode("utf-8-sig"), newline="")))
    header = [cell.strip().lower() for cell in rows[0]]
    path_column = next(i for i, name in enumerate(header) if name in PATH_COLUMNS)
    label_columns = [i for i, name in enumerate(header) if name in LABEL_COLUMNS + LABEL_SET_COLUMNS]
    if not label_columns:
        raise DataError(f"{listing}: no label column to change")
    kept = [rows[0]]
    for row in rows[1:]:
        if row and is_target(row[path_column]):
            if drop:
                continue
            row[label_columns[0]] = label
        kept.append(row)
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows(kept)
    return text.getvalue().encode("utf-8")


def open_journal(data: str | Path) -> ReviewJournal:
    """The journal of a data folder, CSV or JSON lines listing; archives are refused."""
    path = Path(data)
    if path.name.lower().endswith(ARCHIVE_SUFFIXES):
        raise UsageError(f"{path}: an archive is read-only; extract it into a folder to review and fix its labels")
    if not path.exists():
        raise UsageError(f"{path}: no such folder or file")
    if path.is_file() and path.suffix.lower() not in (".csv", *JSON_LINES):
        raise UsageError(f"{path}: review works on an image folder, a CSV or a JSON lines listing")
    return ReviewJournal(path)
