"""The predict runner: files and folders in, top-k labels out."""

from __future__ import annotations

from pathlib import Path

from imgclf.data.layout import IMAGE_SUFFIXES, is_junk
from imgclf.predictor import load, load_pretrained_classifier

__all__ = ["expand_image_paths", "run_predict"]


def expand_image_paths(inputs: list[str]) -> list[Path]:
    """Files as given (whatever their extension); folders searched for image files, in order."""
    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            paths.extend(
                found
                for found in sorted(path.rglob("*"))
                if found.is_file()
                and found.suffix.lower() in IMAGE_SUFFIXES
                and not any(is_junk(part) for part in found.relative_to(path).parts)
            )
        else:
            paths.append(path)  # a missing file becomes a per-file error in the result
    return paths


def run_predict(
    bundle_dir: str | Path | None,
    inputs: list[str],
    top_k: int = 5,
    device: str = "cpu",
    pretrained: tuple[str, str | None] | None = None,
    abstain: bool = True,
) -> list[dict]:
    """Top-k labels from a bundle, or from ``pretrained`` = (model name, weights file or None)."""
    if pretrained is not None:
        classifier = load_pretrained_classifier(*pretrained, device=device)
    else:
        classifier = load(bundle_dir, device=device, abstain=abstain)
    return classifier.predict([str(path) for path in expand_image_paths(inputs)], top_k=top_k)
