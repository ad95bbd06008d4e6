"""Linear probing: a frozen network's embeddings, and a logistic-regression head fitted on them.

Minutes on a CPU instead of hours: each image goes through the backbone once (and the
embeddings can be cached), then scikit-learn fits the classifier on 1280-number vectors.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import KFold, StratifiedKFold
from sklearn.preprocessing import StandardScaler
from torch import nn

from imgclf.data.prepare import Preprocess
from imgclf.engine.label_sets import correct_labels
from imgclf.models import ImageClassifier
from imgclf.models.inference import folded_for_inference

__all__ = [
    "LinearProbe",
    "classifier_logits",
    "extract_embeddings",
    "fit_label_probe",
    "fit_linear_probe",
    "set_classifier",
]

# Inverse regularization strengths tried (the best by cross-validation on train wins).
PROBE_C_VALUES = (0.001, 0.003, 0.01, 0.03, 0.1, 1.0)


@torch.no_grad()
def extract_embeddings(
    model: ImageClassifier,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    preprocess: Preprocess,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The input of the last layer (``forward_head(..., pre_logits=True)``) for every image.
    Leaves ``model`` in eval mode."""
    model = folded_for_inference(model.eval())
    embeddings, targets = [], []
    for images, labels in batches:
        if len(images) == 0:
            continue
        inputs = preprocess.normalize(images.to(device))
        embeddings.append(model.forward_head(model.forward_features(inputs), pre_logits=True).float().cpu())
        targets.append(labels.cpu())
    return torch.cat(embeddings), torch.cat(targets)


# Folds of the cross-validation that chooses C on the training embeddings (fewer when a class
# has fewer training images than this).
PROBE_FOLDS = 5


@dataclass
class LinearProbe:
    """Weights and bias of a linear layer on raw embeddings, and how they were chosen.

    ``chosen_on`` is "cross-validation" when C was chosen on folds of the training embeddings (the
    validation accuracy then measures images nothing was chosen on), or "validation" when a class
    has a single training image (then ``val_accuracy`` is optimistic). ``scores`` lists, per C
    tried, the cross-validated and the validation accuracy: the report plots them."""

    weight: np.ndarray
    bias: np.ndarray
    c_value: float
    val_accuracy: float
    chosen_on: str = "validation"
    cv_accuracy: float | None = None
    flipped_views: bool = False
    scores: list[dict] = field(default_factory=list)
    folds: int = 0  # of the cross-validation that chose C (0: chosen on validation)
    # Multi-label probes: C per label, and every training image's logits from the fold model that
    # did not see it (the thresholds are chosen on them, not on validation).
    label_c_values: list[float] | None = None
    held_out_logits: torch.Tensor | None = None


class _ProbeFitter:
    """Logistic regressions on standardized features along increasing C, each fit starting from
    the previous one's weights (warm start: the weaker the regularization, the more iterations
    a cold start needs). Tolerance 1e-3 on standardized inputs: the predictions do not change."""

    def __init__(self, features: np.ndarray, targets: np.ndarray, seed: int):
        self.scaler = StandardScaler().fit(features)
        self.features, self.targets = self.scaler.transform(features), targets
        self.classifier = LogisticRegression(max_iter=2000, tol=1e-3, warm_start=True, random_state=seed)

    def fit(self, c_value: float, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
        """Weight and bias for raw features, one row per class."""
        self.classifier.set_params(C=c_value).fit(self.features, self.targets)
        # Fold the standardization into the linear layer: w (x - mu) / sigma + b.
        weight = self.classifier.coef_ / self.scaler.scale_
        bias = self.classifier.intercept_ - weight @ self.scaler.mean_
        return _full_rows(weight, bias, self.classifier.classes_, num_classes)


def _full_rows(weight: np.ndarray, bias: np.ndarray, classes_seen: np.ndarray, num_classes: int):
    """scikit-learn drops classes absent from training; give them rows that never win."""
    if weight.shape[0] == 1:  # binary: one row for class 1 against class 0
        weight, bias = np.vstack([-weight / 2, weight / 2]), np.array([-bias[0] / 2, bias[0] / 2])
    full_weight = np.zeros((num_classes, weight.shape[1]))
    full_bias = np.full(num_classes, -1e4)
    full_weight[classes_seen], full_bias[classes_seen] = weight, bias
    return full_weight, full_bias


def _accuracy(weight: np.ndarray, bias: np.ndarray, features: np.ndarray, targets: np.ndarray) -> float:
    return float(((features @ weight.T + bias).argmax(axis=1) == targets).mean()) if len(targets) else 0.0


def _with_views(x: np.ndarray, y: np.ndarray, flipped: np.ndarray | None, rows: np.ndarray):
    if flipped is None:
        return x[rows], y[rows]
    return np.concatenate([x[rows], flipped[rows]]), np.concatenate([y[rows], y[rows]])


def _cross_validated(x, y, flipped, seed: int, num_classes: int, folds: int,
                     c_values: tuple[float, ...] = PROBE_C_VALUES) -> list[float]:  # fmt: skip
    """Accuracy for each of ``c_values`` (increasing) over stratified folds of the training embeddings; with
    ``flipped`` views, a fold's training part also holds the mirror images of its own images
    (never of held-out ones). Folds run in threads (scikit-learn's L-BFGS spends its time in
    NumPy and SciPy, which release the GIL): 1.3x faster on 2 cores, the same numbers."""

    def correct_in_fold(rows: tuple[np.ndarray, np.ndarray]) -> list[float]:
        train_rows, held_rows = rows
        fitter = _ProbeFitter(*_with_views(x, y, flipped, train_rows), seed)
        return [_accuracy(*fitter.fit(c_value, num_classes), x[held_rows], y[held_rows]) * len(held_rows)
                for c_value in c_values]  # fmt: skip

    splits = StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y)
    with ThreadPoolExecutor(max_workers=min(folds, os.cpu_count() or 1)) as pool:
        correct = np.sum(list(pool.map(correct_in_fold, splits)), axis=0)
    return list(correct / len(y))


def _search_near(cross_validate, near_c: float) -> dict[float, float]:
    """Cross-validated accuracy of PROBE_C_VALUES around ``near_c``: its grid neighbours first, then
    one step further out for as long as the outermost value tried is the best."""
    grid = PROBE_C_VALUES
    start = int(np.argmin([abs(np.log(c / near_c)) for c in grid]))
    low, high = max(0, start - 1), min(len(grid) - 1, start + 1)
    scores = dict(zip(grid[low : high + 1], cross_validate(grid[low : high + 1])))

    def best() -> float:  # ties to the stronger regularization, as the full search
        return max(sorted(scores), key=lambda c: scores[c])

    while low > 0 and best() == grid[low]:
        low -= 1
        scores[grid[low]] = cross_validate((grid[low],))[0]
    while high < len(grid) - 1 and best() == grid[high]:
        high += 1
        scores[grid[high]] = cross_validate((grid[high],))[0]
    return scores


def fit_linear_probe(
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    num_classes: int,
    seed: int = 0,
    train_flipped: torch.Tensor | None = None,
    near_c: float | None = None,
) -> LinearProbe:
    """Logistic regression on standardized embeddings, C chosen by stratified cross-validation on
    the training embeddings (on validation accuracy when a class has a single training image).
    ``train_flipped``: the embeddings of the training images mirrored, row for row; they join the
    training data only where cross-validation measures that they help. ``near_c``: the C an
    earlier fit on similar data chose (``update``); the search starts at its neighbours on the grid
    and walks outward only while the edge wins: 2-3x less time, and the full grid's choice when
    accuracy rises then falls along C (not always: BENCHMARKS.md, "Updating a bundle")."""
    x, y = train[0].numpy().astype(np.float64), train[1].numpy()
    val_x, val_y = val[0].numpy().astype(np.float64), val[1].numpy()
    flipped = None if train_flipped is None else train_flipped.numpy().astype(np.float64)
    folds = min(PROBE_FOLDS, int(np.bincount(y)[np.unique(y)].min()))
    every_row = np.arange(len(y))
    if folds < 2:  # a class with one training image: only the validation split can choose
        fitter, best, scores = _ProbeFitter(x, y, seed), None, []
        for c_value in PROBE_C_VALUES:
            weight, bias = fitter.fit(c_value, num_classes)
            scores.append({"c": c_value, "flipped_views": False, "cv_accuracy": None,
                           "val_accuracy": _accuracy(weight, bias, val_x, val_y)})  # fmt: skip
            if best is None or scores[-1]["val_accuracy"] > best[0]["val_accuracy"]:
                best = (scores[-1], weight, bias)
        row, weight, bias = best
        return LinearProbe(weight, bias, row["c"], row["val_accuracy"], "validation", None, False, scores)
    scores = []
    for views in [None] if flipped is None else [None, flipped]:
        if near_c is None:
            accuracies = dict(zip(PROBE_C_VALUES, _cross_validated(x, y, views, seed, num_classes, folds)))
        else:

            def cross_validate(c_values, views=views):
                return _cross_validated(x, y, views, seed, num_classes, folds, c_values)

            accuracies = _search_near(cross_validate, near_c)
        scores += [{"c": c, "flipped_views": views is not None, "cv_accuracy": round(a, 4)}
                   for c, a in sorted(accuracies.items())]  # fmt: skip
    # Ties go to the plainer choice: stronger regularization, then no extra views (earlier in the list).
    best = max(scores, key=lambda row: row["cv_accuracy"])
    fit_x, fit_y = _with_views(x, y, flipped if best["flipped_views"] else None, every_row)
    weight, bias = _ProbeFitter(fit_x, fit_y, seed).fit(best["c"], num_classes)
    val_accuracy = _accuracy(weight, bias, val_x, val_y)
    return LinearProbe(weight, bias, best["c"], val_accuracy, "cross-validation", best["cv_accuracy"],
                       best["flipped_views"], scores, folds)  # fmt: skip


def _fit_label_regressions(x: torch.Tensor, y: torch.Tensor, c_values: torch.Tensor, start=None):
    """Logistic regressions of every label at once, on standardized float64 features: mean binary
    cross-entropy + |w_l|^2 / (2 C_l n), scikit-learn's objective divided by n (labels are
    independent, so one joint L-BFGS run equals one fit per label). Returns (weight, bias)."""
    labels, n = y.shape[1], len(y)
    weight = torch.zeros(labels, x.shape[1], dtype=torch.float64) if start is None else start[0].clone()
    bias = torch.zeros(labels, dtype=torch.float64) if start is None else start[1].clone()
    weight.requires_grad_(True)
    bias.requires_grad_(True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1, max_iter=300, tolerance_grad=1e-6,
                                  line_search_fn="strong_wolfe")  # fmt: skip
    penalty = 1.0 / (2.0 * c_values * n)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(x @ weight.T + bias, y, reduction="sum") / n
        loss = loss + (penalty * weight.pow(2).sum(dim=1)).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return weight.detach(), bias.detach()


def _label_accuracy(logits: torch.Tensor, targets: torch.Tensor) -> float:
    return float(correct_labels(logits, targets)) / len(targets) if len(targets) else 0.0


def _out_of_fold_logits(x: torch.Tensor, y: torch.Tensor, folds: int, seed: int) -> torch.Tensor:
    """(C values, images, labels): each training image's logits from the fold models that did not
    see it, for each of PROBE_C_VALUES (warm-started along increasing C)."""
    logits = torch.zeros(len(PROBE_C_VALUES), *y.shape, dtype=torch.float64)
    for train_rows, held_rows in KFold(folds, shuffle=True, random_state=seed).split(x.numpy()):
        start = None
        for index, c_value in enumerate(PROBE_C_VALUES):
            c_values = torch.full((y.shape[1],), c_value, dtype=torch.float64)
            start = _fit_label_regressions(x[train_rows], y[train_rows], c_values, start)
            logits[index, held_rows] = x[held_rows] @ start[0].T + start[1]
    return logits


def fit_label_probe(
    train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor], seed: int = 0
) -> LinearProbe:
    """A multi-label probe: one logistic regression per label on standardized embeddings, each
    label's C chosen by the cross-validated binary cross-entropy of its own out-of-fold logits
    (ties to the stronger regularization), then refitted on all training embeddings."""
    x, y = train[0].double(), (train[1] > 0.5).double()
    mean, scale = x.mean(dim=0), x.std(dim=0).clamp_min(1e-6)
    x = (x - mean) / scale
    folds = max(2, min(PROBE_FOLDS, len(y) // 2))
    out_of_fold = _out_of_fold_logits(x, y, folds, seed)
    losses = torch.stack(
        [
            nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none").mean(dim=0)
            for logits in out_of_fold
        ]
    )  # fmt: skip  (C values, labels)
    chosen = losses.argmin(dim=0)  # the first (strongest regularization) of equal losses
    label_c = torch.tensor([PROBE_C_VALUES[int(i)] for i in chosen], dtype=torch.float64)
    weight, bias = _fit_label_regressions(x, y, label_c)
    weight, bias = weight / scale, bias - (weight / scale) @ mean  # back to raw embeddings
    held_out = out_of_fold.gather(0, chosen.expand(len(y), -1)[None]).squeeze(0)
    val_logits = val[0].double() @ weight.T + bias
    scores = [{"c": c, "labels_choosing_it": int((chosen == i).sum()), "cv_accuracy":
               round(_label_accuracy(out_of_fold[i], y), 4)} for i, c in enumerate(PROBE_C_VALUES)]  # fmt: skip
    most_chosen = PROBE_C_VALUES[int(torch.bincount(chosen, minlength=len(PROBE_C_VALUES)).argmax())]
    return LinearProbe(weight.numpy(), bias.numpy(), most_chosen, _label_accuracy(val_logits, val[1]),
                       "cross-validation", round(_label_accuracy(held_out, y), 4), False, scores, folds,
                       label_c.tolist(), held_out.float())  # fmt: skip


def classifier_logits(model: ImageClassifier, embeddings: torch.Tensor) -> torch.Tensor:
    """The model's last layer applied to embeddings (the backbone need not run again), float32 on the CPU."""
    layer = model.get_classifier()
    weight = layer.weight.detach().cpu().float().reshape(layer.weight.shape[0], -1)
    with torch.no_grad():
        return nn.functional.linear(embeddings.float().cpu(), weight, layer.bias.detach().cpu().float())


def set_classifier(model: ImageClassifier, probe: LinearProbe) -> None:
    """Copy the probe into the model's last layer (a Linear, or SqueezeNet's 1x1 convolution)."""
    layer: nn.Module = model.get_classifier()
    weight = torch.as_tensor(probe.weight, dtype=layer.weight.dtype).reshape(layer.weight.shape)
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(torch.as_tensor(probe.bias, dtype=layer.bias.dtype))
