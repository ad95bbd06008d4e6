"""The train runner: the only code that knows both the configuration and the library pieces.

data -> profile (header scan) -> input size and channels -> decode -> model, optimizer,
schedule -> fit (checkpoint every epoch) -> test -> bundle.
"""

from __future__ import annotations

import math
import os
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from rich.console import Console
from torch import nn

from imgclf.bundle import is_bundle, save_bundle
from imgclf.config import TrainConfig
from imgclf.data.augment import choose_augmentation
from imgclf.data.batches import Batches
from imgclf.data.dataset import Dataset, SplitPolicy, load_dataset
from imgclf.data.prepare import DataProfile, Preprocess, TensorSplit, estimate_mean_std, profile_dataset
from imgclf.engine.checkpoint import load_training_state, save_training_state
from imgclf.engine.evaluate import classification_metrics, predict_logits
from imgclf.engine.loop import FitSetup, FitState, fit
from imgclf.engine.observers import ProgressObserver, TrainObserver
from imgclf.engine.optim import create_optimizer, create_schedule
from imgclf.errors import DataError, UsageError
from imgclf.models import choose_input_size, count_parameters, create_model, get_model_spec
from imgclf.runners.common import (
    PreparedSplits,
    make_batches,
    prepare_splits,
    resolve_device,
    seed_everything,
    stderr_console,
)

__all__ = ["run_train", "STATE_FILE"]

STATE_FILE = "training_state.safetensors"
PREVIOUS_STATE_FILE = "training_state.prev.safetensors"
# Auto epochs: enough to see about this many training images, within [3, 30] epochs.
AUTO_EPOCH_IMAGES, AUTO_EPOCH_RANGE = 30_000, (3, 30)
EVAL_BATCH_SIZE = 256


def _default_output(data: str, model: str) -> Path:
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", Path(data).name.split(".")[0]).strip("-") or "data"
    base = Path("runs") / f"{stem}-{model}"
    candidate, number = base, 2
    while candidate.exists():
        candidate, number = Path(f"{base}-{number}"), number + 1
    return candidate


def _check_output(output: Path, overwrite: bool, resume: bool) -> None:
    if resume:
        if not (output / STATE_FILE).is_file() and not (output / PREVIOUS_STATE_FILE).is_file():
            raise UsageError(f"{output}: nothing to resume (no {STATE_FILE})")
        return
    if output.exists() and not output.is_dir():
        raise UsageError(f"--output {output}: exists and is not a folder")
    holds_run = is_bundle(output) or (output / STATE_FILE).exists()
    if holds_run and not overwrite:
        raise UsageError(
            f"--output {output}: already holds a trained model; pass --overwrite to replace "
            "it, --resume to continue it, or choose another folder"
        )


def _auto_epochs(train_images: int) -> int:
    low, high = AUTO_EPOCH_RANGE
    return int(min(high, max(low, math.ceil(AUTO_EPOCH_IMAGES / max(1, train_images)))))


def _build_preprocess(
    dataset: Dataset, profile: DataProfile, config: TrainConfig, console: Console
) -> tuple[Preprocess, PreparedSplits]:
    spec = get_model_spec(config.model)
    size = config.input_size or choose_input_size(spec, profile.native_size)
    pixels = sum(profile.sizes.values()) * profile.channels * size * size
    in_memory = pixels <= config.max_memory_gb * 1024**3
    provisional = Preprocess(size, profile.channels, (0.0,) * profile.channels, (1.0,) * profile.channels)
    started = time.perf_counter()
    prepared = prepare_splits(dataset, provisional, in_memory, config.workers)
    train = prepared.splits["train"]
    if isinstance(train, TensorSplit):
        mean, std = estimate_mean_std(train.images)
    else:
        sample = [train[i] for i in range(0, len(train), max(1, len(train) // 2000))]
        mean, std = estimate_mean_std(torch.stack([item[0] for item in sample if item is not None]))
    where = "decoded into memory" if in_memory else "streamed from disk"
    console.print(
        f"data: {size}x{size} px, {profile.channels} channel(s), {where} "
        f"({pixels / 1024**2:,.0f} MiB) in {time.perf_counter() - started:.1f}s"
    )
    return replace(provisional, mean=mean, std=std), prepared


def _loss_function(config: TrainConfig, targets: torch.Tensor, num_classes: int, device) -> nn.Module:
    weights = None
    if config.class_weights == "balanced":
        counts = torch.bincount(targets.cpu(), minlength=num_classes).float().clamp_min(1)
        weights = (counts.sum() / (num_classes * counts)).to(device)
    return nn.CrossEntropyLoss(weight=weights, label_smoothing=config.label_smoothing)


def _split_targets(split) -> torch.Tensor:
    if isinstance(split, TensorSplit):
        return split.targets
    return torch.from_numpy(split.split.targets)


def _describe_data(dataset: Dataset, profile: DataProfile, prepared: PreparedSplits) -> dict:
    skipped = profile.skipped + prepared.skipped
    return {
        "source": dataset.name,
        "kind": dataset.kind,
        "split": dataset.split_info,
        "sizes": {name: len(split) for name, split in prepared.splits.items()},
        "native_size": profile.native_size,
        "skipped": [{"file": file, "reason": reason} for file, reason in skipped],
        "ignored": len(dataset.ignored),
    }


def _load_data(data: str, config: TrainConfig, data_dir, console: Console):
    policy = SplitPolicy(config.seed, config.val_fraction, config.test_fraction)
    dataset = load_dataset(data, policy, data_dir)
    profile = profile_dataset(dataset)
    if len(dataset.splits["train"]) == 0:
        raise DataError(f"{data}: no usable training images ({len(profile.skipped)} skipped)")
    sizes = ", ".join(f"{name} {count:,}" for name, count in profile.sizes.items())
    console.print(
        f"data: {dataset.name}: {dataset.num_classes} classes, {sizes} images"
        + (f", {len(profile.skipped)} unusable files skipped" if profile.skipped else "")
    )
    preprocess, prepared = _build_preprocess(dataset, profile, config, console)
    return dataset, profile, preprocess, prepared


def _restore(state_path: Path, model: nn.Module) -> tuple[dict, FitState]:
    saved = load_training_state(state_path)
    model.load_state_dict(saved["model"])
    meta = saved["meta"]
    state = FitState(
        epoch=meta["epoch"],
        step=meta["step"],
        best_epoch=meta["best_epoch"],
        best_val_accuracy=meta["best_val_accuracy"],
        best_weights=saved["best"],
        epochs_without_improvement=meta["epochs_without_improvement"],
        history=meta["history"],
    )
    return saved, state


@dataclass
class TrainingRun:
    """What the runner assembled for one run: the loop's inputs and what the bundle records."""

    config: TrainConfig
    output: Path
    dataset: Dataset
    profile: DataProfile
    prepared: PreparedSplits
    setup: FitSetup
    train_batches: Batches
    val_batches: Batches
    epochs: int
    model_kwargs: dict
    state: FitState


def _place_on_device(prepared: PreparedSplits, device: torch.device) -> None:
    """Keep decoded datasets on the GPU when training there: no host-to-device copy per batch."""
    if device.type == "cuda":
        prepared.splits = {
            name: TensorSplit(split.images.to(device), split.targets.to(device), split.keys)
            if isinstance(split, TensorSplit)
            else split
            for name, split in prepared.splits.items()
        }


def _assemble(data: str, config: TrainConfig, output: Path, resume: bool, data_dir, console: Console) -> TrainingRun:
    device = resolve_device(config.device)
    dataset, profile, preprocess, prepared = _load_data(data, config, data_dir, console)
    seed_everything(config.seed)
    model_kwargs = {
        "num_classes": dataset.num_classes,
        "in_chans": preprocess.channels,
        "input_size": preprocess.input_size,
    }
    if config.drop_rate is not None:
        model_kwargs["drop_rate"] = config.drop_rate
    model = create_model(config.model, **model_kwargs).to(device)
    _place_on_device(prepared, device)
    train_split = prepared.splits["train"]
    epochs = config.epochs or _auto_epochs(len(train_split))
    train_batches = make_batches(
        train_split, config.batch_size, shuffle=True, seed=config.seed, drop_last=True, workers=config.workers
    )
    val_batches = make_batches(prepared.splits["val"], EVAL_BATCH_SIZE, workers=config.workers)
    optimizer = create_optimizer(
        model, config.optimizer, config.resolved_lr(), config.resolved_weight_decay(), config.momentum
    )
    state, last_step = FitState(), -1
    augment_generator = torch.Generator().manual_seed(config.seed + 1)
    if resume:
        saved, state = _restore(_state_path(output), model)
        optimizer.load_state_dict(saved["optimizer"])
        torch.set_rng_state(saved["rng"]["torch"])
        augment_generator.set_state(saved["rng"]["augment"])
        last_step = state.step - 1
    scheduler = create_schedule(
        optimizer, epochs * len(train_batches), config.schedule, config.resolved_warmup_fraction(), last_step
    )
    augmentation = choose_augmentation(config.augment, dataset.kind, preprocess.channels, preprocess.input_size, epochs)
    loss_fn = _loss_function(config, _split_targets(train_split), dataset.num_classes, device)
    setup = FitSetup(
        model,
        optimizer,
        scheduler,
        loss_fn,
        preprocess,
        augmentation,
        device,
        augment_generator,
        amp=config.amp,
        grad_clip=config.grad_clip,
    )
    return TrainingRun(
        config, output, dataset, profile, prepared, setup, train_batches, val_batches, epochs, model_kwargs, state
    )


def _announce(run: TrainingRun, console: Console) -> None:
    config, setup = run.config, run.setup
    epoch_source = "given" if config.epochs else f"auto: about {AUTO_EPOCH_IMAGES:,} training images seen"
    console.print(
        f"model: {config.model} ({count_parameters(setup.model):,} parameters) on {setup.device}, "
        f"{run.epochs} epochs ({epoch_source}), {len(run.train_batches)} steps per epoch, "
        f"lr {config.resolved_lr():.3g} ({config.optimizer}, {config.schedule})"
    )
    console.print(f"augmentation: {setup.augmentation.reason}")


def _checkpoint_saver(run: TrainingRun):
    def save_checkpoint(state: FitState) -> None:
        current, previous = run.output / STATE_FILE, run.output / PREVIOUS_STATE_FILE
        if current.exists():
            os.replace(current, previous)  # keep the previous one until the new one is complete
        meta = {
            "epoch": state.epoch,
            "step": state.step,
            "best_epoch": state.best_epoch,
            "best_val_accuracy": state.best_val_accuracy,
            "history": state.history,
            "epochs_without_improvement": state.epochs_without_improvement,
            "config": {**run.config.to_dict(), "epochs": run.epochs},
        }
        rng = {"torch": torch.get_rng_state(), "augment": run.setup.augment_generator.get_state()}
        save_training_state(current, run.setup.model, run.setup.optimizer, state.best_weights, rng, meta)

    return save_checkpoint


def _final_metrics(run: TrainingRun) -> dict[str, dict]:
    final = {}
    for name in ("val", "test"):
        if name in run.prepared.splits:
            batches = make_batches(run.prepared.splits[name], EVAL_BATCH_SIZE, workers=run.config.workers)
            logits, targets = predict_logits(
                run.setup.model, batches, run.setup.preprocess, run.setup.device, run.config.amp
            )
            final[name] = classification_metrics(logits, targets, run.dataset.classes)
    return final


def _write_bundle(run: TrainingRun, final: dict, seconds: float) -> dict:
    state, config, preprocess = run.state, run.config, run.setup.preprocess
    summary = {
        "val_accuracy": final["val"]["accuracy"],
        "test_accuracy": final["test"]["accuracy"] if "test" in final else None,
        "best_epoch": state.best_epoch,
        "epochs_run": state.epoch,
        "stopped_early": state.stopped_early,
    }
    description = {
        "architecture": config.model,
        "model_kwargs": run.model_kwargs,
        "params": count_parameters(run.setup.model),
        "classes": run.dataset.classes,
        "input_size": preprocess.input_size,
        "in_chans": preprocess.channels,
        "preprocess": preprocess.to_dict(),
        "augmentation": run.setup.augmentation.to_dict(),
        "training": {
            **config.to_dict(),
            "epochs": run.epochs,
            "lr": config.resolved_lr(),
            "weight_decay": config.resolved_weight_decay(),
            "device": str(run.setup.device),
        },
        "data": _describe_data(run.dataset, run.profile, run.prepared),
        "metrics": summary,
        "seconds": round(seconds, 2),
    }
    save_bundle(run.output, run.setup.model.cpu(), description, {**final, "summary": summary, "history": state.history})
    return summary


def _state_path(output: Path) -> Path:
    """The newest complete training state (the previous one if a crash hit mid-replace)."""
    return output / STATE_FILE if (output / STATE_FILE).is_file() else output / PREVIOUS_STATE_FILE


def run_train(
    data: str,
    config: TrainConfig,
    output: str | Path | None = None,
    overwrite: bool = False,
    resume: bool = False,
    data_dir: str | Path | None = None,
    observer: TrainObserver | None = None,
    console: Console | None = None,
) -> dict:
    """Train a model on DATA and write a bundle; returns the ``train --json`` result."""
    started = time.perf_counter()
    console = console or stderr_console()
    output = Path(output) if output is not None else _default_output(data, config.model)
    _check_output(output, overwrite, resume)
    if resume:
        config = TrainConfig.from_dict(load_training_state(_state_path(output))["meta"]["config"])
        console.print(f"resuming {output} (configuration from its training state)")
    get_model_spec(config.model)  # an unknown model fails before any data is read
    if config.threads:
        torch.set_num_threads(config.threads)
    run = _assemble(data, config, output, resume, data_dir, console)
    _announce(run, console)
    output.mkdir(parents=True, exist_ok=True)
    saver = _checkpoint_saver(run) if config.checkpoint_every_epoch else None
    run.state = fit(
        run.setup,
        run.train_batches,
        run.val_batches,
        run.epochs,
        run.dataset.classes,
        observer or ProgressObserver(console),
        state=run.state,
        early_stopping=config.early_stopping,
        save_checkpoint=saver,
    )
    summary = _write_bundle(run, _final_metrics(run), time.perf_counter() - started)
    seconds = time.perf_counter() - started
    console.print(
        f"test accuracy {_format(summary['test_accuracy'])}, val accuracy "
        f"{_format(summary['val_accuracy'])}; bundle written to {output} in {seconds:.1f}s"
    )
    return {
        "bundle": str(output),
        "model": config.model,
        "epochs": run.state.epoch,
        "seconds": round(seconds, 2),
        "metrics": {"val_accuracy": summary["val_accuracy"], "test_accuracy": summary["test_accuracy"]},
    }


def _format(value: float | None) -> str:
    return "n/a (no test split)" if value is None else f"{value:.4f}"
