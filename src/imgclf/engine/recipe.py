"""From a training configuration to the objects one stage trains with.

A real run, the time budget's speed measurement and the advisor's probes all build their
``FitSetup`` here, so what is measured and compared is what a run trains (the same optimizer,
schedule, loss, weight average, clipping and augmentation).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from imgclf.config import TrainConfig
from imgclf.data.augment import Augmentation
from imgclf.data.prepare import Preprocess
from imgclf.distributed import World
from imgclf.engine.label_sets import bce_loss, is_multi_label
from imgclf.engine.loop import FitSetup, Recipe, Runtime, weight_average
from imgclf.engine.optim import create_optimizer, create_schedule
from imgclf.engine.plan import Stage, first_training_stage
from imgclf.models import ImageClassifier
from imgclf.transfer import freeze_for_finetuning

__all__ = ["fit_setup", "loss_function", "trial_setup"]


def loss_function(config: TrainConfig, targets: torch.Tensor, num_classes: int, device) -> nn.Module:
    """Cross-entropy with the configured label smoothing; with ``class_weights="balanced"`` each
    class weighted by n / (classes x its count). Multi-label targets (one 0/1 row per image):
    binary cross-entropy, "balanced" weighting each label's positives (``engine.label_sets``)."""
    if is_multi_label(targets):
        return bce_loss(targets, config.resolved_label_smoothing(), config.class_weights == "balanced", device)
    weights = None
    if config.class_weights == "balanced":
        counts = torch.bincount(targets.cpu(), minlength=num_classes).float().clamp_min(1)
        weights = (counts.sum() / (num_classes * counts)).to(device)
    return nn.CrossEntropyLoss(weight=weights, label_smoothing=config.resolved_label_smoothing())


def fit_setup(
    config: TrainConfig,
    model: ImageClassifier,
    stage: Stage,
    steps_per_epoch: int,
    preprocess: Preprocess,
    augmentation: Augmentation,
    train_targets: torch.Tensor,
    num_classes: int,
    device: torch.device,
    generator: torch.Generator,
    world: World | None = None,
) -> FitSetup:
    """The optimizer, schedule, loss and wrappers of ``stage`` for ``model``. A pretrained model
    (``config.pretrained``) has its backbone frozen or not as the stage says, and its backbone's
    batch norms kept in eval mode either way."""
    world = world or World()
    pretrained = config.pretrained is not None
    frozen = freeze_for_finetuning(model, stage.train_backbone, stage.freeze_early) if pretrained else []
    optimizer = create_optimizer(
        model, config.optimizer, stage.lr, config.resolved_weight_decay(), config.momentum, stage.lr_scale
    )
    scheduler = create_schedule(optimizer, stage.epochs * steps_per_epoch, config.schedule,
                                config.resolved_warmup_fraction())  # fmt: skip
    forward_model = None
    if world.distributed:  # wrapped per stage: DDP registers the parameters that train now
        device_ids = [device.index] if device.type == "cuda" else None
        forward_model = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    if config.compile:  # the training step only; evaluation and the bundle use the plain module
        forward_model = torch.compile(forward_model if forward_model is not None else model)
    recipe = Recipe(
        optimizer,
        scheduler,
        loss_function(config, train_targets, num_classes, device),
        augmentation,
        grad_clip=config.grad_clip,
        frozen_modules=frozen,
        ema=weight_average(model, config.ema) if config.ema > 0 else None,
    )
    runtime = Runtime(model, preprocess, device, generator, amp=config.amp, forward_model=forward_model, world=world)
    return FitSetup(recipe, runtime)


def trial_setup(
    config: TrainConfig,
    model: ImageClassifier,
    preprocess: Preprocess,
    augmentation: Augmentation,
    train_targets: torch.Tensor,
    num_classes: int,
    device: torch.device,
    steps_per_epoch: int,
) -> FitSetup:
    """The first stage's setup on a copy of ``model``, with a generator of its own: for timing the
    run's training steps without touching its weights or its random numbers."""
    trial = copy.deepcopy(model)
    stage = first_training_stage(config, epochs=2)
    generator = torch.Generator().manual_seed(config.seed)
    return fit_setup(config, trial, stage, steps_per_epoch, preprocess, augmentation, train_targets, num_classes,
                     device, generator)  # fmt: skip
