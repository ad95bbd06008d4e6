"""``imgclf doctor DATA``: what imgclf will do with every file, before a minute of training.

Each file is *used*, *converted* (and how) or *skipped* (and why); exact duplicates are found by
content hash within and across splits (a duplicate across train and test inflates the test
score); class imbalance, image sizes and modes per class are summarized, with a warning when a
mode or format alone predicts the label.
"""

from __future__ import annotations

from collections import Counter

from imgclf.data.checks import data_warnings
from imgclf.data.dataset import MULTI_LABEL, ArraySplit, SplitPolicy, load_dataset
from imgclf.data.inspect import array_rows, label_set_facts, scan_files, summary
from imgclf.text import stderr_console

__all__ = ["run_doctor"]


def run_doctor(data: str, seed: int = 0, data_dir=None, task: str | None = None) -> dict:
    """Inspect DATA as ``train`` would read it (same layout and split rules); never trains.
    ``task``: None finds out whether DATA is multi-label; "multi-label" reads CSV labels as sets."""
    dataset = load_dataset(data, SplitPolicy(seed=seed), data_dir, task)
    if any(isinstance(split, ArraySplit) for split in dataset.splits.values()):
        rows = array_rows(dataset)
    else:
        rows = scan_files(dataset, stderr_console().print)
    duplicates, warnings = data_warnings(rows, dataset.classes)
    overview = summary(dataset, rows)
    if dataset.task == MULTI_LABEL:
        overview["multi_label"], label_warnings = label_set_facts(dataset, rows)
        warnings = [*warnings, *label_warnings]
    counts = Counter(row["status"] for row in rows)
    return {
        "data": dataset.name,
        "task": dataset.task,
        "classes": dataset.classes,
        "split": {k: v for k, v in dataset.split_info.items() if k != "fingerprints"},
        "counts": {status: counts.get(status, 0) for status in ("used", "converted", "skipped")},
        "files": rows,
        "skipped": [{"file": row["file"], "reason": row["detail"]} for row in rows if row["status"] == "skipped"],
        "ignored": [{"file": file, "reason": reason} for file, reason in dataset.ignored],
        "duplicates": duplicates,
        **overview,
        "warnings": warnings,
    }
