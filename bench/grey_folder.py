"""A grey folder far from ImageNet: the Planet satellite chips (``planet_multilabel_small``: 256 px
JPEGs of the Amazon basin with a ``labels.csv``) as a single-label image folder, one class per
weather tag (clear, partly_cloudy, haze, cloudy: every chip has exactly one), converted to grey.
Texture without objects, in grey, from above: what ImageNet features fit least, like the
steel-surface, X-ray and microscope folders users bring. The split is the CSV's.

Usage: .venv/bin/python bench/grey_folder.py PLANET_FOLDER DESTINATION   Results: BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from PIL import Image

WEATHER = ("clear", "partly_cloudy", "haze", "cloudy")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("planet", type=Path, help="the unpacked planet_multilabel_small folder")
    parser.add_argument("destination", type=Path)
    args = parser.parse_args()
    counts: dict[tuple[str, str], int] = {}
    with open(args.planet / "labels.csv", newline="") as rows:
        for row in csv.DictReader(rows):
            weather = [tag for tag in row["labels"].split() if tag in WEATHER]
            if len(weather) != 1:
                continue
            target = args.destination / row["split"] / weather[0] / Path(row["path"]).with_suffix(".png").name
            target.parent.mkdir(parents=True, exist_ok=True)
            with Image.open(args.planet / row["path"]) as image:  # CMYK JPEGs: convert() gives the right colours
                image.convert("RGB").convert("L").save(target)
            counts[row["split"], weather[0]] = counts.get((row["split"], weather[0]), 0) + 1
    for (split, weather), count in sorted(counts.items()):
        print(f"{split:<6} {weather:<14} {count}")


if __name__ == "__main__":
    main()
