"""Dataset-level checks shared by ``imgclf doctor`` and the start of ``train``: exact duplicates
by content hash (within a split, and across splits: leakage), class imbalance, and a mode or
format that alone predicts the label.

Both work on file rows: ``{"file", "split", "class", "sha256", "mode", "format", "status"}``
(``status`` is "skipped" for a file that cannot be used; other keys may be missing there).
"""

from __future__ import annotations

from collections import Counter, defaultdict

__all__ = [
    "IMBALANCE_WARNING_RATIO",
    "data_warnings",
    "find_duplicates",
    "imbalance_ratio",
    "label_leak_warnings",
    "row_labels",
]


def row_labels(row: dict) -> list[str]:
    """A file row's labels: its class, or on multi-label data its set of labels (maybe none)."""
    return row["labels"] if "labels" in row else [row["class"]]


IMBALANCE_WARNING_RATIO = 3.0  # largest class over smallest class
LEAK_MIN_IMAGES = 5  # a mode or format must cover this many images before it counts as a signal


def find_duplicates(rows: list[dict]) -> dict[str, list[list[str]]]:
    """Groups of files with identical bytes, within one split and across splits."""
    groups = defaultdict(list)
    for row in rows:
        if row.get("sha256"):
            groups[row["sha256"]].append(row)
    within, across = [], []
    for group in groups.values():
        if len(group) < 2:
            continue
        files = [row["file"] for row in group]
        (across if len({row["split"] for row in group}) > 1 else within).append(files)
    return {"within_split": within, "across_splits": across}


def label_leak_warnings(rows: list[dict]) -> list[str]:
    """A mode or format found in one class only, while other images have another."""
    warnings = []
    for field in ("mode", "format"):
        by_value = defaultdict(Counter)
        for row in rows:
            if row.get(field):
                by_value[row[field]].update(row_labels(row))
        if len(by_value) < 2:
            continue
        for value, classes in by_value.items():
            if len(classes) == 1 and sum(classes.values()) >= LEAK_MIN_IMAGES:
                name = next(iter(classes))
                warnings.append(
                    f"every {field} {value} image is in class {name!r}: a model can learn the "
                    f"{field} instead of the content"
                )
    return warnings


def imbalance_ratio(rows: list[dict], classes: list[str]) -> float:
    """Usable images of the largest class over those of the smallest (0 when nothing is usable)."""
    counts = Counter(label for row in rows if row.get("status") != "skipped" for label in row_labels(row))
    if not counts:
        return 0.0
    return round(max(counts.values()) / max(1, min(counts.get(name, 0) for name in classes)), 2)


def data_warnings(rows: list[dict], classes: list[str]) -> tuple[dict[str, list[list[str]]], list[str]]:
    """The duplicates found and every warning a user should read before training."""
    duplicates = find_duplicates(rows)
    warnings = label_leak_warnings(rows)
    if duplicates["across_splits"]:
        example = " = ".join(duplicates["across_splits"][0][:2])
        warnings.append(
            f"{len(duplicates['across_splits'])} image(s) appear in more than one split (e.g. {example}): the "
            "test and validation scores will be too high (leakage)"
        )
    ratio = imbalance_ratio(rows, classes)
    if ratio > IMBALANCE_WARNING_RATIO and any("labels" in row for row in rows):
        warnings.append(f"the most common label is on {ratio}x the images of the rarest")
    elif ratio > IMBALANCE_WARNING_RATIO:
        warnings.append(f"the largest class has {ratio}x the images of the smallest: consider --class-weights balanced")
    return duplicates, warnings
