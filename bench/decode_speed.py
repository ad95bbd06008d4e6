"""Decoding phone-sized JPEGs: one image through ``decode_image`` and ``Preprocess.prepare_pixels``
(what training, ``predict`` and the server do to every file) at full size and at the reduced scale
the JPEG decoder offers when only a 224 px crop of a 256 px resize is needed.

The photos are made here: a real photo from scikit-learn (china.jpg, 427x640) upscaled to each size
and saved as a JPEG of quality 90, so the decoder sees photo-like content at phone resolutions.

Usage: .venv/bin/python bench/decode_speed.py [--repeats 10]   Results: BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import io
import time

import numpy as np
from PIL import Image
from sklearn.datasets import load_sample_image

from imgclf.data.decode import decode_image
from imgclf.data.prepare import Preprocess

SIZES = ((640, 480), (1600, 1200), (4032, 3024), (6000, 4000))  # VGA, 2 MP, a 12 MP phone, 24 MP


def photo_jpeg(width: int, height: int) -> bytes:
    image = Image.fromarray(load_sample_image("china.jpg")).resize((width, height), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def seconds_per_image(data: bytes, preprocess: Preprocess, min_side: int | None, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        preprocess.prepare_pixels(decode_image(data, "photo.jpg", 3, min_side=min_side))
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10, help="decodes per measurement (the median is kept)")
    args = parser.parse_args()
    preprocess = Preprocess(224, 3, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), resize_size=256)
    print("| photo | file | full decode | reduced-scale decode | faster |")
    print("| --- | --- | --- | --- | --- |")
    for width, height in SIZES:
        data = photo_jpeg(width, height)
        full = seconds_per_image(data, preprocess, None, args.repeats)
        reduced = seconds_per_image(data, preprocess, preprocess.decode_side, args.repeats)
        print(f"| {width}x{height} | {len(data) / 1e6:.1f} MB | {1000 * full:.1f} ms | {1000 * reduced:.1f} ms "
              f"| {full / reduced:.1f}x |", flush=True)  # fmt: skip
    print("one core, the median of", args.repeats, "decodes, each followed by the resize and 224 px centre crop")


if __name__ == "__main__":
    main()
