"""Predictions from a bundle, for the Python API, the CLI and (later) the server."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from imgclf.answers import ImageInput, abstain_decision, image_pixels, label_set_decision
from imgclf.bundle import Bundle, BundleDescription, load_bundle
from imgclf.engine.label_sets import nearest_centroid
from imgclf.errors import BadImageError, ImgclfError
from imgclf.explain.calibration import centroid_distance
from imgclf.models.inference import folded_for_inference

__all__ = ["Classifier", "ImageInput", "abstain_decision", "image_pixels", "label_set_decision", "load"]

TTA_MODES = ("none", "flip")


class Classifier:
    """A trained model with its preprocessing: ``imgclf.load(bundle).predict(images)``."""

    def __init__(self, bundle: Bundle, device: str | torch.device = "cpu", abstain: bool = True, tta: str = "none"):
        if tta not in TTA_MODES:
            raise ImgclfError(f"tta must be one of {', '.join(TTA_MODES)}, not {tta!r}")
        self.bundle = bundle
        # "flip": each image's logits averaged with its mirror image's (test-time augmentation);
        # only for images whose class survives a mirror (photos, not text or digits).
        self.flip = tta == "flip"
        self.device = torch.device(device)
        self.model = bundle.model.to(self.device, memory_format=torch.channels_last).eval()
        # Predictions run on a copy with the batch norms folded into the convolutions (faster);
        # ``model`` itself stays as trained, for Grad-CAM's hooks and for callers.
        self._inference_model = folded_for_inference(self.model)
        self.preprocess = bundle.preprocess
        self.classes = bundle.classes
        # Probabilities are softmax(logits / temperature), the temperature fitted on validation.
        self.temperature = bundle.description.temperature
        self.abstain_threshold = bundle.description.abstain_threshold if abstain else None
        # Abstain also when the embedding is far from the predicted class's training images.
        self.centroids = bundle.centroids if abstain else None
        distance = bundle.description.abstain_distance_threshold
        self.distance_threshold = float(distance) if distance is not None and self.centroids is not None else None
        # Multi-label bundles: a sigmoid per label, sigmoid(logit / T_label), and a threshold per label.
        self.multi_label = bundle.description.multi_label
        if self.multi_label:
            self.label_temperatures = torch.tensor(bundle.description.label_temperatures)
            self.label_thresholds = bundle.description.label_thresholds

    def prepare(self, image: ImageInput) -> np.ndarray:
        pixels = image_pixels(image, self.preprocess.channels, self.preprocess.decode_side)
        return self.preprocess.prepare_pixels(pixels)

    @torch.no_grad()
    def _forward(self, prepared: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Probabilities (softmax of logits / temperature) and, when the bundle has class
        centroids, each image's embedding distance to its predicted class's centroid."""
        batch = self.preprocess.normalize(torch.from_numpy(np.stack(prepared)).to(self.device))
        model = self._inference_model
        features = model.forward_features(batch)
        if self.distance_threshold is None:
            logits = self._with_mirror(model.forward_head(features).float(), batch)
            return self.calibrated(logits.cpu()), None
        logits, embeddings = model.forward_head_and_embedding(features)
        probabilities = self.calibrated(self._with_mirror(logits.float(), batch).cpu())
        embeddings = torch.nn.functional.normalize(torch.flatten(embeddings, 1).float(), dim=1).cpu()
        if self.multi_label:  # the nearest label's training images
            return probabilities, nearest_centroid(embeddings, self.centroids)[1]
        return probabilities, centroid_distance(embeddings, self.centroids, probabilities.argmax(dim=1))

    def calibrated(self, logits: torch.Tensor) -> torch.Tensor:
        """Probabilities from logits: softmax(logits / T), or for label sets sigmoid(logit / T_label)."""
        if self.multi_label:
            return torch.sigmoid(logits / self.label_temperatures)
        return torch.softmax(logits / self.temperature, dim=1)

    def _with_mirror(self, logits: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
        """With flip test-time augmentation, the mean of the image's and its mirror's logits (the
        embedding distance stays the image's own)."""
        if not self.flip:
            return logits
        return (logits + self._inference_model(torch.flip(batch, dims=(3,))).float()) / 2

    def _probabilities(self, prepared: list[np.ndarray]) -> torch.Tensor:
        return self._forward(prepared)[0]

    def predict_proba(self, images: list[ImageInput]) -> np.ndarray:
        """Class probabilities, one row per image (raises BadImageError for a bad image); on a
        multi-label bundle each label's own probability (the row does not sum to 1)."""
        return self._probabilities([self.prepare(image) for image in images]).numpy()

    def predict(self, images: list[ImageInput], top_k: int = 5, batch_size: int = 64) -> list[dict]:
        """Per image ``{"label", "top_k": [{"label", "probability"}...]}`` or ``{"error": message}``;
        a ``"path"`` key is added for images given as paths. ``label`` is the top class, or None
        with an ``"abstained"`` reason when the confidence is under the bundle's abstain threshold."""
        top_k = max(1, min(top_k, len(self.classes)))
        results: list[dict] = []
        for start in range(0, len(images), batch_size):
            results.extend(self._predict_chunk(images[start : start + batch_size], top_k))
        return results

    def _predict_chunk(self, images: list[ImageInput], top_k: int) -> list[dict]:
        results: list[dict] = []
        good: list[tuple[int, np.ndarray]] = []
        for index, image in enumerate(images):
            entry = {"path": str(image)} if isinstance(image, str | Path) else {}
            try:
                good.append((index, self.prepare(image)))
            except BadImageError as error:
                entry["error"] = error.reason
            results.append(entry)
        if good:
            answers = self.predict_prepared([pixels for _, pixels in good], top_k)
            for (index, _), answer in zip(good, answers):
                results[index].update(answer)
        return results

    def predict_prepared(self, prepared: list[np.ndarray], top_k: int = 5) -> list[dict]:
        """``predict`` for images already through ``prepare`` (CxSxS uint8): the server prepares
        each request's image on its own, so one image that cannot be prepared fails only its request."""
        top_k = max(1, min(top_k, len(self.classes)))
        probs, distances = self._forward(prepared)
        if self.multi_label:
            return [self._label_set(probs[row], None if distances is None else float(distances[row]), top_k)
                    for row in range(len(prepared))]  # fmt: skip
        values, indices = probs.topk(top_k, dim=1)
        answers = []
        for row in range(len(prepared)):
            distance = None if distances is None else float(distances[row])
            answer = self._decision(float(values[row, 0]), int(indices[row, 0]), distance)
            answer["top_k"] = [
                {"label": self.classes[int(i)], "probability": round(float(p), 6)}
                for p, i in zip(values[row], indices[row])
            ]
            answers.append(answer)
        return answers

    def _label_set(self, probabilities: torch.Tensor, distance: float | None, top_k: int) -> dict:
        """A multi-label answer: ``labels`` (each label at or above its threshold, most probable
        first; maybe none), every label's probability, the top k, and why it abstained."""
        answer = label_set_decision(self.classes, probabilities.tolist(), self.label_thresholds, distance,
                                    self.distance_threshold)  # fmt: skip
        values, indices = probabilities.topk(top_k)
        answer["top_k"] = [{"label": self.classes[int(i)], "probability": round(float(p), 6)}
                           for p, i in zip(values, indices)]  # fmt: skip
        return answer

    def _decision(self, confidence: float, top_class: int, distance: float | None) -> dict:
        return abstain_decision(
            self.classes, confidence, top_class, distance, self.abstain_threshold, self.distance_threshold
        )


def load(
    bundle_dir: str | Path, device: str | torch.device = "cpu", abstain: bool = True, tta: str = "none"
) -> Classifier:
    """Load a bundle directory for prediction; ``abstain=False`` always names a label;
    ``tta="flip"`` averages each image with its mirror image (photos: BENCHMARKS.md)."""
    return Classifier(load_bundle(bundle_dir), device=device, abstain=abstain, tta=tta)


def load_pretrained_classifier(
    model_name: str, source: str | None = None, device: str = "cpu", tta: str = "none"
) -> Classifier:
    """A zoo model with its ImageNet weights and their preprocessing, as a Classifier over the
    1000 ImageNet classes (no training, no bundle)."""
    from imgclf.models import create_model
    from imgclf.transfer import imagenet_class_names, load_pretrained, load_weights_into

    weights = load_pretrained(model_name, source)
    model = create_model(model_name, num_classes=1000, in_chans=3, input_size=weights.input_size)
    fresh = load_weights_into(model, weights)
    if fresh:
        raise ImgclfError(f"{weights.source}: does not hold a complete {model_name} (missing {fresh[0]})")
    preprocess = weights.preprocess()
    description = BundleDescription({"architecture": model_name, "pretrained": weights.describe()})
    bundle = Bundle(
        Path(weights.source), model.eval(), preprocess, weights.classes or imagenet_class_names(), description, {}
    )
    return Classifier(bundle, device=device, tta=tta)
