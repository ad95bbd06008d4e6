"""The learning-rate range test (Smith 2017, "Cyclical Learning Rates for Training Neural
Networks", section 3.3; fastai's ``lr_find``): train a copy of the model for a few dozen steps
while the rate grows exponentially from tiny to huge, and read off where the loss falls fastest
and where it blows up. The run's own training step is used (optimizer, per-group rates, loss,
augmentation), so the answer is for the run as it will train.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from imgclf.data.batches import Batches
from imgclf.engine.budget import repeat_batches
from imgclf.engine.loop import FitSetup, training_step

__all__ = ["LrFinding", "lr_range_test"]

SMOOTHING = 0.9  # the loss curve is an exponential moving average (bias-corrected), as fastai's
STOP_FACTOR = 4.0  # stop once the smoothed loss is this many times its lowest: the rate diverges


@dataclass
class LrFinding:
    """The rates tried (the peak group's), the smoothed loss after each, and the suggestion."""

    rates: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    suggestion: float | None = None
    steepest: float | None = None  # where the smoothed loss falls fastest (per factor of the rate)
    lowest: float | None = None  # the rate at the lowest smoothed loss
    stopped: str = ""  # why the test ended before its last step ("" when it did not)

    def to_dict(self) -> dict:
        return {"suggestion": self.suggestion, "steepest": self.steepest, "lowest": self.lowest,
                "stopped": self.stopped, "rates": self.rates, "losses": self.losses}  # fmt: skip


def lr_range_test(
    setup: FitSetup, batches: Batches, start: float = 1e-7, end: float = 10.0, steps: int = 100
) -> LrFinding:
    """Train ``setup`` (a copy of the run's model: its weights change) for up to ``steps`` steps,
    the peak rate going from ``start`` to ``end`` geometrically; each parameter group keeps its
    share of the peak (lower rates for earlier layers in two-stage fine-tuning)."""
    if not 0 < start < end:
        raise ValueError(f"the range test needs 0 < start < end, not {start} and {end}")
    peak = max(group["lr"] for group in setup.recipe.optimizer.param_groups) or 1.0
    shares = [group["lr"] / peak for group in setup.recipe.optimizer.param_groups]
    setup.recipe.scheduler = _NoSchedule()  # the test sets the rates itself
    setup.runtime.model.train()
    for module in setup.recipe.frozen_modules:
        module.eval()
    finding, average, lowest = LrFinding(), 0.0, math.inf
    rng_state = torch.get_rng_state()  # dropout draws from it: leave the caller's random numbers alone
    try:
        for step, (images, targets) in enumerate(repeat_batches(batches)):
            if step >= steps:
                break
            rate = start * (end / start) ** (step / max(1, steps - 1))
            for group, share in zip(setup.recipe.optimizer.param_groups, shares):
                group["lr"] = rate * share
            loss = float(training_step(setup, images, targets)[0].detach())
            if not math.isfinite(loss):
                finding.stopped = f"the loss stopped being a number at {rate:.2e}"
                break
            average = SMOOTHING * average + (1 - SMOOTHING) * loss
            smoothed = average / (1 - SMOOTHING ** (step + 1))
            finding.rates.append(rate)
            finding.losses.append(smoothed)
            lowest = min(lowest, smoothed)
            if step > 0 and smoothed > STOP_FACTOR * lowest:
                finding.stopped = f"the loss rose past {STOP_FACTOR:g}x its lowest at {rate:.2e}"
                break
    finally:
        torch.set_rng_state(rng_state)
    _suggest(finding)
    return finding


def _suggest(finding: LrFinding) -> None:
    """The suggestion: a tenth of the rate at the lowest loss (Smith's and fastai's rule of thumb:
    the lowest point is already at the edge of divergence). The steepest descent is reported
    beside it, found after the first tenth of the curve (the moving average is still settling
    there: a cats-and-dogs test put its steepest point at the very first rate)."""
    if len(finding.losses) < 3:
        return
    losses, rates = np.asarray(finding.losses), np.asarray(finding.rates)
    lowest = int(np.argmin(losses))
    finding.lowest = float(rates[lowest])
    finding.suggestion = finding.lowest / 10
    settled = max(1, len(losses) // 10)
    if lowest > settled:
        slopes = np.gradient(losses, np.log(rates))
        finding.steepest = float(rates[settled + int(np.argmin(slopes[settled : lowest + 1]))])


class _NoSchedule:
    """Stands in for the scheduler the training step advances."""

    def step(self) -> None:
        pass
