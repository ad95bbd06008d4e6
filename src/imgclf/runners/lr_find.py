"""``imgclf lr-find DATA``: the learning-rate range test for the run ``imgclf train DATA`` (with
the same options) would train, on a copy of its model. A run that starts from a linear probe
(two-stage, anytime: what imgclf chooses for photos) fits the probe's head first, so the rates
tested are fine-tuning's. Writes the curve (PNG), the numbers (CSV) and the answer (JSON)."""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path

from rich.console import Console

from imgclf.config import TrainConfig
from imgclf.data.prepare import split_targets
from imgclf.distributed import World
from imgclf.engine.lr_find import lr_range_test
from imgclf.engine.plan import first_training_stage
from imgclf.engine.recipe import trial_setup
from imgclf.engine.run_folder import check_targets, claim, data_stem
from imgclf.engine.runtime import resolve_device
from imgclf.errors import UsageError
from imgclf.explain.figures import lr_find_png
from imgclf.files import atomic_write_bytes
from imgclf.runners.train.choose_model import automatic_config
from imgclf.runners.train.data import check_trainable, scan_training_data
from imgclf.runners.train.setup import assemble
from imgclf.runners.train.stages import linear_probe
from imgclf.text import stderr_console

__all__ = ["LR_FIND_FILES", "run_lr_find"]

LR_FIND_FILES = ("lr_find.png", "lr_find.csv", "lr_find.json")


def run_lr_find(
    data: str,
    config: TrainConfig,
    output: str | Path | None = None,
    data_dir: str | Path | None = None,
    console: Console | None = None,
    steps: int = 100,
    start: float = 1e-7,
    end: float = 10.0,
    choose_model: bool = False,
) -> dict:
    """The range test for ``config`` on DATA; returns the answer ``--json`` prints."""
    started, console = time.perf_counter(), console or stderr_console()
    if steps < 3:
        raise UsageError(f"--steps must be at least 3, not {steps}")
    if not 0 < start < end:
        raise UsageError(f"--start and --end must satisfy 0 < start < end, not {start:g} and {end:g}")
    if config.finetune == "linear-probe" and not choose_model:  # before any data is read
        raise UsageError("a linear probe has no learning rate (scikit-learn fits it); the range test is for "
                         "--finetune full, head, two-stage or anytime")  # fmt: skip
    if output is not None:
        check_targets(Path(output), LR_FIND_FILES)
    scanned = scan_training_data(data, config, data_dir)
    check_trainable(data, *scanned)
    if choose_model:  # imgclf's choice (the anytime recipe for photos) is trained by gradient
        config = automatic_config(data, config, data_dir, Console(file=io.StringIO()), scanned, started)[0]
    if output is None:  # named after the model, known only now
        output = Path("runs") / f"lr-find-{data_stem(data)}-{config.model}"
        check_targets(output, LR_FIND_FILES)
    output = Path(output)
    device = resolve_device(config.device)
    run = assemble(data, config, output, data_dir, console, World(), device, scanned)
    if config.starts_from_probe:
        linear_probe(run, console, splits=("train", "val"))  # the head fine-tuning starts from
    train_targets = split_targets(run.prepared.splits["train"])
    setup = trial_setup(config, run.model, run.preprocess, run.plan.augmentation, train_targets,
                        run.dataset.num_classes, device, len(run.train_batches))  # fmt: skip
    console.print(f"range test: {config.model}, up to {steps} steps of batch {config.batch_size}, peak rate "
                  f"{start:.0e} -> {end:.0e}")  # fmt: skip
    finding = lr_range_test(setup, run.train_batches, start, end, steps)
    _write(output, finding, f"{run.dataset.name}: {config.model} ({config.finetune})")
    seconds = round(time.perf_counter() - started, 1)
    answer = {"model": config.model, "finetune": config.finetune, "batch_size": config.batch_size,
              "output": str(output), "seconds": seconds, **finding.to_dict()}  # fmt: skip
    _say(console, finding, output, config)
    return answer


def _write(output: Path, finding, title: str) -> None:
    output.mkdir(parents=True, exist_ok=True)
    claim(output, LR_FIND_FILES)
    atomic_write_bytes(output / "lr_find.png", lr_find_png(finding.rates, finding.losses, finding.suggestion, title))
    rows = io.StringIO()
    writer = csv.writer(rows)
    writer.writerow(["step", "lr", "smoothed_loss"])
    points = enumerate(zip(finding.rates, finding.losses))
    writer.writerows([index, f"{rate:.6g}", f"{loss:.6g}"] for index, (rate, loss) in points)
    atomic_write_bytes(output / "lr_find.csv", rows.getvalue().encode())
    atomic_write_bytes(output / "lr_find.json", json.dumps(finding.to_dict(), indent=2).encode())


def _say(console: Console, finding, output: Path, config: TrainConfig) -> None:
    if finding.stopped:
        console.print(f"stopped: {finding.stopped}", highlight=False)
    if finding.suggestion is None:
        console.print("no suggestion: fewer than 3 steps had a finite loss (try a lower --start)")
    else:
        steepest = f"; steepest descent at {finding.steepest:.2e}" if finding.steepest is not None else ""
        console.print(f"lowest loss at {finding.lowest:.2e}{steepest}", highlight=False)
        # --lr is the run's rate; a stage may train at a share of it (two-stage: a tenth)
        per_option = config.resolved_lr() / first_training_stage(config, epochs=2).lr
        console.print(f"suggested peak learning rate: {finding.suggestion:.2e}, that is imgclf train ... --lr "
                      f"{finding.suggestion * per_option:.2g} (now {config.resolved_lr():.2g})",
                      highlight=False)  # fmt: skip
    console.print(f"plot: {output / 'lr_find.png'}")
