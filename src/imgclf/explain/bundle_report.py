"""A bundle's report, written into its folder: the page (``explain.report``), the model card
measured here, and the gallery of the worst mistakes with their Grad-CAM."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from imgclf.bundle import Bundle
from imgclf.data.prepare import StreamingSplit, TensorSplit
from imgclf.explain.figures import explanation_png
from imgclf.explain.gradcam import explain_batch
from imgclf.explain.report import REPORT_FILE, GalleryItem, render_report
from imgclf.files import atomic_write_bytes
from imgclf.models.info import count_flops, layer_summary, measure_latency

__all__ = ["GALLERY_SIZE", "mistakes_gallery", "write_report"]


GALLERY_SIZE = 8  # worst mistakes shown in the report


def _split_images(split: TensorSplit | StreamingSplit, indices: list[int]) -> tuple[torch.Tensor, list[str]]:
    if isinstance(split, TensorSplit):
        return split.images[indices].cpu(), [split.keys[i] for i in indices]
    images, names = [], []
    for index in indices:
        item = split[index]
        if item is not None:  # a file that no longer decodes is left out of the gallery
            images.append(item[0])
            names.append(split.split.reader.describe(split.split.keys[index]))
    return (torch.stack(images) if images else torch.empty(0)), names


def mistakes_gallery(
    bundle: Bundle, split: TensorSplit | StreamingSplit, logits: torch.Tensor, targets: torch.Tensor,
    limit: int = GALLERY_SIZE,
) -> list[GalleryItem]:  # fmt: skip
    """The ``limit`` wrong predictions made with the highest confidence, each explained."""
    if len(targets) == 0:
        return []
    if bundle.description.multi_label:
        return _label_set_mistakes(bundle, split, logits, targets, limit)
    temperature = bundle.description.temperature
    confidence, predicted = torch.softmax(logits / temperature, dim=1).max(dim=1)
    wrong = torch.nonzero(predicted != targets).flatten()
    worst = wrong[confidence[wrong].argsort(descending=True)][:limit].tolist()
    if not worst:
        return []
    images, names = _split_images(split, worst)
    if len(images) == 0:
        return []
    explanations = explain_batch(bundle.model, images, bundle.preprocess.normalize, temperature)
    gallery = []
    for explanation, index, name in zip(explanations, worst, names):
        predicted_name, true_name = bundle.classes[explanation.predicted], bundle.classes[int(targets[index])]
        caption = f"{name}: a {true_name} taken for {predicted_name} ({explanation.probability:.2f})"
        gallery.append(GalleryItem(explanation_png(explanation, predicted_name, true_name), caption))
    return gallery


def _label_set_mistakes(bundle: Bundle, split, logits: torch.Tensor, targets: torch.Tensor, limit: int):
    """The images whose label sets are most wrong (each wrong decision weighted by how sure it
    was), each with Grad-CAM of its worst label: the one missed or invented most confidently."""
    description = bundle.description
    probabilities = torch.sigmoid(logits / torch.tensor(description.label_temperatures))
    given = probabilities >= torch.tensor(description.label_thresholds)
    truth = targets > 0.5
    wrong = given != truth
    cost = ((probabilities - truth.float()).abs() * wrong).sum(dim=1)
    worst = [i for i in cost.argsort(descending=True)[:limit].tolist() if cost[i] > 0]
    if not worst:
        return []
    images, names = _split_images(split, worst)
    if len(images) == 0:
        return []
    focus = ((probabilities - truth.float()).abs() * wrong)[worst].argmax(dim=1)
    explanations = explain_batch(bundle.model, images, bundle.preprocess.normalize, classes=focus)
    gallery = []
    for explanation, index, name, label in zip(explanations, worst, names, focus.tolist()):
        carried = [bundle.classes[i] for i in torch.nonzero(truth[index]).flatten().tolist()]
        chosen = [bundle.classes[i] for i in torch.nonzero(given[index]).flatten().tolist()]
        missed, invented = sorted(set(carried) - set(chosen)), sorted(set(chosen) - set(carried))
        caption = (f"{name}: missed {', '.join(missed) or 'none'}; invented {', '.join(invented) or 'none'} "
                   f"(Grad-CAM of {bundle.classes[label]}, p = {float(probabilities[index, label]):.2f})")  # fmt: skip
        explanation = replace(explanation, probability=float(probabilities[index, label]))  # its sigmoid, not a softmax
        picture = explanation_png(explanation, ", ".join(chosen) or "no label", ", ".join(carried) or "no label")
        gallery.append(GalleryItem(picture, caption))
    return gallery


def _model_card(bundle: Bundle) -> dict:
    model, preprocess = bundle.model.cpu().eval(), bundle.preprocess
    return {
        "flops": count_flops(model, preprocess.channels, preprocess.input_size),
        "latency": measure_latency(model, 1, preprocess.channels, preprocess.input_size, repeats=10),
        "latency_device": f"cpu, {torch.get_num_threads()} threads",
        "layers": layer_summary(model),
    }


def write_report(bundle: Bundle, gallery: list[GalleryItem] | str) -> Path:
    """Render and write ``report.html`` into the bundle folder (atomically)."""
    html = render_report(bundle.description, bundle.metrics, gallery, _model_card(bundle))
    path = Path(bundle.path) / REPORT_FILE
    atomic_write_bytes(path, html.encode("utf-8"))
    return path
