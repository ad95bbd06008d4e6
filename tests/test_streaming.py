"""Data too large for memory streams through DataLoader workers; a file that passes the header
scan but fails to decode is skipped in both modes, and the run finishes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import write_class_folder
from imgclf.config import TrainConfig
from imgclf.runners.train import run_train


@pytest.fixture
def folder_with_truncated_png(tmp_path: Path) -> Path:
    root = write_class_folder(tmp_path / "data", ["a", "b"], per_class=12)
    good = (root / "a" / "000.png").read_bytes()
    (root / "a" / "truncated.png").write_bytes(good[: len(good) // 2])  # valid header, broken pixels
    return root


def test_in_memory_run_skips_and_records_a_file_that_fails_to_decode(folder_with_truncated_png, tmp_path):
    config = TrainConfig(epochs=1, batch_size=8, seed=1, val_fraction=0.2, test_fraction=0.0)
    run_train(str(folder_with_truncated_png), config, output=tmp_path / "bundle")
    skipped = json.loads((tmp_path / "bundle" / "model.json").read_text())["data"]["skipped"]
    assert [Path(item["file"]).name for item in skipped] == ["truncated.png"]
    assert "cannot decode" in skipped[0]["reason"]


def test_streaming_run_trains_past_a_bad_file(folder_with_truncated_png, tmp_path):
    config = TrainConfig(epochs=2, batch_size=8, max_memory_gb=0.0, workers=1, val_fraction=0.2, test_fraction=0.0)
    result = run_train(str(folder_with_truncated_png), config, output=tmp_path / "bundle")
    assert result["epochs"] == 2 and result["metrics"]["test_accuracy"] is None
    description = json.loads((tmp_path / "bundle" / "model.json").read_text())
    assert description["data"]["sizes"]["train"] + description["data"]["sizes"]["val"] == 25
