"""The training loop, written out: every step is a visible line, not a callback.

``fit`` runs epochs of ``train_one_epoch`` followed by validation, keeps the weights of the
best validation epoch, stops early when asked, and hands a snapshot to ``save_checkpoint``
after every epoch and every ``checkpoint_interval`` seconds inside one (with the batches done,
so a resumed run continues the same epoch order where it stopped). The loop knows nothing of
files, bundles or command lines.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from imgclf.data.augment import Augmentation
from imgclf.data.batches import Batches
from imgclf.data.prepare import Preprocess
from imgclf.distributed import World, all_reduce_sum
from imgclf.engine.evaluate import classification_metrics, predict_logits
from imgclf.engine.label_sets import correct_labels, is_multi_label
from imgclf.engine.observers import TrainObserver
from imgclf.engine.optim import stretch_schedule

__all__ = [
    "FitSetup",
    "FitState",
    "Recipe",
    "Replan",
    "Runtime",
    "StopRequested",
    "fit",
    "train_one_epoch",
    "training_step",
    "weight_average",
]

# Divergence (``diverged``): an epoch whose training loss is not finite, or above this many times
# the loss of guessing uniformly (ln of the number of classes), or whose validation and training
# accuracy fell to chance after validation was clearly above it. Such an epoch is rolled back to the
# kept epoch's weights (or the start's), the optimizer's momentum is cleared and every rate
# multiplied by ROLLBACK_LR_FACTOR; after MAX_ROLLBACKS the stage stops with the weights it has.
# Seen without it: two-stage fine-tuning on grey steel-surface photos, epoch 2's training loss
# 8.86 (ln 6 = 1.79) and chance from then on.
DIVERGED_LOSS_FACTOR = 2.0
ROLLBACK_LR_FACTOR = 0.25
MAX_ROLLBACKS = 3

# EMA warm-up: the decay after n updates is min(decay, (1 + n) / (10 + n)), as TensorFlow's
# ExponentialMovingAverage does with num_updates, so short runs are not dominated by the
# random initial weights.
EMA_WARMUP = 10


def weight_average(model: nn.Module, decay: float) -> torch.optim.swa_utils.AveragedModel:
    """An exponential moving average of ``model``'s weights and batch-norm statistics."""

    def average(averaged: torch.Tensor, current: torch.Tensor, updates: torch.Tensor) -> torch.Tensor:
        rate = min(decay, (1 + float(updates)) / (EMA_WARMUP + float(updates)))
        return averaged + (current - averaged) * (1 - rate)

    return torch.optim.swa_utils.AveragedModel(model, avg_fn=average, use_buffers=True)


class StopRequested(Exception):  # noqa: N818 - a request, not an error
    """Raised (by a signal handler the runner installs: Ctrl-C, SIGTERM) to end training now:
    ``fit`` keeps the weights of the last finished epoch and returns, so the run still ships."""


@dataclass
class Recipe:
    """How a stage trains: what the configuration made for it (``engine.recipe.fit_setup``)."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    loss_fn: nn.Module
    augmentation: Augmentation
    grad_clip: float = 0.0
    frozen_modules: list[nn.Module] = field(default_factory=list)  # batch norms kept in eval mode
    # An exponential moving average of the weights (``weight_average``), updated after every step;
    # validation, the best epoch and the final weights use it. None: the raw weights.
    ema: torch.optim.swa_utils.AveragedModel | None = None


@dataclass
class Runtime:
    """Where and on what a stage trains: the model, its input's preprocessing, the device and the
    processes, and the random stream augmentation draws from."""

    model: nn.Module
    preprocess: Preprocess
    device: torch.device
    augment_generator: torch.Generator
    amp: bool = False  # bf16 autocast, CUDA only
    # The module the training step calls: a DistributedDataParallel wrapper of ``model`` when
    # several processes train together (None: ``model`` itself). Everything else uses ``model``.
    forward_model: nn.Module | None = None
    world: World = field(default_factory=World)


@dataclass
class FitSetup:
    """Everything a training step uses, built once per stage: the recipe and the runtime. The time
    a run may train is not here: ``fit`` takes it (``stop_at``), and a re-plan hands it a new one."""

    recipe: Recipe
    runtime: Runtime

    @property
    def evaluated_model(self) -> nn.Module:
        return self.recipe.ema.module if self.recipe.ema is not None else self.runtime.model


@dataclass
class FitState:
    """What changes as training goes on; saved in checkpoints so a run can resume."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    best_epoch: int = 0  # the epoch whose weights are kept (see _update_best)
    best_val_accuracy: float = -1.0  # its validation accuracy
    best_weights: dict[str, torch.Tensor] | None = None
    epochs_without_improvement: int = 0
    stopped_early: bool = False
    history: list[dict] = field(default_factory=list)
    # Inside an unfinished epoch: batches done and the running totals of its training record.
    epoch_progress: dict = field(default_factory=dict)

    @property
    def rollbacks(self) -> int:
        """Epochs that diverged and were rolled back (each lowered the learning rate)."""
        return sum(1 for record in self.history if record.get("diverged"))

    @property
    def highest_val_accuracy(self) -> float:
        """The highest validation accuracy of any epoch in the history (-1 before the first)."""
        return max((record["val_accuracy"] for record in self.history if record.get("val_accuracy") is not None),
                   default=-1.0)  # fmt: skip


def training_step(
    setup: FitSetup, images: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One optimizer step on a batch of uint8 ``images``: augment, normalize, forward, loss,
    backward, clip, step, schedule, weight average. Returns the loss, the logits and the targets
    accuracy counts against (with mixup: the label with the larger share of each picture)."""
    recipe, runtime = setup.recipe, setup.runtime
    device = runtime.device
    images = images.to(device, non_blocking=True)
    targets = targets.to(device, non_blocking=True)
    inputs = runtime.preprocess.normalize(recipe.augmentation.on_pixels(images, runtime.augment_generator))
    if recipe.augmentation.enabled:
        inputs = recipe.augmentation(inputs, runtime.augment_generator)
    mixed = (
        recipe.augmentation.mix_batch(inputs, targets, runtime.augment_generator) if recipe.augmentation.mixes else None
    )
    if mixed is not None:
        inputs = mixed.images
    # "is not None", not "or": a compiled module raises when asked for its truth value (its len())
    forward = runtime.forward_model if runtime.forward_model is not None else runtime.model
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=runtime.amp and device.type == "cuda"):
        logits = forward(inputs)
    if mixed is None:
        loss = recipe.loss_fn(logits.float(), targets)
    else:  # mixup / cutmix: the loss of each label, weighted by its share of the picture
        loss = mixed.lam * recipe.loss_fn(logits.float(), mixed.targets_a)
        loss = loss + (1 - mixed.lam) * recipe.loss_fn(logits.float(), mixed.targets_b)
        targets = mixed.targets_a if mixed.lam >= 0.5 else mixed.targets_b
    recipe.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if recipe.grad_clip > 0:
        nn.utils.clip_grad_norm_(runtime.model.parameters(), recipe.grad_clip)
    recipe.optimizer.step()
    recipe.scheduler.step()
    if recipe.ema is not None:
        recipe.ema.update_parameters(runtime.model)
    return loss, logits, targets


def train_one_epoch(
    setup: FitSetup,
    batches: Batches,
    epoch: int,
    observer: TrainObserver,
    progress: dict | None = None,
    save_progress: Callable[[dict], None] | None = None,
    interval_s: float = 0.0,
    stop_at: float | None = None,
) -> dict:
    """One pass over ``batches`` (set to the epoch by the caller). ``progress``: where a resumed
    epoch stands; ``save_progress`` is called with the new one every ``interval_s`` seconds."""
    model, device = setup.runtime.model, setup.runtime.device
    progress = progress or {}
    model.train()
    for module in setup.recipe.frozen_modules:  # a frozen backbone keeps its ImageNet statistics
        module.eval()
    # Summed on the device: no sync per step.
    total_loss = torch.tensor(float(progress.get("loss_sum", 0.0)), device=device)
    # Float: on multi-label data an image counts the share of its labels decided right.
    total_correct = torch.tensor(float(progress.get("correct", 0)), device=device, dtype=torch.float64)
    seen, earlier_seconds = int(progress.get("seen", 0)), float(progress.get("seconds", 0.0))
    started = last_saved = time.perf_counter()
    shown = (float("nan"), float("nan"), 0.0)  # loss, accuracy, images/s for the progress bar
    for step, (images, targets) in enumerate(batches, start=int(progress.get("batches_done", 0))):
        if stop_at is not None and time.perf_counter() > stop_at:
            break  # the time budget is spent: validate what there is and finish
        if len(images) == 0:
            continue  # every file of this batch failed to decode (streaming data)
        loss, logits, targets = training_step(setup, images, targets)
        total_loss += loss.detach() * len(targets)
        total_correct += _correct(logits.detach(), targets)
        seen += len(targets)
        if step % 10 == 0:  # reading the device totals syncs, so only every 10 steps
            elapsed = earlier_seconds + time.perf_counter() - started
            shown = (float(total_loss) / seen, float(total_correct) / seen, seen / elapsed)
            if not math.isfinite(shown[0]):
                break  # diverged: the weights are NaN from here on; fit rolls them back
        observer.on_step(epoch, step, *shown)
        if save_progress is not None and 0 < interval_s <= time.perf_counter() - last_saved:
            save_progress({"batches_done": step + 1, "loss_sum": float(total_loss), "correct": float(total_correct),
                           "seen": seen, "seconds": earlier_seconds + time.perf_counter() - started})  # fmt: skip
            last_saved = time.perf_counter()
    seconds = earlier_seconds + time.perf_counter() - started
    if setup.runtime.world.distributed:  # the epoch's record covers every rank's images
        seen_total = torch.tensor(seen, device=device, dtype=torch.int64)
        all_reduce_sum(setup.runtime.world, total_loss, total_correct, seen_total)
        seen = int(seen_total)
    seen = max(seen, 1)
    return {
        "train_loss": float(total_loss) / seen,
        "train_accuracy": float(total_correct) / seen,
        "train_images_per_s": seen / seconds,
        "seconds": seconds,
    }


def _correct(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    if is_multi_label(targets):
        return correct_labels(logits, targets)
    return (logits.argmax(dim=1) == targets).sum()


def accuracy_noise(accuracy: float, images: int) -> float:
    """Two standard errors of an accuracy measured on ``images`` images (binomial): epochs closer
    than this on the validation split cannot be told apart by it. 0.076 at 78% on 120 images,
    0.008 at 90% on 5,000."""
    return 2.0 * math.sqrt(max(accuracy * (1.0 - accuracy), 0.0) / max(images, 1))


def _update_best(state: FitState, model: nn.Module, val_accuracy: float, val_images: int) -> bool:
    """Keep this epoch's weights unless an earlier epoch was better by more than the validation
    split can tell (``accuracy_noise``). The later epoch has trained longer, on a schedule that
    ends at a low rate; on a small validation split the highest accuracy is mostly luck: a
    fine-tuning run on 120 CIFAR-10 validation images peaked at 0.7833 in epoch 2 of 9; that
    epoch tested 75.3% on 10,000 test images, the last one 79.1%. Early stopping counts epochs
    since the highest accuracy rose."""
    highest = max(state.highest_val_accuracy, val_accuracy)  # this epoch is not in the history yet
    if val_accuracy > state.highest_val_accuracy:
        state.epochs_without_improvement = 0
    else:
        state.epochs_without_improvement += 1
    if val_accuracy < highest - accuracy_noise(highest, val_images):
        return False
    state.best_val_accuracy = val_accuracy
    state.best_epoch = state.epoch
    state.best_weights = cpu_copy(model)
    return True


def _chance_accuracy(val: dict) -> float:
    """The accuracy of always answering the most common validation class (on multi-label data,
    each label's more common value: the metrics say)."""
    if val.get("chance_accuracy") is not None:
        return val["chance_accuracy"]
    supports = [row["support"] for row in val["per_class"].values()]
    return max(supports, default=0) / max(1, sum(supports))


def diverged(
    record: dict, val: dict, num_classes: int, highest_accuracy: float, start: tuple[float, float] | None = None
) -> str | None:
    """Why this epoch diverged (``DIVERGED_LOSS_FACTOR``), or None. ``highest_accuracy``: the
    highest validation accuracy the weights had before it (-1: none yet). ``start``: the
    validation accuracy and loss of the weights training started from (a probe's), when known:
    a validation loss ``DIVERGED_LOSS_FACTOR`` times theirs with an accuracy clearly below theirs
    is a divergence too (grey steel-surface photos: 0.976 -> 0.684 in the first epoch)."""
    loss = record["train_loss"]
    if not math.isfinite(loss):
        return "the training loss is not a number"
    limit = DIVERGED_LOSS_FACTOR * math.log(max(2, num_classes))
    if loss > limit:
        return f"training loss {loss:.2f}, above {limit:.2f} ({DIVERGED_LOSS_FACTOR:g}x that of guessing)"
    accuracy = val["accuracy"]
    if accuracy is None:
        return None
    if start is not None:
        start_accuracy, start_loss = start
        below = accuracy < start_accuracy - accuracy_noise(start_accuracy, val["num_images"])
        if below and val["loss"] > DIVERGED_LOSS_FACTOR * start_loss:
            return (f"validation loss {val['loss']:.3f} and accuracy {accuracy:.4f}, from {start_loss:.3f} and "
                    f"{start_accuracy:.4f} where training started")  # fmt: skip
    chance = _chance_accuracy(val)
    noise = accuracy_noise(chance, val["num_images"])
    # Both splits at chance: a validation dip alone can be batch-norm statistics wobbling on a
    # small split while training goes well (seen: 1.0 -> 0.70 -> 1.0 on 64 images, train loss 0.03).
    at_chance = accuracy <= chance + noise and record["train_accuracy"] <= chance + noise
    if highest_accuracy > chance + 2 * noise and at_chance:
        return (f"validation accuracy {accuracy:.4f} and training accuracy {record['train_accuracy']:.4f} fell to "
                f"chance ({chance:.4f}) from {highest_accuracy:.4f}")  # fmt: skip
    return None


def cpu_copy(module: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of ``module``'s weights and buffers on the CPU (the kept epoch's, a rollback's target)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def _roll_back(setup: FitSetup, weights: dict[str, torch.Tensor]) -> None:
    """Back to ``weights`` (the kept epoch's, or the start's), weight average included, with no
    momentum and every rate times ``ROLLBACK_LR_FACTOR`` (the schedule keeps its shape, at the
    lower peak)."""
    setup.runtime.model.load_state_dict(weights)
    if setup.recipe.ema is not None:
        setup.recipe.ema.module.load_state_dict(weights)
    setup.recipe.optimizer.state.clear()  # the momentum holds the step that blew up
    _scale_learning_rate(setup.recipe.optimizer, setup.recipe.scheduler, ROLLBACK_LR_FACTOR)


def _scale_learning_rate(optimizer: torch.optim.Optimizer, scheduler, factor: float) -> None:
    """Every group's rate, peak included, times ``factor``."""
    for group in optimizer.param_groups:
        group["lr"] *= factor
        if "initial_lr" in group:
            group["initial_lr"] *= factor
    if hasattr(scheduler, "base_lrs"):
        scheduler.base_lrs = [lr * factor for lr in scheduler.base_lrs]


def _keep_epoch(state: FitState, model: nn.Module, val_accuracy: float) -> bool:
    """Keep this epoch (it did not diverge) whatever its validation accuracy."""
    improved = val_accuracy > state.highest_val_accuracy
    state.epochs_without_improvement = 0 if improved else state.epochs_without_improvement + 1
    state.best_val_accuracy, state.best_epoch = val_accuracy, state.epoch
    state.best_weights = cpu_copy(model)
    return True


@dataclass(frozen=True)
class Replan:
    """A re-plan's answer to the loop: train ``epochs`` in all, with the learning-rate schedule laid
    over ``schedule_steps`` steps, and start no step after ``stop_at`` (``time.perf_counter()``)."""

    epochs: int
    schedule_steps: int
    stop_at: float | None


def _validate(setup: FitSetup, val_batches: Batches, classes: list[str]) -> tuple[dict, float]:
    started = time.perf_counter()
    logits, targets = predict_logits(
        setup.evaluated_model, val_batches, setup.runtime.preprocess, setup.runtime.device, setup.runtime.amp
    )
    return classification_metrics(logits, targets, classes), time.perf_counter() - started


def fit(
    setup: FitSetup,
    train_batches: Batches,
    val_batches: Batches,
    epochs: int,
    classes: list[str],
    observer: TrainObserver,
    state: FitState | None = None,
    early_stopping: int = 0,
    save_checkpoint: Callable[[FitState], None] | None = None,
    checkpoint_interval: float = 0.0,
    replan: Callable[[FitState, float, float], Replan | None] | None = None,
    choose_epoch: bool = True,
    start: tuple[float, float] | None = None,
    stop_at: float | None = None,
) -> FitState:
    """Train until ``epochs`` are done (or early stopping), then load the kept epoch's weights
    (the last one unless an earlier one was clearly better on validation: ``_update_best``).
    ``save_checkpoint`` gets the state after each epoch and every ``checkpoint_interval`` seconds.
    ``replan(state, epoch_seconds, checkpoint_seconds)`` may answer a ``Replan`` after each epoch
    (a time budget that now knows how long an epoch, validation and checkpoint included, takes
    here; the checkpoint's time is the previous epoch's).

    An epoch that ``diverged`` is rolled back at a lower rate and never kept. ``choose_epoch``
    False: the last epoch that did not diverge is kept, so the validation split chooses nothing
    and can still judge the result against another (the anytime run's probe).
    ``start``: the validation accuracy and loss of the weights training starts from, if known
    (a fall far below them is a divergence too: ``diverged``). ``StopRequested`` (Ctrl-C, SIGTERM) ends
    training at once, with the kept epoch's weights. ``stop_at`` (``time.perf_counter()``): no step
    starts after it (a time budget's end; a ``Replan`` moves it)."""
    state = state or FitState()
    epoch = _Epochs(setup, train_batches, val_batches, classes, observer, early_stopping, save_checkpoint,
                    checkpoint_interval, replan, choose_epoch, start, epochs,
                    cpu_copy(setup.evaluated_model) if state.best_weights is None else None, stop_at)  # fmt: skip
    observer.on_fit_start(epochs, len(train_batches), state.epoch)
    started, interrupted = time.perf_counter(), False
    while state.epoch < epoch.planned and not state.stopped_early:
        try:
            epoch.run(state)
        except StopRequested:  # the epoch under way is dropped; the kept weights are a finished epoch's
            state.epoch_progress, state.stopped_early, interrupted = {}, True, True
    if state.best_weights is not None:
        setup.runtime.model.load_state_dict(state.best_weights)
    observer.on_fit_end({"best_epoch": state.best_epoch, "best_val_accuracy": state.best_val_accuracy,
                         "highest_val_accuracy": state.highest_val_accuracy, "val_images": epoch.val_images,
                         "stopped_early": state.stopped_early, "interrupted": interrupted,
                         "chose_on_val": choose_epoch, "seconds": time.perf_counter() - started})  # fmt: skip
    return state


@dataclass
class _Epochs:
    """What ``fit`` runs each epoch with, and what carries from one epoch to the next: the epochs
    planned (a re-plan changes them), the last checkpoint's seconds and the validation size."""

    setup: FitSetup
    train_batches: Batches
    val_batches: Batches
    classes: list[str]
    observer: TrainObserver
    early_stopping: int
    save_checkpoint: Callable[[FitState], None] | None
    checkpoint_interval: float
    replan: Callable[[FitState, float, float], Replan | None] | None
    choose_epoch: bool
    start: tuple[float, float] | None  # validation accuracy and loss where training started
    planned: int
    # Where a rollback goes before any epoch was kept: the weights training started from.
    start_weights: dict[str, torch.Tensor] | None
    stop_at: float | None = None  # no step starts after this time.perf_counter() value
    save_seconds: float = 0.0
    val_images: int | None = None

    def run(self, state: FitState) -> None:
        """Train, validate, roll back or keep, re-plan, checkpoint."""
        setup, epoch_started, progress = self.setup, time.perf_counter(), state.epoch_progress
        epoch_start_step = state.step - int(progress.get("batches_done", 0))
        self.train_batches.set_epoch(state.epoch, skip=int(progress.get("batches_done", 0)))
        # The highest group's rate (the head's, with per-group rates): on the scale of the stage's peak.
        lr = progress.get("lr", max(group["lr"] for group in setup.recipe.optimizer.param_groups))
        save_checkpoint = self.save_checkpoint

        def save_progress(new_progress: dict) -> None:
            state.epoch_progress = {**new_progress, "lr": lr}
            state.step = epoch_start_step + new_progress["batches_done"]
            save_checkpoint(state)

        saver = save_progress if save_checkpoint is not None else None
        record = train_one_epoch(setup, self.train_batches, state.epoch, self.observer, progress, saver,
                                 self.checkpoint_interval, self.stop_at)  # fmt: skip
        val, record["val_seconds"] = _validate(setup, self.val_batches, self.classes)
        state.step, state.epoch, state.epoch_progress = epoch_start_step + len(self.train_batches), state.epoch + 1, {}
        is_best = self._keep_or_roll_back(state, record, val, lr)
        record.update(epoch=state.epoch, val_loss=val["loss"], val_accuracy=val["accuracy"], lr=lr, is_best=is_best)
        self.val_images = val["num_images"]
        state.history.append(record)
        state.stopped_early = 0 < self.early_stopping <= state.epochs_without_improvement
        if state.rollbacks >= MAX_ROLLBACKS:
            state.stopped_early = True  # the rate is not the problem: keep what there is
        if self.stop_at is not None and time.perf_counter() > self.stop_at:
            state.stopped_early = True  # out of time
        if self.replan is not None and not state.stopped_early:  # an epoch costs its time and its checkpoint's
            new_plan = self.replan(state, time.perf_counter() - epoch_started + self.save_seconds, self.save_seconds)
            if new_plan is not None:
                self._follow(new_plan)
        record["epochs"] = self.planned  # the run's length as now planned: "epoch 2/3" after a re-plan to 3
        self.observer.on_epoch_end(record)
        if save_checkpoint is not None:
            save_started = time.perf_counter()
            save_checkpoint(state)
            self.save_seconds = time.perf_counter() - save_started

    def _follow(self, plan: Replan) -> None:
        """A re-plan's new plan: the epochs, the deadline, and the schedule stretched over them."""
        self.planned, self.stop_at = plan.epochs, plan.stop_at
        stretch_schedule(self.setup.recipe.scheduler, plan.schedule_steps)

    def _keep_or_roll_back(self, state: FitState, record: dict, val: dict, lr: float) -> bool:
        """Roll a diverged epoch back; otherwise keep it by the fit's rule. Whether it is kept."""
        highest = max(state.highest_val_accuracy, self.start[0] if self.start is not None else -1.0)
        reason = diverged(record, val, len(self.classes), highest, self.start)
        if reason is not None:
            kept = state.best_weights if state.best_weights is not None else self.start_weights
            _roll_back(self.setup, kept)
            record.update(diverged=reason, lr_after=lr * ROLLBACK_LR_FACTOR)
            return False
        if self.choose_epoch:
            return _update_best(state, self.setup.evaluated_model, val["accuracy"], val["num_images"])
        return _keep_epoch(state, self.setup.evaluated_model, val["accuracy"])
