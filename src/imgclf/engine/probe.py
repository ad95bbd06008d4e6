"""Linear probing: a frozen network's embeddings, and a logistic-regression head fitted on them.

Minutes on a CPU instead of hours: each image goes through the backbone once (and the
embeddings can be cached), then scikit-learn fits the classifier on 1280-number vectors.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from torch import nn

from imgclf.data.prepare import Preprocess
from imgclf.models import ImageClassifier

__all__ = ["LinearProbe", "extract_embeddings", "fit_linear_probe", "set_classifier"]

# Inverse regularization strengths tried; the best on the validation split wins.
PROBE_C_VALUES = (0.001, 0.003, 0.01, 0.03, 0.1, 1.0)


@torch.no_grad()
def extract_embeddings(
    model: ImageClassifier,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    preprocess: Preprocess,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The input of the last layer (``forward_head(..., pre_logits=True)``) for every image."""
    model.eval()
    embeddings, targets = [], []
    for images, labels in batches:
        if len(images) == 0:
            continue
        inputs = preprocess.normalize(images.to(device))
        embeddings.append(model.forward_head(model.forward_features(inputs), pre_logits=True).float().cpu())
        targets.append(labels.cpu())
    return torch.cat(embeddings), torch.cat(targets)


class LinearProbe:
    """Weights and bias of a linear layer on raw embeddings, and how they were chosen."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray, c_value: float, val_accuracy: float):
        self.weight, self.bias, self.c_value, self.val_accuracy = weight, bias, c_value, val_accuracy


def _fit(features: np.ndarray, targets: np.ndarray, c_value: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    scaler = StandardScaler().fit(features)
    classifier = LogisticRegression(C=c_value, max_iter=2000, random_state=seed)
    classifier.fit(scaler.transform(features), targets)
    # Fold the standardization into the linear layer: w (x - mu) / sigma + b.
    weight = classifier.coef_ / scaler.scale_
    bias = classifier.intercept_ - weight @ scaler.mean_
    return weight, bias


def _full_rows(weight: np.ndarray, bias: np.ndarray, classes_seen: np.ndarray, num_classes: int):
    """scikit-learn drops classes absent from training; give them rows that never win."""
    if weight.shape[0] == 1:  # binary: one row for class 1 against class 0
        weight, bias = np.vstack([-weight / 2, weight / 2]), np.array([-bias[0] / 2, bias[0] / 2])
    full_weight = np.zeros((num_classes, weight.shape[1]))
    full_bias = np.full(num_classes, -1e4)
    full_weight[classes_seen], full_bias[classes_seen] = weight, bias
    return full_weight, full_bias


def fit_linear_probe(
    train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor], num_classes: int, seed: int = 0
) -> LinearProbe:
    """Logistic regression (standardized inputs, C chosen on validation accuracy)."""
    train_x, train_y = train[0].numpy().astype(np.float64), train[1].numpy()
    val_x, val_y = val[0].numpy().astype(np.float64), val[1].numpy()
    best: LinearProbe | None = None
    for c_value in PROBE_C_VALUES:
        weight, bias = _full_rows(*_fit(train_x, train_y, c_value, seed), np.unique(train_y), num_classes)
        accuracy = float(((val_x @ weight.T + bias).argmax(axis=1) == val_y).mean())
        if best is None or accuracy > best.val_accuracy:
            best = LinearProbe(weight, bias, c_value, accuracy)
    return best


def set_classifier(model: ImageClassifier, probe: LinearProbe) -> None:
    """Copy the probe into the model's last layer (a Linear, or SqueezeNet's 1x1 convolution)."""
    layer: nn.Module = model.get_classifier()
    weight = torch.as_tensor(probe.weight, dtype=layer.weight.dtype).reshape(layer.weight.shape)
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(torch.as_tensor(probe.bias, dtype=layer.bias.dtype))
