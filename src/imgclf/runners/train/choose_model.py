"""No ``--model``: imgclf chooses what to train. Natural photos get a linear probe on the ImageNet
backbone whose passes fit the run's time; other data the default small CNN, or with a time
budget the advisor's measured choice."""

from __future__ import annotations

import os
import time
from dataclasses import replace

from rich.console import Console

from imgclf.advise.advisor import AdviseOptions, run_advise
from imgclf.advise.facts import data_facts
from imgclf.advise.photos import DEFAULT_RUN_SECONDS, INPUT_SIZES, plan_photo_transfer
from imgclf.config import TrainConfig
from imgclf.data.augment import choose_augmentation
from imgclf.engine.runtime import resolve_device
from imgclf.errors import UsageError
from imgclf.runners.train.data import apply_train_cap

__all__ = ["DEFAULT_MODEL_LABEL_SMOOTHING", "automatic_config"]

DEFAULT_MODEL_LABEL_SMOOTHING = 0.1  # measured on digits over seeds 0-4: BENCHMARKS.md
# Fine-tuning a pretrained backbone on a few hundred photos: more, smaller steps per epoch than the
# default batch of 128 gives (600 photos: 18 steps an epoch instead of 5).
FINETUNE_BATCH = 32


def automatic_config(data: str, config: TrainConfig, data_dir, console: Console, scanned, started: float):
    """No --model: for natural photos, a linear probe on the ImageNet backbone whose passes fit the
    run's time; otherwise, with --time-budget, the advisor's measured choice; otherwise the default
    model (``config.model``). Returns the configuration to train and the advice (or None)."""
    dataset, profile = scanned
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if not distributed:
        facts = data_facts(dataset, profile.native_size, profile.channels, config.workers)
        mirror = config.probe_mirror and choose_augmentation(config.augment, dataset.kind, profile.channels, 224).flip
        sizes = {name: len(split) for name, split in dataset.splits.items()}
        device = resolve_device(config.device)
        plan = plan_photo_transfer(facts, sizes, config.time_budget, time.perf_counter() - started, mirror, device,
                                   val_fraction=config.val_fraction)  # fmt: skip
        if plan is not None and plan.train_per_class is not None:  # all the photos do not fit: a share of them
            if config.max_train_per_class is None:
                config = replace(config, max_train_per_class=plan.train_per_class)
                apply_train_cap(dataset, config)
            else:  # the user's own cap stands (capping it again would draw a share --resume cannot draw again)
                plan = replace(plan, train_per_class=None)
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
    """The anytime recipe on the backbone the plan chose: its linear probe first, then fine-tuning
    from the probe's head for as long as the run's time (``--time-budget``, else
    ``DEFAULT_RUN_SECONDS``) allows and it may pay, the better of the two kept."""
    options = {
        "model": plan.model,
        "pretrained": "default",
        "finetune": "anytime",
        "probe_mirror": plan.mirror_views,
        "time_budget": config.time_budget or DEFAULT_RUN_SECONDS,
    }
    if config.input_size is None and plan.input_size < INPUT_SIZES[plan.model]:  # small photos
        options["input_size"] = plan.input_size
    if config.batch_size == TrainConfig.batch_size:  # not given: fine-tuning's batch
        options["batch_size"] = FINETUNE_BATCH
    command = f"imgclf train {data} --model {plan.model} --pretrained --finetune anytime"
    command += f" --time-budget {options['time_budget']:g}s"
    if "batch_size" in options:
        command += f" --batch-size {FINETUNE_BATCH}"
    if "input_size" in options:
        command += f" --input-size {plan.input_size}"
    if plan.mirror_views:
        command += " --probe-mirror"
    if plan.train_per_class is not None:
        command += f" --max-train-per-class {plan.train_per_class}"
    console.print(f"chosen: {plan.model} from ImageNet weights, a linear probe on its features, then fine-tuning "
                  "where the time left and the probe say it pays", highlight=False)  # fmt: skip
    for reason in plan.reasons:
        console.print(f"  - {reason}", highlight=False)
    advice = {"recommended": plan.model, "pretrained": True, "reasons": plan.reasons, "train_options": options,
              "train_command": command, "images_per_s": {k: round(v, 1) for k, v in plan.speeds.items()}}  # fmt: skip
    return replace(config, **options), advice


def _advised_config(data: str, config: TrainConfig, data_dir, console: Console, scanned) -> tuple[TrainConfig, dict]:
    """The advisor's model for this budget (it measures and probes within a small share of it),
    on the dataset as this run splits it (``scanned``)."""
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
