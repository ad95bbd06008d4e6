"""A training run assembled: weights, data, model, batches, and its plan (epochs, augmentation,
and with a time budget the epochs measured to fit it). Everything here is decided before the
first step and does not change afterwards (``TrainingRun`` and ``RunPlan`` are frozen)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from rich.console import Console
from torch import nn

from imgclf.config import FAST_PRESET_MAX_SIZE, TrainConfig
from imgclf.data.augment import MIN_AUTO_AUGMENT_EPOCHS, Augmentation, choose_augmentation
from imgclf.data.batches import Batches, eval_batch_size, make_batches
from imgclf.data.dataset import Dataset
from imgclf.data.prepare import DataProfile, PreparedSplits, Preprocess, TensorSplit, split_targets
from imgclf.distributed import World
from imgclf.engine.budget import measure_eval_speed, measure_train_speed, plan_epochs, training_state_bytes
from imgclf.engine.checkpoint import TrainingState
from imgclf.engine.final import CENTROID_IMAGES
from imgclf.engine.plan import AUTO_EPOCH_IMAGES, AUTO_EPOCH_RANGE, RunPlan, auto_epochs, training_batch
from imgclf.engine.recipe import trial_setup
from imgclf.engine.runtime import seed_everything
from imgclf.errors import UsageError
from imgclf.models import ImageClassifier, count_parameters, create_model, families_with, get_model_spec
from imgclf.runners.train.data import load_training_data
from imgclf.transfer import PretrainedWeights, load_pretrained, load_weights_into

__all__ = [
    "TrainingRun",
    "WhatRan",
    "announce",
    "assemble",
    "check_preset",
    "check_world",
    "plan_time_budget",
    "set_threads",
]


@dataclass(frozen=True)
class TrainingRun:
    """What the runner assembled for one run: everything the stages and the bundle need."""

    config: TrainConfig
    output: Path
    dataset: Dataset
    profile: DataProfile
    prepared: PreparedSplits
    preprocess: Preprocess
    model: ImageClassifier
    device: torch.device
    train_batches: Batches
    val_batches: Batches
    model_kwargs: dict
    weights: PretrainedWeights | None
    augment_generator: torch.Generator
    plan: RunPlan
    world: World = field(default_factory=World)
    advice: dict | None = None  # the advisor's recommendation, when it chose the model

    def what_ran(self, epochs: int | None = None) -> WhatRan:
        """The record of what this run trains with (``epochs``: as now planned; default the plan's)."""
        config = self.config
        planned = self.plan.epochs if epochs is None else epochs
        return WhatRan(config, planned, config.resolved_lr(self.world.size), config.resolved_weight_decay(),
                       str(self.device))  # fmt: skip


@dataclass(frozen=True)
class WhatRan:
    """What was asked (``asked``: the resolved options) kept apart from what it came to (the epochs
    planned, the rates resolved, the device): the one record the bundle's ``config.yaml``, its
    training state and model.json take their configuration from."""

    asked: TrainConfig
    epochs: int | None
    lr: float
    weight_decay: float
    device: str

    def recipe(self) -> TrainConfig:
        """config.yaml: the run as asked, so ``--config`` repeats it (a time budget stays a budget)."""
        return self.asked

    def to_finish(self) -> dict:
        """The training state's: the planned epochs and no budget (the budget was the interrupted
        process's to keep; a resumed run finishes what was planned)."""
        return {**self.asked.to_dict(), "epochs": self.epochs, "time_budget": None}

    def described(self) -> dict:
        """model.json's ``training``: the options with the epochs, rates and device that ran."""
        return {**self.asked.to_dict(), "epochs": self.epochs, "lr": self.lr, "weight_decay": self.weight_decay,
                "device": self.device}  # fmt: skip


def _create_model(config: TrainConfig, dataset: Dataset, preprocess: Preprocess, weights, device, console):
    model_kwargs = {"num_classes": dataset.num_classes, "in_chans": preprocess.channels,
                    "input_size": preprocess.input_size}  # fmt: skip
    if config.drop_rate is not None:
        model_kwargs["drop_rate"] = config.drop_rate
    if config.drop_path > 0:
        if not get_model_spec(config.model).stochastic_depth:
            raise UsageError(f"--drop-path skips residual blocks: it applies to "
                             f"{', '.join(families_with('stochastic_depth'))} models, not {config.model}")  # fmt: skip
        model_kwargs["drop_path_rate"] = config.drop_path
    model = create_model(config.model, **model_kwargs)
    if weights is not None:
        fresh = load_weights_into(model, weights)
        console.print(f"weights: {weights.source}; newly initialized: {', '.join(fresh) or 'nothing'}")
    # channels-last: faster steps and inference on CPUs (measured: Preprocess.normalize)
    return model.to(device, memory_format=torch.channels_last), model_kwargs


def _on_device(prepared: PreparedSplits, device: torch.device) -> PreparedSplits:
    """On a GPU, decoded datasets live there too: no host-to-device copy per batch."""
    if device.type != "cuda":
        return prepared
    splits = {name: TensorSplit(split.images.to(device), split.targets.to(device), split.keys)
              if isinstance(split, TensorSplit) else split for name, split in prepared.splits.items()}  # fmt: skip
    return replace(prepared, splits=splits)


def assemble(data: str, config: TrainConfig, output: Path, data_dir, console: Console, world: World,
             device: torch.device, scanned=None, advice: dict | None = None) -> TrainingRun:  # fmt: skip
    weights = None
    if config.pretrained is not None:
        weights = load_pretrained(config.model, None if config.pretrained == "default" else config.pretrained)
    share = (world.rank, world.size) if world.distributed else None  # each process decodes its own share
    dataset, profile, preprocess, prepared = load_training_data(data, config, data_dir, weights, console, scanned,
                                                                share)  # fmt: skip
    seed_everything(config.seed)
    model, model_kwargs = _create_model(config, dataset, preprocess, weights, device, console)
    if config.sync_batchnorm and world.distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # same parameter names: bundles unchanged
    prepared = _on_device(prepared, device)
    # A decoded share already is this process's images: its batches are not split again by rank.
    rank, processes = (0, 1) if prepared.train_share is not None else (world.rank, world.size)
    train_images = len(prepared.splits["train"]) * (world.size if prepared.train_share is not None else 1)
    batch_size, drop_last = training_batch(config.batch_size, train_images, world.size)
    if batch_size != config.batch_size:
        console.print(f"batch: {batch_size} (--batch-size {config.batch_size} is more than the {train_images:,} "
                      "training images)")  # fmt: skip
        config = replace(config, batch_size=batch_size)  # the learning rate follows the batch
    epochs = config.epochs or auto_epochs(train_images)
    augmentation = run_augmentation(config, dataset.kind, preprocess, epochs)
    train_batches = make_batches(prepared.splits["train"], config.batch_size, shuffle=True, seed=config.seed,
                                 drop_last=drop_last, workers=config.workers, rank=rank,
                                 world_size=processes)  # fmt: skip
    val_batches = make_batches(prepared.splits["val"], eval_batch_size(preprocess.input_size), workers=config.workers)
    generator = torch.Generator().manual_seed(config.seed + 1 + world.rank)  # each rank augments differently
    return TrainingRun(config, output, dataset, profile, prepared, preprocess, model, device, train_batches,
                       val_batches, model_kwargs, weights, generator, RunPlan(epochs, augmentation), world,
                       advice)  # fmt: skip


def run_augmentation(config: TrainConfig, data_kind: str, preprocess: Preprocess, epochs: int) -> Augmentation:
    """The run's augmentation. Fine-tuning from a probe's head augments however few its epochs:
    the head already fits the training images (clothing photos, Lite2: training loss 0.011 in the
    first epoch, 0.003 by the fifth), so without new views there is nothing left to learn."""
    if config.starts_from_probe:
        epochs = max(epochs, MIN_AUTO_AUGMENT_EPOCHS)
    return choose_augmentation(config.augment, data_kind, preprocess.channels, preprocess.input_size, epochs)


def plan_time_budget(run: TrainingRun, started: float, console: Console, probe_done: bool = False) -> RunPlan:
    """Measure this machine's speed (the run's own training step, on a copy of the model), then
    fit whole epochs to the budget. ``probe_done``: a run starting from a probe has fitted it
    already (its time is in the time elapsed)."""
    budget, splits, config = run.config.time_budget, run.prepared.splits, run.config
    warmup = min(3.0, 0.04 * budget)  # seconds of training steps; a third of that evaluating
    train_targets = split_targets(splits["train"])
    trial = trial_setup(config, run.model, run.preprocess, run.plan.augmentation, train_targets,
                        run.dataset.num_classes, run.device, len(run.train_batches))  # fmt: skip
    train_speed = measure_train_speed(trial, run.train_batches, warmup)
    eval_speed = measure_eval_speed(run.model, run.val_batches, run.preprocess, run.device, warmup / 3)
    final_images = min(len(splits["train"]), CENTROID_IMAGES) + sum(len(splits[n]) for n in ("val", "test")
                                                                    if n in splits)  # fmt: skip
    weight_bytes = sum(t.numel() * t.element_size() for t in run.model.state_dict().values())
    state_bytes = training_state_bytes(weight_bytes, config.optimizer, config.ema > 0)
    checkpoints = config.checkpoint_every_epoch and run.world.is_main
    # Two-stage fine-tuning first embeds train and val once for its linear-probe head.
    probe_s = (
        (len(splits["train"]) + len(splits["val"])) / eval_speed if config.starts_from_probe and not probe_done else 0.0
    )
    plan = plan_epochs(budget, time.perf_counter() - started + probe_s, len(run.train_batches) * config.batch_size,
                       len(splits["val"]), final_images, train_speed, eval_speed,
                       epoch_write_bytes=state_bytes if checkpoints else 0,
                       final_write_bytes=weight_bytes)  # fmt: skip
    augmentation = run_augmentation(config, run.dataset.kind, run.preprocess, plan.epochs)
    console.print(plan.describe())
    return RunPlan(plan.epochs, augmentation, plan, started + budget - plan.final_seconds)


def check_world(config: TrainConfig, world: World, saved: TrainingState | None, device: torch.device) -> None:
    """What several processes cannot do, refused before any data is read."""
    if not world.distributed:
        return
    if config.finetune == "linear-probe":
        raise UsageError("--finetune linear-probe runs in one process; start it without torchrun")
    if config.sync_batchnorm and device.type != "cuda":
        raise UsageError("--sync-batchnorm needs GPUs (NCCL); on CPUs leave it out")
    if saved is not None and saved.inside_epoch and saved.world_size != world.size:
        raise UsageError(
            f"--resume: the training state was written inside an epoch by {saved.world_size} process(es); "
            f"resume it with that many, or from an epoch end"
        )


def set_threads(config: TrainConfig, world: World, device: torch.device) -> None:
    if config.threads:
        torch.set_num_threads(config.threads)
    elif world.distributed and device.type == "cpu":  # processes on one machine share its cores
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world.local_size))


def check_preset(run: TrainingRun, data: str) -> None:
    if run.config.preset == "fast" and run.preprocess.input_size > FAST_PRESET_MAX_SIZE:
        size = run.preprocess.input_size
        raise UsageError(f"--preset fast is for images of {FAST_PRESET_MAX_SIZE} px and below; these are trained at "
                         f"{size} px: choose a --model (imgclf advise {data} measures them)")  # fmt: skip


def announce(run: TrainingRun, console: Console) -> None:
    config, plan = run.config, run.plan
    parameters = f"{config.model} ({count_parameters(run.model):,} parameters) on {run.device}"
    if config.finetune == "linear-probe":
        console.print(f"model: {parameters}, frozen: a linear probe on its embeddings")
        return
    if config.finetune == "anytime":
        console.print(f"model: {parameters}: a linear probe on its embeddings first, then fine-tuning where the "
                      "time left and the probe say it pays; the more accurate of the two is kept")  # fmt: skip
        return
    epoch_source = "given"
    if not config.epochs:
        seen = plan.epochs * len(run.prepared.splits["train"])
        low, high = AUTO_EPOCH_RANGE
        epoch_source = f"auto: {seen:,} training images seen; about {AUTO_EPOCH_IMAGES:,} within {low}-{high} epochs"
    if plan.budget is not None:
        epoch_source = f"planned for the {plan.budget.budget_s:g} s budget"
    lr = config.resolved_lr(run.world.size)
    console.print(f"model: {parameters}, {plan.epochs} epochs ({epoch_source}), {len(run.train_batches)} steps per "
                  f"epoch, lr {lr:.3g} ({config.optimizer}, {config.schedule})")  # fmt: skip
    console.print(f"augmentation: {plan.augmentation.reason}")
    if run.world.distributed:
        console.print(
            f"distributed: {run.world.size} processes ({run.world.backend}), global batch {config.batch_size} x "
            f"{run.world.size} = {config.batch_size * run.world.size}; the peak lr scales with the global batch"
        )
