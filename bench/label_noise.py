"""How well ``imgclf doctor --labels`` finds wrong labels: flip a share of the training labels of a
photo folder (or of scikit-learn's digits, written as PNG files) at random, seeded, and measure
how many of the flipped images the ranking puts in its top 10%, and how long the check takes.

Usage: .venv/bin/python bench/label_noise.py DATA.tar.gz|digits [--share 0.05] [--seed 0] [--work DIR]
DATA is a photo archive with train/ and val/ folders (as in the shared datasets). Results: BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import shutil
import tarfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from imgclf.runners.label_issues import run_label_check


def _unpack(archive: Path, work: Path) -> Path:
    with tarfile.open(archive) as handle:
        handle.extractall(work, filter="data")
    roots = [path.parent for path in work.rglob("train") if path.is_dir()]
    return roots[0]


def _write_digits(work: Path, seed: int) -> Path:
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(seed).permutation(len(digits.target))
    root = work / "digits"
    for position, index in enumerate(order):
        split = "val" if position < len(order) // 5 else "train"
        folder = root / split / str(digits.target[index])
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (digits.images[index] * 255 / 16).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{index:04d}.png")
    return root


def _flip(root: Path, share: float, seed: int) -> int:
    """Move ``share`` of the training images into another class's folder, named ``flipped-...``
    (no original file name starts so); returns how many."""
    classes = sorted(path.name for path in (root / "train").iterdir() if path.is_dir())
    files = sorted(path for path in (root / "train").rglob("*") if path.is_file())
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(files), size=max(1, round(share * len(files))), replace=False)
    for index in chosen:
        path = files[index]
        others = [name for name in classes if name != path.parent.name]
        target = root / "train" / others[rng.integers(len(others))] / f"flipped-{path.parent.name}-{path.name}"
        shutil.move(path, target)
    return len(chosen)


def _was_flipped(row: dict) -> bool:
    return Path(row["file"]).name.startswith("flipped-")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("--share", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default="runs/bench-label-noise")
    args = parser.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    root = _write_digits(work, args.seed) if args.data == "digits" else _unpack(Path(args.data), work)
    flipped = _flip(root, args.share, args.seed)
    started = time.perf_counter()
    result = run_label_check(str(root), seed=args.seed, output=work / "labels")
    seconds = time.perf_counter() - started
    top = result["issues"][: max(1, round(0.1 * len(result["issues"])))]
    found = sum(_was_flipped(row) for row in top)
    flagged = [row for row in result["issues"] if row["flagged"]]
    caught = sum(_was_flipped(row) for row in flagged)
    print(f"{args.data}: {result['images']} training images, {flipped} labels flipped ({args.share:.0%}); "
          f"{result['method']}")  # fmt: skip
    print(f"flipped images in the top 10% ({len(top)}): {found}/{flipped} = {found / flipped:.1%}")
    print(f"flagged by cleanlab: {len(flagged)}, of them flipped: {caught} (recall {caught / flipped:.1%})")
    print(f"check took {seconds:.1f} s")


if __name__ == "__main__":
    main()
