"""Small image data made at test time: folders of PNG/JPEG files a model can learn from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def pattern_image(label: int, size: int, rng: np.random.Generator, channels: int = 3) -> Image.Image:
    """A learnable image: class 0 bright on the left half, class 1 on the right, class 2 top...
    plus noise, so a small CNN separates the classes within a few epochs."""
    pixels = rng.integers(0, 60, size=(size, size, channels), dtype=np.uint8)
    half = size // 2
    regions = [
        (slice(None), slice(0, half)),
        (slice(None), slice(half, None)),
        (slice(0, half), slice(None)),
        (slice(half, None), slice(None)),
    ]
    rows, cols = regions[label % len(regions)]
    pixels[rows, cols] = np.clip(pixels[rows, cols].astype(int) + 180, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels[:, :, 0] if channels == 1 else pixels)


def write_class_folder(
    root: Path,
    classes: list[str],
    per_class: int,
    size: int = 16,
    channels: int = 3,
    suffix: str = ".png",
    seed: int = 0,
) -> Path:
    rng = np.random.default_rng(seed)
    for label, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            pattern_image(label, size, rng, channels).save(folder / f"{index:03d}{suffix}")
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """root/<class>/<image>.png, three classes of 24 RGB images of 16x16 px."""
    return write_class_folder(tmp_path / "shapes", ["left", "right", "top"], per_class=24)


@pytest.fixture(scope="session")
def digits_bundle(tmp_path_factory) -> Path:
    """A digits bundle the server tests share (15 epochs of simple_cnn, a few seconds)."""
    import imgclf

    output = tmp_path_factory.mktemp("serve") / "digits"
    imgclf.train("digits", output=output, model="simple_cnn", epochs=15)
    return output
