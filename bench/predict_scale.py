"""``imgclf predict --output`` against a plain onnxruntime loop, and its memory from 1,000 to 10,000 files.

The same exported ONNX model, the same files, the same cores, one after the other, each a fresh
process timed from its start to its exit (interpreter, imports, listing and loading the model
included: the time a user waits):

- **raw onnxruntime**: what one writes first: the folder listed, Pillow decodes each file (in turn,
  or in a thread pool of ``--workers``: both are run, the faster counts), batches of 64 go to
  ``InferenceSession.run`` (its default threads), the labels are kept in a list. Nothing is written.
- **imgclf**: ``imgclf predict MODEL FOLDER --output rows.parquet``: abstain rule, top-5, rows
  written to Parquet part files and joined.

Memory: peak RSS of ``imgclf predict --output`` over the first 1,000 files (a text list) and over all.

Usage: .venv/bin/python bench/predict_scale.py MODEL.onnx FOLDER [--workers 2] [--format parquet|csv|jsonl]
Results: BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime
from PIL import Image

BATCH = 64


def raw_onnxruntime(model: Path, folder: Path, workers: int) -> None:
    """The plain loop (run in its own process by ``raw_run``)."""
    files = image_files(folder)
    session = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    contract = json.loads(session.get_modelmeta().custom_metadata_map["imgclf.input"])
    channels_first = contract["layout"] != "NHWC"

    def decode(path: Path) -> np.ndarray:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB" if contract["channels"] == 3 else "L").copy())

    labels = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for start in range(0, len(files), BATCH):
            batch_files = files[start : start + BATCH]
            pixels = list(pool.map(decode, batch_files)) if workers > 1 else [decode(path) for path in batch_files]
            batch = np.stack([p if p.ndim == 3 else p[:, :, None] for p in pixels])
            if channels_first:
                batch = batch.transpose(0, 3, 1, 2)
            probabilities = session.run(None, {contract["name"]: np.ascontiguousarray(batch)})[0]
            labels.extend(probabilities.argmax(axis=1).tolist())
    assert len(labels) == len(files)


def image_files(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if path.suffix.lower() in (".jpg", ".jpeg", ".png"))


def raw_run(model: Path, folder: Path, workers: int) -> float:
    """Wall-clock seconds of the plain loop in a fresh process."""
    command = [sys.executable, __file__, str(model), str(folder), "--raw-only", "--workers", str(workers)]
    started = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - started


def imgclf_run(model: Path, sources: list[str], output: Path, workers: int) -> tuple[float, float, float]:
    """(images/s as imgclf reports it, wall-clock seconds, peak RSS in MB) of one fresh process."""
    command = [sys.executable, "-m", "imgclf", "predict", str(model), *sources, "--output", str(output), "--json",
               "--workers", str(workers)]  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    finished = subprocess.run(command, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    result = json.loads(finished.stdout)
    # ru_maxrss of children is the largest child so far: runs go from small to large, so it is this one's.
    return result["images_per_s"], wall, max(peak, before) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--format", choices=("parquet", "csv", "jsonl"), default="parquet")
    parser.add_argument("--raw-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.raw_only:
        return raw_onnxruntime(args.model, args.folder, args.workers)
    files, suffix = image_files(args.folder), args.format
    work = Path(tempfile.mkdtemp(prefix="imgclf-predict-"))
    listing = work / "first-1000.txt"
    listing.write_text("".join(f"{path.resolve()}\n" for path in files[:: max(1, len(files) // 1000)][:1000]))
    small_rate, small_wall, small_peak = imgclf_run(args.model, [str(listing)], work / f"small.{suffix}", args.workers)
    raw = {workers: raw_run(args.model, args.folder, workers) for workers in (1, args.workers)}
    rate, wall, peak = imgclf_run(args.model, [str(args.folder)], work / f"all.{suffix}", args.workers)
    best = min(raw.values())
    print(f"{len(files):,} files, fresh processes, wall clock from start to exit")
    for workers, seconds in raw.items():
        print(f"raw onnxruntime, decoding {'in turn' if workers == 1 else f'in {workers} threads'}: {seconds:.2f} s "
              f"= {len(files) / seconds:.0f} images/s")
    print(f"imgclf predict --output .{suffix}: {wall:.2f} s = {len(files) / wall:.0f} images/s ({best / wall:.2f}x "
          f"the faster raw loop; {rate:.0f} images/s once started), peak RSS {peak:.0f} MB")
    print(f"imgclf predict --output, 1,000 files: {small_rate:.0f} images/s, {small_wall:.1f} s, peak RSS "
          f"{small_peak:.0f} MB")


if __name__ == "__main__":
    main()
