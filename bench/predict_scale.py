"""``imgclf predict --output`` against a plain onnxruntime loop, and its memory from 1,000 to 10,000 files.

The same exported ONNX model, the same files, the same cores, one after the other, each a fresh
process timed from its start to its exit (interpreter, imports, listing and loading the model
included: the time a user waits):

- **raw onnxruntime**: what one writes first: the folder listed, Pillow decodes each file (in turn,
  or in a thread pool of ``--workers``: both are run, the faster counts), batches of 64 go to
  ``InferenceSession.run`` (its default threads), the labels are kept in a list. Nothing is written.
- **imgclf**: ``imgclf predict MODEL FOLDER --output rows.parquet``: abstain rule, top-5, rows
  written to Parquet part files and joined.

Memory: the peak PSS of ``imgclf predict --output`` and its worker processes together, over the
first 1,000 files (a text list) and over all (Linux: read from /proc every 20 ms; sampling adds
work on the same cores, a fraction of a percent).

Usage: .venv/bin/python bench/predict_scale.py MODEL.onnx FOLDER [--workers 2] [--format parquet|csv|jsonl]
       [--repeats N]
Results: BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
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


def _descendants(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            continue
        for child in children:
            found += [child, *_descendants(child)]
    return found


def _tree_pss_mb(pid: int) -> float:
    """Proportional set size of a process and its descendants: pages the workers share with the
    process they were forked from count once in all, not once each."""
    total_kb = 0
    for member in [pid, *_descendants(pid)]:
        try:
            rollup = Path(f"/proc/{member}/smaps_rollup").read_text()
        except OSError:
            continue
        total_kb += next((int(line.split()[1]) for line in rollup.splitlines() if line.startswith("Pss:")), 0)
    return total_kb / 1024


def imgclf_run(
    model: Path, sources: list[str], output: Path, workers: int, memory: bool = False
) -> tuple[float, float, float]:
    """(images/s as imgclf reports it, wall-clock seconds, peak memory in MB) of one fresh process.
    ``memory``: the largest PSS of the process and its workers together, sampled every 20 ms (not
    in timed runs: reading /proc for three processes 50 times a second takes a share of the cores)."""
    command = [sys.executable, "-m", "imgclf", "predict", str(model), *sources, "--output", str(output), "--json",
               "--workers", str(workers)]  # fmt: skip
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    peak = 0.0
    while memory and process.poll() is None:
        peak = max(peak, _tree_pss_mb(process.pid))
        time.sleep(0.02)
    process.wait()
    wall = time.perf_counter() - started
    stdout, _ = process.communicate()
    if process.returncode != 0:
        raise SystemExit(f"imgclf predict failed ({process.returncode})")
    return json.loads(stdout)["images_per_s"], wall, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--format", choices=("parquet", "csv", "jsonl"), default="parquet")
    parser.add_argument("--repeats", type=int, default=1, help="side-by-side rounds (the median ratio is reported)")
    parser.add_argument("--raw-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.raw_only:
        return raw_onnxruntime(args.model, args.folder, args.workers)
    files, suffix = image_files(args.folder), args.format
    work = Path(tempfile.mkdtemp(prefix="imgclf-predict-"))
    listing = work / "first-1000.txt"
    listing.write_text("".join(f"{path.resolve()}\n" for path in files[:: max(1, len(files) // 1000)][:1000]))
    small_rate, small_wall, small_peak = imgclf_run(args.model, [str(listing)], work / f"small.{suffix}", args.workers,
                                                    memory=True)  # fmt: skip
    *_, peak = imgclf_run(args.model, [str(args.folder)], work / f"memory.{suffix}", args.workers, memory=True)
    print(f"{len(files):,} files, fresh processes, wall clock from start to exit")
    ratios = []
    for round_number in range(args.repeats):
        raw = {workers: raw_run(args.model, args.folder, workers) for workers in (1, args.workers)}
        output = work / f"all-{round_number}.{suffix}"
        rate, wall, _ = imgclf_run(args.model, [str(args.folder)], output, args.workers)
        best = min(raw.values())
        ratios.append(best / wall)
        for workers, seconds in raw.items():
            print(f"raw onnxruntime, decoding {'in turn' if workers == 1 else f'in {workers} threads'}: "
                  f"{seconds:.2f} s = {len(files) / seconds:.0f} images/s")  # fmt: skip
        print(f"imgclf predict --output .{suffix}: {wall:.2f} s = {len(files) / wall:.0f} images/s ({best / wall:.2f}x "
              f"the faster raw loop; {rate:.0f} images/s once started)")  # fmt: skip
    if args.repeats > 1:
        print(f"ratio over {args.repeats} rounds: median {statistics.median(ratios):.2f}x, "
              f"{min(ratios):.2f}-{max(ratios):.2f}x")
    print(f"peak memory (PSS, all processes, a run of its own): {small_peak:.0f} MB over 1,000 files "
          f"({small_rate:.0f} images/s, {small_wall:.1f} s), {peak:.0f} MB over {len(files):,}")


if __name__ == "__main__":
    main()
