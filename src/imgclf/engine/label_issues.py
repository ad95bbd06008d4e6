"""Likely mislabelled images: out-of-sample predicted probabilities, ranked by cleanlab.

Each training image's probabilities come from a model that never saw it (k-fold: trained on the
other folds), so a wrong label cannot be memorized into agreeing with itself. Two ways to get
them: a logistic regression on frozen pretrained embeddings (natural photos: seconds), or short
training runs of a small network (other data). cleanlab's label-quality score then ranks the
images, the least likely label first (Northcutt, Jiang and Chuang, "Confident Learning", JAIR 2021).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.model_selection import KFold, StratifiedKFold

from imgclf.config import TrainConfig
from imgclf.data.augment import choose_augmentation
from imgclf.data.batches import TensorBatches, eval_batch_size
from imgclf.data.prepare import Preprocess, TensorSplit
from imgclf.engine.evaluate import predict_logits
from imgclf.engine.loop import fit
from imgclf.engine.observers import NullObserver
from imgclf.engine.plan import first_training_stage
from imgclf.engine.probe import PROBE_FOLDS, fit_label_probe, fit_linear_probe
from imgclf.engine.recipe import fit_setup
from imgclf.engine.runtime import seed_everything
from imgclf.errors import UsageError
from imgclf.models import create_model

__all__ = [
    "LabelCheck",
    "cross_validated_label_probe",
    "cross_validated_probe",
    "cross_validated_training",
    "rank_label_issues",
    "rank_label_set_issues",
]

# Short training runs for the k-fold probabilities: about this many images seen per fold.
FOLD_TRAINING_IMAGES = 6_000
FIT_CHECK_IMAGES = 256


@dataclass(frozen=True)
class LabelCheck:
    """Per image, in the order given: the label quality (0-1, low: the data disagrees with the
    label), whether cleanlab flags it as a label issue, and the out-of-sample probabilities."""

    quality: np.ndarray
    flagged: np.ndarray
    probabilities: np.ndarray

    def ranking(self) -> np.ndarray:
        """Image indices, the least trustworthy label first (ties: the earlier image first)."""
        return np.argsort(self.quality, kind="stable")


def _folds(targets: np.ndarray) -> int:
    if targets.ndim == 2:  # label sets: plain folds (every fold sees images of most labels)
        return min(PROBE_FOLDS, len(targets) // 2)
    smallest = int(np.bincount(targets)[np.unique(targets)].min())
    if smallest < 2:
        raise UsageError("checking labels needs at least 2 training images of every class")
    return min(PROBE_FOLDS, smallest)


def cross_validated_probe(features: torch.Tensor, targets: torch.Tensor, num_classes: int, seed: int) -> np.ndarray:
    """Out-of-sample class probabilities from a logistic regression on embeddings: for each fold,
    a probe fitted on the other folds (its regularization chosen by cross-validation inside them)."""
    y = targets.numpy()
    probabilities = np.zeros((len(y), num_classes))
    for fit_rows, held_rows in _splitter(y, seed):
        held = (features[held_rows], targets[held_rows])
        probe = fit_linear_probe((features[fit_rows], targets[fit_rows]), held, num_classes, seed)
        logits = features[held_rows].numpy().astype(np.float64) @ probe.weight.T + probe.bias
        probabilities[held_rows] = torch.softmax(torch.from_numpy(logits), dim=1).numpy()
    return probabilities


def cross_validated_label_probe(features: torch.Tensor, targets: torch.Tensor, seed: int) -> np.ndarray:
    """Out-of-sample probabilities of every label (label sets): the multi-label probe's own
    out-of-fold predictions, each from a regression that never saw the image."""
    probe = fit_label_probe((features, targets), (features[:1], targets[:1]), seed)
    return torch.sigmoid(probe.held_out_logits).numpy()


def _splitter(targets: np.ndarray, seed: int):
    folds = _folds(targets)
    splitter = KFold(folds, shuffle=True, random_state=seed) if targets.ndim == 2 else StratifiedKFold(
        folds, shuffle=True, random_state=seed)  # fmt: skip
    return splitter.split(np.zeros(len(targets)), targets if targets.ndim == 1 else None)


def cross_validated_training(
    split: TensorSplit, preprocess: Preprocess, data_kind: str, num_classes: int, device: torch.device, seed: int
) -> np.ndarray:
    """Out-of-sample class probabilities from short runs of the default small network, one per
    fold, each trained on the other folds as ``imgclf train`` trains it (same recipe); for label
    sets, each label's own probability."""
    y = split.targets.numpy()
    config = TrainConfig(model="simple_cnn", seed=seed, label_smoothing=0.1)
    probabilities = np.zeros((len(y), num_classes))
    for fit_rows, held_rows in _splitter(y, seed):
        fit_split = TensorSplit(split.images[fit_rows], split.targets[fit_rows], [split.keys[i] for i in fit_rows])
        held_split = TensorSplit(split.images[held_rows], split.targets[held_rows], [split.keys[i] for i in held_rows])
        logits = _train_fold(config, fit_split, held_split, preprocess, data_kind, num_classes, device).float()
        probabilities[held_rows] = (torch.sigmoid(logits) if y.ndim == 2 else torch.softmax(logits, dim=1)).numpy()
    return probabilities


def _train_fold(config, fit_split, held_split, preprocess, data_kind, num_classes, device) -> torch.Tensor:
    seed_everything(config.seed)
    epochs = int(np.clip(np.ceil(FOLD_TRAINING_IMAGES / len(fit_split)), 3, 30))
    batch = min(config.batch_size, len(fit_split))
    model = create_model(config.model, num_classes=num_classes, in_chans=preprocess.channels,
                         input_size=preprocess.input_size).to(device, memory_format=torch.channels_last)  # fmt: skip
    batches = TensorBatches(fit_split, batch, shuffle=True, seed=config.seed, drop_last=len(fit_split) % batch == 1)
    held = TensorBatches(held_split, eval_batch_size(preprocess.input_size))
    augmentation = choose_augmentation("auto", data_kind, preprocess.channels, preprocess.input_size, epochs)
    generator = torch.Generator().manual_seed(config.seed + 1)
    setup = fit_setup(config, model, first_training_stage(config, epochs), len(batches), preprocess, augmentation,
                      fit_split.targets, num_classes, device, generator)  # fmt: skip
    # The held-out fold's labels must not choose anything: the loop's per-epoch check runs on a few
    # of the fold's own training images (cheap; it keeps the last, best-fitting epochs).
    check = TensorSplit(fit_split.images[:FIT_CHECK_IMAGES], fit_split.targets[:FIT_CHECK_IMAGES],
                        fit_split.keys[:FIT_CHECK_IMAGES])  # fmt: skip
    classes = [str(label) for label in range(num_classes)]
    fit(setup, batches, TensorBatches(check, eval_batch_size(preprocess.input_size)), epochs, classes, NullObserver())
    return predict_logits(model, held, preprocess, device)[0]


def rank_label_issues(targets: np.ndarray, probabilities: np.ndarray) -> LabelCheck:
    """cleanlab's self-confidence label quality (the out-of-sample probability of the given label)
    and its confident-learning issue flags."""
    try:
        from cleanlab.filter import find_label_issues
        from cleanlab.rank import get_label_quality_scores
    except ImportError:
        raise UsageError("checking labels needs cleanlab: pip install cleanlab") from None
    labels = np.asarray(targets, dtype=np.int64)
    quality = get_label_quality_scores(labels, probabilities, method="self_confidence")
    flagged = find_label_issues(labels, probabilities, filter_by="prune_by_noise_rate")
    return LabelCheck(np.asarray(quality), np.asarray(flagged, dtype=bool), probabilities)


def rank_label_set_issues(targets: np.ndarray, probabilities: np.ndarray) -> LabelCheck:
    """Label sets: cleanlab's multi-label quality (each label's self-confidence, the worst labels
    weighing most) and its issue flags. ``targets``: one 0/1 row per image."""
    try:
        from cleanlab.multilabel_classification import get_label_quality_scores
        from cleanlab.multilabel_classification.filter import find_label_issues
    except ImportError:
        raise UsageError("checking labels needs cleanlab: pip install cleanlab") from None
    labels = [np.flatnonzero(row > 0.5).tolist() for row in targets]
    quality = get_label_quality_scores(labels, probabilities)
    flagged = find_label_issues(labels, probabilities)
    return LabelCheck(np.asarray(quality), np.asarray(flagged, dtype=bool), probabilities)
