"""Run logs other tools read: metrics.csv, TensorBoard event files, an MLflow run."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from imgclf.cli.main import main
from imgclf.config import TrainConfig
from imgclf.errors import UsageError

CSV_COLUMNS = ["epoch", "seconds", "lr", "train_loss", "train_accuracy", "val_loss", "val_accuracy"]


def _csv_rows(bundle: Path) -> list[dict]:
    with open(bundle / "metrics.csv", newline="") as file:
        reader = csv.DictReader(file)
        assert reader.fieldnames == CSV_COLUMNS
        return list(reader)


def test_tensorboard_and_mlflow_read_what_a_run_logged(tmp_path: Path, monkeypatch):
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    store = tmp_path / "mlruns"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.as_uri())
    output = tmp_path / "run"
    assert main(["train", "digits", "--model", "lenet5", "--epochs", "2", "--output", str(output),
                 "--log", "tensorboard,mlflow"]) == 0  # fmt: skip

    rows = _csv_rows(output)
    assert [row["epoch"] for row in rows] == ["1", "2"]
    assert all(0.0 <= float(row["val_accuracy"]) <= 1.0 and float(row["lr"]) > 0 for row in rows)

    events = EventAccumulator(str(output / "tensorboard"), size_guidance={"images": 0, "scalars": 0}).Reload()
    assert [event.step for event in events.Scalars("epoch/val_accuracy")] == [1, 2]
    assert [round(e.value, 6) for e in events.Scalars("epoch/val_accuracy")] == [
        round(float(row["val_accuracy"]), 6) for row in rows
    ]
    assert {"test/confusion_matrix", "test/reliability"} <= set(events.Tags()["images"])
    assert "configuration/text_summary" in events.Tags()["tensors"]

    client = MlflowClient(tracking_uri=store.as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("Default").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["model"] == "lenet5" and run.data.params["epochs"] == "2"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")] == [1, 2]
    assert 0.5 < run.data.metrics["final_test_accuracy"] <= 1.0
    artifacts = {item.path for item in client.list_artifacts(run.info.run_id, "bundle")}
    assert {"bundle/model.safetensors", "bundle/model.json", "bundle/metrics.csv", "bundle/config.yaml"} <= artifacts


class _StopAtEpoch:
    """A run killed while its second epoch ends: epoch 1 is the last one checkpointed."""

    def on_fit_start(self, *args) -> None: ...

    def on_step(self, *args) -> None: ...

    def on_epoch_end(self, record: dict) -> None:
        if record["epoch"] == 2:
            raise KeyboardInterrupt


def test_metrics_csv_has_one_row_per_epoch_also_after_resume(tmp_path: Path):
    from imgclf.runners.train import run_train

    config = TrainConfig(model="lenet5", epochs=3)
    output = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        run_train("digits", config, output=output, observer=_StopAtEpoch())
    assert [row["epoch"] for row in _csv_rows(output)] == ["1"]  # followed as it goes
    run_train("digits", config, output=output, resume=True)
    assert [row["epoch"] for row in _csv_rows(output)] == ["1", "2", "3"]


def test_a_linear_probe_run_has_its_one_fit_as_the_row(tmp_path: Path):
    """No epochs of the loop: the probe's fit is epoch 1 (the same record metrics.json keeps)."""
    from imgclf.engine.run_logs import CsvLog

    log = CsvLog(tmp_path)
    log.on_run_end(tmp_path, [], {"history": [{"epoch": 1, "val_accuracy": 0.9}]})
    (row,) = _csv_rows(tmp_path)
    assert row["epoch"] == "1" and row["val_accuracy"] == "0.9" and row["train_loss"] == ""


def test_an_unknown_log_kind_is_a_usage_error():
    with pytest.raises(
        UsageError, match="--log must be tensorboard, mlflow or both joined by ',', not 'tensorboard,wandb'"
    ):
        TrainConfig(log="tensorboard,wandb")
