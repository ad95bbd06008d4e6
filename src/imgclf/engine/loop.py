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
from imgclf.engine.observers import TrainObserver
from imgclf.engine.optim import stretch_schedule

__all__ = ["FitSetup", "FitState", "Replan", "fit", "train_one_epoch", "training_step", "weight_average"]

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


@dataclass
class FitSetup:
    """Everything a training step uses; built once by the runner."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    loss_fn: nn.Module
    preprocess: Preprocess
    augmentation: Augmentation
    device: torch.device
    augment_generator: torch.Generator
    amp: bool = False  # bf16 autocast, CUDA only
    grad_clip: float = 0.0
    frozen_modules: list[nn.Module] = field(default_factory=list)  # batch norms kept in eval mode
    # The module the training step calls: a DistributedDataParallel wrapper of ``model`` when
    # several processes train together (None: ``model`` itself). Everything else uses ``model``.
    forward_model: nn.Module | None = None
    world: World = field(default_factory=World)
    stop_at: float | None = None  # time.perf_counter() value: a time budget's hard end for training
    # An exponential moving average of the weights (``weight_average``), updated after every step;
    # validation, the best epoch and the final weights use it. None: the raw weights.
    ema: torch.optim.swa_utils.AveragedModel | None = None

    @property
    def evaluated_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model


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
    device = setup.device
    images = images.to(device, non_blocking=True)
    targets = targets.to(device, non_blocking=True)
    inputs = setup.preprocess.normalize(setup.augmentation.on_pixels(images, setup.augment_generator))
    if setup.augmentation.enabled:
        inputs = setup.augmentation(inputs, setup.augment_generator)
    mixed = setup.augmentation.mix_batch(inputs, targets, setup.augment_generator) if setup.augmentation.mixes else None
    if mixed is not None:
        inputs = mixed.images
    # "is not None", not "or": a compiled module raises when asked for its truth value (its len())
    forward = setup.forward_model if setup.forward_model is not None else setup.model
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=setup.amp and device.type == "cuda"):
        logits = forward(inputs)
    if mixed is None:
        loss = setup.loss_fn(logits.float(), targets)
    else:  # mixup / cutmix: the loss of each label, weighted by its share of the picture
        loss = mixed.lam * setup.loss_fn(logits.float(), mixed.targets_a)
        loss = loss + (1 - mixed.lam) * setup.loss_fn(logits.float(), mixed.targets_b)
        targets = mixed.targets_a if mixed.lam >= 0.5 else mixed.targets_b
    setup.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if setup.grad_clip > 0:
        nn.utils.clip_grad_norm_(setup.model.parameters(), setup.grad_clip)
    setup.optimizer.step()
    setup.scheduler.step()
    if setup.ema is not None:
        setup.ema.update_parameters(setup.model)
    return loss, logits, targets


def train_one_epoch(
    setup: FitSetup,
    batches: Batches,
    epoch: int,
    observer: TrainObserver,
    progress: dict | None = None,
    save_progress: Callable[[dict], None] | None = None,
    interval_s: float = 0.0,
) -> dict:
    """One pass over ``batches`` (set to the epoch by the caller). ``progress``: where a resumed
    epoch stands; ``save_progress`` is called with the new one every ``interval_s`` seconds."""
    model, device = setup.model, setup.device
    progress = progress or {}
    model.train()
    for module in setup.frozen_modules:  # a frozen backbone keeps its ImageNet statistics
        module.eval()
    # Summed on the device: no sync per step.
    total_loss = torch.tensor(float(progress.get("loss_sum", 0.0)), device=device)
    total_correct = torch.tensor(int(progress.get("correct", 0)), device=device, dtype=torch.int64)
    seen, earlier_seconds = int(progress.get("seen", 0)), float(progress.get("seconds", 0.0))
    started = last_saved = time.perf_counter()
    shown = (float("nan"), float("nan"), 0.0)  # loss, accuracy, images/s for the progress bar
    for step, (images, targets) in enumerate(batches, start=int(progress.get("batches_done", 0))):
        if setup.stop_at is not None and time.perf_counter() > setup.stop_at:
            break  # the time budget is spent: validate what there is and finish
        if len(images) == 0:
            continue  # every file of this batch failed to decode (streaming data)
        loss, logits, targets = training_step(setup, images, targets)
        total_loss += loss.detach() * len(targets)
        total_correct += (logits.detach().argmax(dim=1) == targets).sum()
        seen += len(targets)
        if step % 10 == 0:  # reading the device totals syncs, so only every 10 steps
            elapsed = earlier_seconds + time.perf_counter() - started
            shown = (float(total_loss) / seen, float(total_correct) / seen, seen / elapsed)
        observer.on_step(epoch, step, *shown)
        if save_progress is not None and 0 < interval_s <= time.perf_counter() - last_saved:
            save_progress(
                {
                    "batches_done": step + 1,
                    "loss_sum": float(total_loss),
                    "correct": int(total_correct),
                    "seen": seen,
                    "seconds": earlier_seconds + time.perf_counter() - started,
                }
            )
            last_saved = time.perf_counter()
    seconds = earlier_seconds + time.perf_counter() - started
    if setup.world.distributed:  # the epoch's record covers every rank's images
        seen_total = torch.tensor(seen, device=device, dtype=torch.int64)
        all_reduce_sum(setup.world, total_loss, total_correct, seen_total)
        seen = int(seen_total)
    seen = max(seen, 1)
    return {
        "train_loss": float(total_loss) / seen,
        "train_accuracy": float(total_correct) / seen,
        "train_images_per_s": seen / seconds,
        "seconds": seconds,
    }


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
    state.best_weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
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
    logits, targets = predict_logits(setup.evaluated_model, val_batches, setup.preprocess, setup.device, setup.amp)
    return classification_metrics(logits, targets, classes), time.perf_counter() - started


def _apply(setup: FitSetup, plan: Replan) -> int:
    """The loop's own objects follow a re-plan: the deadline, and the schedule stretched over it."""
    setup.stop_at = plan.stop_at
    stretch_schedule(setup.scheduler, plan.schedule_steps)
    return plan.epochs


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
) -> FitState:
    """Train until ``epochs`` are done (or early stopping), then load the kept epoch's weights
    (the last one unless an earlier one was clearly better on validation: ``_update_best``).
    ``save_checkpoint`` gets the state after each epoch and every ``checkpoint_interval`` seconds.
    ``replan(state, epoch_seconds, checkpoint_seconds)`` may answer a ``Replan`` after each epoch
    (a time budget that now knows how long an epoch, validation and checkpoint included, takes
    here; the checkpoint's time is the previous epoch's)."""
    state = state or FitState()
    observer.on_fit_start(epochs, len(train_batches), state.epoch)
    started, save_seconds, val_images = time.perf_counter(), 0.0, None
    while state.epoch < epochs and not state.stopped_early:
        epoch_started = time.perf_counter()
        progress = state.epoch_progress
        epoch_start_step = state.step - int(progress.get("batches_done", 0))
        train_batches.set_epoch(state.epoch, skip=int(progress.get("batches_done", 0)))
        # The highest group's rate (the head's, with per-group rates): on the scale of the stage's peak.
        lr = progress.get("lr", max(group["lr"] for group in setup.optimizer.param_groups))

        def save_progress(new_progress: dict, state: FitState = state, lr: float = lr, start: int = epoch_start_step):
            state.epoch_progress = {**new_progress, "lr": lr}
            state.step = start + new_progress["batches_done"]
            save_checkpoint(state)

        saver = save_progress if save_checkpoint is not None else None
        record = train_one_epoch(setup, train_batches, state.epoch, observer, progress, saver, checkpoint_interval)
        val, record["val_seconds"] = _validate(setup, val_batches, classes)
        state.step, state.epoch, state.epoch_progress = epoch_start_step + len(train_batches), state.epoch + 1, {}
        is_best = _update_best(state, setup.evaluated_model, val["accuracy"], val["num_images"])
        record.update(epoch=state.epoch, val_loss=val["loss"], val_accuracy=val["accuracy"], lr=lr, is_best=is_best)
        val_images = val["num_images"]
        state.history.append(record)
        state.stopped_early = 0 < early_stopping <= state.epochs_without_improvement
        if setup.stop_at is not None and time.perf_counter() > setup.stop_at:
            state.stopped_early = True  # out of time
        if replan is not None and not state.stopped_early:  # an epoch costs its time and its checkpoint's
            new_plan = replan(state, time.perf_counter() - epoch_started + save_seconds, save_seconds)
            epochs = _apply(setup, new_plan) if new_plan is not None else epochs
        record["epochs"] = epochs  # the run's length as now planned: "epoch 2/3" after a re-plan to 3
        observer.on_epoch_end(record)
        if save_checkpoint is not None:
            save_started = time.perf_counter()
            save_checkpoint(state)
            save_seconds = time.perf_counter() - save_started
    if state.best_weights is not None:
        setup.model.load_state_dict(state.best_weights)
    seconds = time.perf_counter() - started
    observer.on_fit_end({"best_epoch": state.best_epoch, "best_val_accuracy": state.best_val_accuracy,
                         "highest_val_accuracy": state.highest_val_accuracy, "val_images": val_images,
                         "stopped_early": state.stopped_early, "seconds": seconds})  # fmt: skip
    return state
