"""Inference speed of the evaluation path (what a run's final evaluation, ``imgclf evaluate`` and the
linear probe's embeddings use): EfficientNet-Lite0, channels-last, its batch norms folded into the
convolutions (``models.inference.folded_for_inference``) or not, by batch size, with glibc's
default allocator and with the settings the ``imgclf`` program starts with (cli/launch.py).

Each allocator setting runs in a fresh process (glibc reads GLIBC_TUNABLES only at start-up).
The weights are random but the batch norms get non-trivial statistics, so the folded and the plain
model compute the same function as a trained one would.

Usage: .venv/bin/python bench/inference_speed.py [--sizes 128 224] [--seconds 6]
Results: BENCHMARKS.md ("CPU inference speed").
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from imgclf.cli.launch import ALLOCATOR_TUNABLES

BATCH_SIZES = (8, 16, 32, 64)

CHILD = r"""
import json, sys, time, torch
from imgclf.data.batches import TensorBatches, eval_batch_size
from imgclf.data.prepare import Preprocess, TensorSplit
from imgclf.engine.evaluate import predict_logits
from imgclf.models import create_model
from imgclf.models.inference import folded_for_inference

size, seconds, batch_sizes = int(sys.argv[1]), float(sys.argv[2]), json.loads(sys.argv[3])
torch.manual_seed(0)
model = create_model("efficientnet_lite0", num_classes=10, in_chans=3, input_size=size)
for module in model.modules():
    if isinstance(module, torch.nn.BatchNorm2d):
        module.running_mean.uniform_(-0.5, 0.5)
        module.running_var.uniform_(0.5, 2.0)
model = model.to(memory_format=torch.channels_last).eval()
preprocess = Preprocess(size, 3, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
images = torch.randint(0, 256, (256, 3, size, size), dtype=torch.uint8)
split = TensorSplit(images, torch.zeros(256, dtype=torch.int64), [str(i) for i in range(256)])
plain = model

def rate(run_once):
    run_once()  # untimed: allocation and kernel selection
    started, seen = time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        seen += run_once()
    return seen / (time.perf_counter() - started)

def evaluation_path(batch):
    return lambda: len(predict_logits(model, TensorBatches(split, batch), preprocess, torch.device("cpu"))[1])

def unfolded(batch):
    def run_once():
        with torch.inference_mode():
            for start in range(0, len(images), batch):
                plain(preprocess.normalize(images[start:start + batch]))
        return len(images)
    return run_once

rows = {str(batch): {"folded": rate(evaluation_path(batch)), "unfolded": rate(unfolded(batch))}
        for batch in batch_sizes}
print(json.dumps({"rows": rows, "eval_batch_size": eval_batch_size(size)}))
"""


def run(size: int, tunables: str | None, seconds: float) -> dict:
    environ = {key: value for key, value in os.environ.items() if key != "GLIBC_TUNABLES"}
    environ["IMGCLF_MALLOC"] = "system"
    if tunables:
        environ["GLIBC_TUNABLES"] = tunables
    command = [sys.executable, "-c", CHILD, str(size), str(seconds), json.dumps(BATCH_SIZES)]
    output = subprocess.run(command, env=environ, capture_output=True, text=True, check=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 224], help="input sizes in px")
    parser.add_argument("--seconds", type=float, default=6.0, help="timed seconds per measurement")
    args = parser.parse_args()
    print("| input | allocator | batch norms | " + " | ".join(f"batch {b}" for b in BATCH_SIZES) + " |")
    print("| --- | --- | --- | " + " | ".join("---" for _ in BATCH_SIZES) + " |")
    for size in args.sizes:
        for name, tunables in (("glibc's defaults", None), ("imgclf's settings", ALLOCATOR_TUNABLES)):
            result = run(size, tunables, args.seconds)
            for kind in ("unfolded", "folded"):
                cells = []
                for batch in BATCH_SIZES:
                    value = f"{result['rows'][str(batch)][kind]:.0f}"
                    cells.append(f"**{value}**" if batch == result["eval_batch_size"] else value)
                print(f"| {size} px | {name} | {kind} | " + " | ".join(cells) + " |", flush=True)
    print("images/s; bold: the batch size imgclf evaluates with (data.batches.eval_batch_size)")


if __name__ == "__main__":
    main()
