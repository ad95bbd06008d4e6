"""Run logs that other tools read: ``metrics.csv`` in every bundle (written as the run goes, so a
run in progress can be followed), TensorBoard event files, and an MLflow run.

Each log is an observer of the training loop (it only listens) that also hears about the run as
a whole: ``on_run_start`` with the resolved configuration, ``on_run_end`` with the finished
bundle. TensorBoard and MLflow are optional dependencies, imported only when asked for.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from imgclf.config import LOG_KINDS
from imgclf.errors import UsageError
from imgclf.files import atomic_write_bytes
from imgclf.text import for_markdown

__all__ = ["LOG_KINDS", "CsvLog", "MlflowLog", "Observers", "TensorBoardLog", "create_run_logs"]

CSV_FILE = "metrics.csv"
CSV_COLUMNS = ("epoch", "seconds", "lr", "train_loss", "train_accuracy", "val_loss", "val_accuracy")
STEP_SCALARS_EVERY = 10  # optimizer steps between the per-step scalars of TensorBoard and MLflow
TENSORBOARD_FOLDER = "tensorboard"


class Observers:
    """Several observers heard as one: each call goes to every observer that has the method."""

    def __init__(self, *observers):
        self.observers = [observer for observer in observers if observer is not None]

    def _tell(self, method: str, *args) -> None:
        for observer in self.observers:
            if hasattr(observer, method):
                getattr(observer, method)(*args)

    def on_run_start(self, config: dict) -> None:
        self._tell("on_run_start", config)

    def on_fit_start(self, epochs: int, steps_per_epoch: int, start_epoch: int) -> None:
        self._tell("on_fit_start", epochs, steps_per_epoch, start_epoch)

    def on_step(self, epoch: int, step: int, loss: float, accuracy: float, images_per_s: float) -> None:
        self._tell("on_step", epoch, step, loss, accuracy, images_per_s)

    def on_epoch_end(self, record: dict) -> None:
        self._tell("on_epoch_end", record)

    def on_fit_end(self, summary: dict) -> None:
        self._tell("on_fit_end", summary)

    def on_run_end(self, bundle: Path, classes: list[str], metrics: dict) -> None:
        self._tell("on_run_end", bundle, classes, metrics)

    def close(self) -> None:
        """Every log closed, also when the run failed (an MLflow run is then marked FAILED)."""
        self._tell("close")


class CsvLog:
    """``metrics.csv``: one row per epoch, rewritten whole (atomically) after every epoch. A resumed
    run starts from the history in its training state, so rows of epochs that were trained but
    never checkpointed are not kept twice."""

    def __init__(self, folder: Path, history: list[dict] | None = None):
        self.path = Path(folder) / CSV_FILE
        self.rows = [_csv_row(record) for record in history or []]

    def on_epoch_end(self, record: dict) -> None:
        self.rows.append(_csv_row(record))
        text = io.StringIO()
        writer = csv.DictWriter(text, CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_bytes(self.path, text.getvalue().encode("utf-8"))

    def on_run_end(self, bundle: Path, classes: list[str], metrics: dict) -> None:
        if not self.rows:  # a linear probe has no epochs of the loop: its one fit is the row
            for record in metrics.get("history", []):
                self.on_epoch_end(record)


def _csv_row(record: dict) -> dict:
    row = {column: record.get(column) for column in CSV_COLUMNS}
    for column, value in row.items():
        if isinstance(value, float):
            row[column] = f"{value:.6g}"
    return row


class TensorBoardLog:
    """TensorBoard event files in ``folder``: scalars per epoch and every few steps, the resolved
    configuration as text, and at the end the confusion matrix and the reliability diagram."""

    def __init__(self, folder: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UsageError("--log tensorboard needs the tensorboard package: pip install tensorboard") from None
        self.writer = SummaryWriter(log_dir=str(folder))
        self.steps_per_epoch = 1

    def on_run_start(self, config: dict) -> None:
        lines = [f"| {for_markdown(key)} | {for_markdown(value)} |" for key, value in config.items()]
        self.writer.add_text("configuration", "| option | value |\n| --- | --- |\n" + "\n".join(lines), 0)

    def on_fit_start(self, epochs: int, steps_per_epoch: int, start_epoch: int) -> None:
        self.steps_per_epoch = max(1, steps_per_epoch)

    def on_step(self, epoch: int, step: int, loss: float, accuracy: float, images_per_s: float) -> None:
        if step % STEP_SCALARS_EVERY == 0 and loss == loss:  # NaN before the first reading
            global_step = epoch * self.steps_per_epoch + step
            self.writer.add_scalar("step/train_loss", loss, global_step)
            self.writer.add_scalar("step/images_per_s", images_per_s, global_step)

    def on_epoch_end(self, record: dict) -> None:
        for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "seconds"):
            if record.get(key) is not None:
                self.writer.add_scalar(f"epoch/{key}", record[key], record["epoch"])
        self.writer.flush()

    def on_run_end(self, bundle: Path, classes: list[str], metrics: dict) -> None:
        for name, png in _final_figures(classes, metrics).items():
            self.writer.add_image(name, _png_to_array(png), dataformats="HWC")
        summary = metrics.get("summary", {})
        for key in ("val_accuracy", "test_accuracy"):
            if summary.get(key) is not None:
                self.writer.add_scalar(f"final/{key}", summary[key], 0)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class MlflowLog:
    """An MLflow run: the resolved configuration as parameters, the epoch metrics as they come, the
    final metrics, and the bundle as artifacts. The tracking store is MLflow's own choice
    (``MLFLOW_TRACKING_URI``), a local ``mlruns/`` folder when that is not set."""

    def __init__(self, run_name: str):
        try:
            import mlflow
        except ImportError:
            raise UsageError("--log mlflow needs MLflow: pip install mlflow-skinny (or mlflow)") from None
        self.mlflow = mlflow
        uri = os.environ.get("MLFLOW_TRACKING_URI") or Path("mlruns").resolve().as_uri()
        if uri.startswith("file:") or "://" not in uri:
            # MLflow 3 keeps its folder store only on request; a local mlruns/ is what we promise.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        mlflow.set_tracking_uri(uri)
        self.run = mlflow.start_run(run_name=run_name)
        self.steps_per_epoch, self.finished = 1, False

    def on_run_start(self, config: dict) -> None:
        self.mlflow.log_params({key: "" if value is None else value for key, value in config.items()})

    def on_fit_start(self, epochs: int, steps_per_epoch: int, start_epoch: int) -> None:
        self.steps_per_epoch = max(1, steps_per_epoch)

    def on_epoch_end(self, record: dict) -> None:
        values = {key: record[key] for key in CSV_COLUMNS[1:] if isinstance(record.get(key), int | float)}
        self.mlflow.log_metrics(values, step=int(record["epoch"]))

    def on_run_end(self, bundle: Path, classes: list[str], metrics: dict) -> None:
        summary = metrics.get("summary", {})
        final = {
            f"final_{key}": summary[key] for key in ("val_accuracy", "test_accuracy") if summary.get(key) is not None
        }
        self.mlflow.log_metrics(final)
        self.mlflow.log_artifacts(str(bundle), artifact_path="bundle")
        self.finished = True

    def close(self) -> None:
        if self.mlflow.active_run() is not None and self.mlflow.active_run().info.run_id == self.run.info.run_id:
            self.mlflow.end_run(status="FINISHED" if self.finished else "FAILED")


def _final_figures(classes: list[str], metrics: dict) -> dict[str, bytes]:
    from imgclf.explain.figures import confusion_matrix_png, reliability_png

    split = "test" if metrics.get("test", {}).get("confusion_matrix") else "val"
    evaluated = metrics.get(split, {})
    figures = {}
    if evaluated.get("confusion_matrix"):
        figures[f"{split}/confusion_matrix"] = confusion_matrix_png(evaluated["confusion_matrix"],
                                                                    classes)  # fmt: skip
    if evaluated.get("reliability"):
        figures[f"{split}/reliability"] = reliability_png(evaluated["reliability"], evaluated.get("ece"),
                                                          evaluated.get("ece_uncalibrated"))  # fmt: skip
    return figures


def _png_to_array(png: bytes):
    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        return np.asarray(image.convert("RGB"))


def create_run_logs(kinds: tuple[str, ...], output: Path, history: list[dict] | None = None) -> Observers:
    """``metrics.csv`` always; TensorBoard (into ``output/tensorboard``) and MLflow when named
    (``kinds``: from ``LOG_KINDS``, checked by TrainConfig)."""
    logs = [CsvLog(output, history)]
    if "tensorboard" in kinds:
        logs.append(TensorBoardLog(output / TENSORBOARD_FOLDER))
    if "mlflow" in kinds:
        logs.append(MlflowLog(run_name=output.name))
    return Observers(*logs)
