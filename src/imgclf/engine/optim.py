"""Optimizer and learning-rate schedule builders."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["StepSchedule", "create_optimizer", "create_schedule", "lr_multiplier", "stretch_schedule"]


def _decay_groups(parameters: list[nn.Parameter], weight_decay: float, lr: float) -> list[dict]:
    """Weight decay on conv/linear weights only: norms and biases (ndim <= 1) are not decayed,
    as in "Bag of Tricks for Image Classification" (arXiv:1812.01187), section 3.1."""
    decay, no_decay = [], []
    for parameter in parameters:
        if parameter.requires_grad:
            (no_decay if parameter.ndim <= 1 else decay).append(parameter)
    groups = [
        {"params": decay, "weight_decay": weight_decay, "lr": lr},
        {"params": no_decay, "weight_decay": 0.0, "lr": lr},
    ]
    return [group for group in groups if group["params"]]


def create_optimizer(
    model: nn.Module,
    name: str,
    lr: float,
    weight_decay: float,
    momentum: float = 0.9,
    lr_scale: dict[str, float] | None = None,
) -> torch.optim.Optimizer:
    """SGD (Nesterov) or AdamW over the trainable parameters. ``lr_scale`` multiplies the rate
    per parameter group of the model interface, e.g. {"stem": 0.1, "stages": 0.3, "head": 1.0}."""
    if lr_scale is None:
        groups = _decay_groups(list(model.parameters()), weight_decay, lr)
    else:
        groups = [
            group
            for group_name, parameters in model.parameter_groups().items()
            for group in _decay_groups(parameters, weight_decay, lr * lr_scale[group_name])
        ]
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=momentum > 0)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}")


def lr_multiplier(step: int, total_steps: int, schedule: str, warmup_fraction: float) -> float:
    """Learning rate at ``step`` as a fraction of the peak: linear warmup from 0.1% of the peak
    (or none), then cosine decay to 0 ("cosine", "onecycle") or a constant."""
    warmup_steps = int(round(total_steps * warmup_fraction))
    if step < warmup_steps:
        return max(1e-3, (step + 1) / warmup_steps)
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


@dataclass
class StepSchedule:
    """The learning-rate multiplier at each step; ``total_steps`` may change while training (a
    time budget re-planned after its first epoch): ``stretch`` then lays the rest of the decay
    from the current multiplier down to 0 over the new length, so the rate never rises again
    after its peak (re-setting ``total_steps`` alone would move the cosine back towards its start:
    4.29e-3 -> 5.41e-3 from one epoch to the next was seen that way)."""

    total_steps: int
    schedule: str
    warmup_fraction: float
    # After a stretch: the step it happened at and the multiplier there (the decay restarts from it).
    rebased_step: int | None = None
    rebased_multiplier: float = 1.0

    def __call__(self, step: int) -> float:
        if self.rebased_step is None or step < self.rebased_step or self.schedule == "constant":
            return lr_multiplier(step, self.total_steps, self.schedule, self.warmup_fraction)
        progress = (step - self.rebased_step) / max(1, self.total_steps - self.rebased_step)
        return self.rebased_multiplier * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    def stretch(self, step: int, total_steps: int) -> None:
        """From ``step`` on, the schedule has ``total_steps`` steps in all. Inside the warm-up the
        curve is only lengthened (it still rises to its peak, then decays)."""
        if self.rebased_step is None and step < int(round(self.total_steps * self.warmup_fraction)):
            self.total_steps = total_steps
            return
        self.rebased_multiplier, self.rebased_step = self(step), step
        self.total_steps = max(total_steps, step + 1)


def create_schedule(
    optimizer: torch.optim.Optimizer, total_steps: int, schedule: str, warmup_fraction: float, last_step: int = -1
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step schedule; ``last_step`` resumes it (the optimizer must hold ``initial_lr``)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, StepSchedule(total_steps, schedule, warmup_fraction), last_epoch=last_step
    )


def stretch_schedule(scheduler: torch.optim.lr_scheduler.LambdaLR, total_steps: int) -> None:
    """Lay the rest of ``scheduler``'s curve over ``total_steps`` steps in all, from the step it
    has reached, never rising after its peak (``StepSchedule.stretch``)."""
    for multiplier in scheduler.lr_lambdas:
        multiplier.stretch(scheduler.last_epoch, total_steps)
