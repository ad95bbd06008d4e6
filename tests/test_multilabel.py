"""Multi-label data: a CSV of label sets is read as one, split so every label is on both sides,
and described by doctor; the steps that do not handle it yet say so in one line."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import pattern_image
from imgclf.cli.main import main
from imgclf.data.dataset import MULTI_LABEL, SINGLE_LABEL, load_dataset, split_labels
from imgclf.data.split import iterative_split

LABELS = ("left", "right", "top", "bottom")


def write_label_set_csv(root: Path, rows: list[str], column: str = "labels") -> Path:
    """One small image per row of labels (the first label's pattern), listed in ``labels.csv``."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    with (root / "labels.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", column])
        for index, labels in enumerate(rows):
            first = LABELS.index(split_labels(labels)[0]) if labels.strip() else 0
            pattern_image(first, 16, rng).save(root / "images" / f"{index:03d}.png")
            writer.writerow([f"images/{index:03d}.png", labels])
    return root / "labels.csv"


def _label_sets(count: int = 60) -> list[str]:
    rng = np.random.default_rng(1)
    rows = []
    for _ in range(count):
        chosen = [label for label in LABELS if rng.random() < 0.4] or [LABELS[int(rng.integers(4))]]
        rows.append(" ".join(chosen))
    return rows


def test_a_csv_of_label_sets_is_multi_label_with_a_row_of_labels_per_image(tmp_path: Path):
    data = write_label_set_csv(tmp_path, _label_sets())
    dataset = load_dataset(str(data))
    assert dataset.task == MULTI_LABEL and dataset.classes == sorted(LABELS)
    train = dataset.splits["train"]
    assert train.targets.shape == (len(train), 4) and set(np.unique(train.targets)) <= {0, 1}
    for split in dataset.splits.values():  # iterative stratification: every label on every side
        assert (split.targets.sum(axis=0) > 0).all()


def test_one_label_per_row_stays_single_label_and_a_label_column_keeps_its_spaces(tmp_path: Path):
    single = load_dataset(str(write_label_set_csv(tmp_path / "one", ["left", "right"] * 12)))
    assert single.task == SINGLE_LABEL and single.splits["train"].targets.ndim == 1
    spaced = write_label_set_csv(tmp_path / "spaced", ["left right", "top bottom"] * 12, column="label")
    dataset = load_dataset(str(spaced))
    assert dataset.task == SINGLE_LABEL and dataset.classes == ["left right", "top bottom"]
    forced = load_dataset(str(spaced), task=MULTI_LABEL)
    assert forced.task == MULTI_LABEL and forced.classes == sorted(LABELS)


def test_labels_split_on_semicolons_or_spaces_and_an_empty_cell_is_no_label(tmp_path: Path):
    assert split_labels("golden retriever; dog ;dog") == ["golden retriever", "dog"]
    assert split_labels("clear  primary road") == ["clear", "primary", "road"]
    rows = _label_sets() + ["", ""]
    dataset = load_dataset(str(write_label_set_csv(tmp_path, rows)))
    empty = sum(int(split.targets.sum(axis=1).tolist().count(0)) for split in dataset.splits.values())
    assert empty == 2


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_iterative_split_gives_each_split_its_share_of_every_label(seed: int):
    rng = np.random.default_rng(seed)
    targets = (rng.random((400, 6)) < np.array([0.9, 0.5, 0.2, 0.05, 0.02, 0.01])).astype(np.uint8)
    parts = iterative_split(targets, {"val": 0.1, "test": 0.1}, seed)
    assert sorted(np.concatenate(list(parts.values())).tolist()) == list(range(400))  # each image once
    totals = targets.sum(axis=0)
    for name, share in (("train", 0.8), ("val", 0.1), ("test", 0.1)):
        got = targets[parts[name]].sum(axis=0)
        assert np.all(np.abs(got - share * totals) <= np.maximum(2, 0.15 * share * totals)), (name, got, totals)
        assert np.all(got[totals >= 3] >= 1)  # a label on 3+ images is on every side
    again = iterative_split(targets, {"val": 0.1, "test": 0.1}, seed)
    assert all(np.array_equal(parts[name], again[name]) for name in parts)


def test_doctor_describes_label_sets_and_warns_of_labels_too_rare(tmp_path: Path, capsys):
    rows = _label_sets() + ["left rare", "top rare"]
    data = write_label_set_csv(tmp_path, rows)
    assert main(["doctor", str(data), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["task"] == MULTI_LABEL and "rare" in report["classes"]
    facts = report["multi_label"]
    assert facts["labels_per_image"]["max"] >= 2 and facts["co_occurrence"]
    assert any(item["label"] == "rare" and item["train"] < 5 for item in facts["rare"])
    assert any("'rare' is on" in warning for warning in report["warnings"])
    assert all("labels" in row and "class" not in row for row in report["files"])
    assert main(["doctor", str(data)]) == 0
    shown = capsys.readouterr().out
    assert "multi-label, 5 labels" in shown and "most frequent together" in shown


def test_training_on_label_sets_is_refused_in_one_line_for_now(tmp_path: Path, capsys):
    data = write_label_set_csv(tmp_path, _label_sets())
    assert main(["train", str(data), "--model", "simple_cnn", "--epochs", "1", "--output", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "multi-label data" in error and "imgclf doctor" in error
