"""A linear probe run on cached embeddings: each split goes through the frozen backbone once per
(model, weights, preprocessing, split) and is kept on disk, so a second run on the same data (the
advisor's, then the training's; or a rerun with another seed) skips the backbone entirely."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from safetensors.torch import load_file

from imgclf import __version__
from imgclf.data.batches import Batches
from imgclf.data.prepare import Preprocess
from imgclf.engine.image_embeddings import cache_root
from imgclf.engine.label_sets import is_multi_label
from imgclf.engine.loop import FitState
from imgclf.engine.probe import LinearProbe, extract_embeddings, fit_label_probe, fit_linear_probe, set_classifier
from imgclf.files import atomic_write_tensors
from imgclf.models import ImageClassifier

__all__ = ["ProbeRun", "run_linear_probe"]


def _cache_path(key: dict) -> Path:
    root = cache_root()
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return root / "embeddings" / f"{digest}.safetensors"


def _embeddings(
    model: ImageClassifier, batches: Batches, preprocess: Preprocess, device: torch.device, key: dict, console: Console
) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings of one split, from the on-disk cache when this model, these weights, this
    preprocessing and this exact split (by fingerprint) were embedded before."""
    path = _cache_path(key)
    if path.is_file():
        try:
            cached = load_file(str(path))
            console.print(f"embeddings of {key['split']}: from the cache ({path})")
            return cached["embeddings"], cached["targets"]
        except Exception:  # a damaged cache entry is recomputed, never trusted
            path.unlink(missing_ok=True)
    view = " (mirrored)" if key.get("view") == "flipped" else ""
    started = time.perf_counter()
    embeddings, targets = extract_embeddings(model, batches, preprocess, device)
    seconds = time.perf_counter() - started
    console.print(f"embeddings of {key['split']}{view}: {len(targets):,} images in {seconds:.1f}s", highlight=False)
    atomic_write_tensors(path, {"embeddings": embeddings.contiguous(), "targets": targets.contiguous()})
    return embeddings, targets


@dataclass
class ProbeRun:
    """A linear probe's outcome: the one-epoch history it reads as, the probe, and the embeddings
    of every split (the final evaluation reuses them instead of running the backbone again)."""

    state: FitState
    probe: LinearProbe
    embeddings: dict[str, tuple[torch.Tensor, torch.Tensor]]


def _describe(probe: LinearProbe, dimensions: int, had_flipped_views: bool) -> str:
    views = " and their mirror images" if probe.flipped_views else ""
    if probe.label_c_values is not None:
        values = ", ".join(f"{c:g}" for c in sorted(set(probe.label_c_values)))
        return (f"linear probe: a logistic regression per label on {dimensions}-number embeddings, C per label "
                f"({values}) chosen by {probe.folds}-fold cross-validation on train (share of labels right: "
                f"{probe.cv_accuracy:.4f})")  # fmt: skip
    if probe.chosen_on == "cross-validation":
        how = f"{probe.folds}-fold cross-validation on train: {probe.cv_accuracy:.4f}"
        if had_flipped_views and not probe.flipped_views:
            how += "; mirrored views did not help"
    else:
        how = "validation accuracy (a class has one training image; the validation score is optimistic)"
    return (
        f"linear probe: logistic regression on {dimensions}-number embeddings{views}, C = {probe.c_value} "
        f"chosen by {how}"
    )


def run_linear_probe(
    model: ImageClassifier,
    splits: dict[str, Batches],
    preprocess: Preprocess,
    device,
    cache_key: dict,
    num_classes: int,
    seed: int,
    console: Console,
    flipped_views: Batches | None = None,
) -> ProbeRun:
    """Fit the last layer on frozen embeddings of ``splits`` ("train", "val" and maybe "test");
    ``flipped_views``: the training images again, mirrored, as extra views cross-validation may take."""
    features = {}
    for name, batches in splits.items():
        key = {**cache_key, "split": name, "imgclf": __version__}
        features[name] = _embeddings(model, batches, preprocess, device, key, console)
    flipped = None
    if flipped_views is not None:
        key = {**cache_key, "split": "train", "view": "flipped", "imgclf": __version__}
        flipped = _embeddings(model, flipped_views, preprocess, device, key, console)[0]
    if is_multi_label(features["train"][1]):
        probe = fit_label_probe(features["train"], features["val"], seed)
    else:
        probe = fit_linear_probe(features["train"], features["val"], num_classes, seed, flipped)
    set_classifier(model, probe)
    console.print(_describe(probe, features["train"][0].shape[1], flipped is not None), highlight=False)
    record = {"epoch": 1, "val_accuracy": probe.val_accuracy, "probe_c": probe.c_value,
              "probe_chosen_on": probe.chosen_on, "probe_cv_accuracy": probe.cv_accuracy,
              "probe_flipped_views": probe.flipped_views, "probe_scores": probe.scores,
              "probe_folds": probe.folds, "probe_label_c": probe.label_c_values}  # fmt: skip
    state = FitState(epoch=1, best_epoch=1, best_val_accuracy=probe.val_accuracy, history=[record])
    return ProbeRun(state, probe, features)
