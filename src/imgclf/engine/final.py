"""The trained model's final evaluation: calibration fitted on the validation split (temperature
and the abstain thresholds, from class centroids of the training embeddings and seeded noise),
then calibrated metrics of every held-out split."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from imgclf.data.batches import eval_batch_size, make_batches
from imgclf.data.prepare import Preprocess, StreamingSplit, TensorSplit
from imgclf.engine.evaluate import calibrated_metrics, predict_outputs
from imgclf.engine.image_embeddings import ImageEmbeddingCache
from imgclf.engine.label_sets import (
    calibrate_label_sets,
    is_multi_label,
    label_centroids,
    label_set_metrics,
    logit_thresholds,
)
from imgclf.explain.calibration import calibrate, class_centroids
from imgclf.models import ImageClassifier

__all__ = ["CENTROID_IMAGES", "FinalEvaluation", "ModelOnData", "final_evaluation"]

# Class centroids for the abstain check come from up to this many evenly spaced training images.
CENTROID_IMAGES = 5_000
NOISE_IMAGES = 64  # uniform-noise images the abstain check is tuned to refuse


@dataclass
class FinalEvaluation:
    """The trained model on val and test: calibration fitted on val, metrics, the test logits
    (the report's worst-mistakes gallery ranks them) and the class centroids."""

    calibration: dict
    metrics: dict[str, dict]
    logits: dict[str, tuple[torch.Tensor, torch.Tensor]]
    centroids: torch.Tensor | None


@dataclass(frozen=True)
class ModelOnData:
    """A trained model with the splits it is evaluated on. ``embeddings``: a linear probe's
    unnormalized embeddings and targets of each split (the backbone does not run again)."""

    model: ImageClassifier
    splits: dict[str, TensorSplit | StreamingSplit]
    preprocess: Preprocess
    device: torch.device
    amp: bool = False
    workers: int = 2
    embeddings: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None
    # A multi-label probe's out-of-fold logits of the training images: its thresholds are chosen on them.
    held_out_logits: torch.Tensor | None = None
    # Where a linear last layer's noise-image embeddings are kept (the backbone runs on them once).
    embedding_cache: ImageEmbeddingCache | None = None

    def outputs(self, name: str, embeddings: bool, limit: int | None = None):
        """Logits, targets and (when asked) L2-normalized embeddings of one split, of at most
        ``limit`` evenly spaced images."""
        layer = self.model.get_classifier()
        if self.embeddings is not None and name in self.embeddings and isinstance(layer, nn.Linear):
            features, targets = self.embeddings[name]
            if limit is not None and len(targets) > limit:
                indices = np.linspace(0, len(targets) - 1, limit).astype(np.int64)
                features, targets = features[indices], targets[indices]
            normalized = nn.functional.normalize(features, dim=1) if embeddings else None
            return _linear_logits(layer, features), targets, normalized
        split = self.splits[name]
        if limit is not None:
            split = _evenly_spaced(split, limit)
        return self._predict(split, embeddings)

    def noise_outputs(self, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and normalized embeddings of seeded uniform-noise images at the model's input size."""
        size, channels = self.preprocess.input_size, self.preprocess.channels
        generator = torch.Generator().manual_seed(seed)
        images = torch.randint(0, 256, (NOISE_IMAGES, channels, size, size), dtype=torch.uint8, generator=generator)
        layer = self.model.get_classifier()
        if self.embedding_cache is not None and isinstance(layer, nn.Linear):
            features = self.embedding_cache.embed_pixels(self.model, self.preprocess, images, self.device)
            return _linear_logits(layer, features), nn.functional.normalize(features, dim=1)
        keys = [f"noise[{i}]" for i in range(NOISE_IMAGES)]
        logits, _, embeddings = self._predict(TensorSplit(images, torch.zeros(NOISE_IMAGES, dtype=torch.int64), keys),
                                              True, workers=0)  # fmt: skip
        return logits, embeddings

    def _predict(self, split, embeddings: bool, workers: int | None = None):
        batches = make_batches(split, eval_batch_size(self.preprocess.input_size),
                               workers=self.workers if workers is None else workers)  # fmt: skip
        return predict_outputs(self.model, batches, self.preprocess, self.device, self.amp, embeddings=embeddings)


def _linear_logits(layer: nn.Linear, features: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        weight, bias = layer.weight.detach().cpu().float(), layer.bias.detach().cpu().float()
        return nn.functional.linear(features.float(), weight, bias)


def _evenly_spaced(split: TensorSplit | StreamingSplit, limit: int) -> TensorSplit | StreamingSplit:
    if len(split) <= limit:
        return split
    indices = np.linspace(0, len(split) - 1, limit).astype(np.int64)
    if isinstance(split, TensorSplit):
        return TensorSplit(split.images[indices], split.targets[indices], [split.keys[i] for i in indices])
    return StreamingSplit(split.split.subset(indices), split.preprocess)


def final_evaluation(trained: ModelOnData, classes: list[str], seed: int) -> FinalEvaluation:
    _, train_targets, train_embeddings = trained.outputs("train", True, CENTROID_IMAGES)
    if is_multi_label(train_targets):
        return _label_set_evaluation(trained, classes, seed, train_targets, train_embeddings)
    centroids = class_centroids(train_embeddings, train_targets, len(classes))
    val_logits, val_targets, val_embeddings = trained.outputs("val", True)
    logits = {"val": (val_logits, val_targets)}
    if "test" in trained.splits:
        logits["test"] = trained.outputs("test", False)[:2]
    calibration = calibrate(val_logits, val_targets, val_embeddings, centroids, trained.noise_outputs(seed))
    temperature = calibration["temperature"]
    metrics = {name: calibrated_metrics(*pair, classes, temperature) for name, pair in logits.items()}
    return FinalEvaluation(calibration, metrics, logits, centroids)


def _label_set_evaluation(trained: ModelOnData, classes: list[str], seed: int, train_targets, train_embeddings):
    """``final_evaluation`` of a multi-label model: a temperature and a threshold per label
    (``engine.label_sets``), then the label-set metrics of val and test at those thresholds."""
    centroids = label_centroids(train_embeddings, train_targets)
    val_logits, val_targets, val_embeddings = trained.outputs("val", True)
    logits = {"val": (val_logits, val_targets)}
    if "test" in trained.splits:
        logits["test"] = trained.outputs("test", False)[:2]
    held_out = None
    if trained.held_out_logits is not None:  # the probe's out-of-fold logits, row for row of train
        held_out = (trained.held_out_logits, trained.embeddings["train"][1])
    calibration = calibrate_label_sets(val_logits, val_targets, held_out, val_embeddings, centroids,
                                       trained.noise_outputs(seed)[1])  # fmt: skip
    cut = logit_thresholds(calibration["thresholds"], calibration["temperatures"], len(classes))
    metrics = {}
    for name, (split_logits, split_targets) in logits.items():
        metrics[name] = label_set_metrics(split_logits, split_targets, classes, cut)
        metrics[name].update(thresholds=calibration["thresholds"], temperatures=calibration["temperatures"],
                             thresholds_chosen_on=calibration["thresholds_chosen_on"])  # fmt: skip
    return FinalEvaluation(calibration, metrics, logits, centroids)
