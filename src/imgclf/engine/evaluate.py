"""Evaluation shared by training (val/test every epoch) and ``imgclf evaluate``, so both give
exactly the same numbers for the same bundle and data."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support
from torch import nn

from imgclf.data.prepare import Preprocess
from imgclf.engine.label_sets import is_multi_label, label_set_metrics
from imgclf.explain.calibration import expected_calibration_error, reliability_bins
from imgclf.models.inference import folded_for_inference

__all__ = [
    "calibrated_metrics",
    "classification_metrics",
    "most_confused",
    "output_loss",
    "predict_logits",
    "predict_outputs",
]

MOST_CONFUSED_LIMIT = 10


@torch.no_grad()
def predict_outputs(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    preprocess: Preprocess,
    device: torch.device,
    amp: bool = False,
    embeddings: bool = False,
    flip_tta: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Run the model in eval mode over uint8 batches: float32 logits, targets and (when asked)
    the L2-normalized embeddings before the last layer, all on the CPU. ``flip_tta``: the logits
    are the mean of the image's and its left-right mirror's (test-time augmentation; only for
    data whose class survives a mirror, as flip augmentation assumes)."""
    was_training = model.training
    model.eval()
    original, model = model, folded_for_inference(model)
    all_logits, all_targets, all_embeddings = [], [], []
    use_amp = amp and device.type == "cuda"
    for images, targets in batches:
        if len(images) == 0:
            continue
        inputs = preprocess.normalize(images.to(device, non_blocking=True))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            features = model.forward_features(inputs)
            if embeddings:
                logits, pooled = model.forward_head_and_embedding(features)
                pooled = torch.flatten(pooled, 1).float()
                all_embeddings.append(nn.functional.normalize(pooled, dim=1).cpu())
            else:
                logits = model.forward_head(features)
            if flip_tta:
                logits = (logits + model(torch.flip(inputs, dims=(3,)))) / 2
        all_logits.append(logits.float().cpu())
        all_targets.append(targets.cpu())
    original.train(was_training)
    if not all_logits:
        return torch.empty(0, 0), torch.empty(0, dtype=torch.int64), torch.empty(0, 0) if embeddings else None
    return torch.cat(all_logits), torch.cat(all_targets), torch.cat(all_embeddings) if embeddings else None


def predict_logits(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    preprocess: Preprocess,
    device: torch.device,
    amp: bool = False,
    flip_tta: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the model in eval mode over uint8 batches; float32 logits and targets on the CPU."""
    logits, targets, _ = predict_outputs(model, batches, preprocess, device, amp, flip_tta=flip_tta)
    return logits, targets


def output_loss(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """The mean loss of these logits: cross-entropy, or binary cross-entropy on multi-label targets."""
    if is_multi_label(targets):
        return float(nn.functional.binary_cross_entropy_with_logits(logits.float(), targets.float()))
    return float(nn.functional.cross_entropy(logits, targets))


def _top_k_accuracy(logits: torch.Tensor, targets: torch.Tensor, k: int) -> float:
    top = logits.topk(k, dim=1).indices
    return float((top == targets.view(-1, 1)).any(dim=1).float().mean())


def most_confused(confusion: np.ndarray, classes: list[str], limit: int = MOST_CONFUSED_LIMIT) -> list[dict]:
    """The largest off-diagonal cells of a confusion matrix: which class is taken for which."""
    pairs = [
        {"true": classes[t], "predicted": classes[p], "count": int(confusion[t, p])}
        for t in range(len(classes))
        for p in range(len(classes))
        if t != p and confusion[t, p] > 0
    ]
    return sorted(pairs, key=lambda pair: -pair["count"])[:limit]


def classification_metrics(logits: torch.Tensor, targets: torch.Tensor, classes: list[str]) -> dict:
    """Accuracy, top-5 (for more than 5 classes), loss, per-class P/R/F1 and the confusion matrix;
    on multi-label targets, ``label_sets.label_set_metrics`` at probability 0.5."""
    if is_multi_label(targets):
        return label_set_metrics(logits, targets, classes)
    if len(targets) == 0:
        return {
            "accuracy": None,
            "top5_accuracy": None,
            "loss": None,
            "num_images": 0,
            "per_class": {},
            "confusion_matrix": [],
            "most_confused": [],
            "classes": classes,
        }
    predictions = logits.argmax(dim=1).numpy()
    truth = targets.numpy()
    labels = np.arange(len(classes))
    precision, recall, f1, support = precision_recall_fscore_support(truth, predictions, labels=labels, zero_division=0)
    per_class = {
        name: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(classes)
    }
    confusion = confusion_matrix(truth, predictions, labels=labels)
    return {
        "accuracy": float((predictions == truth).mean()),
        "top5_accuracy": _top_k_accuracy(logits, targets, 5) if len(classes) > 5 else None,
        "loss": float(nn.functional.cross_entropy(logits, targets)),
        "num_images": int(len(truth)),
        "per_class": per_class,
        "confusion_matrix": confusion.tolist(),
        "most_confused": most_confused(confusion, classes),
        "classes": list(classes),
    }


def calibrated_metrics(logits: torch.Tensor, targets: torch.Tensor, classes: list[str], temperature: float) -> dict:
    """``classification_metrics`` plus calibration: ECE of the probabilities ``predict`` gives
    (softmax of logits / temperature), ECE without the temperature, and the reliability bins."""
    metrics = classification_metrics(logits, targets, classes)
    metrics["temperature"] = temperature
    if len(targets) == 0:
        return {**metrics, "ece": None, "ece_uncalibrated": None, "reliability": []}
    calibrated = torch.softmax(logits.float() / temperature, dim=1)
    metrics["ece"] = expected_calibration_error(calibrated, targets)
    metrics["ece_uncalibrated"] = expected_calibration_error(torch.softmax(logits.float(), dim=1), targets)
    metrics["reliability"] = reliability_bins(calibrated, targets)
    return metrics
