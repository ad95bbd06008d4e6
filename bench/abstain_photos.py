"""How often `predict` withholds a label, on photos of the trained classes and on images of none.

For each photo folder (train/ and val/): an EfficientNet-Lite0 linear probe on its training
photos, calibration and abstain thresholds fitted on half of its validation photos (as `train`
fits them on the validation split), then the share withheld of the other half (held-out photos
of the trained classes: should be near 0), of 60 uniform-noise images and 20 flat grey images
(should be 1), and of the validation photos of the other folders (images of none of the classes).

Usage: .venv/bin/python bench/abstain_photos.py FOLDER [FOLDER ...]   (2 CPU cores: about 2 minutes
for the three shared photo folders). Results: BENCHMARKS.md.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from imgclf.data.batches import make_batches
from imgclf.data.dataset import SplitPolicy, load_dataset
from imgclf.data.prepare import Preprocess, TensorSplit, decode_split
from imgclf.engine.probe import extract_embeddings, fit_linear_probe
from imgclf.explain.calibration import calibrate, centroid_distance, class_centroids
from imgclf.models import create_model
from imgclf.transfer import load_pretrained, load_weights_into

MODEL = "efficientnet_lite0"


def embed(model, preprocess: Preprocess, images: torch.Tensor) -> torch.Tensor:
    split = TensorSplit(images, torch.zeros(len(images), dtype=torch.int64), [str(i) for i in range(len(images))])
    return extract_embeddings(model, make_batches(split, 32, workers=0), preprocess, torch.device("cpu"))[0]


def main(folders: list[str]) -> None:
    weights = load_pretrained(MODEL)
    preprocess = Preprocess(224, 3, weights.mean, weights.std, resize_size=weights.resize_size)
    model = create_model(MODEL, num_classes=1000).to(memory_format=torch.channels_last)
    load_weights_into(model, weights)
    features = {}
    for folder in folders:
        dataset = load_dataset(folder, SplitPolicy(0))
        decoded = {name: decode_split(dataset.splits[name], preprocess)[0] for name in ("train", "val")}
        features[folder] = {name: (embed(model, preprocess, split.images), split.targets) for name, split in
                            decoded.items()}  # fmt: skip
    generator = torch.Generator().manual_seed(0)
    noise = embed(model, preprocess, torch.randint(0, 256, (60, 3, 224, 224), dtype=torch.uint8, generator=generator))
    grey = 128 + 16 * torch.randint(0, 8, (20, 3, 1, 1), dtype=torch.uint8, generator=generator)
    flat = embed(model, preprocess, grey.expand(20, 3, 224, 224).contiguous())
    # The 64 noise images `train` tunes the distance check with (other ones than those measured).
    tuning_generator = torch.Generator().manual_seed(1)
    tuning = embed(model, preprocess, torch.randint(0, 256, (64, 3, 224, 224), dtype=torch.uint8,
                                                    generator=tuning_generator))  # fmt: skip
    for folder, splits in features.items():
        others = torch.cat([features[other]["val"][0] for other in features if other != folder])
        print(folder, withheld_shares(splits, {"noise": noise, "flat grey": flat, "other folders": others}, tuning))


def withheld_shares(splits: dict, foreign: dict[str, torch.Tensor], tuning: torch.Tensor) -> str:
    train_x, train_y = splits["train"]
    val_x, val_y = splits["val"]
    order = np.random.default_rng(0).permutation(len(val_y))
    fit_rows, held_rows = order[: len(order) // 2], order[len(order) // 2 :]
    classes = int(train_y.max()) + 1
    probe = fit_linear_probe((train_x, train_y), (val_x[fit_rows], val_y[fit_rows]), classes)
    weight, bias = torch.tensor(probe.weight, dtype=torch.float32), torch.tensor(probe.bias, dtype=torch.float32)
    centroids = class_centroids(torch.nn.functional.normalize(train_x, dim=1), train_y, classes)

    def logits(x):
        return x @ weight.T + bias

    noise = (logits(tuning), torch.nn.functional.normalize(tuning, dim=1))
    fitted = calibrate(logits(val_x[fit_rows]), val_y[fit_rows], torch.nn.functional.normalize(val_x[fit_rows], dim=1),
                       centroids, noise)  # fmt: skip

    def share(x: torch.Tensor) -> float:
        probabilities = torch.softmax(logits(x) / fitted["temperature"], dim=1)
        confidence, predicted = probabilities.max(dim=1)
        distance = centroid_distance(torch.nn.functional.normalize(x, dim=1), centroids, predicted)
        withheld = (confidence < fitted["abstain_threshold"]) | (distance > fitted["abstain_distance_threshold"])
        return float(withheld.float().mean())

    parts = [f"held-out photos {share(val_x[held_rows]):.3f}"]
    parts += [f"{name} {share(x):.2f}" for name, x in foreign.items()]
    return ", ".join(parts)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
