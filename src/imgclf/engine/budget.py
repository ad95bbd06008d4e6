"""Training to a wall-clock budget: measure how fast this machine trains and evaluates this model
on this data (a short warm-up of the run's own training step, on a copy of the model), then plan
the epochs so the whole run, final evaluation included, ends inside the budget. The learning-rate
schedule is then laid out over the planned epochs, so it completes instead of being cut off."""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn

from imgclf.data.batches import Batches
from imgclf.data.prepare import Preprocess
from imgclf.engine.loop import FitSetup, training_step
from imgclf.errors import UsageError

__all__ = ["BudgetPlan", "measure_eval_speed", "measure_train_speed", "plan_epochs", "training_state_bytes"]

SAFETY_FRACTION = 0.04  # of the budget, kept back for what the estimates miss
REPORT_SECONDS = 2.0  # writing the bundle and report.html (measured 1-2 s for small models here)
MAX_EPOCHS = 500
# Checkpoints and bundle weights written per second, the slow end of what was measured here:
# in VGG-11 runs, its 1.0-1.5 GB training states took 1.5-1.7 s, its 0.5 GB bundle weights
# 1.4 s (370 MB/s). Only heavy models notice: LeNet-5's state is 1 MB.
WRITE_BYTES_PER_S = 300e6


def training_state_bytes(weight_bytes: int, optimizer: str = "sgd", ema: bool = False) -> int:
    """Bytes of one training-state checkpoint (engine/checkpoint.py): the weights, the best
    weights, the optimizer's slots (SGD momentum: one copy; AdamW's two moments: two) and, with
    ``--ema``, the averaged weights."""
    copies = 2 + (2 if optimizer.startswith("adam") else 1) + (1 if ema else 0)
    return weight_bytes * copies


@dataclass(frozen=True)
class BudgetPlan:
    budget_s: float
    epochs: int
    train_images_per_s: float
    eval_images_per_s: float
    seconds_per_epoch: float  # training plus the validation pass
    final_seconds: float  # final evaluation, calibration, bundle and report
    fits: bool  # False: not even one epoch fits; one is run anyway and the budget will be exceeded
    replanned_epochs: int | None = None  # after the first epoch, from its measured time (None: unchanged)
    final_fixed_seconds: float = REPORT_SECONDS  # of final_seconds: report and bundle writing
    final_per_val_pass: float = 1.0  # the final evaluation's images over one validation pass's

    def final_seconds_from(self, val_pass_seconds: float, checkpoint_seconds: float) -> float:
        """The time after training stops, from a real validation pass and checkpoint write: the
        epoch the deadline cuts still validates and saves, then the final evaluation, bundle and
        report. (The warm-up's single timed batch can be far off: VGG-11 evaluated at half the
        speed it measured.)"""
        return self.final_fixed_seconds + val_pass_seconds * (1 + self.final_per_val_pass) + checkpoint_seconds

    def to_dict(self) -> dict:
        return {key: round(value, 3) if isinstance(value, float) else value for key, value in asdict(self).items()}

    def describe(self) -> str:
        text = (
            f"time budget {self.budget_s:g} s: {self.train_images_per_s:,.0f} training and "
            f"{self.eval_images_per_s:,.0f} evaluation images/s measured here -> {self.epochs} epochs of about "
            f"{self.seconds_per_epoch:.1f} s, then {self.final_seconds:.1f} s of final evaluation"
        )
        return text if self.fits else text + " (one epoch does not fit the budget: the run will take longer)"


def plan_epochs(
    budget_s: float,
    elapsed_s: float,
    train_images: int,
    val_images: int,
    final_images: int,
    train_images_per_s: float,
    eval_images_per_s: float,
    epoch_write_bytes: int = 0,
    final_write_bytes: int = 0,
) -> BudgetPlan:
    """As many whole epochs as fit in what is left of the budget after what has been spent, the
    final evaluation of ``final_images`` images, the report and a safety margin. Each epoch also
    writes ``epoch_write_bytes`` (its training state) and the end ``final_write_bytes`` (the bundle)."""
    val_s, checkpoint_s = val_images / eval_images_per_s, epoch_write_bytes / WRITE_BYTES_PER_S
    epoch_s = train_images / train_images_per_s + val_s + checkpoint_s
    fixed_s = REPORT_SECONDS + final_write_bytes / WRITE_BYTES_PER_S
    # The validation of an epoch the deadline cuts short, too; its checkpoint only once measured
    # (final_seconds_from): planned whole epochs are not cut, and a guess would cost an epoch.
    final_s = final_images / eval_images_per_s + fixed_s + val_s
    available = budget_s * (1 - SAFETY_FRACTION) - elapsed_s - final_s
    fitting = int(available // epoch_s) if epoch_s > 0 else MAX_EPOCHS
    epochs = max(1, min(MAX_EPOCHS, fitting))
    return BudgetPlan(
        budget_s,
        epochs,
        train_images_per_s,
        eval_images_per_s,
        epoch_s,
        final_s,
        fitting >= 1,
        final_fixed_seconds=fixed_s,
        final_per_val_pass=final_images / max(1, val_images),
    )


# Steps not timed before measuring: the first pays for allocation and kernel selection, and the
# next still run slower (EfficientNet-Lite2, 260 px, batch 32, 2 cores: 5.2, 2.5 and 2.3 s, then
# 1.7-1.9 s a step; timing from the second step on planned 12-14 training images/s where the
# epochs then ran 16-19, and fine-tuning that fitted was skipped).
UNTIMED_STEPS = 2
MIN_TIMED_STEPS = 3


def measure_train_speed(setup: FitSetup, batches: Batches, seconds: float) -> float:
    """Training images per second of ``setup``'s steps (build it on a copy of the run's model with
    its own generator: the steps change the weights): the run's own ``training_step``, after
    ``UNTIMED_STEPS`` untimed steps (one when the first alone took over 3x ``seconds``), then the
    median step of at least ``MIN_TIMED_STEPS`` and ``seconds`` of steps (at most 3x ``seconds``),
    each timed with its batch's loading. A training set of one or a few batches is gone through
    again until enough steps have run (a folder of a few dozen photos is one batch)."""
    setup.runtime.model.train()
    for module in setup.recipe.frozen_modules:
        module.eval()
    rng_state = torch.get_rng_state()  # dropout draws from it: leave the run's random numbers alone
    speeds: list[float] = []
    untimed, measuring_since, last = UNTIMED_STEPS, None, time.perf_counter()
    try:
        for images, targets in repeat_batches(batches):
            targets = training_step(setup, images, targets)[2]
            if setup.runtime.device.type == "cuda":
                torch.cuda.synchronize(setup.runtime.device)
            now = time.perf_counter()
            took, last = now - last, now
            if untimed > 0:
                untimed = 0 if took > 3 * seconds else untimed - 1
                continue
            if measuring_since is None:
                measuring_since = now - took
            speeds.append(len(targets) / max(took, 1e-9))
            measured = now - measuring_since
            if (len(speeds) >= MIN_TIMED_STEPS and measured >= seconds) or measured >= 3 * seconds:
                break
    finally:
        torch.set_rng_state(rng_state)
    if not speeds:
        raise UsageError("--time-budget: no training images to measure the training speed on")
    return statistics.median(speeds)


def repeat_batches(batches: Batches, passes: int = 1000):
    """The batches, then the same batches again (at most ``passes`` times): a small training set
    still gives the timed steps a measurement needs. Stops at once when there are none."""
    for _ in range(passes):
        empty = True
        for batch in batches:
            if len(batch[1]) == 0:
                continue
            empty = False
            yield batch
        if empty:
            return


@torch.no_grad()
def measure_eval_speed(
    model: nn.Module, batches: Batches, preprocess: Preprocess, device: torch.device, seconds: float
) -> float:
    """Evaluation images per second (eval mode, no gradients), after one untimed batch; with a
    single batch, that batch timed (it includes the first pass's set-up: an underestimate, which
    plans on the safe side)."""
    was_training = model.training
    model.eval()
    seen, started, first_batch = 0, None, None
    for images, _ in batches:
        begin = time.perf_counter()
        model(preprocess.normalize(images.to(device)))
        if started is None:
            started, first_batch = time.perf_counter(), (len(images), time.perf_counter() - begin)
            continue
        seen += len(images)
        if time.perf_counter() - started >= seconds:
            break
    model.train(was_training)
    if started is None:
        return float("inf")  # no images: evaluation costs nothing
    if seen == 0:
        return first_batch[0] / max(first_batch[1], 1e-6)
    return seen / (time.perf_counter() - started)
