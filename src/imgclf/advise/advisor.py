"""The advisor: profile the data and the machine, measure every candidate here, apply the
rules, probe the most promising, recommend one. ``imgclf advise`` prints it; ``imgclf train
--time-budget`` without ``--model`` trains what it recommends."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numpy as np
from rich.console import Console

from imgclf.advise.facts import DataFacts, data_facts, hardware_facts
from imgclf.advise.measure import Candidate, measure_candidate, static_facts
from imgclf.advise.probe import probe_pretrained, probe_scratch, stratified_indices
from imgclf.advise.rules import (
    MEASURED_RULES,
    Budgets,
    choose,
    epochs_in_budget,
    probe_order,
    rejection_reasons,
    resnet_verdict,
    too_slow_to_train,
    transfer_is_promising,
)
from imgclf.data.dataset import Dataset, SplitPolicy, load_dataset
from imgclf.data.prepare import DataProfile, Preprocess, TensorSplit, decode_split, profile_dataset
from imgclf.engine.runtime import resolve_device
from imgclf.errors import DataError
from imgclf.models import choose_input_size, get_model_spec, list_models
from imgclf.text import stderr_console
from imgclf.transfer import load_pretrained, pretrained_available

__all__ = ["DEFAULT_CANDIDATES", "AdviseOptions", "run_advise"]

# One or two of each family, small-image designs included (ModelSpec.advisor_candidate).
DEFAULT_CANDIDATES = tuple(name for name in list_models() if get_model_spec(name).advisor_candidate)
PLANNING_BUDGET_S = 600.0  # without --time-budget the advisor plans a 10-minute run
PROBE_SHARE = 0.2  # of the time budget, shared by the probes
PROBE_TOTAL_RANGE = (30.0, 180.0)  # seconds all probes of `imgclf advise` take together
MIN_PROBE_SECONDS, MAX_PROBE_SECONDS = 5.0, 60.0
PROBE_TRAIN_IMAGES, PROBE_VAL_IMAGES = 4_000, 1_000  # stratified subsets the probes share
# Inside `train --time-budget`, the advisor's measuring and probing take at most this share.
TRAIN_ADVISOR_SHARE = 0.12


@dataclass
class AdviseOptions:
    device: str = "auto"
    time_budget: float | None = None
    latency_ms: float | None = None
    batch: int = 1
    max_params: int | None = None
    interpretable: bool = False
    models: tuple[str, ...] = DEFAULT_CANDIDATES
    probes: int = 4  # short training runs: the most promising, and the fastest
    seed: int = 0
    batch_size: int = 128  # the training batch the memory estimate is for
    within_training: bool = False  # called by `train`: spend at most TRAIN_ADVISOR_SHARE of the budget

    def budgets(self) -> Budgets:
        return Budgets(
            self.time_budget or PLANNING_BUDGET_S, self.latency_ms, self.batch, self.max_params, self.interpretable
        )


def _candidates(options: AdviseOptions, data: DataFacts) -> list[Candidate]:
    candidates = []
    for name in options.models:
        spec = get_model_spec(name)
        candidates.append(Candidate(name, spec.family, choose_input_size(spec, data.native_size)))
    if data.photos:  # the note's transfer case: ImageNet weights for photos, where they are here
        for name in options.models:
            if pretrained_available(name):
                weights_size = 224  # the ImageNet input size every built-in source was trained at
                candidates.append(Candidate(name, get_model_spec(name).family, weights_size, pretrained="ImageNet"))
    return candidates


class _Timing:
    """How long the advisor may spend measuring and probing."""

    def __init__(self, options: AdviseOptions, count: int):
        budget = options.time_budget or PLANNING_BUDGET_S
        if options.within_training:
            share = budget * TRAIN_ADVISOR_SHARE
            self.training_s = min(2.0, max(0.3, share * 0.4 / max(1, count)))
            self.latency_s = 0.0 if options.latency_ms is None else self.training_s
            self.measure_total_s = share * 0.5
            self.probe_total_s = share * 0.5
        else:
            self.training_s, self.latency_s = 2.0, 1.5
            self.measure_total_s = float("inf")
            low, high = PROBE_TOTAL_RANGE
            self.probe_total_s = min(high, max(low, budget * PROBE_SHARE))


def _measure_all(candidates, data: DataFacts, options: AdviseOptions, hardware, device, timing, console) -> None:
    """Count every candidate, then time them from the cheapest (FLOPs) up; inside `train`, the
    heavier ones left when the advisor's share of the budget is spent are not timed."""
    budgets = options.budgets()
    for candidate in candidates:
        batch = min(options.batch_size, data.train_images)  # a run's batch never exceeds its data
        static_facts(candidate, 3 if candidate.pretrained else data.channels, data.classes, batch)
        if not candidate.rejected_because:  # else it cannot even run at this size
            candidate.rejected_because = rejection_reasons(candidate, data, budgets, hardware)
    started, too_slow = time.perf_counter(), None
    for candidate in sorted(candidates, key=lambda c: c.flops):
        if candidate.rejected_because and (options.within_training or candidate.params == 0):
            continue  # out already: not worth the budget's seconds (or it cannot run)
        if options.within_training and (skip := _skip_timing(candidate, too_slow, started, timing, budgets)):
            candidate.rejected_because.append(skip)
            continue
        in_chans = 3 if candidate.pretrained else data.channels
        console.print(f"measuring {candidate.label} at {candidate.input_size} px", highlight=False)
        onnx_seconds = timing.latency_s if options.latency_ms is not None else 0.0  # deploying: both runtimes
        measure_candidate(candidate, in_chans, data.classes, options.batch_size, options.batch, device,
                          timing.latency_s, timing.training_s, onnx_seconds)  # fmt: skip
        candidate.rejected_because += rejection_reasons(candidate, data, budgets, hardware, MEASURED_RULES)
        if too_slow is None and too_slow_to_train(candidate, data, budgets, hardware):
            too_slow = candidate
        epochs = epochs_in_budget(candidate, data, budgets)
        candidate.epochs_in_budget = None if epochs is None else round(epochs, 1)


def _skip_timing(candidate: Candidate, too_slow: Candidate | None, started: float, timing, budgets) -> str | None:
    """Inside `train`: why a candidate is not worth timing (candidates come cheapest first)."""
    if too_slow is not None and not candidate.pretrained:
        return (f"not timed: more FLOPs per image than {too_slow.label}, already too slow to train in the "
                f"{budgets.time_budget_s:g} s budget")  # fmt: skip
    if time.perf_counter() - started > timing.measure_total_s:
        return f"not timed: the advisor's share of the {budgets.time_budget_s:g} s budget went to lighter candidates"
    return None


class _ProbeData:
    """Stratified subsets of train and val, decoded once per preprocessing."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.decoded = dataset, {}
        per_class = math.ceil(PROBE_TRAIN_IMAGES / dataset.num_classes)
        val_per_class = math.ceil(PROBE_VAL_IMAGES / dataset.num_classes)
        self.splits = {
            "train": dataset.splits["train"].subset(stratified_indices(np.asarray(dataset.splits["train"].targets),
                                                                       per_class, seed)),
            "val": dataset.splits["val"].subset(stratified_indices(np.asarray(dataset.splits["val"].targets),
                                                                   val_per_class, seed)),
        }  # fmt: skip

    def get(self, preprocess: Preprocess) -> tuple[TensorSplit, TensorSplit]:
        key = (preprocess.input_size, preprocess.channels, preprocess.resize_size)
        if key not in self.decoded:
            self.decoded[key] = tuple(decode_split(self.splits[name], preprocess)[0] for name in ("train", "val"))
        return self.decoded[key]


def _probe(candidate: Candidate, probe_data: _ProbeData, data: DataFacts, seconds: float, device, seed: int) -> None:
    started = time.perf_counter()
    dataset = probe_data.dataset
    if candidate.pretrained:
        weights = load_pretrained(candidate.name)
        preprocess = weights.preprocess(candidate.input_size)
        train, val = probe_data.get(preprocess)
        accuracy = probe_pretrained(candidate, weights, train, val, preprocess, data.classes, device, seed)
    else:
        channels = data.channels
        train, val = probe_data.get(Preprocess.unnormalized(candidate.input_size, channels))
        accuracy = probe_scratch(candidate, train, val, dataset.kind, dataset.classes, seconds, device, seed)
    candidate.probe_accuracy = round(accuracy, 4)
    candidate.probe_images = len(train)
    candidate.probe_seconds = round(time.perf_counter() - started, 1)


def _run_probes(candidates, data: DataFacts, dataset: Dataset, options: AdviseOptions, timing, device, console):
    ordered = probe_order(candidates, data, options.budgets())
    chosen = ordered[: max(0, options.probes - 1)]
    # The fastest model always gets a probe: when it ties, speed decides (the note's last case).
    fastest = min(ordered, key=lambda c: (c.latency_ms_p50 or float("inf"), c.flops), default=None)
    if options.probes > 0 and fastest is not None:
        chosen += [fastest] if fastest not in chosen else ordered[len(chosen) : len(chosen) + 1]
    pretrained = [c for c in candidates if c.pretrained and not c.rejected_because and c not in chosen]
    if pretrained and transfer_is_promising(data):
        chosen.append(pretrained[0])
    seconds = min(MAX_PROBE_SECONDS, timing.probe_total_s / max(1, len(chosen)))
    if not chosen:
        return
    if seconds < MIN_PROBE_SECONDS:
        console.print(f"probes: none (the budget leaves {timing.probe_total_s:.0f} s for them)")
        return
    probe_data = _ProbeData(dataset, options.seed)
    for candidate in chosen:
        console.print(f"probing {candidate.label} for up to {seconds:.0f} s", highlight=False)
        _probe(candidate, probe_data, data, seconds, device, options.seed)


def _train_options(pick: Candidate | None, budgets: Budgets) -> dict | None:
    if pick is None:
        return None
    options = {"model": pick.name}
    if pick.pretrained:
        # The mode its probe measured: a linear probe on the frozen ImageNet features.
        options.update(pretrained="default", finetune="linear-probe")
    return options


def _train_command(data: str, options: dict | None, budget_s: float | None) -> str | None:
    if options is None:
        return None
    parts = ["imgclf", "train", data, "--model", options["model"]]
    if options.get("pretrained"):
        parts += ["--pretrained", "--finetune", options["finetune"]]
    if budget_s:
        parts += ["--time-budget", f"{budget_s:g}s"]
    return " ".join(parts)


def run_advise(
    data: str,
    options: AdviseOptions,
    data_dir=None,
    console: Console | None = None,
    scanned: tuple[Dataset, DataProfile] | None = None,
) -> dict:
    """Recommend a model for DATA on this machine; the ``advise --json`` result. ``scanned``: the
    dataset and its profile when the caller has read them already (``train`` without ``--model``)."""
    started = time.perf_counter()
    console = console or stderr_console()
    device = resolve_device(options.device)
    if scanned is None:
        dataset = load_dataset(data, SplitPolicy(options.seed), data_dir)
        profile = profile_dataset(dataset)
    else:
        dataset, profile = scanned
    if len(dataset.splits["train"]) == 0:
        raise DataError(f"{data}: no usable training images ({len(profile.skipped)} skipped)")
    facts = data_facts(dataset, profile.native_size, profile.channels)
    hardware = hardware_facts(device)
    console.print(f"data: {facts.describe()}", highlight=False)
    console.print(f"hardware: {hardware.describe()}", highlight=False)
    candidates = _candidates(options, facts)
    timing = _Timing(options, len(candidates))
    _measure_all(candidates, facts, options, hardware, device, timing, console)
    _run_probes(candidates, facts, dataset, options, timing, device, console)
    budgets = options.budgets()
    choice = choose(candidates, facts, budgets)
    pick = choice.candidate
    reasons = [f"data: {facts.describe()}", *choice.reasons]
    if pick is not None:
        reasons += _pick_facts(pick, budgets)
    train_options = _train_options(pick, budgets)
    return {
        "recommended": pick.name if pick else None,
        "pretrained": bool(pick and pick.pretrained),
        "reasons": reasons,
        "resnet": resnet_verdict(candidates, pick, facts),
        "train_options": train_options,
        "train_command": _train_command(data, train_options, options.time_budget),
        "candidates": [candidate.to_dict() for candidate in candidates],
        "data": facts.to_dict(),
        "hardware": hardware.to_dict(),
        "budgets": {**asdict(budgets), "time_budget_given": options.time_budget is not None},
        "seconds": round(time.perf_counter() - started, 2),
    }


def _pick_facts(pick: Candidate, budgets: Budgets) -> list[str]:
    """The recommended model's measured numbers, for the reasons list."""
    facts = [f"{pick.label}: {pick.params:,} parameters, {pick.flops / 1e6:,.1f} MFLOPs per image at "
             f"{pick.input_size} px, trains {pick.train_images_per_s:,.0f} images/s here"]  # fmt: skip
    if pick.epochs_in_budget is not None:
        facts.append(f"{pick.epochs_in_budget:.1f} epochs fit in {budgets.time_budget_s:g} s of training")
    runtime, p50, p95 = pick.best_latency()
    if p50 is not None:
        limit = f" (budget {budgets.latency_ms:g} ms)" if budgets.latency_ms is not None else ""
        facts.append(
            f"latency at batch {budgets.latency_batch} in {runtime}: p50 {p50:.2f} ms, p95 {p95:.2f} ms{limit}"
        )
        if runtime == "ONNX Runtime":
            facts.append("deploy it with imgclf export (ONNX Runtime), where it meets the budget")
    return facts
