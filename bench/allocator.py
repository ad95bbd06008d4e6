"""glibc's allocator with and without the settings `imgclf` starts itself with (imgclf/cli/launch.py):
training steps (batch 32) and forward passes (batch 64, and batch 8 as `train` embeds photos for
a linear probe) of EfficientNet-Lite0 at 224 px, channels-last, on this CPU.

Each setting runs in a fresh process (glibc reads GLIBC_TUNABLES only at start-up) and reports
images/s, minor page faults and peak resident memory.

Usage: .venv/bin/python bench/allocator.py [--seconds 8]   Results: BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from imgclf.cli.launch import ALLOCATOR_TUNABLES

CHILD = r"""
import json, resource, sys, time, torch
from imgclf.models import create_model
seconds = float(sys.argv[1])
model = create_model("efficientnet_lite0", num_classes=10, in_chans=3, input_size=224)
model = model.to(memory_format=torch.channels_last)
images = torch.randn(64, 3, 224, 224).contiguous(memory_format=torch.channels_last)
targets = torch.randint(0, 10, (32,))

def rate(step, batch):
    step()  # untimed: allocation and kernel selection
    faults, started, seen = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        step()
        seen += batch
    elapsed = time.perf_counter() - started
    return seen / elapsed, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / elapsed

optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
def train_step():
    loss = torch.nn.functional.cross_entropy(model(images[:32]), targets)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()

def eval_step():
    with torch.no_grad():
        model(images)

def small_eval_step():
    with torch.no_grad():
        model(images[:8])

model.train()
train_rate, train_faults = rate(train_step, 32)
model.eval()
eval_rate, eval_faults = rate(eval_step, len(images))
small_rate, small_faults = rate(small_eval_step, 8)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"train_images_per_s": train_rate, "train_faults_per_s": train_faults,
                  "eval_images_per_s": eval_rate, "eval_faults_per_s": eval_faults,
                  "small_eval_images_per_s": small_rate, "peak_mib": peak}))
"""


def run(tunables: str | None, seconds: float) -> dict:
    environ = {key: value for key, value in os.environ.items() if key != "GLIBC_TUNABLES"}
    environ["IMGCLF_MALLOC"] = "system"
    if tunables:
        environ["GLIBC_TUNABLES"] = tunables
    output = subprocess.run([sys.executable, "-c", CHILD, str(seconds)], env=environ, capture_output=True,
                            text=True, check=True).stdout  # fmt: skip
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="timed seconds per measurement")
    args = parser.parse_args()
    for name, tunables in (("glibc defaults", None), ("imgclf's settings", ALLOCATOR_TUNABLES)):
        result = run(tunables, args.seconds)
        print(f"{name:18} training (batch 32) {result['train_images_per_s']:5.1f} images/s, "
              f"{result['train_faults_per_s']:9,.0f} minor faults/s | forward (batch 64) "
              f"{result['eval_images_per_s']:5.1f} images/s, {result['eval_faults_per_s']:9,.0f} faults/s | "
              f"forward (batch 8) {result['small_eval_images_per_s']:5.1f} images/s | "
              f"peak {result['peak_mib']:,.0f} MiB")  # fmt: skip


if __name__ == "__main__":
    main()
