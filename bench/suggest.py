"""Which images to label next: ``imgclf suggest``'s strategies against random choice.

A photo folder with ``train/`` and ``val/``: the training images are the unlabelled pool. Every
run starts from one labelled image per class (seeded); then, as a user with ``suggest`` and
``update`` would, it labels images in rounds until there are 2, then 5, then 10 per class on
average, refitting a logistic regression on the labelled images' embeddings after each round, and
measures validation accuracy. ``random`` picks from the pool blindly, as a user without ``suggest``
would. All arms share the embeddings (EfficientNet-Lite2 ImageNet features, the photo default),
the regression (C = 0.01 on standardized features) and the seeds.

Usage: .venv/bin/python bench/suggest.py FOLDER [--seeds 10] [--backbone efficientnet_lite2]
Results: BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from imgclf.data.dataset import load_dataset
from imgclf.engine.active import STRATEGIES, choose_for_labelling
from imgclf.engine.image_embeddings import ImageEmbeddingCache, embed_files
from imgclf.engine.probe import _ProbeFitter
from imgclf.models import create_model
from imgclf.transfer import load_pretrained, load_weights_into

PER_CLASS = (2, 5, 10)
C_VALUE = 0.01


def embeddings(folder: str, backbone: str):
    weights = load_pretrained(backbone)
    preprocess = weights.preprocess()
    dataset = load_dataset(folder)
    model = create_model(backbone, num_classes=dataset.num_classes, input_size=preprocess.input_size)
    load_weights_into(model, weights)
    cache = ImageEmbeddingCache.for_model(model, preprocess)
    out = {}
    for name in ("train", "val"):
        split = dataset.splits[name]
        embedded = embed_files(model, preprocess, split.reader, split.keys, torch.device("cpu"), cache)
        out[name] = (embedded.embeddings.numpy().astype(np.float64), split.targets[embedded.indices])
    return dataset.classes, out


def fit(x: np.ndarray, y: np.ndarray, num_classes: int):
    return _ProbeFitter(x, y, 0).fit(C_VALUE, num_classes)


def accuracy(model, x: np.ndarray, y: np.ndarray) -> float:
    weight, bias = model
    return float(((x @ weight.T + bias).argmax(1) == y).mean())


def probabilities(model, x: np.ndarray) -> np.ndarray:
    weight, bias = model
    logits = x @ weight.T + bias
    logits -= logits.max(1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(1, keepdims=True)


def one_run(strategy: str, seed: int, classes: int, pool, val) -> list[float]:
    x, y = pool
    rng = np.random.default_rng(seed)
    labelled = [int(rng.choice(np.flatnonzero(y == c))) for c in range(classes)]
    scores = []
    for per_class in PER_CLASS:
        model = fit(x[labelled], y[labelled], classes)
        unlabelled = np.setdiff1d(np.arange(len(y)), labelled)
        wanted = per_class * classes - len(labelled)
        picked = choose_for_labelling(x[unlabelled], probabilities(model, x[unlabelled]), wanted, x[labelled],
                                      strategy, seed=seed)  # fmt: skip
        labelled += [int(unlabelled[i]) for i in picked]
        scores.append(accuracy(fit(x[labelled], y[labelled], classes), *val))
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--backbone", default="efficientnet_lite2")
    args = parser.parse_args()
    started = time.perf_counter()
    classes, splits = embeddings(args.folder, args.backbone)
    print(f"{args.folder}: {len(classes)} classes, pool {len(splits['train'][1])}, val {len(splits['val'][1])}; "
          f"embeddings in {time.perf_counter() - started:.0f} s")
    print("| strategy | " + " | ".join(f"{n} per class" for n in PER_CLASS) + " |")
    print("|---|" + "---|" * len(PER_CLASS))
    for strategy in STRATEGIES:
        results = np.array([one_run(strategy, seed, len(classes), splits["train"], splits["val"])
                            for seed in range(args.seeds)])  # fmt: skip
        cells = [f"{mean:.4f} ± {std:.4f}" for mean, std in zip(results.mean(0), results.std(0))]
        print(f"| {strategy} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
