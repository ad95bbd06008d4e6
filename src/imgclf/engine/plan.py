"""A run's plan, decided once before training: how many epochs, in which stages, with which
batch and augmentation, and (with a time budget) when training must stop.

``RunPlan`` is immutable: a re-plan after the first epochs (a time budget that now knows the
real speed) is a new plan, never an edit of the one the loop is running with.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from imgclf.config import TrainConfig
from imgclf.data.augment import Augmentation
from imgclf.engine.budget import BudgetPlan

__all__ = ["RunPlan", "Stage", "auto_epochs", "first_training_stage", "plan_stages", "training_batch"]

# Auto epochs: enough to see about this many training images, within [3, 30] epochs.
AUTO_EPOCH_IMAGES, AUTO_EPOCH_RANGE = 30_000, (3, 30)
# A last, partial batch is dropped (the order is reshuffled each epoch) only when it holds a
# single image, which batch norm cannot train on, or at most this share of the training set.
DROP_LAST_MAX_SHARE = 0.1
# Two-stage fine-tuning: the learning-rate multipliers of the second stage (earlier layers hold
# more general features: change them less).
DISCRIMINATIVE_LR = {"stem": 0.1, "stages": 0.3, "head": 1.0}


@dataclass(frozen=True)
class RunPlan:
    epochs: int
    augmentation: Augmentation
    budget: BudgetPlan | None = None  # with --time-budget: the measured plan
    stop_at: float | None = None  # time.perf_counter() value after which no training step starts

    def replanned(self, epochs: int, stop_at: float | None, budget: BudgetPlan) -> RunPlan:
        return replace(self, epochs=epochs, stop_at=stop_at, budget=budget)


@dataclass(frozen=True)
class Stage:
    name: str
    start_epoch: int
    end_epoch: int
    train_backbone: bool
    lr: float
    lr_scale: dict[str, float] | None = None
    probe: bool = False  # no epochs: a logistic regression on the frozen backbone's embeddings sets the head
    freeze_early: bool = False  # pretrained: the stem and first stages stay frozen (transfer.early_layers)

    @property
    def epochs(self) -> int:
        return self.end_epoch - self.start_epoch


def plan_stages(config: TrainConfig, epochs: int, processes: int = 1) -> list[Stage]:
    """From scratch or full fine-tuning: one stage. Head only: one stage with the backbone frozen.
    Two-stage ("LP-FT", Kumar et al. 2022, "Fine-Tuning can Distort Pretrained Features and
    Underperform Out-of-Distribution"): the head set by a linear probe first (the best head the
    frozen features allow, in seconds), then every epoch trains the layers after the stem and the
    first quarter of the stages (those stay frozen) at a tenth of the rate, earlier layers lower.
    On 1,000 CIFAR-10 images (EfficientNet-Lite0, 128 px, 9 epochs, seeds 0-2) that tested 80.26%
    on average against 79.93% with every layer trained, in epochs of about 13 s instead of 20 s on
    2 CPU cores (BENCHMARKS.md); four more epochs added nothing."""
    lr = config.resolved_lr(processes)
    if config.finetune == "head":
        return [Stage("head only (backbone and its batch norms frozen)", 0, epochs, False, lr)]
    if config.starts_from_probe:
        layers = "all layers" if config.unfreeze_all else "all layers but the stem and the first stages"
        return [
            Stage("stage 1: the head from a linear probe on the frozen backbone", 0, 0, False, lr, probe=True),
            Stage(
                f"stage 2: {layers}, lower rates for earlier layers",
                0,
                epochs,
                True,
                lr / 10,
                DISCRIMINATIVE_LR,
                freeze_early=not config.unfreeze_all,
            ),
        ]
    return [Stage("all layers", 0, epochs, True, lr)]


def first_training_stage(config: TrainConfig, epochs: int, processes: int = 1) -> Stage:
    """The first stage that takes optimizer steps (two-stage's linear-probe stage takes none):
    what a speed measurement or a short probe of this configuration should run."""
    return next(stage for stage in plan_stages(config, epochs, processes) if not stage.probe)


def training_batch(batch_size: int, train_images: int, processes: int = 1) -> tuple[int, bool]:
    """The batch a run trains with (never more than each process's share of the training
    images) and whether each epoch drops its last, partial batch."""
    per_process = max(1, train_images // max(1, processes))
    batch = max(1, min(batch_size, per_process))
    rest = per_process % batch
    drop_last = rest > 0 and (rest == 1 or rest <= DROP_LAST_MAX_SHARE * per_process)
    return batch, drop_last


def auto_epochs(train_images: int) -> int:
    """Epochs that show the model about ``AUTO_EPOCH_IMAGES`` training images, within the range."""
    low, high = AUTO_EPOCH_RANGE
    return int(min(high, max(low, math.ceil(AUTO_EPOCH_IMAGES / max(1, train_images)))))
