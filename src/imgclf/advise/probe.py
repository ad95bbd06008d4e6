"""Probes: a short training run of one candidate on a stratified subset, with the same loop,
schedule and augmentation a real run uses, stopped at a wall-clock limit. A pretrained candidate
is probed with a linear probe on its frozen ImageNet features (one pass to embed, then a
logistic regression), which is what a short transfer run starts from."""

from __future__ import annotations

import time

import numpy as np
import torch

from imgclf.advise.measure import Candidate
from imgclf.config import TrainConfig
from imgclf.data.augment import choose_augmentation
from imgclf.data.batches import eval_batch_size, make_batches
from imgclf.data.prepare import Preprocess, TensorSplit, estimate_mean_std
from imgclf.data.split import cap_per_label
from imgclf.engine.loop import fit
from imgclf.engine.observers import NullObserver
from imgclf.engine.plan import first_training_stage
from imgclf.engine.probe import extract_embeddings, fit_label_probe, fit_linear_probe
from imgclf.engine.recipe import fit_setup
from imgclf.engine.runtime import seed_everything
from imgclf.models import create_model
from imgclf.transfer import PretrainedWeights, load_weights_into

__all__ = ["probe_pretrained", "probe_scratch", "stratified_indices"]

MAX_PROBE_EPOCHS = 50
PROBE_BATCH = 128  # the default training batch; smaller for subsets under 8 batches


def stratified_indices(targets: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """At most ``per_class`` seeded-random indices of each class (label sets: while a label has
    fewer), sorted."""
    rng = np.random.default_rng(seed)
    if targets.ndim == 2:
        return np.sort(cap_per_label(targets, per_class, rng))
    keep = [rng.permutation(np.flatnonzero(targets == label))[:per_class] for label in np.unique(targets)]
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=np.int64)


def probe_scratch(
    candidate: Candidate,
    train: TensorSplit,
    val: TensorSplit,
    data_kind: str,
    classes: list[str],
    seconds: float,
    device: torch.device,
    seed: int = 0,
) -> float:
    """Validation accuracy after training ``candidate`` from scratch for at most ``seconds``:
    the epochs that its measured speed fits in the time, one-cycle SGD over them, the run's
    automatic augmentation, the best epoch's weights."""
    started = time.perf_counter()
    seed_everything(seed)
    channels, size = train.images.shape[1], train.images.shape[2]
    mean, std = estimate_mean_std(train.images)
    preprocess = Preprocess(size, channels, mean, std)
    batch = min(PROBE_BATCH, max(8, len(train) // 8))
    config = TrainConfig(model=candidate.name, batch_size=batch, seed=seed)
    speed = candidate.train_images_per_s or 1.0
    epochs = int(min(MAX_PROBE_EPOCHS, max(1, seconds * speed / max(1, len(train)))))
    model = create_model(candidate.name, num_classes=len(classes), in_chans=channels, input_size=size)
    model = model.to(device, memory_format=torch.channels_last)
    train_batches = make_batches(train, batch, shuffle=True, seed=seed, drop_last=True, workers=0)
    val_batches = make_batches(val, eval_batch_size(size), workers=0)
    augmentation = choose_augmentation("auto", data_kind, channels, size, epochs)
    stage = first_training_stage(config, epochs)
    setup = fit_setup(config, model, stage, len(train_batches), preprocess, augmentation, train.targets, len(classes),
                      device, torch.Generator().manual_seed(seed + 1))  # fmt: skip
    state = fit(setup, train_batches, val_batches, epochs, classes, NullObserver(), stop_at=started + seconds)
    return max(0.0, state.best_val_accuracy)


def probe_pretrained(
    candidate: Candidate,
    weights: PretrainedWeights,
    train: TensorSplit,
    val: TensorSplit,
    preprocess: Preprocess,
    num_classes: int,
    device: torch.device,
    seed: int = 0,
) -> float:
    """Validation accuracy of a logistic regression on the frozen pretrained embeddings (label
    sets: one per label, and the share of labels right)."""
    model = create_model(candidate.name, num_classes=num_classes, in_chans=3, input_size=candidate.input_size)
    load_weights_into(model, weights)
    model = model.to(device, memory_format=torch.channels_last)
    batch = eval_batch_size(candidate.input_size)
    features = {
        name: extract_embeddings(model, make_batches(split, batch, workers=0), preprocess, device)
        for name, split in (("train", train), ("val", val))
    }
    if features["train"][1].dim() == 2:
        return fit_label_probe(features["train"], features["val"], seed).val_accuracy
    return fit_linear_probe(features["train"], features["val"], num_classes, seed).val_accuracy
