"""What runs a model on decoded images, for the server and for predicting at scale: a bundle
through imgclf's Classifier, or an exported ONNX file through onnxruntime. Both take a list of
decoded images and give ``predict``'s JSON rows."""

from __future__ import annotations

import base64
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from imgclf.answers import abstain_decision, image_pixels, label_set_decision
from imgclf.data.decode import bound_aspect_ratio, decode_image
from imgclf.errors import UsageError

if TYPE_CHECKING:  # PyTorch is loaded for a bundle only: an ONNX file runs without it
    from imgclf.predictor import Classifier

__all__ = ["BundleEngine", "Engine", "OnnxEngine", "open_engine", "runs_on_onnxruntime", "usable_cores"]


class Engine(Protocol):
    """What the server and ``Predictor`` need of a model (``BundleEngine`` and ``OnnxEngine`` both are one)."""

    metadata: dict  # /v1/metadata: classes, input contract, model card
    parallel_batches: int  # model calls that may run at once without fighting over the cores

    def decode(self, data: bytes, source: str) -> np.ndarray:
        """An uploaded file as the HxWxC uint8 image ``predict`` takes (BadImageError if it is not one)."""
        ...

    def prepare_array(self, pixels: np.ndarray) -> np.ndarray:
        """A decoded HxW or HxWxC uint8 image as ``predict`` takes it."""
        ...

    def predict(self, images: list[np.ndarray], top_k: int) -> list[dict]:
        """One JSON row per image: label (None when abstaining), top_k, and why it abstained."""
        ...

    def explain_png(self, image: np.ndarray) -> bytes:
        """A Grad-CAM picture of the decision (UsageError where the engine cannot make one)."""
        ...


def _modified(path: Path) -> str | None:
    """When a file was last written (UTC, ISO 8601): the date a bundle without one was trained."""
    try:
        return datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).isoformat(timespec="seconds")
    except OSError:
        return None


class BundleEngine:
    """A trained bundle: calibrated probabilities, abstaining, and Grad-CAM pictures."""

    # PyTorch already spreads one forward pass over every core; two at once would fight over them.
    parallel_batches = 1

    def __init__(self, classifier: Classifier):
        self.classifier = classifier
        self.classes = classifier.classes
        self.channels = classifier.preprocess.channels
        description = classifier.bundle.description
        self.metadata = {
            "kind": "bundle",
            "architecture": description.architecture,
            "classes": self.classes,
            "task": description.task,
            "params": description.params,
            "input": {"size": classifier.preprocess.input_size, "channels": self.channels},
            "metrics": description.summary or None,
            "calibration": description.calibration or None,
            "pretrained": description.pretrained_source,
            "finetune": description.finetune,
            "trained": description.created or _modified(classifier.bundle.path / "model.json"),
            "explain": True,
            "tta": "flip" if classifier.flip else "none",
        }

    def decode(self, data: bytes, source: str) -> np.ndarray:
        """Decoded and prepared (resized, CxSxS) in the request's own thread: the shared batch
        only ever holds images of the model's input size."""
        return self.classifier.preprocess.decode(data, source)

    def prepare_array(self, pixels: np.ndarray) -> np.ndarray:
        return self.classifier.prepare(pixels)

    def predict(self, images: list[np.ndarray], top_k: int) -> list[dict]:
        return self.classifier.predict_prepared(images, top_k=top_k)

    def explain_png(self, image: np.ndarray) -> bytes:
        import torch

        from imgclf.explain.figures import overlay_png
        from imgclf.explain.gradcam import explain_batch

        prepared = torch.from_numpy(np.array(image[None]))
        (explanation,) = explain_batch(
            self.classifier.model, prepared, self.classifier.preprocess.normalize, self.classifier.temperature
        )
        return overlay_png(explanation)


class OnnxEngine:
    """An ONNX file from ``imgclf export``: its metadata says how to feed it.

    Throughput comes from running batches side by side with one thread each, rather than one
    batch at a time spread over every core: measured on 2 cores with EfficientNet-Lite0 at 224 px,
    onnxruntime alone ran 205-213 images/s that way, and 119-203 on its default threads
    (bench/onnxruntime_threads.py). Two batches per core, because while one computes the other's
    answers travel back to their clients and their next requests arrive: served to 8 clients,
    165 requests/s with one per core and 181 with two (bench/serve_throughput.py, BENCHMARKS.md)."""

    def __init__(self, path: Path, threads: int = 1):
        from imgclf.export.runtime import onnx_session

        try:
            self.session = onnx_session(str(path), threads=threads)
        except Exception as error:  # onnxruntime's own exception types: not a model it can load
            if not type(error).__module__.startswith("onnxruntime"):
                raise
            raise UsageError(f"{path}: onnxruntime cannot load it as a model ({str(error).strip()})") from None
        self.parallel_batches = max(1, 2 * usable_cores() // threads)
        metadata = self.session.get_modelmeta().custom_metadata_map
        if "imgclf.classes" not in metadata:
            raise UsageError(f"{path}: not an ONNX file written by imgclf export (no class names in its metadata)")
        self.classes = json.loads(metadata["imgclf.classes"])
        self.contract = json.loads(metadata["imgclf.input"])
        self.channels = int(self.contract["channels"])
        abstain = json.loads(metadata.get("imgclf.abstain", "null")) or {}
        self.confidence_threshold = abstain.get("confidence_threshold")
        self.distance_threshold = abstain.get("distance_threshold")
        self.outputs = ["probabilities"] + (["centroid_distance"] if self.distance_threshold is not None else [])
        # Multi-label files: a sigmoid per label and each label's threshold (older files: single-label).
        self.task = json.loads(metadata.get("imgclf.task", '"single-label"'))
        self.thresholds = json.loads(metadata.get("imgclf.thresholds", "null"))
        self.metadata = {
            "kind": "onnx",
            "architecture": json.loads(metadata.get("imgclf.architecture", "null")),
            "classes": self.classes,
            "task": self.task,
            "input": self.contract,
            "quantization": json.loads(metadata.get("imgclf.quantization", "null")),
            "explain": False,
        }

    def decode(self, data: bytes, source: str) -> np.ndarray:
        # The graph resizes; an extreme strip is cut first so it cannot make the graph allocate GBs.
        # A large JPEG is decoded at a reduced scale that still covers the graph's resize (files
        # exported before the contract named ``shorter_side`` are decoded at full size).
        min_side = self.contract.get("shorter_side")
        return bound_aspect_ratio(decode_image(data, source, self.channels, min_side=min_side))

    def prepare_array(self, pixels: np.ndarray) -> np.ndarray:
        return bound_aspect_ratio(image_pixels(pixels, self.channels))

    def predict(self, images: list[np.ndarray], top_k: int) -> list[dict]:
        """One onnxruntime call per distinct image size (the graph resizes; a batch shares a size)."""
        rows: list[dict | None] = [None] * len(images)
        by_shape: dict[tuple, list[int]] = {}
        for index, pixels in enumerate(images):
            by_shape.setdefault(pixels.shape, []).append(index)
        for indices in by_shape.values():
            batch = np.stack([images[i] for i in indices])
            if self.contract["layout"] != "NHWC":
                batch = batch.transpose(0, 3, 1, 2)
            results = self.session.run(self.outputs, {self.contract["name"]: np.ascontiguousarray(batch)})
            distances = results[1] if len(results) > 1 else [None] * len(indices)
            # The top k of the whole batch at once (one argsort per row took 15 us of Python each).
            orders = np.argsort(-results[0], axis=1, kind="stable")[:, : max(1, top_k)]
            for row, index in enumerate(indices):
                distance = None if distances[row] is None else float(distances[row])
                rows[index] = self._row(results[0][row], orders[row], distance)
        return rows

    def _row(self, probabilities: np.ndarray, order: np.ndarray, distance: float | None) -> dict:
        top = [{"label": self.classes[i], "probability": round(float(probabilities[i]), 6)} for i in order.tolist()]
        if self.task == "multi-label":
            answer = label_set_decision(self.classes, probabilities.tolist(), self.thresholds, distance,
                                        self.distance_threshold)  # fmt: skip
            return {**answer, "top_k": top}
        decision = abstain_decision(self.classes, float(probabilities[order[0]]), int(order[0]), distance,
                                    self.confidence_threshold, self.distance_threshold)  # fmt: skip
        return {**decision, "top_k": top}

    def explain_png(self, image: np.ndarray) -> bytes:
        raise UsageError("Grad-CAM needs the bundle, not an exported ONNX file")


def usable_cores() -> int:
    """The cores this process may run on (a container's or taskset's limit, not the machine's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def runs_on_onnxruntime(source: str | Path) -> bool:
    """Whether ``source`` is an exported .onnx file (run by onnxruntime alone, never PyTorch)."""
    path = Path(source)
    return path.is_file() and path.suffix.lower() == ".onnx"


def open_engine(source: str | Path, threads: int = 1, tta: str = "none") -> BundleEngine | OnnxEngine:
    """A bundle folder or an .onnx file; nothing else is ever loaded (no pickles, no URLs).
    ``threads``: onnxruntime threads per model call (ONNX files only). ``tta="flip"``: a bundle
    averages each image with its mirror (an ONNX file does what it was exported with:
    ``imgclf export --tta flip``)."""
    path = Path(source)
    if path.is_dir():  # a bundle: PyTorch is loaded from here on
        from imgclf.bundle import is_bundle
        from imgclf.predictor import load

        if is_bundle(path):
            return BundleEngine(load(path, tta=tta))
    if runs_on_onnxruntime(path):
        if tta != "none":
            raise UsageError(f"{source}: --tta applies to a bundle; export the ONNX file with --tta {tta} instead")
        return OnnxEngine(path, threads)
    raise UsageError(f"{source}: not a bundle folder or an .onnx file from imgclf export")


def png_data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
