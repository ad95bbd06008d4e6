"""A bundle on one split of DATA: decoded with the bundle's preprocessing, its classes mapped
onto the model's, and scored as training scored it (``imgclf evaluate``, the report, export's
accuracy check)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console

from imgclf.bundle import Bundle
from imgclf.data.batches import eval_batch_size, make_batches
from imgclf.data.dataset import MULTI_LABEL, load_dataset
from imgclf.data.prepare import TensorSplit, prepare_splits
from imgclf.engine.evaluate import calibrated_metrics, predict_logits
from imgclf.engine.label_sets import label_set_metrics, logit_thresholds
from imgclf.engine.runtime import resolve_device
from imgclf.errors import DataError
from imgclf.text import stderr_console

__all__ = ["SplitEvaluation", "bundle_metrics", "evaluate_split"]


@dataclass
class SplitEvaluation:
    """A bundle's predictions on one split of DATA: metrics, the decoded split and its logits."""

    metrics: dict
    split: TensorSplit
    logits: torch.Tensor
    targets: torch.Tensor


def evaluate_split(
    bundle: Bundle,
    data: str,
    split: str = "test",
    data_dir: str | Path | None = None,
    device: str = "auto",
    console: Console | None = None,
    tta: str = "none",
) -> SplitEvaluation:
    """Decode one split of DATA with the bundle's preprocessing and run the model over it
    (``tta="flip"``: averaged with the mirrored image)."""
    console = console or stderr_console()
    dataset = load_dataset(data, bundle.description.split_policy(), data_dir)
    if (dataset.task == MULTI_LABEL) != bundle.description.multi_label:
        raise DataError(f"{data}: {dataset.task} data, but the model is {bundle.description.task}")
    if split not in dataset.splits:
        have = ", ".join(sorted(dataset.splits))
        raise DataError(f"{data}: has no {split!r} split (it has {have}); choose one with --split")
    fingerprint = bundle.description.split_fingerprint(split)
    if (
        bundle.description.data_source == dataset.name
        and fingerprint
        and fingerprint != dataset.split_info["fingerprints"][split]
    ):
        console.print(f"warning: the {split} split of {data} differs from the one this model was trained with")
    missing = sorted(set(dataset.classes) - set(bundle.classes))
    if missing:
        raise DataError(f"{data}: class {missing[0]!r} is not one the model knows ({', '.join(bundle.classes)})")
    dataset.splits = {split: dataset.splits[split]}
    prepared = prepare_splits(dataset, bundle.preprocess, in_memory=True, workers=2)
    for file, reason in prepared.skipped:
        console.print(f"skipped {file}: {reason}")
    # Map the data's class indices onto the model's (the data may lack some classes).
    remap = torch.tensor([bundle.classes.index(name) for name in dataset.classes])
    target_split = prepared.splits[split]
    target_split.targets = _remapped(target_split.targets, remap, len(bundle.classes))
    torch_device = resolve_device(device)
    logits, targets = predict_logits(
        bundle.model.to(torch_device, memory_format=torch.channels_last),
        make_batches(target_split, eval_batch_size(bundle.preprocess.input_size)),
        bundle.preprocess,
        torch_device,
        flip_tta=tta == "flip",
    )
    bundle.model.cpu()
    metrics = bundle_metrics(bundle, logits, targets)
    metrics["split"] = split
    metrics["tta"] = tta
    metrics["skipped"] = [{"file": file, "reason": reason} for file, reason in prepared.skipped]
    return SplitEvaluation(metrics, target_split, logits, targets)


def _remapped(targets: torch.Tensor, remap: torch.Tensor, classes: int) -> torch.Tensor:
    """The data's targets in the model's class (label) order."""
    if targets.dim() == 1:
        return remap[targets]
    mapped = torch.zeros(len(targets), classes, dtype=targets.dtype)
    mapped[:, remap] = targets
    return mapped


def bundle_metrics(bundle: Bundle, logits: torch.Tensor, targets: torch.Tensor) -> dict:
    """The metrics of these logits as the bundle decides: calibrated metrics at its temperature,
    or for a multi-label bundle the label-set metrics at its per-label thresholds."""
    description = bundle.description
    if not description.multi_label:
        return calibrated_metrics(logits, targets, bundle.classes, description.temperature)
    thresholds, temperatures = description.label_thresholds, description.label_temperatures
    metrics = label_set_metrics(logits, targets, bundle.classes, logit_thresholds(thresholds, temperatures,
                                                                                   len(bundle.classes)))  # fmt: skip
    return {**metrics, "thresholds": thresholds, "temperatures": temperatures}
