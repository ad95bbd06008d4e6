"""Multi-label classification: what changes when an image carries any number of labels.

One sigmoid per label instead of one softmax over classes. This module owns everything that
differs from the single-label path: the loss (binary cross-entropy), how training counts right
answers, the metrics, the per-label temperature and decision threshold, and the calibration
record a multi-label bundle stores. Targets are float rows of 0/1 (N, labels); the engine tells a
multi-label batch from a single-label one by the targets' shape (2 dimensions), so the loop and
the evaluation need no flag.

Thresholds. A label is given when its calibrated probability reaches the label's threshold,
chosen to maximize that label's F1 on logits the model was not fitted on: a linear probe's
cross-validated (out-of-fold) logits of the training images, so the validation and test scores
stay honest; for a trained network, the validation split (then the validation scores are
optimistic, and the bundle says so). A label with fewer than ``MIN_POSITIVES_FOR_THRESHOLD``
positive images there keeps 0.5.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from sklearn.metrics import (
    average_precision_score,
    f1_score,
    precision_recall_curve,
    precision_recall_fscore_support,
)
from torch import nn

from imgclf.explain.calibration import ECE_BINS, TEMPERATURE_RANGE, centroid_distance, distance_threshold

__all__ = [
    "MIN_POSITIVES_FOR_THRESHOLD",
    "bce_loss",
    "calibrate_label_sets",
    "choose_thresholds",
    "correct_labels",
    "fit_label_temperatures",
    "is_multi_label",
    "label_calibration_error",
    "label_centroids",
    "label_set_metrics",
    "logit_thresholds",
    "nearest_centroid",
]

MIN_POSITIVES_FOR_THRESHOLD = 3


def is_multi_label(targets: torch.Tensor | np.ndarray) -> bool:
    """Multi-label targets are rows of 0/1, one column per label."""
    return targets.ndim == 2


class _SmoothedBCE(nn.Module):
    """Binary cross-entropy with label smoothing: each 0/1 target moves ``smoothing / 2`` toward
    0.5 (mixup's and cutmix's mixed rows arrive as fractions and are smoothed the same way);
    ``pos_weight``: per-label weight of the positive term."""

    def __init__(self, smoothing: float = 0.0, pos_weight: torch.Tensor | None = None):
        super().__init__()
        self.smoothing = smoothing
        self.register_buffer("pos_weight", pos_weight)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        targets = targets.float() * (1 - self.smoothing) + self.smoothing / 2
        return nn.functional.binary_cross_entropy_with_logits(logits, targets, pos_weight=self.pos_weight)


def bce_loss(targets: torch.Tensor, smoothing: float, balanced: bool, device) -> nn.Module:
    """The multi-label loss. ``balanced``: each label's positives weighted by negatives /
    positives in training (capped at 100), so a rare label is not learned as "never"."""
    pos_weight = None
    if balanced:
        positives = targets.float().sum(dim=0)
        pos_weight = ((len(targets) - positives) / positives.clamp_min(1)).clamp(1.0, 100.0).to(device)
    return _SmoothedBCE(smoothing, pos_weight).to(device)


def correct_labels(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per image, the share of labels decided right at probability 0.5 (summed over the batch):
    training's running "accuracy" on multi-label data (1 - Hamming loss)."""
    return ((logits > 0) == (targets > 0.5)).float().mean(dim=1).sum()


def logit_thresholds(thresholds: list[float] | None, temperatures: list[float] | None, labels: int) -> torch.Tensor:
    """Probability thresholds on calibrated probabilities, as thresholds on raw logits:
    sigmoid(z / T) >= p  <=>  z >= T * logit(p)."""
    p = torch.tensor(thresholds if thresholds is not None else [0.5] * labels, dtype=torch.float64)
    t = torch.tensor(temperatures if temperatures is not None else [1.0] * labels, dtype=torch.float64)
    return (t * torch.logit(p.clamp(1e-6, 1 - 1e-6))).float()


def label_set_metrics(
    logits: torch.Tensor, targets: torch.Tensor, labels: list[str], thresholds: torch.Tensor | None = None
) -> dict:
    """Per label precision, recall, F1, average precision and support; overall macro and micro
    F1, mAP (the mean AP of labels with a positive image), the exact-match ratio and the Hamming
    loss. ``thresholds``: per-label logit thresholds (``logit_thresholds``), 0 (p = 0.5) when None.
    ``accuracy`` is the share of labels decided right (1 - Hamming loss): the number training
    chooses epochs on, as it does with single-label accuracy."""
    if len(targets) == 0:
        return {"task": "multi-label", "accuracy": None, "loss": None, "num_images": 0, "per_class": {},
                "classes": list(labels), "macro_f1": None, "micro_f1": None, "map": None,
                "exact_match": None, "hamming_loss": None, "chance_accuracy": None, "pr_curves": {},
                "error_pairs": []}  # fmt: skip
    cut = torch.zeros(len(labels)) if thresholds is None else thresholds
    truth = (targets > 0.5).numpy().astype(np.int64)
    predicted = (logits >= cut).numpy().astype(np.int64)
    precision, recall, f1, support = precision_recall_fscore_support(truth, predicted, zero_division=0)
    scores = torch.sigmoid(logits).numpy()
    precisions = [float(average_precision_score(truth[:, i], scores[:, i])) if truth[:, i].any() else None
                  for i in range(len(labels))]  # fmt: skip
    per_class = {name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                        "average_precision": precisions[i], "support": int(support[i])}
                 for i, name in enumerate(labels)}  # fmt: skip
    measured = [value for value in precisions if value is not None]
    prevalence = truth.mean(axis=0)
    return {
        "task": "multi-label",
        "accuracy": float((truth == predicted).mean()),
        "loss": float(nn.functional.binary_cross_entropy_with_logits(logits, targets.float())),
        "num_images": int(len(truth)),
        "per_class": per_class,
        "classes": list(labels),
        "macro_f1": float(f1_score(truth, predicted, average="macro", zero_division=0)),
        "micro_f1": float(f1_score(truth, predicted, average="micro", zero_division=0)),
        "map": float(np.mean(measured)) if measured else None,
        "exact_match": float((truth == predicted).all(axis=1).mean()),
        "hamming_loss": float((truth != predicted).mean()),
        # Answering each label's majority value for every image.
        "chance_accuracy": float(np.maximum(prevalence, 1 - prevalence).mean()),
        "pr_curves": {name: _pr_curve(truth[:, i], scores[:, i]) for i, name in enumerate(labels) if truth[:, i].any()},
        "error_pairs": _error_pairs(truth, predicted, labels),
    }


PR_CURVE_POINTS = 60  # points kept of each label's precision-recall curve (the report draws them)


def _pr_curve(truth: np.ndarray, scores: np.ndarray) -> dict:
    precision, recall, _ = precision_recall_curve(truth, scores)
    keep = np.unique(np.linspace(0, len(recall) - 1, min(PR_CURVE_POINTS, len(recall))).astype(np.int64))
    return {"precision": [round(float(v), 4) for v in precision[keep]],
            "recall": [round(float(v), 4) for v in recall[keep]]}  # fmt: skip


def _error_pairs(truth: np.ndarray, predicted: np.ndarray, labels: list[str], limit: int = 10) -> list[dict]:
    """How errors co-occur: the pairs (label missed, label given instead) on the same images, most
    frequent first (for example haze missed where clear was given)."""
    missed, invented = (truth == 1) & (predicted == 0), (truth == 0) & (predicted == 1)
    counts = missed.T.astype(np.int64) @ invented.astype(np.int64)  # (missed label, invented label)
    pairs = [{"missed": labels[a], "given_instead": labels[b], "images": int(counts[a, b])}
             for a in range(len(labels)) for b in range(len(labels)) if counts[a, b] > 0]  # fmt: skip
    return sorted(pairs, key=lambda pair: -pair["images"])[:limit]


def fit_label_temperatures(logits: torch.Tensor, targets: torch.Tensor) -> list[float]:
    """One temperature per label minimizing its binary cross-entropy on these logits (L-BFGS on
    log T, clamped to TEMPERATURE_RANGE); 1.0 for a label whose images all agree (nothing to fit)."""
    labels = logits.shape[1]
    if len(targets) == 0:
        return [1.0] * labels
    logits, targets = logits.detach().double(), targets.detach().double()
    log_temperature = torch.zeros(labels, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_temperature], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(logits / log_temperature.exp(), targets,
                                                              reduction="none").sum(dim=0).sum()  # fmt: skip
        loss.backward()
        return loss

    optimizer.step(closure)
    low, high = TEMPERATURE_RANGE
    mixed = (targets.min(dim=0).values != targets.max(dim=0).values).tolist()
    values = log_temperature.detach().exp().tolist()
    return [round(min(high, max(low, t)), 6) if mix and math.isfinite(t) else 1.0 for t, mix in zip(values, mixed)]


def label_calibration_error(probabilities: torch.Tensor, targets: torch.Tensor, bins: int = ECE_BINS) -> float | None:
    """The mean over labels of each label's calibration error: 15 equal-width bins of its
    probability, the share-weighted |mean probability - share of images carrying it| (0 is
    perfect); labels are sigmoids, so a label's probability is judged on its own."""
    if len(targets) == 0:
        return None
    p, y = probabilities.double().numpy(), (targets > 0.5).numpy().astype(np.float64)
    bin_of = np.minimum((p * bins).astype(np.int64), bins - 1)
    errors = []
    for label in range(p.shape[1]):
        error = 0.0
        for index in np.unique(bin_of[:, label]):
            rows = bin_of[:, label] == index
            error += rows.mean() * abs(p[rows, label].mean() - y[rows, label].mean())
        errors.append(error)
    return float(np.mean(errors))


def _best_f1_threshold(scores: np.ndarray, truth: np.ndarray) -> float | None:
    """The probability threshold maximizing F1 on these scores (midway between neighbouring
    scores, so it does not sit on one image); None with too few positives to choose."""
    if truth.sum() < MIN_POSITIVES_FOR_THRESHOLD:
        return None
    order = np.argsort(-scores, kind="stable")
    ranked_scores, ranked_truth = scores[order], truth[order]
    true_positives = np.cumsum(ranked_truth)
    f1 = 2 * true_positives / (np.arange(1, len(scores) + 1) + truth.sum())
    # Only cut between different scores; ties stay on one side.
    distinct = np.append(ranked_scores[:-1] > ranked_scores[1:], True)
    best = int(np.argmax(np.where(distinct, f1, -1.0)))
    below = ranked_scores[best + 1] if best + 1 < len(scores) else 0.0
    return float((ranked_scores[best] + below) / 2)


def choose_thresholds(probabilities: torch.Tensor, targets: torch.Tensor) -> list[float]:
    """Per label, the probability threshold with the best F1 on these (calibrated) probabilities;
    0.5 for a label with fewer than MIN_POSITIVES_FOR_THRESHOLD positives."""
    scores, truth = probabilities.double().numpy(), (targets > 0.5).numpy()
    chosen = [_best_f1_threshold(scores[:, i], truth[:, i]) for i in range(scores.shape[1])]
    return [round(min(0.99, max(0.01, value)), 6) if value is not None else 0.5 for value in chosen]


def label_centroids(embeddings: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(labels, D): the normalized mean of the normalized embeddings of the images carrying each
    label (zero for a label without images, which then never counts as near)."""
    return nn.functional.normalize((targets.float() > 0.5).float().T @ embeddings.float(), dim=1)


def nearest_centroid(embeddings: torch.Tensor, centroids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image's nearest label centroid and its cosine distance: an image unlike every
    label's training images is far from all of them."""
    nearest = (embeddings.float() @ centroids.T).argmax(dim=1)
    return nearest, centroid_distance(embeddings, centroids, nearest)


def calibrate_label_sets(
    val_logits: torch.Tensor,
    val_targets: torch.Tensor,
    threshold_logits: tuple[torch.Tensor, torch.Tensor] | None = None,
    val_embeddings: torch.Tensor | None = None,
    centroids: torch.Tensor | None = None,
    noise_embeddings: torch.Tensor | None = None,
) -> dict:
    """The calibration a multi-label bundle stores: a temperature per label (fitted on val), a
    threshold per label (chosen on ``threshold_logits``, held-out logits and targets the model
    was not fitted on, else on val) and the distance beyond which an image is unlike all
    training images (as for single-label data, ``explain.calibration``)."""
    temperatures = fit_label_temperatures(val_logits, val_targets)
    scale = torch.tensor(temperatures, dtype=torch.float32)
    before = label_calibration_error(torch.sigmoid(val_logits.float()), val_targets)
    after = label_calibration_error(torch.sigmoid(val_logits.float() / scale), val_targets)
    chooser = threshold_logits if threshold_logits is not None else (val_logits, val_targets)
    thresholds = choose_thresholds(torch.sigmoid(chooser[0].float() / scale), chooser[1])
    limit = None
    if val_embeddings is not None and centroids is not None and len(val_targets):
        _, distances = nearest_centroid(val_embeddings, centroids)
        noise = nearest_centroid(noise_embeddings, centroids)[1] if noise_embeddings is not None else None
        limit = distance_threshold(distances, torch.ones(len(distances), dtype=torch.bool), noise)
    return {
        "task": "multi-label",
        "temperatures": temperatures,
        "thresholds": thresholds,
        "thresholds_chosen_on": "cross-validation on train" if threshold_logits is not None else "val",
        "fitted_on": "val",
        "val_images": int(len(val_targets)),
        "val_ece_before": before,  # the mean of every label's calibration error
        "val_ece_after": after,
        "abstain_threshold": None,
        "abstain_distance_threshold": limit,
        "abstain_rule": "give each label whose calibrated probability reaches its threshold (maybe none); withhold "
        "every label when the image lies beyond the embedding distance that keeps 99% of the validation images "
        "near a label's training images",
    }
