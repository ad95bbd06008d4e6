"""Your own photos, no model named: which ImageNet backbone to embed them with, for the time a run
may take on this machine.

On a folder of a few hundred photos a logistic regression on a frozen ImageNet network's features
(a linear probe) beats every network trained from scratch, and on a CPU it beats fine-tuning for
the same minutes: measured on three photo folders (cats and dogs, a Caltech-101 subset, clothing)
a small CNN from scratch stayed near chance after minutes, a minute of full fine-tuning fell to
17-58% where the probe reached 93-100%. The cost of a probe is one forward pass per image (two per
training image when mirror images are added as views), so the backbone is chosen by measured
speed: the most accurate EfficientNet-Lite whose passes fit in the run's time, else a smaller one.
Lite2 (ImageNet top-1 77.6%) gave the clothing folder 84.4% against Lite0's 82.7% (75.1%), and
the Caltech-101 subset 99.8% against 99.4%, at half the speed (``bench/photos.sh``, BENCHMARKS.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from imgclf.advise.facts import DataFacts
from imgclf.advise.rules import transfer_is_promising
from imgclf.data.batches import eval_batch_size, make_batches
from imgclf.data.prepare import Preprocess, TensorSplit
from imgclf.data.split import capped_val_per_class
from imgclf.engine.budget import measure_eval_speed
from imgclf.models import create_model
from imgclf.transfer import pretrained_available

__all__ = ["DEFAULT_RUN_SECONDS", "PhotoPlan", "plan_photo_transfer"]

# Most accurate on ImageNet first (top-1 77.6%, 76.7%, 75.1%).
BACKBONES = ("efficientnet_lite2", "efficientnet_lite1", "efficientnet_lite0")
INPUT_SIZES = {"efficientnet_lite0": 224, "efficientnet_lite1": 240, "efficientnet_lite2": 260}
# Without --time-budget a run on photos is planned to end within this many seconds.
DEFAULT_RUN_SECONDS = 240.0
# Of the time left after start-up, the share the backbone's forward passes may take; the rest
# pays for decoding, the cross-validated regression, the final evaluation, the report and what
# the estimate misses.
EMBEDDING_SHARE = 0.6
# Where not even the cheapest backbone fits that share, it is still taken if its passes fit this
# share: a network trained from scratch instead is far worse on a few hundred photos a class
# (CIFAR-10, 100 a class, --time-budget 1m with the 10,000 test images to evaluate: Lite0's probe
# 0.7171 in 54 s; when 1,500 more validation images tipped its 35 s of passes over the 60%,
# ResNet-20 from scratch 0.4358).
TIGHT_EMBEDDING_SHARE = 0.8
SPEED_SECONDS = 0.6  # timed forward passes per backbone measured
# Small photos are enlarged at most this many times, not to the backbone's ImageNet size: an
# enlarged 32 px photo holds nothing a 128 px one does not. CIFAR-10 (32 px), 100 training photos
# per class, Lite2 probe tested on 10,000 photos: 0.7329 at 128 px, 0.7357 at 260 px, for a
# quarter of the pixels to embed (137 s against 724 s for the whole run). Photos of 65 px and
# more are unchanged (not measured below the ImageNet size).
MAX_ENLARGEMENT = 4
MIN_INPUT_SIZE = 128


# Where not even the cheapest backbone's passes over every photo fit, the probe learns from this
# many training photos a class at least, the most that fit: a probe on a share of the photos
# beats a network from scratch in the same minutes (CIFAR-10, 100 a class: the Lite2 probe 0.7329,
# a 4-minute run from scratch on all 45,000 far below it). Below this, too few to be worth it.
MIN_TRAIN_PER_CLASS = 20


@dataclass
class PhotoPlan:
    model: str
    mirror_views: bool
    estimated_seconds: float
    input_size: int  # px: the backbone's ImageNet size, or less for small photos (``input_size_for``)
    speeds: dict[str, float] = field(default_factory=dict)  # images/s measured here, per backbone
    reasons: list[str] = field(default_factory=list)
    train_per_class: int | None = None  # the training photos a class the probe learns from (None: all)


def input_size_for(name: str, native_size: int) -> int:
    """The input size to embed photos of ``native_size`` px (median shorter side) with ``name``:
    its ImageNet size, or, for small photos, ``MAX_ENLARGEMENT`` times theirs (a multiple of 32,
    at least ``MIN_INPUT_SIZE``) where that is smaller."""
    enlarged = -(-native_size * MAX_ENLARGEMENT // 32) * 32
    return min(INPUT_SIZES[name], max(MIN_INPUT_SIZE, enlarged))


def _forward_speed(name: str, device: torch.device, size: int) -> float:
    """Forward passes per second of ``name`` at ``size`` px, with random weights (the weights do
    not change the speed) on random pixels, at the batch the run embeds with."""
    model = create_model(name, num_classes=2, in_chans=3, input_size=size).to(device, memory_format=torch.channels_last)
    batch = eval_batch_size(size)
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch * 3, 3, size, size), dtype=torch.uint8, generator=generator)
    split = TensorSplit(images, torch.zeros(len(images), dtype=torch.int64), [str(i) for i in range(len(images))])
    preprocess = Preprocess(size, 3, (0.5,) * 3, (0.25,) * 3)
    # One more untimed pass first: the first backbone timed in a process ran at 60% of its speed
    # after measure_eval_speed's own untimed batch (Lite0 at 128 px: 148 images/s, then 236-258
    # when timed again), enough to leave a CIFAR-10 minute without a probe.
    with torch.no_grad():
        model.eval()(preprocess.normalize(images[:batch].to(device)))
    return measure_eval_speed(model, make_batches(split, batch, workers=0), preprocess, device, SPEED_SECONDS)


def plan_photo_transfer(
    facts: DataFacts,
    split_sizes: dict[str, int],
    budget_s: float | None,
    elapsed_s: float,
    mirror_allowed: bool,
    device: torch.device,
    val_fraction: float = 0.1,
) -> PhotoPlan | None:
    """The backbone and views for a linear probe on these photos, or None where this path does
    not apply (not natural photos, thousands of images per class, no offline weights, or not even
    Lite0's passes over ``MIN_TRAIN_PER_CLASS`` training photos a class fit in the time). Where
    Lite0's passes over all of them do not fit, the probe takes the most training photos a class
    that do (``train_per_class``; the validation split shrinks with them, see ``val_fraction``)."""
    available = [name for name in BACKBONES if pretrained_available(name)]
    if not transfer_is_promising(facts) or facts.native_size < 32 or not available:
        return None
    run_s = budget_s or DEFAULT_RUN_SECONDS
    embedding_s = max(0.0, (run_s - elapsed_s) * EMBEDDING_SHARE)
    train, others = split_sizes.get("train", 0), sum(n for name, n in split_sizes.items() if name != "train")
    speeds: dict[str, float] = {}
    for name in reversed(available):  # cheapest first: stop measuring once a larger one cannot fit
        speeds[name] = _forward_speed(name, device, input_size_for(name, facts.native_size))
        if (train + others) / speeds[name] > embedding_s:
            break
    options = [
        (name, mirror)
        for name in available
        if name in speeds
        for mirror in ([True, False] if mirror_allowed else [False])
    ]
    for name, mirror in options:
        passes = train * (2 if mirror else 1) + others
        seconds = passes / speeds[name]
        if seconds <= embedding_s:
            size = input_size_for(name, facts.native_size)
            reasons = _reasons(facts, name, mirror, seconds, run_s, speeds, budget_s, size)
            return PhotoPlan(name, mirror, seconds, size, speeds, reasons)
    cheapest = available[-1]
    seconds = (train + others) / speeds[cheapest]
    if seconds <= max(0.0, run_s - elapsed_s) * TIGHT_EMBEDDING_SHARE:
        size = input_size_for(cheapest, facts.native_size)
        reasons = _reasons(facts, cheapest, False, seconds, run_s, speeds, budget_s, size)
        reasons.append("the time is tight: the passes take most of it, and the run may end a little late")
        return PhotoPlan(cheapest, False, seconds, size, speeds, reasons)
    return _capped_plan(facts, split_sizes, cheapest, speeds, embedding_s, run_s, budget_s, val_fraction)


def _capped_plan(
    facts: DataFacts,
    split_sizes: dict[str, int],
    name: str,
    speeds: dict[str, float],
    embedding_s: float,
    run_s: float,
    budget_s: float | None,
    val_fraction: float,
) -> PhotoPlan | None:
    """Lite0's probe on the most training photos a class whose passes fit in ``embedding_s``, as
    ``--max-train-per-class`` takes them (the validation split capped in proportion, at least
    ``CAPPED_VAL_PER_CLASS`` a class); None where not even ``MIN_TRAIN_PER_CLASS`` fit."""
    classes, test = max(1, facts.classes), sum(n for key, n in split_sizes.items() if key not in ("train", "val"))

    def passes(cap: int) -> int:
        val = min(split_sizes.get("val", 0), classes * capped_val_per_class(cap, val_fraction))
        return min(split_sizes.get("train", 0), classes * cap) + val + test

    low, high = MIN_TRAIN_PER_CLASS, max(MIN_TRAIN_PER_CLASS, max(facts.class_counts, default=0))
    if passes(low) / speeds[name] > embedding_s:
        return None
    while low < high:  # the largest cap whose passes fit
        middle = (low + high + 1) // 2
        low, high = (middle, high) if passes(middle) / speeds[name] <= embedding_s else (low, middle - 1)
    seconds = passes(low) / speeds[name]
    size = input_size_for(name, facts.native_size)
    reasons = _reasons(facts, name, False, seconds, run_s, speeds, budget_s, size, embedded="the photos it takes")
    everything = sum(split_sizes.values()) / speeds[name]
    reasons.insert(2, f"the probe learns from {low:,} training photos a class (of up to {max(facts.class_counts):,}): "
                      f"embedding every photo would take {everything:.0f} s, over what the run's time allows; a "
                      "longer --time-budget takes more")  # fmt: skip
    return PhotoPlan(name, False, seconds, size, speeds, reasons, train_per_class=low)


def _reasons(facts, name, mirror, seconds, run_s, speeds, budget_s, size, embedded="every photo") -> list[str]:
    limit = f"the {budget_s:g} s budget" if budget_s else f"the {run_s:g} s a run without --time-budget is planned for"
    speed_text = ", ".join(f"{n} {s:,.0f}" for n, s in sorted(speeds.items()))
    views = (
        " and the mirror image of each training photo (kept only if cross-validation says they help)" if mirror else ""
    )
    reasons = [
        f"natural photos, about {facts.images_per_class:,.0f} per class: features learned on ImageNet beat a network "
        "trained from scratch on this few; a linear probe on them is the first answer, in seconds, and fine-tuning "
        "from it follows only where the time left pays for enough epochs",
        f"{name}: the most accurate ImageNet backbone whose forward passes fit in {limit} "
        f"(images/s measured here: {speed_text}); about {seconds:.0f} s to embed {embedded}{views}",
        "the logistic regression's strength is chosen by cross-validation on the training photos, so the "
        "validation accuracy is measured on photos nothing was chosen on",
    ]
    if size < INPUT_SIZES[name]:
        reasons.insert(2, f"{size} px input, not its ImageNet {INPUT_SIZES[name]}: the photos are "
                          f"{facts.native_size} px, and enlarging them more than {MAX_ENLARGEMENT}x adds nothing to "
                          "see, only time")  # fmt: skip
    return reasons
