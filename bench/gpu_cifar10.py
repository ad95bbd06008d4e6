"""GPU benchmark (needs a CUDA GPU): CIFAR-10 from the JPEG copy, airbench94 against
imgclf's fast preset and the standard ResNet-18 recipe, in one script run on one GPU.

    .venv/bin/python bench/gpu_cifar10.py --airbench PATH [--work DIR] [--fast-epochs 10,14]

PATH is a clone of github.com/KellerJordan/cifar10-airbench (its code is not part of imgclf and
is not copied here; this script runs its ``legacy/airbench94.py`` as it is, 25 runs). Steps:

1. unpack ``../shared/datasets/cifar10-jpeg.tar.gz`` (``train/<class>/*.jpg``, ``test/<class>/*.jpg``);
2. decode it once with Pillow into the files airbench's loader reads, ``cifar10/train.pt`` and
   ``test.pt``: uint8 ``images`` N x 32 x 32 x 3, ``labels``, ``classes`` (sorted folder names,
   which is CIFAR-10's own class order), so both sides see the same lossy pixels;
3. airbench94: accuracy (its flip-TTA test accuracy) and time of each run, from its table;
4. imgclf ``train FOLDER --preset fast --device cuda`` for each epoch count, and ResNet-18 for
   10 epochs (batch 128, SGD one-cycle): test accuracy, the whole run's seconds (decoding the
   JPEGs included) and the training seconds (the epochs' sum, as airbench counts its time).

Prints and writes ``results.json``: each side's accuracy and seconds and the ratio of imgclf's
training seconds to airbench94's mean, for the imgclf runs that reach 90.6% (airbench94's
accuracy on this lossy copy).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ARCHIVE = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10-jpeg.tar.gz"
TARGET = 0.906


def unpack(archive: Path, work: Path) -> Path:
    folder = work / "cifar10-jpeg"
    if not (folder / "train").is_dir():
        with tarfile.open(archive) as tar:
            tar.extractall(folder, filter="data")
    return folder


def airbench_files(folder: Path, destination: Path) -> None:
    """train.pt / test.pt as airbench's CifarLoader reads them, from the JPEG folders."""
    destination.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        classes = sorted(path.name for path in (folder / split).iterdir() if path.is_dir())
        images, labels = [], []
        for label, name in enumerate(classes):
            for path in sorted((folder / split / name).glob("*.jpg")):
                images.append(np.asarray(Image.open(path).convert("RGB")))
                labels.append(label)
        torch.save({"images": torch.from_numpy(np.stack(images)), "labels": torch.tensor(labels), "classes": classes},
                   destination / f"{split}.pt")  # fmt: skip


def run_airbench(clone: Path, work: Path) -> dict:
    """Run airbench94 in ``work`` (it reads ./cifar10/); parse the final 'eval' row of each run."""
    script = clone / "legacy" / "airbench94.py"
    started = time.perf_counter()
    output = subprocess.run([sys.executable, str(script)], cwd=work, capture_output=True, text=True, check=True).stdout
    (work / "airbench94.log").write_text(output)
    runs = []
    for line in output.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 7 and cells[1] == "eval":
            runs.append({"tta_val_acc": float(cells[5]), "seconds": float(cells[6])})
    return {
        "runs": runs,
        "mean_accuracy": float(np.mean([r["tta_val_acc"] for r in runs])) if runs else None,
        "mean_seconds": float(np.mean([r["seconds"] for r in runs])) if runs else None,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }


def run_imgclf(folder: Path, work: Path, name: str, options: list[str]) -> dict:
    output = work / name
    command = [sys.executable, "-m", "imgclf", "train", str(folder), "--device", "cuda", "--output", str(output),
               "--overwrite", "--json", *options]  # fmt: skip
    result = json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)
    history = json.loads((output / "metrics.json").read_text())["history"]
    return {
        "options": " ".join(options),
        "test_accuracy": result["metrics"]["test_accuracy"],
        "run_seconds": result["seconds"],
        "training_seconds": round(sum(record["seconds"] for record in history), 2),
        "epochs": result["epochs"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--airbench", required=True, type=Path, help="clone of KellerJordan/cifar10-airbench")
    parser.add_argument("--archive", type=Path, default=ARCHIVE)
    parser.add_argument("--work", type=Path, default=Path("runs/bench-gpu-cifar10"))
    parser.add_argument("--fast-epochs", default="10,14", help="epoch counts of the fast preset's runs")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("this benchmark needs a CUDA GPU")
    args.work.mkdir(parents=True, exist_ok=True)
    folder = unpack(args.archive, args.work)
    airbench_files(folder, args.work / "cifar10")
    results = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
               "airbench94": run_airbench(args.airbench, args.work)}  # fmt: skip
    results["imgclf_fast"] = [
        run_imgclf(folder, args.work, f"fast-{epochs}", ["--preset", "fast", "--epochs", epochs])
        for epochs in args.fast_epochs.split(",")
    ]
    results["resnet18_10_epochs"] = run_imgclf(folder, args.work, "resnet18", ["--model", "resnet18", "--epochs", "10",
                                                                             "--batch-size", "128"])  # fmt: skip
    reference = results["airbench94"]["mean_seconds"]
    reached = [run for run in results["imgclf_fast"] if run["test_accuracy"] >= TARGET]
    if reached and reference:
        best = min(reached, key=lambda run: run["training_seconds"])
        results["ratio_to_90_6"] = round(best["training_seconds"] / reference, 3)
    (args.work / "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
