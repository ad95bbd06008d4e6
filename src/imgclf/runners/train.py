"""The train runner: the only code that knows both the configuration and the library pieces.

weights (if pretrained) -> data (scan, preprocessing, decode) -> model -> stages of fit
(checkpoint every epoch) or a linear probe -> test -> bundle.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from torch import nn

from imgclf.bundle import Bundle, is_bundle, save_bundle
from imgclf.config import FAST_PRESET_MAX_SIZE, TrainConfig
from imgclf.data.augment import Augmentation, choose_augmentation
from imgclf.data.batches import Batches, MirroredBatches
from imgclf.data.dataset import Dataset
from imgclf.data.prepare import DataProfile, Preprocess, StreamingSplit, TensorSplit, split_targets
from imgclf.distributed import World, init_from_environment, shutdown
from imgclf.engine.budget import (
    MAX_EPOCHS,
    BudgetPlan,
    measure_eval_speed,
    measure_train_speed,
    plan_epochs,
    training_state_bytes,
)
from imgclf.engine.checkpoint import load_training_state, save_training_state
from imgclf.engine.evaluate import calibrated_metrics, predict_outputs
from imgclf.engine.loop import FitSetup, FitState, fit, weight_average
from imgclf.engine.observers import ProgressObserver, TrainObserver
from imgclf.engine.optim import create_optimizer, create_schedule, stretch_schedule
from imgclf.errors import ImgclfError, UsageError
from imgclf.explain.calibration import calibrate, class_centroids
from imgclf.models import ImageClassifier, count_parameters, create_model, get_model_spec
from imgclf.runners.common import (
    PreparedSplits,
    eval_batch_size,
    make_batches,
    resolve_device,
    seed_everything,
    stderr_console,
)
from imgclf.runners.finetune import Stage, plan_stages, run_linear_probe
from imgclf.runners.report import mistakes_gallery, write_report
from imgclf.runners.train_data import check_trainable, describe_data, load_training_data, scan_training_data
from imgclf.transfer import PretrainedWeights, freeze_for_finetuning, load_pretrained, load_weights_into

__all__ = ["STATE_FILE", "run_train"]

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


def check_writable(output: Path) -> None:
    """Before any data is read: the output folder can be made and written to (not under /proc,
    not on a read-only mount)."""
    import tempfile

    missing = [folder for folder in (output, *output.parents) if not folder.exists()]
    try:
        output.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=output):
            pass
    except OSError as error:
        raise UsageError(f"--output {output}: cannot write there ({error.strerror or error})") from None
    finally:
        for folder in missing:  # innermost first: the run makes them again when it writes
            with contextlib.suppress(OSError):
                folder.rmdir()


LOCK_FILE = ".imgclf.lock"
# A run killed a moment ago can hold the lock a little longer, through processes it forked (data
# loader workers, the other ranks) that are still exiting: wait this long before giving up.
LOCK_WAIT_S = 3.0


@contextlib.contextmanager
def output_lock(output: Path):
    """Hold the output folder for one run: a second run into the same folder (in this process or
    another) stops at once instead of both reporting a bundle that only one of them wrote. An
    advisory ``flock``, released by the system when the process ends, even by SIGKILL."""
    import fcntl

    try:
        output.mkdir(parents=True, exist_ok=True)
        handle = open(output / LOCK_FILE, "a+")  # noqa: SIM115 - held for the whole run
    except OSError as error:
        raise UsageError(f"--output {output}: cannot write there ({error.strerror or error})") from None
    try:
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise UsageError(f"--output {output}: another imgclf run is writing to it; wait for it or "
                                     "choose another folder") from None  # fmt: skip
                time.sleep(0.1)
        try:
            yield
        finally:
            # Removed while still held: a run that opens the path later makes a new file and locks it.
            (output / LOCK_FILE).unlink(missing_ok=True)
    finally:
        handle.close()


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


def _load_latest_state(output: Path, console: Console) -> dict:
    """The newest readable training state: the previous one when the latest is missing (a crash
    between the two renames) or damaged (a truncated copy), saying so."""
    for path in (output / STATE_FILE, output / PREVIOUS_STATE_FILE):
        if not path.is_file():
            continue
        try:
            saved = load_training_state(path)
            _check_state_meta(path, saved["meta"])
            return saved
        except ImgclfError as error:
            console.print(f"warning: {error}; trying the previous training state")
    raise UsageError(f"{output}: no readable training state to resume")


def _check_state_meta(path: Path, meta: dict) -> None:
    """The values a resume relies on, checked before any is used (a damaged or hand-edited state
    is refused, so the previous one is tried)."""

    def counter(key: str) -> int:
        value = meta.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ImgclfError(f"{path}: {key} must be a count, not {value!r}")
        return value

    for key in ("step", "best_epoch", "epochs_without_improvement"):
        counter(key)
    if "stage" in meta:
        counter("stage")
    epoch = counter("epoch")
    if not isinstance(meta.get("history"), list) or not all(isinstance(row, dict) for row in meta["history"]):
        raise ImgclfError(f"{path}: history must be a list of epoch records")
    if not isinstance(meta.get("config"), dict):
        raise ImgclfError(f"{path}: no training configuration")
    config = TrainConfig.from_dict(meta["config"])  # raises UsageError naming a bad value
    if not isinstance(config.epochs, int) or epoch > config.epochs:
        raise ImgclfError(f"{path}: epoch {epoch} is past the run's {config.epochs} epochs")
    if len(meta["history"]) != epoch:
        raise ImgclfError(f"{path}: {len(meta['history'])} epoch records for epoch {epoch}")


DEFAULT_MODEL_LABEL_SMOOTHING = 0.1  # measured on digits over seeds 0-4: BENCHMARKS.md

# A last, partial batch is dropped (the order is reshuffled each epoch) only when it holds a
# single image, which batch norm cannot train on, or at most this share of the training set.
DROP_LAST_MAX_SHARE = 0.1


def training_batch(batch_size: int, train_images: int, processes: int = 1) -> tuple[int, bool]:
    """The batch a run trains with (never more than each process's share of the training
    images) and whether each epoch drops its last, partial batch."""
    per_process = max(1, train_images // max(1, processes))
    batch = max(1, min(batch_size, per_process))
    rest = per_process % batch
    drop_last = rest > 0 and (rest == 1 or rest <= DROP_LAST_MAX_SHARE * per_process)
    return batch, drop_last


def _auto_epochs(train_images: int) -> int:
    low, high = AUTO_EPOCH_RANGE
    return int(min(high, max(low, math.ceil(AUTO_EPOCH_IMAGES / max(1, train_images)))))


def _loss_function(config: TrainConfig, targets: torch.Tensor, num_classes: int, device) -> nn.Module:
    weights = None
    if config.class_weights == "balanced":
        counts = torch.bincount(targets.cpu(), minlength=num_classes).float().clamp_min(1)
        weights = (counts.sum() / (num_classes * counts)).to(device)
    return nn.CrossEntropyLoss(weight=weights, label_smoothing=config.resolved_label_smoothing())


@dataclass
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
    augmentation: Augmentation
    train_batches: Batches
    val_batches: Batches
    epochs: int
    model_kwargs: dict
    weights: PretrainedWeights | None
    augment_generator: torch.Generator
    world: World = field(default_factory=World)
    state: FitState = field(default_factory=FitState)
    budget: BudgetPlan | None = None  # with --time-budget: the plan, and when training must stop
    stop_at: float | None = None
    advice: dict | None = None  # the advisor's recommendation, when it chose the model
    embeddings: dict | None = None  # a linear probe's embeddings and targets of each split (unnormalized)


RESIDUAL_FAMILIES = ("resnet", "resnet_cifar")  # the families whose blocks take drop_path_rate


def _create_model(config: TrainConfig, dataset: Dataset, preprocess: Preprocess, weights, device, console):
    model_kwargs = {
        "num_classes": dataset.num_classes,
        "in_chans": preprocess.channels,
        "input_size": preprocess.input_size,
    }
    if config.drop_rate is not None:
        model_kwargs["drop_rate"] = config.drop_rate
    if config.drop_path > 0:
        if get_model_spec(config.model).family not in RESIDUAL_FAMILIES:
            raise UsageError(f"--drop-path skips residual blocks: it applies to {', '.join(RESIDUAL_FAMILIES)} "
                             f"models, not {config.model}")  # fmt: skip
        model_kwargs["drop_path_rate"] = config.drop_path
    model = create_model(config.model, **model_kwargs)
    if weights is not None:
        fresh = load_weights_into(model, weights)
        console.print(f"weights: {weights.source}; newly initialized: {', '.join(fresh) or 'nothing'}")
    # channels-last: 20-35% faster training steps on this CPU (see Preprocess.normalize)
    return model.to(device, memory_format=torch.channels_last), model_kwargs


def _assemble(
    data: str,
    config: TrainConfig,
    output: Path,
    data_dir,
    console: Console,
    world: World,
    device: torch.device,
    scanned=None,
) -> TrainingRun:
    weights = None
    if config.pretrained is not None:
        weights = load_pretrained(config.model, None if config.pretrained == "default" else config.pretrained)
    dataset, profile, preprocess, prepared = load_training_data(data, config, data_dir, weights, console, scanned)
    seed_everything(config.seed)
    model, model_kwargs = _create_model(config, dataset, preprocess, weights, device, console)
    if config.sync_batchnorm and world.distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # same parameter names: bundles unchanged
    if device.type == "cuda":  # keep decoded datasets on the GPU: no host-to-device copy per batch
        prepared.splits = {
            name: TensorSplit(split.images.to(device), split.targets.to(device), split.keys)
            if isinstance(split, TensorSplit)
            else split
            for name, split in prepared.splits.items()
        }
    train_images = len(prepared.splits["train"])
    batch_size, drop_last = training_batch(config.batch_size, train_images, world.size)
    if batch_size != config.batch_size:
        console.print(f"batch: {batch_size} (--batch-size {config.batch_size} is more than the {train_images:,} "
                      "training images)")  # fmt: skip
        config = replace(config, batch_size=batch_size)  # the learning rate follows the batch
    epochs = config.epochs or _auto_epochs(train_images)
    augmentation = choose_augmentation(config.augment, dataset.kind, preprocess.channels, preprocess.input_size, epochs)
    train_batches = make_batches(
        prepared.splits["train"],
        config.batch_size,
        shuffle=True,
        seed=config.seed,
        drop_last=drop_last,
        workers=config.workers,
        rank=world.rank,
        world_size=world.size,
    )
    val_batches = make_batches(prepared.splits["val"], eval_batch_size(preprocess.input_size), workers=config.workers)
    return TrainingRun(
        config,
        output,
        dataset,
        profile,
        prepared,
        preprocess,
        model,
        device,
        augmentation,
        train_batches,
        val_batches,
        epochs,
        model_kwargs,
        weights,
        torch.Generator().manual_seed(config.seed + 1 + world.rank),  # each rank augments differently
        world,
    )


def _stage_setup(run: TrainingRun, stage: Stage) -> FitSetup:
    config = run.config
    frozen = freeze_for_finetuning(run.model, stage.train_backbone) if run.weights is not None else []
    optimizer = create_optimizer(
        run.model, config.optimizer, stage.lr, config.resolved_weight_decay(), config.momentum, stage.lr_scale
    )
    steps = (stage.end_epoch - stage.start_epoch) * len(run.train_batches)
    scheduler = create_schedule(optimizer, steps, config.schedule, config.resolved_warmup_fraction())
    forward_model = None
    if run.world.distributed:  # wrapped per stage: DDP registers the parameters that train now
        device_ids = [run.device.index] if run.device.type == "cuda" else None
        forward_model = nn.parallel.DistributedDataParallel(run.model, device_ids=device_ids)
    if config.compile:  # the training step only; evaluation and the bundle use the plain module
        forward_model = torch.compile(forward_model if forward_model is not None else run.model)
    loss_fn = _loss_function(config, split_targets(run.prepared.splits["train"]), run.dataset.num_classes, run.device)
    return FitSetup(
        run.model,
        optimizer,
        scheduler,
        loss_fn,
        run.preprocess,
        run.augmentation,
        run.device,
        run.augment_generator,
        amp=config.amp,
        grad_clip=config.grad_clip,
        frozen_modules=frozen,
        forward_model=forward_model,
        world=run.world,
        stop_at=run.stop_at,
        ema=weight_average(run.model, config.ema) if config.ema > 0 else None,
    )


def _resume_stage(run: TrainingRun, saved: dict, setup: FitSetup, stage_index: int, stage: Stage) -> None:
    """Restore weights, best epoch and RNG states; the optimizer and schedule only when the
    checkpoint was written inside this stage (at a stage boundary the new stage starts fresh,
    exactly as it does in an uninterrupted run)."""
    meta = saved["meta"]
    _restore_weights_and_progress(run, saved)
    torch.set_rng_state(saved["rng"]["torch"])
    run.augment_generator.set_state(saved["rng"]["augment"])
    batches_done = int(run.state.epoch_progress.get("batches_done", 0))
    if meta.get("stage", 0) == stage_index and (meta["epoch"] > stage.start_epoch or batches_done):
        setup.optimizer.load_state_dict(saved["optimizer"])
        if setup.ema is not None and saved.get("ema"):
            setup.ema.load_state_dict(saved["ema"])
        steps_per_epoch = len(run.train_batches)
        steps_done = (meta["epoch"] - stage.start_epoch) * steps_per_epoch + batches_done
        total_steps = (stage.end_epoch - stage.start_epoch) * steps_per_epoch
        setup.scheduler = create_schedule(
            setup.optimizer,
            total_steps,
            run.config.schedule,
            run.config.resolved_warmup_fraction(),
            last_step=steps_done - 1,
        )


def _restore_weights_and_progress(run: TrainingRun, saved: dict) -> None:
    meta = saved["meta"]
    run.model.load_state_dict(saved["model"])
    run.state = FitState(
        epoch=meta["epoch"],
        step=meta["step"],
        best_epoch=meta["best_epoch"],
        best_val_accuracy=meta["best_val_accuracy"],
        best_weights=saved["best"],
        epochs_without_improvement=meta["epochs_without_improvement"],
        history=meta["history"],
        epoch_progress=meta.get("epoch_progress") or {},
        stopped_early=bool(meta.get("stopped_early", False)),
    )


def _resume_finished(run: TrainingRun, saved: dict, console: Console) -> None:
    """The state was written after the last epoch (the run died in its final evaluation or while
    writing the bundle): no epoch is left to train, so the run ends as the uninterrupted one did,
    with the weights it chose (the best epoch's), not the freshly initialised model."""
    _restore_weights_and_progress(run, saved)
    if run.state.best_weights is not None:
        run.model.load_state_dict(run.state.best_weights)
    console.print(f"every epoch was already trained ({run.state.epoch}); finishing the run from its saved weights")


def _data_identity(run: TrainingRun) -> dict:
    return {
        "source": run.dataset.name,
        "classes": run.dataset.classes,
        "fingerprints": run.dataset.split_info.get("fingerprints", {}),
    }


def _check_same_data(run: TrainingRun, meta: dict, force: bool) -> None:
    """A run resumes on the data it started with: the same classes and the same split files."""
    saved, now = meta.get("data"), _data_identity(run)
    if saved is None or force:
        return
    if saved["classes"] != now["classes"]:
        raise UsageError(
            f"--resume: the classes differ from the interrupted run's ({', '.join(saved['classes'])}); "
            "pass --force to resume anyway"
        )
    if saved["fingerprints"] != now["fingerprints"]:
        raise UsageError(
            f"--resume: the images of {now['source']} differ from those the run started with "
            f"({saved['source']}); pass --force to resume anyway"
        )


def _checkpoint_saver(run: TrainingRun, setup: FitSetup, stage_index: int):
    def save_checkpoint(state: FitState) -> None:
        current, previous = run.output / STATE_FILE, run.output / PREVIOUS_STATE_FILE
        if current.exists():
            os.replace(current, previous)  # keep the previous one until the new one is complete
        meta = {
            "epoch": state.epoch,
            "step": state.step,
            "best_epoch": state.best_epoch,
            "stage": stage_index,
            "best_val_accuracy": state.best_val_accuracy,
            "history": state.history,
            "epochs_without_improvement": state.epochs_without_improvement,
            "epoch_progress": state.epoch_progress,
            "stopped_early": state.stopped_early,  # early stopping or the deadline ended the run here
            "world_size": run.world.size,
            # A resumed run finishes the planned epochs; the budget was this process's to keep.
            "config": {**run.config.to_dict(), "epochs": run.epochs, "time_budget": None},
            "data": _data_identity(run),
        }
        rng = {"torch": torch.get_rng_state(), "augment": run.augment_generator.get_state()}
        ema_state = setup.ema.state_dict() if setup.ema is not None else None
        save_training_state(current, run.model, setup.optimizer, state.best_weights, rng, meta, ema_state)

    return save_checkpoint


def _run_stages(run: TrainingRun, saved: dict | None, observer: TrainObserver, console: Console) -> None:
    """Run each stage in turn; ``saved`` is the training state to resume from, if any."""
    stages = plan_stages(run.config, run.epochs, run.world.size)
    resume_epoch = saved["meta"]["epoch"] if saved else 0
    meta = saved["meta"] if saved is not None else {}
    ended_early = bool(meta.get("stopped_early")) and meta.get("stage", 0) == len(stages) - 1
    if saved is not None and (resume_epoch >= stages[-1].end_epoch or ended_early):
        _resume_finished(run, saved, console)
        return
    for index, stage in enumerate(stages):
        if resume_epoch >= stage.end_epoch:
            continue
        setup = _stage_setup(run, stage)
        resumed_inside = saved is not None and saved["meta"].get("stage", 0) == index
        if saved is not None:
            _resume_stage(run, saved, setup, index, stage)
            saved = None
        if len(stages) > 1 or run.weights is not None:
            console.print(f"{stage.name}: epochs {stage.start_epoch + 1}-{stage.end_epoch}, peak lr {stage.lr:.3g}")
        if not resumed_inside:  # a new stage judges early stopping afresh
            run.state.stopped_early, run.state.epochs_without_improvement = False, 0
        # Only rank 0 writes; several processes checkpoint at epoch ends only, so a run can resume
        # with another number of processes.
        saver = (
            _checkpoint_saver(run, setup, index) if run.config.checkpoint_every_epoch and run.world.is_main else None
        )
        interval = 0.0 if run.world.distributed else run.config.checkpoint_interval
        replan = _budget_replanner(run, setup, console) if run.budget is not None and len(stages) == 1 else None
        run.state = fit(
            setup,
            run.train_batches,
            run.val_batches,
            stage.end_epoch,
            run.dataset.classes,
            observer,
            state=run.state,
            early_stopping=run.config.early_stopping,
            save_checkpoint=saver,
            checkpoint_interval=interval,
            replan=replan,
        )


REPLAN_AFTER_S = 3.0  # seconds of epochs before a time budget is re-planned from them


def _budget_replanner(run: TrainingRun, setup: FitSetup, console: Console):
    """After the first epoch, the epochs that fit before the deadline at the speed just seen
    (the warm-up's few seconds over- or underestimate it), with the learning-rate schedule laid
    over them, so the schedule ends at the deadline instead of being cut off or ending early."""

    replanned, fit_started = False, time.perf_counter()

    def replan(state: FitState, epoch_seconds: float, checkpoint_seconds: float) -> int | None:
        nonlocal replanned
        # Once, from an epoch after the first (which pays one-time costs) and after enough
        # seconds of epochs that the last one's time is not noise.
        if replanned or run.stop_at is None or state.epoch < 2 or time.perf_counter() - fit_started < REPLAN_AFTER_S:
            return None
        replanned = True
        deadline = run.stop_at + run.budget.final_seconds
        measured_final = run.budget.final_seconds_from(state.history[-1].get("val_seconds", 0.0), checkpoint_seconds)
        final_seconds = max(run.budget.final_seconds, measured_final)
        if final_seconds > run.budget.final_seconds:  # stop training earlier: the final phase needs the time
            console.print(f"time budget: the final evaluation will take about {final_seconds:.1f} s "
                          f"(planned {run.budget.final_seconds:.1f} s)")  # fmt: skip
            run.stop_at = setup.stop_at = deadline - final_seconds
            run.budget = replace(run.budget, final_seconds=final_seconds)
        remaining = run.stop_at - time.perf_counter()
        epochs = max(state.epoch, min(MAX_EPOCHS, state.epoch + int(remaining // epoch_seconds)))
        if epochs != run.epochs:
            planned = run.budget.seconds_per_epoch
            console.print(f"time budget: epochs take {epoch_seconds:.1f} s here (planned {planned:.1f} s): "
                          f"{epochs} epochs in all instead of {run.epochs}")  # fmt: skip
            run.epochs = epochs
            run.budget = replace(run.budget, replanned_epochs=epochs)
            stretch_schedule(setup.scheduler, epochs * len(run.train_batches))
        return epochs

    return replan


def _linear_probe(run: TrainingRun, console: Console) -> None:
    freeze_for_finetuning(run.model, train_backbone=False)
    batch = eval_batch_size(run.preprocess.input_size)
    splits = {
        name: make_batches(split, batch, workers=run.config.workers) for name, split in run.prepared.splits.items()
    }
    fingerprints = run.dataset.split_info.get("fingerprints", {})
    key = {
        "model": run.config.model,
        "weights": run.weights.source,
        "preprocess": run.preprocess.to_dict(),
        "data": run.dataset.name,
        "fingerprints": fingerprints,
        "split_info": {k: v for k, v in run.dataset.split_info.items() if k.startswith("max_")},
    }
    # Mirror images as extra training views where flips keep the class (cross-validation decides).
    flips_keep_class = choose_augmentation(
        run.config.augment, run.dataset.kind, run.preprocess.channels, run.preprocess.input_size
    ).flip  # as augmentation decides it for a run long enough to augment
    flipped = MirroredBatches(splits["train"]) if flips_keep_class and run.config.probe_mirror else None
    probe_run = run_linear_probe(
        run.model, splits, run.preprocess, run.device, key, run.dataset.num_classes, run.config.seed, console, flipped
    )
    run.state, run.embeddings = probe_run.state, probe_run.embeddings


# Class centroids for the abstain check come from up to this many evenly spaced training images.
CENTROID_IMAGES = 5_000


@dataclass
class FinalEvaluation:
    """The trained model on val and test: calibration fitted on val, metrics, the test logits
    (the report's worst-mistakes gallery ranks them) and the class centroids."""

    calibration: dict
    metrics: dict[str, dict]
    logits: dict[str, tuple[torch.Tensor, torch.Tensor]]
    centroids: torch.Tensor | None


def _evenly_spaced(split: TensorSplit | StreamingSplit, limit: int) -> TensorSplit | StreamingSplit:
    if len(split) <= limit:
        return split
    indices = np.linspace(0, len(split) - 1, limit).astype(np.int64)
    if isinstance(split, TensorSplit):
        return TensorSplit(split.images[indices], split.targets[indices], [split.keys[i] for i in indices])
    return StreamingSplit(split.split.subset(indices), split.preprocess)


def _outputs(run: TrainingRun, name: str, embeddings: bool, limit: int | None = None):
    """Logits, targets and (when asked) L2-normalized embeddings of one split; from a linear
    probe's embeddings when the run has them (the backbone does not run again)."""
    layer = run.model.get_classifier()
    if run.embeddings is not None and name in run.embeddings and isinstance(layer, nn.Linear):
        features, targets = run.embeddings[name]
        if limit is not None and len(targets) > limit:
            indices = np.linspace(0, len(targets) - 1, limit).astype(np.int64)
            features, targets = features[indices], targets[indices]
        with torch.no_grad():
            logits = nn.functional.linear(features, layer.weight.detach().cpu(), layer.bias.detach().cpu())
        return logits.float(), targets, nn.functional.normalize(features, dim=1) if embeddings else None
    split = run.prepared.splits[name]
    if limit is not None:
        split = _evenly_spaced(split, limit)
    batches = make_batches(split, eval_batch_size(run.preprocess.input_size), workers=run.config.workers)
    return predict_outputs(run.model, batches, run.preprocess, run.device, run.config.amp, embeddings=embeddings)


NOISE_IMAGES = 64  # uniform-noise images the abstain check is tuned to refuse


def _noise_outputs(run: TrainingRun) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and normalized embeddings of seeded uniform-noise images at the model's input size."""
    size, channels = run.preprocess.input_size, run.preprocess.channels
    generator = torch.Generator().manual_seed(run.config.seed)
    images = torch.randint(0, 256, (NOISE_IMAGES, channels, size, size), dtype=torch.uint8, generator=generator)
    split = TensorSplit(
        images, torch.zeros(NOISE_IMAGES, dtype=torch.int64), [f"noise[{i}]" for i in range(NOISE_IMAGES)]
    )
    batches = make_batches(split, eval_batch_size(size), workers=0)
    logits, _, embeddings = predict_outputs(
        run.model, batches, run.preprocess, run.device, run.config.amp, embeddings=True
    )
    return logits, embeddings


def _final_evaluation(run: TrainingRun) -> FinalEvaluation:
    splits = run.prepared.splits
    _, train_targets, train_embeddings = _outputs(run, "train", True, CENTROID_IMAGES)
    centroids = class_centroids(train_embeddings, train_targets, run.dataset.num_classes)
    val_logits, val_targets, val_embeddings = _outputs(run, "val", True)
    logits = {"val": (val_logits, val_targets)}
    if "test" in splits:
        logits["test"] = _outputs(run, "test", False)[:2]
    calibration = calibrate(val_logits, val_targets, val_embeddings, centroids, _noise_outputs(run))
    temperature = calibration["temperature"]
    metrics = {name: calibrated_metrics(*pair, run.dataset.classes, temperature) for name, pair in logits.items()}
    return FinalEvaluation(calibration, metrics, logits, centroids)


def _validation_chose(state: FitState) -> str:
    """What the validation split chose ("" when nothing): its accuracy is optimistic when it chose."""
    record = state.history[0] if state.history else {}
    if "probe_chosen_on" in record:
        return "" if record["probe_chosen_on"] == "cross-validation" else "the probe's regularization"
    return "the epoch whose weights were kept" if len(state.history) > 1 else ""


def _write_bundle(run: TrainingRun, evaluation: FinalEvaluation, seconds: float) -> Bundle:
    state, config, preprocess = run.state, run.config, run.preprocess
    final = evaluation.metrics
    summary = {
        "val_accuracy": final["val"]["accuracy"],
        "val_chose": _validation_chose(state),
        "cv_accuracy": state.history[0].get("probe_cv_accuracy") if state.history else None,
        "test_accuracy": final["test"]["accuracy"] if "test" in final else None,
        "best_epoch": state.best_epoch,
        "epochs_run": state.epoch,
        "stopped_early": state.stopped_early,
    }
    description = {
        "architecture": config.model,
        "model_kwargs": run.model_kwargs,
        "params": count_parameters(run.model),
        "classes": run.dataset.classes,
        "input_size": preprocess.input_size,
        "in_chans": preprocess.channels,
        "preprocess": preprocess.to_dict(),
        "augmentation": run.augmentation.to_dict(),
        "calibration": evaluation.calibration,
        "pretrained": {**run.weights.describe(), "finetune": config.finetune} if run.weights else None,
        "training": {
            **config.to_dict(),
            "epochs": run.epochs,
            "lr": config.resolved_lr(run.world.size),
            "weight_decay": config.resolved_weight_decay(),
            "device": str(run.device),
        },  # fmt: skip
        "data": describe_data(run.dataset, run.profile, run.prepared),
        "time_budget": None if run.budget is None else run.budget.to_dict(),
        "advisor": run.advice,
        "distributed": {
            "processes": run.world.size,
            "backend": run.world.backend,
            "batch_per_process": config.batch_size,
            "global_batch": config.batch_size * run.world.size,
            "lr_rule": "peak lr per 256 images of the global batch (linear scaling)",
        },
        "metrics": summary,
        "seconds": round(seconds, 2),
    }
    metrics = {**final, "summary": summary, "history": state.history}
    save_bundle(run.output, run.model.cpu(), description, metrics, evaluation.centroids)
    return Bundle(
        run.output, run.model.eval(), preprocess, run.dataset.classes, description, metrics, evaluation.centroids
    )


def _write_report(run: TrainingRun, bundle: Bundle, evaluation: FinalEvaluation, console: Console) -> None:
    """report.html from what the run holds in memory; a failure here never loses the bundle."""
    split = "test" if len(evaluation.logits.get("test", ((), ()))[1]) else "val"
    try:
        gallery = mistakes_gallery(bundle, run.prepared.splits[split], *evaluation.logits[split])
        path = write_report(bundle, gallery)
    except Exception as error:  # noqa: BLE001 - the report is a view of a bundle already safely written
        console.print(f"warning: the report could not be written ({error}); the bundle is complete. "
                      f"Try: imgclf report {run.output}")  # fmt: skip
        return
    console.print(f"report: {path}")


def _announce(run: TrainingRun, console: Console) -> None:
    config = run.config
    if config.finetune == "linear-probe":
        console.print(
            f"model: {config.model} ({count_parameters(run.model):,} parameters) on {run.device}, "
            "frozen: a linear probe on its embeddings"
        )
        return
    epoch_source = "given"
    if not config.epochs:
        seen = run.epochs * len(run.prepared.splits["train"])
        low, high = AUTO_EPOCH_RANGE
        epoch_source = f"auto: {seen:,} training images seen; about {AUTO_EPOCH_IMAGES:,} within {low}-{high} epochs"
    if run.budget is not None:
        epoch_source = f"planned for the {run.budget.budget_s:g} s budget"
    console.print(
        f"model: {config.model} ({count_parameters(run.model):,} parameters) on {run.device}, "
        f"{run.epochs} epochs ({epoch_source}), {len(run.train_batches)} steps per epoch, "
        f"lr {config.resolved_lr(run.world.size):.3g} ({config.optimizer}, {config.schedule})"
    )
    console.print(f"augmentation: {run.augmentation.reason}")
    if run.world.distributed:
        console.print(
            f"distributed: {run.world.size} processes ({run.world.backend}), global batch {config.batch_size} x "
            f"{run.world.size} = {config.batch_size * run.world.size}; the peak lr scales with the global batch"
        )


def run_train(
    data: str,
    config: TrainConfig,
    output: str | Path | None = None,
    overwrite: bool = False,
    resume: bool | str = False,
    data_dir: str | Path | None = None,
    observer: TrainObserver | None = None,
    console: Console | None = None,
    force: bool = False,
    choose_model: bool = False,
) -> dict:
    """Train a model on DATA and write a bundle; returns the ``train --json`` result.
    ``resume``: True (or "always") continues the run in ``output``; "auto" continues it if it has
    a training state and starts a new run otherwise. ``choose_model``: the advisor picks the model
    (and transfer learning) for the time budget, inside that budget."""
    started = time.perf_counter()
    console = console or stderr_console()
    if resume == "auto":  # restart loops: continue when there is something to continue
        if output is None:
            raise UsageError("--resume auto needs --output (the folder whose run to continue)")
        resume = any((Path(output) / name).is_file() for name in (STATE_FILE, PREVIOUS_STATE_FILE))
    if output is None and (resume or not choose_model):  # else: named after the model the advisor picks
        output = _default_output(data, config.model)
    if output is not None:
        output = Path(output)
        _check_output(output, overwrite, bool(resume))
        check_writable(output)
    saved = _load_latest_state(output, console) if resume else None  # resume: True, "always" or False
    advice, scanned = None, None
    if saved is not None:
        config = TrainConfig.from_dict(saved["meta"]["config"])
        console.print(f"resuming {output} (configuration from its training state)")
    elif choose_model:
        scanned = scan_training_data(data, config, data_dir)  # read once: choosing, then training
        check_trainable(data, *scanned)
        config, advice = _automatic_config(data, config, data_dir, console, scanned, started)
    if output is None:
        output = _default_output(data, config.model)
    get_model_spec(config.model)  # an unknown model fails before any data is read
    device = resolve_device(config.device)
    world = init_from_environment(device)
    try:
        return _train_in_world(
            data, config, output, data_dir, observer, console, force, saved, world, device, started, advice, scanned
        )
    finally:
        shutdown(world)


def _automatic_config(data: str, config: TrainConfig, data_dir, console: Console, scanned, started: float):
    """No --model: for natural photos, a linear probe on the ImageNet backbone whose passes fit the
    run's time; otherwise, with --time-budget, the advisor's measured choice; otherwise the default
    model (``config.model``). Returns the configuration to train and the advice (or None)."""
    from imgclf.advise.photos import plan_photo_transfer
    from imgclf.runners.advise import data_facts

    dataset, profile = scanned
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if not distributed:
        facts = data_facts(dataset, profile.native_size, profile.channels, config.workers)
        mirror = config.probe_mirror and choose_augmentation(config.augment, dataset.kind, profile.channels, 224).flip
        sizes = {name: len(split) for name, split in dataset.splits.items()}
        device = resolve_device(config.device)
        plan = plan_photo_transfer(facts, sizes, config.time_budget, time.perf_counter() - started, mirror, device)
        if plan is not None:
            return _photo_config(data, config, plan, console)
    if config.time_budget is None:
        console.print(f"chosen: {config.model}, the default for data that are not natural photos "
                      f"(imgclf advise {data} measures the others)", highlight=False)  # fmt: skip
        if config.label_smoothing is None:  # the default model's recipe (see TrainConfig.label_smoothing)
            config = replace(config, label_smoothing=DEFAULT_MODEL_LABEL_SMOOTHING)
        return config, None
    if distributed:
        raise UsageError("with several processes give --model: the advisor runs in one process")
    return _advised_config(data, config, data_dir, console, scanned)


def _photo_config(data: str, config: TrainConfig, plan, console: Console) -> tuple[TrainConfig, dict]:
    options = {
        "model": plan.model,
        "pretrained": "default",
        "finetune": "linear-probe",
        "probe_mirror": plan.mirror_views,
    }
    command = f"imgclf train {data} --model {plan.model} --pretrained --finetune linear-probe"
    if plan.mirror_views:
        command += " --probe-mirror"
    if config.time_budget is not None:
        command += f" --time-budget {config.time_budget:g}s"
    console.print(f"chosen: {plan.model} from ImageNet weights, a linear probe on its features", highlight=False)
    for reason in plan.reasons:
        console.print(f"  - {reason}", highlight=False)
    advice = {"recommended": plan.model, "pretrained": True, "reasons": plan.reasons, "train_options": options,
              "train_command": command, "images_per_s": {k: round(v, 1) for k, v in plan.speeds.items()}}  # fmt: skip
    return replace(config, **options), advice


def _advised_config(data: str, config: TrainConfig, data_dir, console: Console, scanned) -> tuple[TrainConfig, dict]:
    """The advisor's model for this budget (it measures and probes within a small share of it),
    on the dataset as this run splits it (``scanned``)."""
    from imgclf.runners.advise import AdviseOptions, run_advise  # the advisor imports this module's peers

    options = AdviseOptions(device=config.device, time_budget=config.time_budget, seed=config.seed,
                            batch_size=config.batch_size, within_training=True)  # fmt: skip
    advice = run_advise(data, options, data_dir, console, scanned)
    if advice["recommended"] is None:  # every candidate ruled out (a handful of images): the default still trains
        console.print(f"advisor: no candidate fits ({advice['reasons'][-1]}); training the default {config.model}",
                      highlight=False)  # fmt: skip
        return config, None
    console.print(f"advisor: {advice['recommended']}" + (" from ImageNet weights" if advice["pretrained"] else ""))
    for reason in advice["reasons"]:
        console.print(f"  - {reason}", highlight=False)
    return replace(config, **advice["train_options"]), advice


def _plan_time_budget(run: TrainingRun, started: float, console: Console) -> None:
    """Measure this machine's speed on a copy of the model, then fit whole epochs to the budget."""
    budget, splits = run.config.time_budget, run.prepared.splits
    warmup = min(3.0, 0.04 * budget)  # seconds of training steps; a third of that evaluating
    train_speed = measure_train_speed(
        run.model, run.train_batches, run.preprocess, run.augmentation, run.device, warmup
    )
    eval_speed = measure_eval_speed(run.model, run.val_batches, run.preprocess, run.device, warmup / 3)
    final_images = min(len(splits["train"]), CENTROID_IMAGES) + sum(
        len(splits[n]) for n in ("val", "test") if n in splits
    )
    weight_bytes = sum(t.numel() * t.element_size() for t in run.model.state_dict().values())
    state_bytes = training_state_bytes(weight_bytes, run.config.optimizer, run.config.ema > 0)
    checkpoints = run.config.checkpoint_every_epoch and run.world.is_main
    run.budget = plan_epochs(
        budget,
        time.perf_counter() - started,
        len(run.train_batches) * run.config.batch_size,
        len(splits["val"]),
        final_images,
        train_speed,
        eval_speed,
        epoch_write_bytes=state_bytes if checkpoints else 0,
        final_write_bytes=weight_bytes,
    )
    run.epochs = run.budget.epochs
    run.stop_at = started + budget - run.budget.final_seconds
    dataset = run.dataset
    run.augmentation = choose_augmentation(
        run.config.augment, dataset.kind, run.preprocess.channels, run.preprocess.input_size, run.epochs
    )
    console.print(run.budget.describe())


def _join_checks(config: TrainConfig, world: World, saved: dict | None, device: torch.device) -> None:
    if not world.distributed:
        return
    if config.finetune == "linear-probe":
        raise UsageError("--finetune linear-probe runs in one process; start it without torchrun")
    if config.sync_batchnorm and device.type != "cuda":
        raise UsageError("--sync-batchnorm needs GPUs (NCCL); on CPUs leave it out")
    meta = saved["meta"] if saved else {}
    if meta.get("epoch_progress") and meta.get("world_size", 1) != world.size:
        raise UsageError(
            f"--resume: the training state was written inside an epoch by {meta.get('world_size', 1)} process(es); "
            f"resume it with that many, or from an epoch end"
        )


def _train_in_world(
    data, config, output, data_dir, observer, console, force, saved, world, device, started, advice, scanned
) -> dict:
    if not world.is_main:
        console = Console(file=io.StringIO())  # one voice: rank 0 speaks for the run
    if device.type == "cuda" and world.distributed:
        device = torch.device("cuda", world.local_rank)
    _join_checks(config, world, saved, device)
    if config.threads:
        torch.set_num_threads(config.threads)
    elif world.distributed and device.type == "cpu":  # processes on one machine share its cores
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world.local_size))
    run = _assemble(data, config, output, data_dir, console, world, device, scanned)
    run.advice = advice
    if config.preset == "fast" and run.preprocess.input_size > FAST_PRESET_MAX_SIZE:
        size = run.preprocess.input_size
        raise UsageError(f"--preset fast is for images of {FAST_PRESET_MAX_SIZE} px and below; these are trained at "
                         f"{size} px: choose a --model (imgclf advise {data} measures them)")  # fmt: skip
    if config.time_budget is not None and config.finetune != "linear-probe":  # a probe has no epochs to plan
        _plan_time_budget(run, started, console)
    if saved is not None:
        _check_same_data(run, saved["meta"], force)
    _announce(run, console)
    with contextlib.ExitStack() as held:
        if world.is_main:
            held.enter_context(output_lock(output))
        return _train_and_write(run, saved, observer, console, world, started)


def _train_and_write(run: TrainingRun, saved, observer, console: Console, world: World, started: float) -> dict:
    config, output = run.config, run.output
    if config.finetune == "linear-probe":
        _linear_probe(run, console)
    else:
        _run_stages(run, saved, observer or ProgressObserver(console), console)
    if not world.is_main:
        return {"bundle": str(output), "model": config.model, "epochs": run.state.epoch, "rank": world.rank}
    evaluation = _final_evaluation(run)
    bundle = _write_bundle(run, evaluation, time.perf_counter() - started)
    summary = bundle.metrics["summary"]
    _write_report(run, bundle, evaluation, console)
    seconds = time.perf_counter() - started
    honesty = ""
    if summary["test_accuracy"] is None:
        chose = summary["val_chose"]
        honesty = f" (optimistic: it chose {chose})" if chose else " (nothing was chosen on it)"
    console.print(
        f"test accuracy {_format(summary['test_accuracy'])}, val accuracy "
        f"{_format(summary['val_accuracy'])}{honesty}; bundle written to {output} in {seconds:.1f}s"
    )
    result = {
        "bundle": str(output),
        "model": config.model,
        "epochs": run.state.epoch,
        "seconds": round(seconds, 2),
        "metrics": {key: summary[key] for key in ("val_accuracy", "test_accuracy", "cv_accuracy", "val_chose")},
    }
    if run.advice is not None:
        result["advisor"] = {key: run.advice[key] for key in ("recommended", "pretrained", "reasons")}
    if config.time_budget is not None:
        console.print(
            f"time budget: used {seconds:.1f} s of {config.time_budget:g} s ({seconds / config.time_budget:.0%})"
        )
        result["time_budget"] = {
            "budget_s": config.time_budget,
            "planned_epochs": run.budget.epochs if run.budget else None,
            "replanned_epochs": run.budget.replanned_epochs if run.budget else None,
            "used_s": round(seconds, 2),
        }
    return result


def _format(value: float | None) -> str:
    return "n/a (no test split)" if value is None else f"{value:.4f}"
