"""Turn the DATA argument into labelled splits: built-ins, folders, archives and CSV files.

Nothing here decodes pixels of files (see ``prepare.py``); built-ins arrive already decoded.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from imgclf.data.builtins import FASHION_MNIST_CLASSES, load_digits_arrays, load_fashion_mnist_arrays
from imgclf.data.layout import IMAGE_SUFFIXES, SPLIT_NAMES, is_junk, parse_layout
from imgclf.data.readers import FolderReader, ImageReader, open_reader
from imgclf.data.split import fingerprint, stratified_split
from imgclf.errors import DataError

__all__ = [
    "ArraySplit",
    "BUILTIN_DATASETS",
    "MULTI_LABEL",
    "SINGLE_LABEL",
    "TASKS",
    "Dataset",
    "FileSplit",
    "SplitPolicy",
    "load_dataset",
    "label_fields",
    "split_labels",
]

BUILTIN_DATASETS = ("digits", "fashion-mnist")
SINGLE_LABEL, MULTI_LABEL = "single-label", "multi-label"
TASKS = (SINGLE_LABEL, MULTI_LABEL)
# A CSV column of label sets (several labels per image, separated by ";" or by spaces); a column
# named "label" or "class" holds one label per image, which may contain spaces ("golden retriever").
LABEL_SET_COLUMNS = ("labels", "tags")
PATH_COLUMNS = ("path", "file", "filename", "image", "filepath", "image_name", "file_name", "image_id")
JSON_LINES = (".jsonl", ".ndjson")  # one JSON object per line: {"path": ..., "labels": [...], "split": ...}


@dataclass
class FileSplit:
    """Encoded image files (decoded later) with their targets: integer classes (N,), or for a
    multi-label task one row of 0/1 per image, a column per label (N, labels)."""

    reader: ImageReader
    keys: list[str]
    targets: np.ndarray

    def __len__(self) -> int:
        return len(self.keys)

    def subset(self, indices: np.ndarray) -> FileSplit:
        return FileSplit(self.reader, [self.keys[i] for i in indices], self.targets[indices])


@dataclass
class ArraySplit:
    """Images already decoded: (N, H, W, C) uint8."""

    images: np.ndarray
    targets: np.ndarray
    keys: list[str]

    def __len__(self) -> int:
        return len(self.keys)

    def subset(self, indices: np.ndarray) -> ArraySplit:
        return ArraySplit(self.images[indices], self.targets[indices], [self.keys[i] for i in indices])


Split = FileSplit | ArraySplit


@dataclass(frozen=True)
class SplitPolicy:
    """How imgclf makes the splits a dataset does not bring itself."""

    seed: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.1


@dataclass
class Dataset:
    name: str
    classes: list[str]
    splits: dict[str, Split]  # "train", "val" and, when there is one, "test"
    split_info: dict  # how each split was made, recorded in the bundle
    ignored: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    kind: str = "files"  # "digits", "fashion-mnist", "folder", "archive", "csv"
    task: str = SINGLE_LABEL  # MULTI_LABEL: ``classes`` are labels, an image carries any number of them

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def require_single_label(self, purpose: str) -> None:
        """A clear refusal where multi-label data is not handled (yet): ``purpose`` says what."""
        if self.task == MULTI_LABEL:
            raise DataError(f"{self.name}: multi-label data (images carry several labels, {len(self.classes)} labels "
                            f"in all): {purpose} handles single-label data only for now; `imgclf doctor "
                            f"{self.name}` describes the labels")  # fmt: skip


def _finish_splits(given: dict[str, Split], policy: SplitPolicy) -> tuple[dict[str, Split], dict]:
    """Make train/val(/test) from what the data brings; record how, with fingerprints."""
    info: dict = {"seed": policy.seed}
    if "pool" in given:
        fractions = {"val": policy.val_fraction, "test": policy.test_fraction}
        indices = stratified_split(given["pool"].targets, fractions, policy.seed)
        splits = {name: given["pool"].subset(idx) for name, idx in indices.items()}
        info.update(method="stratified", val_fraction=policy.val_fraction, test_fraction=policy.test_fraction)
    else:
        splits = dict(given)
        info["method"] = "given"
        if "val" not in splits:
            indices = stratified_split(splits["train"].targets, {"val": policy.val_fraction}, policy.seed)
            splits["val"] = splits["train"].subset(indices["val"])
            splits["train"] = splits["train"].subset(indices["train"])
            info.update(method="given, val carved from train", val_fraction=policy.val_fraction)
    info["sizes"] = {name: len(split) for name, split in splits.items()}
    info["fingerprints"] = {name: fingerprint(split.keys) for name, split in splits.items()}
    return splits, info


def _check_classes(name: str, classes: list[str], splits: dict[str, Split]) -> None:
    total = sum(len(split) for split in splits.values())
    if total == 0:
        raise DataError(f"{name}: no images found")
    if len(classes) < 2:
        found = ", ".join(repr(c) for c in classes) or "none"
        raise DataError(f"{name}: found {len(classes)} class ({found}); a classifier needs at least 2")


def _load_digits(policy: SplitPolicy) -> Dataset:
    images, targets, classes = load_digits_arrays()
    pool = ArraySplit(images, targets, [f"digits[{i}]" for i in range(len(targets))])
    splits, info = _finish_splits({"pool": pool}, policy)
    return Dataset("digits", classes, splits, info, kind="digits")


def _load_fashion_mnist(policy: SplitPolicy, data_dir: Path | None) -> Dataset:
    arrays = load_fashion_mnist_arrays(data_dir)
    given = {
        split: ArraySplit(images, targets, [f"fashion-mnist/{split}[{i}]" for i in range(len(targets))])
        for split, (images, targets) in arrays.items()
    }
    splits, info = _finish_splits(given, policy)
    return Dataset("fashion-mnist", list(FASHION_MNIST_CLASSES), splits, info, kind="fashion-mnist")


def _labelled_files(
    name: str, reader: ImageReader, by_split: dict[str, list[tuple[str, str]]], policy: SplitPolicy
) -> tuple[list[str], dict[str, Split], dict]:
    train_split = "train" if "train" in by_split else "pool"
    classes = sorted({label for _, label in by_split.get(train_split, [])})
    index = {label: i for i, label in enumerate(classes)}
    given: dict[str, Split] = {}
    for split, items in by_split.items():
        unknown = sorted({label for _, label in items} - index.keys())
        if unknown:
            raise DataError(f"{name}: class {unknown[0]!r} is in {split} but has no training images")
        targets = np.array([index[label] for _, label in items], dtype=np.int64)
        given[split] = FileSplit(reader, [key for key, _ in items], targets)
    _check_classes(name, classes, given)
    splits, info = _finish_splits(given, policy)
    return classes, splits, info


def _empty_class_folders(root: Path, by_split: dict[str, list[tuple[str, str]]]) -> list[tuple[str, str]]:
    """Class folders without a usable image (they make no class), to be listed as ignored."""
    found = []
    for split, items in by_split.items():
        base = root if split == "pool" else root / split
        labels = {label for _, label in items}
        for folder in sorted(base.iterdir()) if base.is_dir() else []:
            if (
                folder.is_dir()
                and not is_junk(folder.name)
                and folder.name not in labels | set(SPLIT_NAMES)
                and folder.name.lower() not in SPLIT_NAMES
            ):
                found.append((str(folder), "class folder without images: not a class"))
    return found


def _load_folder_or_archive(path: Path, policy: SplitPolicy) -> Dataset:
    reader = open_reader(path)
    is_archive = not path.is_dir()
    layout = parse_layout(reader.list_files(), strip_top_folder=is_archive)
    layout.ignored.extend(getattr(reader, "skipped", []))
    classes_found = {name for items in layout.splits.values() for _, name in items}
    if not is_archive and len(classes_found) < 2 and (listing := _listing_in_folder(path)) is not None:
        # Images beside the one file that labels them (labels.csv, as the Planet chips come),
        # their folders no classes: the listing is the data.
        return _load_csv(listing, policy)
    if not any(layout.splits.values()):
        detail = (
            f" ({len(layout.ignored)} files ignored, e.g. {layout.ignored[0][0]}: {layout.ignored[0][1]})"
            if layout.ignored
            else ""
        )
        raise DataError(f"{path}: no images found in class folders{detail}")
    classes, splits, info = _labelled_files(str(path), reader, layout.splits, policy)
    if not is_archive:
        layout.ignored.extend(_empty_class_folders(path, layout.splits))
    kind = "archive" if is_archive else "folder"
    return Dataset(str(path), classes, splits, info, ignored=layout.ignored, kind=kind)


def _read_csv_table(path: Path) -> tuple[list[str] | None, list[list[str]]]:
    """The header (lower case; None when the first row is data) and the data rows."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = [row for row in csv.reader(handle) if row and any(cell.strip() for cell in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"{path}: cannot read CSV ({error})") from None
    if rows and _is_header(rows[0]):
        return [cell.strip().lower() for cell in rows[0]], rows[1:]
    return None, rows


def _is_header(row: list[str]) -> bool:
    """A CSV's first row is its header when its first cell names the path column."""
    return bool(row) and row[0].strip().lower() in PATH_COLUMNS


def _path_key(record) -> str | None:
    """The key of a JSON lines record that holds the image's path."""
    return next((name for name in PATH_COLUMNS if isinstance(record, dict) and name in record), None)


def label_fields(target, classes: list[str]) -> dict:
    """A file row's label fields: ``class`` (one class index), or ``labels`` for a multi-label row
    of 0/1 (the names of the labels it carries, maybe none)."""
    if np.ndim(target):
        return {"labels": [classes[index] for index in np.flatnonzero(np.asarray(target))]}
    return {"class": classes[int(target)]}


def split_labels(cell: str) -> list[str]:
    """A cell of labels: separated by ";" when it holds one, else by spaces; each label once."""
    parts = cell.split(";") if ";" in cell else cell.split()
    return list(dict.fromkeys(part.strip() for part in parts if part.strip()))


def _csv_rows(path: Path, task: str | None) -> tuple[dict[str, list[tuple[str, object]]], bool]:
    """Rows by split ("pool" when the CSV gives none): (path, label) or, for label sets, (path,
    [labels]); and whether the labels are sets (a "labels"/"tags" column, or ``task`` says so)."""
    header, rows = _read_csv_table(path)
    sets = task == MULTI_LABEL or (task is None and header is not None and len(header) > 1
                                   and header[1] in LABEL_SET_COLUMNS)  # fmt: skip
    by_split: dict[str, list[tuple[str, object]]] = {}
    for line, row in enumerate(rows, start=2 if header else 1):
        cell = row[1].strip() if len(row) >= 2 else ""
        if not row[0].strip() or (not cell and not sets):
            raise DataError(f"{path}: row {line} needs 'path,label' (got {','.join(row)!r})")
        split = _split_of(path, line, row[2]) if len(row) >= 3 and row[2].strip() else "pool"
        by_split.setdefault(split, []).append((row[0].strip(), split_labels(cell) if sets else cell))
    return by_split, sets


def _split_of(path: Path, line: int, value: str) -> str:
    split = SPLIT_NAMES.get(value.strip().lower(), "")
    if not split:
        raise DataError(f"{path}: row {line} has unknown split {value!r} (train, val or test)")
    return split


def _jsonl_rows(path: Path, task: str | None) -> tuple[dict[str, list[tuple[str, object]]], bool]:
    """JSON lines, one image per line: ``{"path": ..., "labels": [...] or "a;b", "split": ...}``
    (or ``"label"`` for one class); the same rows ``_csv_rows`` gives."""
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot be read ({error})") from None
    records = []
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as error:
            raise DataError(f"{path}: line {number} is not JSON ({error.msg})") from None
        key = _path_key(record)
        if key is None or not isinstance(record[key], str):
            raise DataError(f'{path}: line {number} needs a "path" (got {text[:80]!r})')
        records.append((number, record, key))
    sets = task == MULTI_LABEL or any(name in record for _, record, _ in records for name in LABEL_SET_COLUMNS)
    by_split: dict[str, list[tuple[str, object]]] = {}
    for number, record, key in records:
        value = next((record[name] for name in (*LABEL_SET_COLUMNS, "label", "class") if name in record), None)
        if isinstance(value, list):
            labels = list(dict.fromkeys(str(v) for v in value))
        else:
            labels = split_labels(str(value or ""))
        if not sets and len(labels) != 1:
            raise DataError(f'{path}: line {number} needs one "label" (got {_shown(record)})')
        split = _split_of(path, number, str(record["split"])) if record.get("split") else "pool"
        by_split.setdefault(split, []).append((record[key].strip(), labels if sets else labels[0]))
    return by_split, sets


def _shown(record: dict) -> str:
    return json.dumps(record)[:80]


def _load_csv(path: Path, policy: SplitPolicy, task: str | None = None) -> Dataset:
    """A CSV (or JSON lines) listing of images, labels and maybe splits."""
    by_split, sets = _jsonl_rows(path, task) if path.suffix.lower() in JSON_LINES else _csv_rows(path, task)
    if not by_split:
        raise DataError(f"{path}: the listing names no images")
    if "pool" in by_split and len(by_split) > 1:
        raise DataError(f"{path}: give a split for every row or for none")
    by_split = _with_suffixes_found(path.parent, by_split)
    reader = FolderReader(path.parent)
    one_each = all(len(labels) == 1 for items in by_split.values() for _, labels in items)
    if sets and (task == MULTI_LABEL or not one_each):
        classes, splits, info = _label_set_files(str(path), reader, by_split, policy)
        return Dataset(str(path), classes, splits, info, kind="csv", task=MULTI_LABEL)
    if sets:  # a "labels" column with one label per image: single-label data
        by_split = {split: [(key, labels[0]) for key, labels in items] for split, items in by_split.items()}
    classes, splits, info = _labelled_files(str(path), reader, by_split, policy)
    return Dataset(str(path), classes, splits, info, kind="csv")


def _entries(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except OSError:  # unreadable: its files stay not found, and their rows say so
        return []


def _readable_subfolders(root: Path) -> list[Path]:
    return sorted(entry for entry in _entries(root) if entry.is_dir() and not is_junk(entry.name))


Rows = dict[str, list[tuple[str, object]]]  # (path, label or labels) by split, as a listing gives them


def _with_suffixes_found(root: Path, by_split: Rows) -> Rows:
    """Rows whose path names no file and has no image suffix (Kaggle's listings: ``train_0`` for
    ``train-jpg/train_0.jpg``) point to the one image of that name in the listing's folder or a
    folder just below it; a name two images share, or none, is left as it is (its row then says
    the file was not found)."""
    missing = {key for items in by_split.values() for key, _ in items
               if Path(key).suffix.lower() not in IMAGE_SUFFIXES and not (root / key).exists()}  # fmt: skip
    if not missing:
        return by_split
    found: dict[str, list[str]] = {}
    for folder in [root, *_readable_subfolders(root)]:
        for entry in _entries(folder):
            if entry.suffix.lower() in IMAGE_SUFFIXES and entry.stem in missing:
                found.setdefault(entry.stem, []).append(str(entry.relative_to(root)))
    unique = {stem: places[0] for stem, places in found.items() if len(places) == 1}
    return {split: [(unique.get(key, key), labels) for key, labels in items] for split, items in by_split.items()}


def _label_set_files(
    name: str, reader: ImageReader, by_split: dict[str, list[tuple[str, list[str]]]], policy: SplitPolicy
) -> tuple[list[str], dict[str, Split], dict]:
    """Multi-label files: each split's targets one 0/1 row per image over the training labels."""
    train_split = "train" if "train" in by_split else "pool"
    classes = sorted({label for _, labels in by_split.get(train_split, []) for label in labels})
    index = {label: i for i, label in enumerate(classes)}
    given: dict[str, Split] = {}
    for split, items in by_split.items():
        unknown = sorted({label for _, labels in items for label in labels} - index.keys())
        if unknown:
            raise DataError(f"{name}: label {unknown[0]!r} is in {split} but on no training image")
        targets = np.zeros((len(items), len(classes)), dtype=np.float32)  # BCE's targets
        for row, (_, labels) in enumerate(items):
            targets[row, [index[label] for label in labels]] = 1
        given[split] = FileSplit(reader, [key for key, _ in items], targets)
    _check_classes(name, classes, given)
    splits, info = _finish_splits(given, policy)
    return classes, splits, info


def load_dataset(
    data: str, policy: SplitPolicy = SplitPolicy(), data_dir: str | Path | None = None, task: str | None = None
) -> Dataset:
    """Resolve DATA: ``digits``, ``fashion-mnist``, a folder, an archive or a ``.csv`` file.
    ``task``: None finds out (a CSV column of label sets holding several labels on some image is
    multi-label); ``MULTI_LABEL`` reads every CSV label cell as a set."""
    listing = _listing_in_folder(Path(data).expanduser()) if task == MULTI_LABEL else None
    if listing is not None:
        return _load_csv(listing, policy, task)
    if task == MULTI_LABEL and not str(data).lower().endswith((".csv", *JSON_LINES)):
        raise DataError(f"{data}: multi-label data comes as a CSV of path,labels (labels separated by ';' or "
                        "spaces) or as JSON lines")  # fmt: skip
    if data == "digits":
        return _load_digits(policy)
    if data == "fashion-mnist":
        return _load_fashion_mnist(policy, Path(data_dir) if data_dir else None)
    path = Path(data).expanduser()
    if not path.exists():
        hint = " (pass the path of an image-folder copy, such as cifar10-jpeg.tar.gz)" if data == "cifar10" else ""
        raise DataError(
            f"{data}: no such file or folder, and not a built-in dataset ({', '.join(BUILTIN_DATASETS)}){hint}"
        )
    if path.suffix.lower() in (".csv", *JSON_LINES):
        return _load_csv(path, policy, task)
    return _load_folder_or_archive(path, policy)


def _listing_in_folder(path: Path) -> Path | None:
    """The one CSV or JSON lines file at the top of folder ``path`` that has a path column (None:
    not a folder, none, or several: which one is meant is then the user's to say)."""
    if not path.is_dir():
        return None
    try:
        candidates = [entry for entry in path.iterdir() if entry.suffix.lower() in (".csv", *JSON_LINES)
                      and entry.is_file() and _names_a_path_column(entry)]  # fmt: skip
    except OSError:
        return None
    return candidates[0] if len(candidates) == 1 else None


def _names_a_path_column(listing: Path) -> bool:
    """Whether a listing's first line names the path column as the listing is read (the CSV
    header's first cell, or a key of the first JSON object)."""
    try:
        with listing.open("r", encoding="utf-8-sig", errors="replace") as handle:
            first = handle.readline(65536)
    except OSError:
        return False
    if listing.suffix.lower() in JSON_LINES:
        try:
            return _path_key(json.loads(first)) is not None
        except ValueError:
            return False
    return _is_header(next(csv.reader([first]), []))
