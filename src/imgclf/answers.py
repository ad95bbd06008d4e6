"""How an answer is made, the same whatever runs the model (a bundle through PyTorch, an exported
ONNX file through onnxruntime): any input turned into pixels, and probabilities turned into a label,
a label set or an abstention. Free of PyTorch, so predicting with an ONNX file never loads it."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from imgclf.data.decode import convert_channels, decode_image
from imgclf.data.readers import read_image_file
from imgclf.errors import ImgclfError

__all__ = ["ImageInput", "abstain_decision", "image_pixels", "label_set_decision"]

ImageInput = str | Path | bytes | Image.Image | np.ndarray


def image_pixels(image: ImageInput, channels: int, min_side: int | None = None) -> np.ndarray:
    """Any supported input as HxWxC uint8, through the same decoder as training (``min_side``:
    see ``decode_image``)."""
    if isinstance(image, str | Path):
        path = Path(image)
        return decode_image(read_image_file(path), str(path), channels, min_side=min_side)
    if isinstance(image, bytes):
        return decode_image(image, "<bytes>", channels, min_side=min_side)
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


def abstain_decision(
    classes: list[str],
    confidence: float,
    top_class: int,
    distance: float | None,
    confidence_threshold: float | None,
    distance_threshold: float | None,
) -> dict:
    """``{"label": name}``, or ``{"label": None, "abstained": reason}`` under the bundle's rule:
    the image is too far from its class's training images, or the model cannot tell classes
    apart. The bundle and an exported ONNX file apply this same function."""
    if distance is not None and distance_threshold is not None and distance > distance_threshold:
        reason = (
            f"the image is unlike the training images of {classes[top_class]} (embedding distance "
            f"{distance:.3f}, over the {distance_threshold:.3f} chosen on validation): it may show none "
            "of the classes"
        )
        return {"label": None, "abstained": reason}
    if confidence_threshold is not None and confidence < confidence_threshold:
        reason = (
            f"confidence {confidence:.3f} is below the threshold {confidence_threshold:.3f} chosen on "
            "validation: the model cannot tell between classes"
        )
        return {"label": None, "abstained": reason}
    return {"label": classes[top_class]}


def label_set_decision(
    labels: list[str],
    probabilities: list[float],
    thresholds: list[float],
    distance: float | None,
    distance_threshold: float | None,
) -> dict:
    """``{"labels": [...], "probabilities": {label: p}}``: each label whose probability reaches its
    threshold, most probable first (an empty set is an answer: none of the labels); with
    ``"abstained"`` and no labels when the image is unlike every label's training images. The
    bundle and an exported ONNX file apply this same function."""
    answer = {"labels": [], "probabilities": {name: round(float(p), 6) for name, p in zip(labels, probabilities)}}
    if distance is not None and distance_threshold is not None and distance > distance_threshold:
        answer["abstained"] = (f"the image is unlike the training images of every label (embedding distance "
                               f"{distance:.3f}, over the {distance_threshold:.3f} chosen on validation)")  # fmt: skip
        return answer
    chosen = [index for index, p in enumerate(probabilities) if p >= thresholds[index]]
    answer["labels"] = [labels[index] for index in sorted(chosen, key=lambda index: -probabilities[index])]
    return answer
