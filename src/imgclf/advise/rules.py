"""The advisor's decision rules, in one place.

The note ends with "when is ResNet not the right choice?" and answers with six cases. Each case is
a rule below, applied to measured numbers (``Candidate``) and the data's profile (``DataFacts``):

1. small or simple datasets: a large network overfits        -> ``too_large_for_data``
   (and a 224-px design collapses small images to 1 pixel)   -> ``collapses_small_images``
2. real-time or resource-limited use: light, fast models     -> ``too_slow_to_answer``,
                                                                ``too_many_parameters``, ``too_big_for_memory``
3. the model must be interpretable                           -> ``hard_to_interpret``
4. transfer learning (not) needed                            -> ``transfer_is_promising``
5. training time is short: a lighter model                   -> ``too_slow_to_train``, ``epochs_in_budget``
6. speed matters more than accuracy: among models within
   ACCURACY_TOLERANCE of the best, the fastest wins            -> ``choose``

A rule returns the reason a candidate is out (a sentence with the numbers), or None.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from imgclf.advise.facts import DataFacts, HardwareFacts
from imgclf.advise.measure import Candidate
from imgclf.engine.budget import WRITE_BYTES_PER_S, training_state_bytes
from imgclf.models import get_model_spec

__all__ = [
    "ACCURACY_TOLERANCE",
    "Budgets",
    "Choice",
    "choose",
    "epochs_in_budget",
    "probe_order",
    "rejection_reasons",
    "resnet_verdict",
    "transfer_is_promising",
]

# 1. Parameters per training image above which a network trained from scratch overfits. ResNet-50
#    on digits' 1,437 training images has 17,800; ResNet-18 on CIFAR-10's 45,000 has 260.
OVERFIT_PARAMS_PER_IMAGE = 1_000
# 2. Share of the machine's memory a training run may take (the rest: data, the system).
MEMORY_SHARE = 0.5
# 3. A plain stack (no residual or parallel branches) of at most this many weight layers (VGG-16's
#    depth) can be read layer by layer, and Grad-CAM on its last map points at regions (which
#    models are plain stacks: ModelSpec.plain_stack).
MAX_INTERPRETABLE_LAYERS = 16
# 4. Below this many images per class, features learned on ImageNet photos beat training from
#    scratch on natural photos (and above it a scratch model has data enough to learn its own).
PLENTIFUL_PER_CLASS = 5_000
# 5. Epochs a scratch model needs to converge (a one-cycle schedule of fewer is mostly warm-up);
#    fine-tuning pretrained weights needs one. TARGET_EPOCHS: what a budget should allow for the
#    model to be worth its size. The advisor plans training in this share of the time budget.
MIN_EPOCHS_SCRATCH, MIN_EPOCHS_PRETRAINED, TARGET_EPOCHS = 3, 1, 10
TRAINING_SHARE = 0.85
# 6. Probe accuracies this close to the best count as equal; then speed decides.
ACCURACY_TOLERANCE = 0.01


@dataclass(frozen=True)
class Budgets:
    """What the user asked for; None: no limit."""

    time_budget_s: float | None = None
    latency_ms: float | None = None
    latency_batch: int = 1
    max_params: int | None = None
    interpretable: bool = False


def _millions(count: int) -> str:
    return f"{count / 1e6:.1f}M" if count >= 1e5 else f"{count:,}"


def epochs_in_budget(candidate: Candidate, data: DataFacts, budgets: Budgets) -> float | None:
    """Epochs the measured training speed allows in the budget's training share, each with its
    checkpoint written as ``train --time-budget`` plans it (weights, best weights, momentum)."""
    if budgets.time_budget_s is None or not candidate.train_images_per_s:
        return None
    checkpoint_bytes = training_state_bytes(4 * candidate.params)  # float32 weights, SGD as train defaults to
    epoch_seconds = data.train_images / candidate.train_images_per_s + checkpoint_bytes / WRITE_BYTES_PER_S
    return budgets.time_budget_s * TRAINING_SHARE / epoch_seconds


def too_large_for_data(candidate: Candidate, data: DataFacts, budgets: Budgets, hardware: HardwareFacts):
    per_image = candidate.params / max(1, data.train_images)
    if candidate.pretrained or per_image <= OVERFIT_PARAMS_PER_IMAGE:
        return None
    return (
        f"{_millions(candidate.params)} parameters for {data.train_images:,} training images ({per_image:,.0f} per "
        f"image, over {OVERFIT_PARAMS_PER_IMAGE:,}): would overfit a dataset this small"
    )


def collapses_small_images(candidate: Candidate, data: DataFacts, budgets: Budgets, hardware: HardwareFacts):
    if candidate.pretrained or candidate.gradcam_size > 1 or candidate.input_size >= 64:
        return None
    designed = get_model_spec(candidate.name).input_size
    return (
        f"designed for {designed} px images: its downsampling leaves a 1x1 map of a {candidate.input_size} px "
        "input, so its last layers see no spatial layout"
    )


def too_slow_to_answer(candidate: Candidate, data: DataFacts, budgets: Budgets, hardware: HardwareFacts):
    """The faster of the runtimes measured (PyTorch, ONNX Runtime) decides, by its p95."""
    runtime, p50, p95 = candidate.best_latency()
    if budgets.latency_ms is None or p95 is None or p95 <= budgets.latency_ms:
        return None
    return (
        f"latency p95 {p95:.2f} ms at batch {budgets.latency_batch} (p50 {p50:.2f} ms, {runtime}, the faster "
        f"runtime here), over the {budgets.latency_ms:g} ms budget"
    )


def too_many_parameters(candidate: Candidate, data: DataFacts, budgets: Budgets, hardware: HardwareFacts):
    if budgets.max_params is None or candidate.params <= budgets.max_params:
        return None
    return f"{candidate.params:,} parameters, over --max-params {budgets.max_params:,}"


def too_big_for_memory(candidate: Candidate, data: DataFacts, budgets: Budgets, hardware: HardwareFacts):
    available_gb = hardware.gpu_memory_gb if hardware.gpu_memory_gb else hardware.memory_gb
    limit_mb = available_gb * 1024 * MEMORY_SHARE
    if candidate.memory_mb <= limit_mb:
        return None
    return f"training needs about {candidate.memory_mb:,.0f} MiB, over half of this machine's {available_gb:.0f} GiB"


def hard_to_interpret(candidate: Candidate, data: DataFacts, budgets: Budgets, hardware: HardwareFacts):
    if not budgets.interpretable:
        return None
    plain = get_model_spec(candidate.name).plain_stack
    if plain and candidate.weight_layers <= MAX_INTERPRETABLE_LAYERS:
        return None
    shape = "a plain stack" if plain else "residual or parallel branches"
    return (
        f"--interpretable: {shape} of {candidate.weight_layers} weight layers; a plain stack of at most "
        f"{MAX_INTERPRETABLE_LAYERS} can be read layer by layer"
    )


def too_slow_to_train(candidate: Candidate, data: DataFacts, budgets: Budgets, hardware: HardwareFacts):
    epochs = epochs_in_budget(candidate, data, budgets)
    needed = MIN_EPOCHS_PRETRAINED if candidate.pretrained else MIN_EPOCHS_SCRATCH
    if epochs is None or epochs >= needed:
        return None
    return (
        f"trains {candidate.train_images_per_s:,.0f} images/s here: {epochs:.1f} epochs of {data.train_images:,} "
        f"images fit in the {budgets.time_budget_s:g} s budget, {needed} needed"
    )


Rule = Callable[[Candidate, DataFacts, Budgets, HardwareFacts], "str | None"]
# Rules that need only counted facts (parameters, FLOPs, map sizes) come first: a candidate they
# reject is not worth timing when time is short.
COUNTED_RULES: tuple[Rule, ...] = (too_large_for_data, collapses_small_images, too_many_parameters,
                                   too_big_for_memory, hard_to_interpret)  # fmt: skip
MEASURED_RULES: tuple[Rule, ...] = (too_slow_to_answer, too_slow_to_train)


def rejection_reasons(
    candidate: Candidate, data: DataFacts, budgets: Budgets, hardware: HardwareFacts, rules=COUNTED_RULES
) -> list[str]:
    return [reason for rule in rules if (reason := rule(candidate, data, budgets, hardware))]


def transfer_is_promising(data: DataFacts) -> bool:
    """Natural photos without a large labelled set: ImageNet features carry over."""
    return data.photos and data.images_per_class < PLENTIFUL_PER_CLASS


def probe_order(candidates: list[Candidate], data: DataFacts, budgets: Budgets) -> list[Candidate]:
    """The candidates still in, most promising first: transfer on few natural photos; then models
    that get TARGET_EPOCHS in the budget, the most computation per image first (capacity the
    budget can pay for); then the rest by epochs they get."""

    def key(candidate: Candidate):
        transfer_first = bool(candidate.pretrained) and transfer_is_promising(data)
        epochs = epochs_in_budget(candidate, data, budgets)
        enough = epochs is None or epochs >= TARGET_EPOCHS
        return (not transfer_first, not enough, -candidate.flops if enough else -(epochs or 0))

    return sorted((c for c in candidates if not c.rejected_because), key=key)


@dataclass
class Choice:
    candidate: Candidate | None
    reasons: list[str]


def _speed(candidate: Candidate) -> float:
    p50 = candidate.best_latency()[1]
    return p50 if p50 is not None else float(candidate.flops)


def choose(candidates: list[Candidate], data: DataFacts, budgets: Budgets) -> Choice:
    """The recommendation: among candidates still in, the best probe accuracy, where probes ran;
    models within ACCURACY_TOLERANCE of it count as equal and the fastest of them wins. Without
    probes, the first in ``probe_order``."""
    ordered = probe_order(candidates, data, budgets)
    if not ordered:
        return Choice(None, ["no candidate meets the budgets: " + _closest_miss(candidates)])
    probed = [c for c in ordered if c.probe_accuracy is not None]
    if not probed:
        pick = ordered[0]
        return Choice(pick, [_unprobed_reason(pick, data, budgets)])
    best = max(c.probe_accuracy for c in probed)
    equal = [c for c in probed if c.probe_accuracy >= best - ACCURACY_TOLERANCE]
    pick = min(equal, key=_speed)
    reasons = [f"probe: {pick.label} reached {pick.probe_accuracy:.1%} validation accuracy in "
               f"{pick.probe_seconds:.0f} s on {pick.probe_images:,} training images"]  # fmt: skip
    others = [c for c in equal if c is not pick]
    if others:
        names = ", ".join(f"{c.label} {c.probe_accuracy:.1%}" for c in others)
        reasons.append(f"within {ACCURACY_TOLERANCE:.0%} of it ({names}); the note's last case, speed over "
                       f"accuracy: {pick.label} is the fastest of them")  # fmt: skip
    return Choice(pick, reasons)


def _unprobed_reason(pick: Candidate, data: DataFacts, budgets: Budgets) -> str:
    if pick.pretrained and transfer_is_promising(data):
        return "natural photos with few images per class: start from ImageNet weights (no time for probes)"
    epochs = epochs_in_budget(pick, data, budgets)
    if epochs is None:
        return f"{pick.label}: the most computation per image among the candidates left (no time budget, no probes)"
    if epochs >= TARGET_EPOCHS:
        return f"{pick.label}: the most computation per image that still trains {epochs:.0f} epochs in the budget"
    return f"{pick.label}: the most epochs in the budget ({epochs:.1f})"


def _closest_miss(candidates: list[Candidate]) -> str:
    measured = [c for c in candidates if c.rejected_because]
    if not measured:
        return "no candidates"
    closest = min(measured, key=lambda c: len(c.rejected_because))
    return f"closest: {closest.label}: {'; '.join(closest.rejected_because)}"


def _would_need(reasons: list[str]) -> list[str]:
    needs = []
    for reason in reasons:
        if "would overfit" in reason:
            needs.append("many more training images")
        elif "designed for 224 px" in reason or "cannot take" in reason:
            needs.append("larger images")
        elif "latency" in reason:
            needs.append("a looser latency limit")
        elif "epochs" in reason or "not timed" in reason:
            needs.append("a longer time budget")
        elif "--interpretable" in reason:
            needs.append("no need to read the model layer by layer")
        elif "parameters, over" in reason or "MiB" in reason:
            needs.append("more memory or a larger parameter limit")
    return list(dict.fromkeys(needs))


def resnet_verdict(candidates: list[Candidate], pick: Candidate | None, data: DataFacts) -> str:
    """The note's question, answered for this data: is ResNet the right choice, and if not, why
    and what would change the answer."""
    if pick is not None and pick.family.startswith("resnet"):
        return (
            f"ResNet is the right choice here: {data.train_images:,} training images are enough for "
            f"{_millions(pick.params)} parameters, the budget trains it fully, and its residual blocks (3x3 conv, "
            "ReLU, 3x3 conv, plus the identity) let the deeper network converge where a plain stack would degrade"
        )
    resnets = [c for c in candidates if c.family.startswith("resnet")]
    out = [c for c in resnets if c.rejected_because]
    lines = [f"{c.label}: {c.rejected_because[0]}" for c in out[:3]]
    kept = [c for c in resnets if not c.rejected_because and c.probe_accuracy is not None]
    needs = _would_need([reason for c in out for reason in c.rejected_because])
    if kept and pick is not None and pick.probe_accuracy is not None:
        best = max(kept, key=lambda c: c.probe_accuracy)
        if best.probe_accuracy >= pick.probe_accuracy - ACCURACY_TOLERANCE:  # a tie: speed decided
            lines.append(f"{best.label} reached {best.probe_accuracy:.1%} in its probe, within 1 point of "
                         f"{pick.label}'s {pick.probe_accuracy:.1%}, and {pick.label} is faster")  # fmt: skip
        else:
            lines.append(f"{best.label} reached {best.probe_accuracy:.1%} in its probe against "
                         f"{pick.probe_accuracy:.1%}")  # fmt: skip
        needs.append("data on which its depth pays off in accuracy")
    text = "ResNet is not the choice here" + (": " + "; ".join(lines) if lines else "")
    return text + (f". It would be with {', '.join(needs)}" if needs else "")
