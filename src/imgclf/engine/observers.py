"""Observers get told what the training loop did; they return nothing and change nothing."""

from __future__ import annotations

import time
from typing import Protocol

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from imgclf.text import terminal_console

__all__ = ["NullObserver", "ProgressObserver", "TrainObserver"]


class TrainObserver(Protocol):
    def on_fit_start(self, epochs: int, steps_per_epoch: int, start_epoch: int) -> None: ...

    def on_step(self, epoch: int, step: int, loss: float, accuracy: float, images_per_s: float) -> None: ...

    def on_epoch_end(self, record: dict) -> None: ...

    def on_fit_end(self, summary: dict) -> None: ...


class NullObserver:
    def on_fit_start(self, epochs: int, steps_per_epoch: int, start_epoch: int) -> None:
        pass

    def on_step(self, epoch: int, step: int, loss: float, accuracy: float, images_per_s: float) -> None:
        pass

    def on_epoch_end(self, record: dict) -> None:
        pass

    def on_fit_end(self, summary: dict) -> None:
        pass


class ProgressObserver:
    """A progress bar on stderr (loss, accuracy, images/s, ETA) and one line per epoch.

    On a terminal the bar updates in place; in a log file (CI) a step line appears at most once
    every ``log_every_s`` seconds, so a long epoch still shows that it is moving.
    """

    def __init__(self, console: Console | None = None, log_every_s: float = 60.0):
        self.console = console or terminal_console(soft_wrap=True)
        self.log_every_s = log_every_s
        self.progress: Progress | None = None
        self.task = None
        self.epochs = 0
        self.steps_per_epoch = 0
        self.last_log = time.monotonic()

    def on_fit_start(self, epochs: int, steps_per_epoch: int, start_epoch: int) -> None:
        self.epochs, self.steps_per_epoch = epochs, steps_per_epoch
        self.last_log = time.monotonic()
        if not self.console.is_terminal:
            return
        self.progress = Progress(
            TextColumn("epoch {task.fields[epoch]}/{task.fields[epochs]}"),
            BarColumn(),
            TextColumn("loss {task.fields[loss]:.4f} acc {task.fields[acc]:.3f} {task.fields[ips]:,.0f} img/s"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )
        self.progress.start()
        total = steps_per_epoch * (epochs - start_epoch)
        self.task = self.progress.add_task(
            "train", total=total, epoch=start_epoch + 1, epochs=epochs, loss=0.0, acc=0.0, ips=0.0
        )

    def on_step(self, epoch: int, step: int, loss: float, accuracy: float, images_per_s: float) -> None:
        if self.progress is None:
            if time.monotonic() - self.last_log >= self.log_every_s:
                self.last_log = time.monotonic()
                self.console.print(
                    f"epoch {epoch + 1:>3}/{self.epochs}  step {step + 1}/{self.steps_per_epoch}  "
                    f"train loss {loss:.4f} acc {accuracy:.4f}  {images_per_s:,.0f} img/s"
                )
            return
        self.progress.update(self.task, advance=1, epoch=epoch + 1, loss=loss, acc=accuracy, ips=images_per_s)

    def on_epoch_end(self, record: dict) -> None:
        best = " *" if record.get("is_best") else ""
        if record.get("epochs", self.epochs) != self.epochs:  # a time budget re-planned the run's length
            if self.progress is not None:
                done = self.progress.tasks[0].completed
                left = (record["epochs"] - record["epoch"]) * self.steps_per_epoch
                self.progress.update(self.task, total=done + left, epochs=record["epochs"])
            self.epochs = record["epochs"]
        self.console.print(
            f"epoch {record['epoch']:>3}/{self.epochs}  train loss {record['train_loss']:.4f} "
            f"acc {record['train_accuracy']:.4f}  val loss {record['val_loss']:.4f} "
            f"acc {record['val_accuracy']:.4f}  lr {record['lr']:.2e}  "
            f"{record['train_images_per_s']:,.0f} img/s  {record['seconds']:.1f}s{best}",
            highlight=False,
        )
        if record.get("diverged"):
            self.console.print(f"  diverged ({record['diverged']}): rolled back to the kept weights, "
                               f"learning rate x{record['lr_after'] / record['lr']:g}", highlight=False)  # fmt: skip

    def on_fit_end(self, summary: dict) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        note = " (stopped early)" if summary.get("stopped_early") else ""
        if summary.get("interrupted"):
            note = " (stopped on request)"
        kept, highest = summary["best_val_accuracy"], summary.get("highest_val_accuracy", -1.0)
        if not summary.get("chose_on_val", True):  # the last good epoch, by rule: validation judges it later
            line = f"kept the last good epoch, {summary['best_epoch']}: val accuracy {kept:.4f}"
        elif highest > kept:  # a later epoch kept over a higher one within the validation split's noise
            images = summary.get("val_images")
            split = f"{images:,} validation images" if images else "the validation split"
            note += f" (kept over an earlier epoch's {highest:.4f}: closer than {split} can tell apart)"
            line = f"kept epoch {summary['best_epoch']}: val accuracy {kept:.4f}"
        else:
            line = f"best epoch {summary['best_epoch']}: val accuracy {kept:.4f}"
        self.console.print(f"{line}{note}, {summary['seconds']:.1f}s", highlight=False)
