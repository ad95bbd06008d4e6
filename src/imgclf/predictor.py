"""Predictions from a bundle, for the Python API, the CLI and (later) the server."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from imgclf.bundle import Bundle, load_bundle
from imgclf.data.decode import convert_channels, decode_image
from imgclf.data.prepare import Preprocess
from imgclf.errors import BadImageError, ImgclfError

__all__ = ["Classifier", "ImageInput", "load"]

ImageInput = str | Path | bytes | Image.Image | np.ndarray


def _to_pixels(image: ImageInput, channels: int) -> np.ndarray:
    """Any supported input as HxWxC uint8, through the same decoder as training."""
    if isinstance(image, str | Path):
        path = Path(image)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise BadImageError(str(path), "no such file") from None
        except OSError as error:
            raise BadImageError(str(path), f"cannot read file ({error.strerror})") from None
        return decode_image(data, str(path), channels)
    if isinstance(image, bytes):
        return decode_image(image, "<bytes>", channels)
    if isinstance(image, Image.Image):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return decode_image(buffer.getvalue(), "<PIL image>", channels)
    if isinstance(image, np.ndarray):
        pixels = image if image.ndim == 3 else image[:, :, None]
        if pixels.dtype != np.uint8 or pixels.shape[2] not in (1, 3):
            raise ImgclfError("a numpy image must be HxW, HxWx1 or HxWx3 uint8")
        return convert_channels(pixels, channels)
    raise ImgclfError(f"cannot use {type(image).__name__} as an image")


class Classifier:
    """A trained model with its preprocessing: ``imgclf.load(bundle).predict(images)``."""

    def __init__(self, bundle: Bundle, device: str | torch.device = "cpu"):
        self.bundle = bundle
        self.device = torch.device(device)
        self.model = bundle.model.to(self.device, memory_format=torch.channels_last).eval()
        self.preprocess = bundle.preprocess
        self.classes = bundle.classes

    def _prepare(self, image: ImageInput) -> np.ndarray:
        return self.preprocess.prepare_pixels(_to_pixels(image, self.preprocess.channels))

    @torch.no_grad()
    def _probabilities(self, prepared: list[np.ndarray]) -> torch.Tensor:
        batch = torch.from_numpy(np.stack(prepared)).to(self.device)
        return torch.softmax(self.model(self.preprocess.normalize(batch)).float(), dim=1).cpu()

    def predict_proba(self, images: list[ImageInput]) -> np.ndarray:
        """Class probabilities, one row per image (raises BadImageError for a bad image)."""
        return self._probabilities([self._prepare(image) for image in images]).numpy()

    def predict(self, images: list[ImageInput], top_k: int = 5, batch_size: int = 64) -> list[dict]:
        """Per image ``{"top_k": [{"label", "probability"}...]}`` or ``{"error": message}``;
        a ``"path"`` key is added for images given as paths."""
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
                good.append((index, self._prepare(image)))
            except BadImageError as error:
                entry["error"] = error.reason
            results.append(entry)
        if good:
            probs = self._probabilities([pixels for _, pixels in good])
            values, indices = probs.topk(top_k, dim=1)
            for row, (index, _) in enumerate(good):
                results[index]["top_k"] = [
                    {"label": self.classes[int(i)], "probability": round(float(p), 6)}
                    for p, i in zip(values[row], indices[row])
                ]
        return results


def load(bundle_dir: str | Path, device: str | torch.device = "cpu") -> Classifier:
    """Load a bundle directory for prediction."""
    return Classifier(load_bundle(bundle_dir), device=device)


def load_pretrained_classifier(model_name: str, source: str | None = None, device: str = "cpu") -> Classifier:
    """A zoo model with its ImageNet weights and their preprocessing, as a Classifier over the
    1000 ImageNet classes (no training, no bundle)."""
    from imgclf.models import create_model
    from imgclf.transfer import imagenet_class_names, load_pretrained, load_weights_into

    weights = load_pretrained(model_name, source)
    model = create_model(model_name, num_classes=1000, in_chans=3, input_size=weights.input_size)
    fresh = load_weights_into(model, weights)
    if fresh:
        raise ImgclfError(f"{weights.source}: does not hold a complete {model_name} (missing {fresh[0]})")
    preprocess = Preprocess(
        weights.input_size, 3, tuple(weights.mean), tuple(weights.std), resize_size=weights.resize_size
    )
    description = {"architecture": model_name, "pretrained": weights.describe()}
    bundle = Bundle(
        Path(weights.source), model.eval(), preprocess, weights.classes or imagenet_class_names(), description, {}
    )
    return Classifier(bundle, device=device)
