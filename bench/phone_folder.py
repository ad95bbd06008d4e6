"""A photo folder at phone resolution: every image of SOURCE upscaled to 4032x3024 (or 3024x4032
for portrait photos, 12 megapixels) and saved as a JPEG of quality 90 under DESTINATION, with the
same folder layout. Decoding dominates a run on such a folder; time ``imgclf train DESTINATION``.

Usage: .venv/bin/python bench/phone_folder.py SOURCE DESTINATION   Results: BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
from functools import partial
from multiprocessing import Pool
from pathlib import Path

from PIL import Image

from imgclf.data.layout import IMAGE_SUFFIXES

PHONE_SIZE = (4032, 3024)


def upscale(path: Path, source: Path, destination: Path) -> None:
    target = (destination / path.relative_to(source)).with_suffix(".jpg")
    target.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(path) as image:
        image = image.convert("RGB")
        size = PHONE_SIZE if image.width >= image.height else PHONE_SIZE[::-1]
        image.resize(size, Image.Resampling.BICUBIC).save(target, quality=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("destination", type=Path)
    args = parser.parse_args()
    files = sorted(p for p in args.source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    with Pool(2) as pool:
        pool.map(partial(upscale, source=args.source, destination=args.destination), files, chunksize=8)
    print(f"{len(files)} photos of {PHONE_SIZE[0]}x{PHONE_SIZE[1]} px in {args.destination}")


if __name__ == "__main__":
    main()
