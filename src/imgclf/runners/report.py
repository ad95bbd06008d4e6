"""The report runner: writes ``report.html`` into a bundle, at the end of ``train`` and for
``imgclf report BUNDLE [DATA]``."""

from __future__ import annotations

from pathlib import Path

import torch
from rich.console import Console

from imgclf.bundle import Bundle, bundle_temperature, load_bundle
from imgclf.data.dataset import BUILTIN_DATASETS
from imgclf.data.prepare import StreamingSplit, TensorSplit
from imgclf.engine.checkpoint import atomic_write_bytes
from imgclf.errors import ImgclfError
from imgclf.explain.figures import explanation_png
from imgclf.explain.gradcam import explain_batch
from imgclf.explain.report import REPORT_FILE, GalleryItem, render_report
from imgclf.models.info import count_flops, layer_summary, measure_latency
from imgclf.runners.common import stderr_console

__all__ = ["GALLERY_SIZE", "mistakes_gallery", "recorded_data", "run_report", "write_report"]

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
    temperature = bundle_temperature(bundle)
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


def recorded_data(bundle: Bundle) -> str | None:
    """The data the bundle was trained on, when it can still be read from here."""
    source = bundle.description.get("data", {}).get("source")
    if source and (source in BUILTIN_DATASETS or Path(source).exists()):
        return source
    return None


def run_report(
    bundle_dir: str | Path,
    data: str | None = None,
    data_dir: str | Path | None = None,
    device: str = "auto",
    console: Console | None = None,
) -> Path:
    """Regenerate ``report.html``. With DATA (or the recorded training data when it is still
    there) the test split is evaluated afresh and the worst mistakes are shown."""
    from imgclf.runners.evaluate import evaluate_split

    console = console or stderr_console()
    bundle = load_bundle(bundle_dir)
    data = data or recorded_data(bundle)
    if data is None:
        gallery: list[GalleryItem] | str = (
            "The training data is not available here; run imgclf report BUNDLE DATA to show the worst mistakes."
        )
        return write_report(bundle, gallery)
    splits = ("test", "val")
    for split in splits:
        try:
            evaluation = evaluate_split(bundle, data, split, data_dir, device, console)
            break
        except ImgclfError as error:
            if split == splits[-1]:
                raise
            console.print(f"note: {error}; using the validation split")
    bundle.metrics = {**bundle.metrics, split: evaluation.metrics}
    gallery = mistakes_gallery(bundle, evaluation.split, evaluation.logits, evaluation.targets)
    return write_report(bundle, gallery)
