"""Peak resident memory of training runs, each in its own process.

    .venv/bin/python bench/memory.py [--work DIR]

1. Fashion-MNIST on the CPU (decoded into memory: 70,000 x 28 x 28 uint8 = 52 MiB), lenet5 and
   simple_cnn, one epoch.
2. ResNet-18 at 224 px, batch 64, streaming from disk (`--max-memory-gb 0`), one epoch, on two
   folders of JPEGs that differ only in size (1x and 4x the images): with streaming, the peak
   should follow the batch, not the dataset.

Peak resident memory is the child's ``ru_maxrss`` from ``os.wait4`` (kilobytes on Linux).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

IMGCLF = [sys.executable, "-m", "imgclf"]


def peak_rss_mib(command: list[str]) -> tuple[float, float, int]:
    """(peak resident MiB, wall seconds, exit code) of one child process."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    return usage.ru_maxrss / 1024, time.perf_counter() - started, os.waitstatus_to_exitcode(status)


def photo_folder(root: Path, per_class: int) -> Path:
    """Two classes of 256 x 256 JPEGs (random smooth noise; the content does not matter here)."""
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            small = rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
            Image.fromarray(small).resize((256, 256), Image.BILINEAR).save(folder / f"{index}.jpg", quality=90)
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="runs/bench-memory", help="folder for data and bundles")
    parser.add_argument("--per-class", type=int, default=96, help="images per class of the smaller folder")
    args = parser.parse_args()
    work = Path(args.work)
    runs = {}
    for model in ("lenet5", "simple_cnn"):
        command = IMGCLF + ["train", "fashion-mnist", "--model", model, "--epochs", "1", "--output",
                            str(work / f"fashion-{model}"), "--overwrite"]  # fmt: skip
        runs[f"fashion-mnist {model}, 1 epoch, in memory"] = peak_rss_mib(command)
    for factor in (1, 4):
        data = photo_folder(work / f"photos-x{factor}", args.per_class * factor)
        command = IMGCLF + ["train", str(data), "--model", "resnet18", "--input-size", "224", "--batch-size", "64",
                            "--epochs", "1", "--max-memory-gb", "0", "--augment", "none", "--output",
                            str(work / f"resnet18-x{factor}"), "--overwrite"]  # fmt: skip
        runs[f"resnet18 224 px batch 64, streaming, {2 * args.per_class * factor} images"] = peak_rss_mib(command)
    rows = [{"run": name, "peak_rss_mib": round(rss, 1), "seconds": round(seconds, 1), "exit_code": code}
            for name, (rss, seconds, code) in runs.items()]  # fmt: skip
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
