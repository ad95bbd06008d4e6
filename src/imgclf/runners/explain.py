"""The explain runner: one PNG per image with the input, its Grad-CAM overlay and its saliency
map, titled with the predicted label and (when the image sits in a class folder) the true one."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from imgclf.answers import image_pixels
from imgclf.bundle import load_bundle
from imgclf.data.layout import expand_image_paths
from imgclf.engine.run_folder import check_targets, claim
from imgclf.engine.runtime import resolve_device
from imgclf.errors import BadImageError
from imgclf.explain.figures import explanation_png, stacked_png
from imgclf.explain.gradcam import explain_batch
from imgclf.files import atomic_write_bytes

__all__ = ["run_explain"]


def _output_name(path: Path, used: set[str]) -> str:
    """``<stem>.png``, made safe for any file system and unique within this run."""
    stem = re.sub(r"[^\w.-]+", "_", path.stem)[:100] or "image"
    name, number = f"{stem}.png", 2
    while name in used:
        name, number = f"{stem}-{number}.png", number + 1
    used.add(name)
    return name


def _explain_label_set(bundle, model, images: torch.Tensor, path: Path, target: Path) -> dict:
    """A multi-label image: one row of pictures per label the model gives (the most probable
    label when it gives none), stacked into one PNG, each row's Grad-CAM for its own label."""
    description = bundle.description
    with torch.no_grad():
        logits = model(bundle.preprocess.normalize(images)).float().cpu()[0]
    probabilities = torch.sigmoid(logits / torch.tensor(description.label_temperatures))
    given = [i for i in probabilities.argsort(descending=True).tolist()
             if probabilities[i] >= description.label_thresholds[i]]  # fmt: skip
    shown = given or [int(probabilities.argmax())]
    rows = []
    for label in shown:
        (explanation,) = explain_batch(model, images, bundle.preprocess.normalize, classes=torch.tensor([label]))
        explanation = replace(explanation, probability=float(probabilities[label]))  # the label's sigmoid
        title = bundle.classes[label] + ("" if given else " (not given: the most probable label)")
        rows.append(explanation_png(explanation, title, None, source=path.name))
    atomic_write_bytes(target, stacked_png(rows))
    return {"path": str(path), "output": str(target), "labels": [bundle.classes[i] for i in given],
            "probabilities": {name: round(float(p), 6) for name, p in zip(bundle.classes, probabilities)}}  # fmt: skip


def run_explain(bundle_dir: str | Path, inputs: list[str], output: str | Path, device: str = "cpu") -> list[dict]:
    """Explain each image; per image ``{"path", "output", "label", "probability", "true_label"}``
    (multi-label bundles: ``{"path", "output", "labels", "probabilities"}``, a Grad-CAM per label
    given) or ``{"path", "error"}`` for a file that cannot be used."""
    bundle = load_bundle(bundle_dir)
    torch_device = resolve_device(device)
    model = bundle.model.to(torch_device, memory_format=torch.channels_last)
    output, used = Path(output), set()
    paths = expand_image_paths(inputs)
    targets = [_output_name(path, used) for path in paths]
    check_targets(output, targets)  # before any work: never an image of the user's replaced
    output.mkdir(parents=True, exist_ok=True)
    claim(output, targets)
    temperature, results = bundle.description.temperature, []
    for path, name in zip(paths, targets):
        try:
            preprocess = bundle.preprocess
            pixels = preprocess.prepare_pixels(image_pixels(path, preprocess.channels, preprocess.decode_side))
        except BadImageError as error:
            results.append({"path": str(path), "error": error.reason})
            continue
        images = torch.from_numpy(np.array(pixels[None])).to(torch_device)  # a writable copy
        if bundle.description.multi_label:
            results.append(_explain_label_set(bundle, model, images, path, output / name))
            continue
        (explanation,) = explain_batch(model, images, bundle.preprocess.normalize, temperature)
        predicted = bundle.classes[explanation.predicted]
        # The parent folder names the true class in the usual root/<class>/<image> layout.
        true_label = path.parent.name if path.parent.name in bundle.classes else None
        target = output / name
        atomic_write_bytes(target, explanation_png(explanation, predicted, true_label, source=path.name))
        results.append(
            {
                "path": str(path),
                "output": str(target),
                "label": predicted,
                "probability": round(explanation.probability, 6),
                "true_label": true_label,
            }
        )
    return results
