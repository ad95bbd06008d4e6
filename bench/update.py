"""``imgclf update`` adding a class to a probe bundle, against a probe trained from scratch.

From a photo folder with ``train/`` and ``val/``: ``base`` holds every class but ``--add`` (and
``--drop``, to make a 10-class bundle of a 12-class set); ``plus`` is ``base`` with ``--add``'s first
50 training images and all its validation images. A linear-probe bundle (EfficientNet-Lite2, the photo
default) is trained on ``base``; then, timed as a user runs it (a fresh process, wall clock),
``imgclf update BUNDLE plus``; then a probe is trained on ``plus`` from scratch. Both are scored on
``plus``'s validation images. The embedding cache starts empty, so it holds what ``train`` put there.

Usage: .venv/bin/python bench/update.py FOLDER --add CLASS [--drop CLASS ...] [--work DIR]
Results: BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

IMGCLF = [sys.executable, "-m", "imgclf"]
TRAIN = ["--model", "efficientnet_lite2", "--pretrained", "--finetune", "linear-probe", "--json"]
NEW_CLASS_IMAGES = 50


def make_folders(source: Path, work: Path, add: str, drop: list[str]) -> tuple[Path, Path]:
    base, plus = work / "base", work / "plus"
    for split in ("train", "val"):
        for folder in sorted((source / split).iterdir()):
            if folder.name in drop or not folder.is_dir():
                continue
            files = sorted(folder.iterdir())
            if folder.name == add and split == "train":
                files = files[:NEW_CLASS_IMAGES]
            for root in (plus,) if folder.name == add else (base, plus):
                (root / split / folder.name).mkdir(parents=True, exist_ok=True)
                for file in files:
                    shutil.copy2(file, root / split / folder.name / file.name)
    return base, plus


def run(arguments: list[str], environment: dict) -> tuple[dict, float]:
    started = time.perf_counter()
    finished = subprocess.run([*IMGCLF, *arguments], capture_output=True, text=True, env=environment, check=True)
    return json.loads(finished.stdout), time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--add", required=True)
    parser.add_argument("--drop", nargs="*", default=[])
    parser.add_argument("--work", type=Path)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="imgclf-update-"))
    shutil.rmtree(work, ignore_errors=True)
    environment = {**os.environ, "IMGCLF_CACHE_DIR": str(work / "cache")}
    base, plus = make_folders(args.folder, work, args.add, args.drop)
    trained, train_s = run(["train", str(base), *TRAIN, "--output", str(work / "base-bundle")], environment)
    shutil.copytree(work / "cache", work / "cache-after-train")
    classes = len(list((base / "train").iterdir()))
    print(f"{args.folder.name}: {classes}-class probe bundle ({train_s:.0f} s to train) + {args.add} "
          f"({NEW_CLASS_IMAGES} training images)")
    for name, options in (("update", []), ("update --full-search", ["--full-search"])):
        shutil.rmtree(work / "cache")  # each variant starts from the cache as train left it
        shutil.copytree(work / "cache-after-train", work / "cache")
        output = work / name.replace(" --", "-")
        updated, update_s = run(["update", str(work / "base-bundle"), str(plus), "--output", str(output), "--json",
                                 *options], environment)  # fmt: skip
        old = updated["old_classes_val"]
        print(f"{name}: {update_s:.1f} s wall clock ({updated['images_embedded']} images embedded, "
              f"{updated['images_from_cache']} from the cache); old classes' val accuracy {old['before']:.4f} -> "
              f"{old['after']:.4f}; new class {updated['new_classes_val_accuracy'][args.add]:.4f}; "
              f"all classes {updated['val_accuracy']:.4f}")
    scratch, scratch_s = run(["train", str(plus), *TRAIN, "--output", str(work / "scratch")], environment)
    print(f"from scratch: {scratch_s:.1f} s, all classes {scratch['metrics']['val_accuracy']:.4f}")


if __name__ == "__main__":
    main()
