"""Evaluation shared by training (val/test every epoch) and ``imgclf evaluate``, so both give
exactly the same numbers for the same bundle and data."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support
from torch import nn

from imgclf.data.prepare import Preprocess

__all__ = ["classification_metrics", "predict_logits"]


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    preprocess: Preprocess,
    device: torch.device,
    amp: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the model in eval mode over uint8 batches; float32 logits and targets on the CPU."""
    was_training = model.training
    model.eval()
    all_logits, all_targets = [], []
    use_amp = amp and device.type == "cuda"
    for images, targets in batches:
        if len(images) == 0:
            continue
        inputs = preprocess.normalize(images.to(device, non_blocking=True))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            logits = model(inputs)
        all_logits.append(logits.float().cpu())
        all_targets.append(targets.cpu())
    model.train(was_training)
    if not all_logits:
        return torch.empty(0, 0), torch.empty(0, dtype=torch.int64)
    return torch.cat(all_logits), torch.cat(all_targets)


def _top_k_accuracy(logits: torch.Tensor, targets: torch.Tensor, k: int) -> float:
    top = logits.topk(k, dim=1).indices
    return float((top == targets.view(-1, 1)).any(dim=1).float().mean())


def classification_metrics(logits: torch.Tensor, targets: torch.Tensor, classes: list[str]) -> dict:
    """Accuracy, top-5 (for more than 5 classes), loss, per-class P/R/F1 and the confusion matrix."""
    if len(targets) == 0:
        return {
            "accuracy": None,
            "top5_accuracy": None,
            "loss": None,
            "num_images": 0,
            "per_class": {},
            "confusion_matrix": [],
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
    return {
        "accuracy": float((predictions == truth).mean()),
        "top5_accuracy": _top_k_accuracy(logits, targets, 5) if len(classes) > 5 else None,
        "loss": float(nn.functional.cross_entropy(logits, targets)),
        "num_images": int(len(truth)),
        "per_class": per_class,
        "confusion_matrix": confusion_matrix(truth, predictions, labels=labels).tolist(),
        "classes": list(classes),
    }
