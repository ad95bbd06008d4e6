"""Fashion-MNIST on 2 CPU threads, imgclf against a plain PyTorch script
that reproduces the official PyTorch MNIST example, in one script run on one machine.

    .venv/bin/python bench/fashion_vs_pytorch_example.py [--baseline-epochs 6] [--budgets 20,30,40,50,60] [--long 600]
        [--long-model fastnet_small] [--long-options '--preset fast']

Baseline (written here from the example's published recipe): conv 3x3 1->32, ReLU, conv 3x3
32->64, ReLU, max-pool 2, dropout 0.25, linear 9216->128, ReLU, dropout 0.5, linear 128->10,
log-softmax + NLL; Adadelta lr 1.0, batch 64, StepLR gamma 0.7 per epoch, normalization
(0.1307, 0.3081). It trains on all 60,000 training images; after each epoch the 10,000 test
images are scored (evaluation time is not counted in its elapsed time).

imgclf: `imgclf train fashion-mnist --time-budget B` for each budget (whole-run seconds as
reported by imgclf: data loading, warm-up, training, final evaluation and bundle included), then
one long run. Prints both curves as JSON plus the time-to-91% ratio.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from imgclf.data.builtins import load_fashion_mnist_arrays

TARGET = 0.91


class ExampleNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3)
        self.conv2 = nn.Conv2d(32, 64, 3)
        self.dropout1, self.dropout2 = nn.Dropout(0.25), nn.Dropout(0.5)
        self.fc1, self.fc2 = nn.Linear(9216, 128), nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        x = self.dropout1(torch.flatten(nn.functional.max_pool2d(x, 2), 1))
        x = self.dropout2(torch.relu(self.fc1(x)))
        return nn.functional.log_softmax(self.fc2(x), dim=1)


def baseline_curve(epochs: int) -> list[dict]:
    torch.manual_seed(1)
    data = load_fashion_mnist_arrays()

    def tensors(split):
        images, targets = data[split]
        x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - 0.1307) / 0.3081
        return x, torch.from_numpy(targets)

    (train_x, train_y), (test_x, test_y) = tensors("train"), tensors("test")
    model = ExampleNet()
    optimizer = torch.optim.Adadelta(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)
    curve, elapsed = [], 0.0
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        model.train()
        order = torch.randperm(len(train_x))
        for start in range(0, len(order), 64):
            batch = order[start : start + 64]
            loss = nn.functional.nll_loss(model(train_x[batch]), train_y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        scheduler.step()
        elapsed += time.perf_counter() - started
        model.eval()
        with torch.no_grad():
            correct = sum(int((model(test_x[i : i + 1000]).argmax(1) == test_y[i : i + 1000]).sum())
                          for i in range(0, len(test_x), 1000))  # fmt: skip
        curve.append({"epoch": epoch, "seconds": round(elapsed, 1), "test_accuracy": correct / len(test_x)})
        print(json.dumps({"baseline": curve[-1]}), flush=True)
    return curve


def imgclf_run(budget: str, model: str | None, work: Path, extra: list[str] | None = None, tta: bool = False) -> dict:
    output = work / f"run-{budget}-{model}"
    command = [sys.executable, "-m", "imgclf", "train", "fashion-mnist", "--time-budget", budget, "--threads", "2",
               "--output", str(output), "--overwrite", "--json", *(extra or [])]  # fmt: skip
    if model:
        command += ["--model", model]
    result = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
    row = {"budget": budget, "model": result["model"], "options": " ".join(extra or []), "epochs": result["epochs"],
           "seconds": result["seconds"], "test_accuracy": result["metrics"]["test_accuracy"],
           "replanned_epochs": result.get("time_budget", {}).get("replanned_epochs")}  # fmt: skip
    if tta:  # the same bundle evaluated with flip test-time augmentation (not counted in "seconds")
        evaluate = [sys.executable, "-m", "imgclf", "evaluate", str(output), "fashion-mnist", "--tta", "flip", "--json"]
        metrics = json.loads(subprocess.run(evaluate, check=True, capture_output=True, text=True).stdout)
        row["test_accuracy_tta_flip"] = metrics["accuracy"]
    print(json.dumps({"imgclf": row}), flush=True)
    return row


def first_time_at(curve: list[dict], target: float) -> float | None:
    reached = [point["seconds"] for point in curve if point["test_accuracy"] >= target]
    return min(reached) if reached else None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--baseline-epochs", type=int, default=6)
    parser.add_argument("--budgets", default="20,30,40,50,60")
    parser.add_argument("--model", default="lenet5", help="imgclf model for the budget runs")
    parser.add_argument("--long", default="600", help="budget of the long imgclf run (seconds; 0: skip)")
    parser.add_argument("--long-model", default="simple_cnn")
    parser.add_argument("--long-options", default="", help="extra train options of the long run, e.g. '--ema 0.999'")
    args = parser.parse_args()
    torch.set_num_threads(2)
    work = Path(tempfile.mkdtemp(prefix="imgclf-fashion-bench-"))
    ours = [imgclf_run(f"{b}s", args.model, work) for b in args.budgets.split(",")]
    baseline = baseline_curve(args.baseline_epochs)
    long_run = None
    if float(args.long) > 0:
        long_run = imgclf_run(f"{args.long}s", args.long_model, work, args.long_options.split(), tta=True)
    ours_91, baseline_91 = first_time_at(ours, TARGET), first_time_at(baseline, TARGET)
    summary = {
        "torch": torch.__version__,
        "threads": 2,
        "baseline": baseline,
        "imgclf": ours,
        "imgclf_long": long_run,
        "seconds_to_91": {"imgclf": ours_91, "baseline": baseline_91},
        "ratio_to_91": round(ours_91 / baseline_91, 3) if ours_91 and baseline_91 else None,
        "numpy": np.__version__,
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
