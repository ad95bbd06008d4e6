"""The predict runner: files and folders in, top-k labels out."""

from __future__ import annotations

from pathlib import Path

from imgclf.data.layout import expand_image_paths
from imgclf.predictor import load, load_pretrained_classifier

__all__ = ["run_predict"]


def run_predict(
    bundle_dir: str | Path | None,
    inputs: list[str],
    top_k: int = 5,
    device: str = "cpu",
    pretrained: tuple[str, str | None] | None = None,
    abstain: bool = True,
    tta: str = "none",
) -> list[dict]:
    """Top-k labels from a bundle, or from ``pretrained`` = (model name, weights file or None);
    ``tta="flip"``: each image averaged with its mirror image."""
    if pretrained is not None:
        classifier = load_pretrained_classifier(*pretrained, device=device, tta=tta)
    else:
        classifier = load(bundle_dir, device=device, abstain=abstain, tta=tta)
    return classifier.predict([str(path) for path in expand_image_paths(inputs)], top_k=top_k)
