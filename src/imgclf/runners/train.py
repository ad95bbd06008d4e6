"""The train runner: the only code that knows both the configuration and the library pieces.

data -> profile (header scan) -> input size and channels -> decode -> model, optimizer,
schedule -> fit (checkpoint every epoch) -> test -> bundle.
"""

from __future__ import annotations

import math
import os
import re
import time
from dataclasses import replace
from pathlib import Path

import torch
from rich.console import Console
from torch import nn

from imgclf.bundle import is_bundle, save_bundle
from imgclf.config import TrainConfig
from imgclf.data.augment import choose_augmentation
from imgclf.data.dataset import Dataset, SplitPolicy, load_dataset
from imgclf.data.prepare import DataProfile, Preprocess, TensorSplit, estimate_mean_std, profile_dataset
from imgclf.engine.checkpoint import load_training_state, save_training_state
from imgclf.engine.evaluate import classification_metrics, predict_logits
from imgclf.engine.loop import FitSetup, FitState, fit
from imgclf.engine.observers import NullObserver, ProgressObserver, TrainObserver
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
        raise UsageError(f"--output {output}: already holds a trained model; pass --overwrite to replace "
                         "it, --resume to continue it, or choose another folder")


def _auto_epochs(train_images: int) -> int:
    low, high = AUTO_EPOCH_RANGE
    return int(min(high, max(low, math.ceil(AUTO_EPOCH_IMAGES / max(1, train_images)))))


def _build_preprocess(dataset: Dataset, profile: DataProfile, config: TrainConfig,
                      console: Console) -> tuple[Preprocess, PreparedSplits]:
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
    console.print(f"data: {size}x{size} px, {profile.channels} channel(s), {where} "
                  f"({pixels / 1024**2:,.0f} MiB) in {time.perf_counter() - started:.1f}s")
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
    console.print(f"data: {dataset.name}: {dataset.num_classes} classes, {sizes} images"
                  + (f", {len(profile.skipped)} unusable files skipped" if profile.skipped else ""))
    preprocess, prepared = _build_preprocess(dataset, profile, config, console)
    return dataset, profile, preprocess, prepared


def _restore(state_path: Path, setup_model: nn.Module) -> tuple[dict, FitState]:
    saved = load_training_state(state_path)
    setup_model.load_state_dict(saved["model"])
    meta = saved["meta"]
    state = FitState(epoch=meta["epoch"], step=meta["step"], best_epoch=meta["best_epoch"],
                     best_val_accuracy=meta["best_val_accuracy"], best_weights=saved["best"],
                     epochs_without_improvement=meta["epochs_without_improvement"],
                     history=meta["history"])
    return saved, state


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
    state_path = output / STATE_FILE if (output / STATE_FILE).is_file() else output / PREVIOUS_STATE_FILE
    if resume:
        saved_config = load_training_state(state_path)["meta"]["config"]
        config = TrainConfig.from_dict(saved_config)
        console.print(f"resuming {output} (configuration from its training state)")
    get_model_spec(config.model)  # an unknown model fails before any data is read
    device = resolve_device(config.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    dataset, profile, preprocess, prepared = _load_data(data, config, data_dir, console)

    seed_everything(config.seed)
    model_kwargs = {"num_classes": dataset.num_classes, "in_chans": preprocess.channels,
                    "input_size": preprocess.input_size}
    if config.drop_rate is not None:
        model_kwargs["drop_rate"] = config.drop_rate
    model = create_model(config.model, **model_kwargs).to(device)
    if device.type == "cuda":  # keep small decoded datasets on the GPU: no host->device copies
        prepared.splits = {n: TensorSplit(s.images.to(device), s.targets.to(device), s.keys)
                           if isinstance(s, TensorSplit) else s for n, s in prepared.splits.items()}
    train_split = prepared.splits["train"]
    epochs = config.epochs or _auto_epochs(len(train_split))
    augmentation = choose_augmentation(config.augment, dataset.kind, preprocess.channels,
                                       preprocess.input_size, epochs)
    train_batches = make_batches(train_split, config.batch_size, shuffle=True, seed=config.seed,
                                 drop_last=True, workers=config.workers)
    val_batches = make_batches(prepared.splits["val"], 256, workers=config.workers)
    total_steps = epochs * len(train_batches)

    optimizer = create_optimizer(model, config.optimizer, config.resolved_lr(),
                                 config.resolved_weight_decay(), config.momentum)
    state, last_step = FitState(), -1
    augment_generator = torch.Generator().manual_seed(config.seed + 1)
    if resume:
        saved, state = _restore(state_path, model)
        optimizer.load_state_dict(saved["optimizer"])
        torch.set_rng_state(saved["rng"]["torch"])
        augment_generator.set_state(saved["rng"]["augment"])
        last_step = state.step - 1
    scheduler = create_schedule(optimizer, total_steps, config.schedule, config.resolved_warmup_fraction(), last_step)
    setup = FitSetup(model, optimizer, scheduler, _loss_function(config, _split_targets(train_split),
                     dataset.num_classes, device), preprocess, augmentation, device, augment_generator,
                     amp=config.amp, grad_clip=config.grad_clip)

    epoch_source = "given" if config.epochs else f"auto: about {AUTO_EPOCH_IMAGES:,} training images seen"
    console.print(f"model: {config.model} ({count_parameters(model):,} parameters) on {device}, "
                  f"{epochs} epochs ({epoch_source}), {len(train_batches)} steps per epoch, "
                  f"lr {config.resolved_lr():.3g} ({config.optimizer}, {config.schedule})")
    console.print(f"augmentation: {augmentation.reason}")

    def save_checkpoint(fit_state: FitState) -> None:
        if (output / STATE_FILE).exists():
            os.replace(output / STATE_FILE, output / PREVIOUS_STATE_FILE)  # keep the previous one
        meta = {"epoch": fit_state.epoch, "step": fit_state.step, "best_epoch": fit_state.best_epoch,
                "best_val_accuracy": fit_state.best_val_accuracy, "history": fit_state.history,
                "epochs_without_improvement": fit_state.epochs_without_improvement,
                "config": {**config.to_dict(), "epochs": epochs}}
        rng = {"torch": torch.get_rng_state(), "augment": augment_generator.get_state()}
        save_training_state(output / STATE_FILE, model, optimizer, fit_state.best_weights, rng, meta)

    output.mkdir(parents=True, exist_ok=True)
    state = fit(setup, train_batches, val_batches, epochs, dataset.classes, observer or ProgressObserver(console),
                state=state, early_stopping=config.early_stopping,
                save_checkpoint=save_checkpoint if config.checkpoint_every_epoch else None)

    final = {}
    for name in ("val", "test"):
        if name in prepared.splits:
            batches = make_batches(prepared.splits[name], 256, workers=config.workers)
            logits, targets = predict_logits(model, batches, preprocess, device, config.amp)
            final[name] = classification_metrics(logits, targets, dataset.classes)
    seconds = time.perf_counter() - started
    test_accuracy = final["test"]["accuracy"] if "test" in final else None
    summary = {"val_accuracy": final["val"]["accuracy"], "test_accuracy": test_accuracy,
               "best_epoch": state.best_epoch, "epochs_run": state.epoch, "stopped_early": state.stopped_early}
    description = {
        "architecture": config.model,
        "model_kwargs": model_kwargs,
        "params": count_parameters(model),
        "classes": dataset.classes,
        "input_size": preprocess.input_size,
        "in_chans": preprocess.channels,
        "preprocess": preprocess.to_dict(),
        "augmentation": augmentation.to_dict(),
        "training": {**config.to_dict(), "epochs": epochs, "lr": config.resolved_lr(),
                     "weight_decay": config.resolved_weight_decay(), "device": str(device)},
        "data": _describe_data(dataset, profile, prepared),
        "metrics": summary,
        "seconds": round(seconds, 2),
    }
    metrics = {**final, "summary": summary, "history": state.history}
    save_bundle(output, model.cpu(), description, metrics)
    console.print(f"test accuracy {_format(test_accuracy)}, val accuracy {_format(summary['val_accuracy'])}; "
                  f"bundle written to {output} in {seconds:.1f}s")
    return {"bundle": str(output), "model": config.model, "epochs": state.epoch, "seconds": round(seconds, 2),
            "metrics": {"val_accuracy": summary["val_accuracy"], "test_accuracy": test_accuracy}}


def _format(value: float | None) -> str:
    return "n/a (no test split)" if value is None else f"{value:.4f}"
