"""Multi-label: imgclf against a naive baseline on a labelled CSV (``path,labels,split``).

The baseline is what one writes first: EfficientNet-Lite0 ImageNet embeddings of every image, one
scikit-learn logistic regression per label (default C = 1), a label given at probability 0.5.
Against it: ``imgclf train CSV`` with no flags, and with ``--time-budget 3m``. Every score is on
the CSV's ``val`` rows, which neither side chose anything on (imgclf's thresholds come from
cross-validation on train when it ships its probe; it says when they come from val).

Usage: .venv/bin/python bench/multilabel.py LABELS_CSV [--work DIR]   Results: BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, f1_score

from imgclf.data.dataset import split_labels
from imgclf.predictor import load_pretrained_classifier


def read_rows(labels_csv: Path) -> tuple[list[str], dict[str, tuple[list[Path], np.ndarray]]]:
    with open(labels_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))
    labels = sorted({label for row in rows for label in split_labels(row["labels"])})
    splits: dict[str, tuple[list[Path], list[np.ndarray]]] = {}
    for row in rows:
        paths, targets = splits.setdefault(row["split"], ([], []))
        paths.append(labels_csv.parent / row["path"])
        targets.append(np.isin(labels, split_labels(row["labels"])).astype(np.int64))
    return labels, {name: (paths, np.array(targets)) for name, (paths, targets) in splits.items()}


@torch.no_grad()
def embed(paths: list[Path]) -> np.ndarray:
    classifier = load_pretrained_classifier("efficientnet_lite0")
    model = classifier.model.eval()
    rows = []
    for start in range(0, len(paths), 64):
        batch = np.stack([classifier.prepare(path) for path in paths[start : start + 64]])
        inputs = classifier.preprocess.normalize(torch.from_numpy(batch))
        rows.append(model.forward_head(model.forward_features(inputs), pre_logits=True).numpy())
    return np.concatenate(rows)


def scores(truth: np.ndarray, probabilities: np.ndarray, chosen: np.ndarray) -> dict:
    measured = [average_precision_score(truth[:, i], probabilities[:, i]) for i in range(truth.shape[1])
                if truth[:, i].any()]  # fmt: skip
    return {"macro_f1": round(float(f1_score(truth, chosen, average="macro", zero_division=0)), 4),
            "micro_f1": round(float(f1_score(truth, chosen, average="micro", zero_division=0)), 4),
            "map": round(float(np.mean(measured)), 4),
            "exact_match": round(float((truth == chosen).all(axis=1).mean()), 4)}  # fmt: skip


def baseline(splits: dict) -> dict:
    started = time.perf_counter()
    (train_paths, train_y), (val_paths, val_y) = splits["train"], splits["val"]
    train_x, val_x = embed(train_paths), embed(val_paths)
    probabilities = np.zeros(val_y.shape)
    for label in range(train_y.shape[1]):
        regression = LogisticRegression(max_iter=2000).fit(train_x, train_y[:, label])
        probabilities[:, label] = regression.predict_proba(val_x)[:, 1]
    result = scores(val_y, probabilities, (probabilities >= 0.5).astype(np.int64))
    return {**result, "seconds": round(time.perf_counter() - started, 1)}


def imgclf_run(labels_csv: Path, output: Path, extra: list[str]) -> dict:
    command = [sys.executable, "-m", "imgclf", "train", str(labels_csv), "--output", str(output), "--overwrite",
               *extra]  # fmt: skip
    started = time.perf_counter()
    # A fresh embedding cache for each run: its time includes embedding every image, as a first run's does.
    with tempfile.TemporaryDirectory() as cache:
        subprocess.run(command, check=True, env={**os.environ, "IMGCLF_CACHE_DIR": cache})
    seconds = time.perf_counter() - started
    metrics = json.loads((output / "metrics.json").read_text())
    val = metrics["val"]
    keys = ("macro_f1", "micro_f1", "map", "exact_match")
    model = json.loads((output / "model.json").read_text())
    kept = (model.get("kept") or {}).get("kept", "trained")
    return {**{key: round(val[key], 4) for key in keys}, "seconds": round(seconds, 1),
            "model": model["architecture"], "kept": kept,
            "thresholds_chosen_on": val.get("thresholds_chosen_on")}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("labels_csv", type=Path)
    parser.add_argument("--work", type=Path, default=Path("runs/bench-multilabel"))
    args = parser.parse_args()
    _, splits = read_rows(args.labels_csv)
    results = {"baseline (Lite0 embeddings, LR per label, 0.5)": baseline(splits)}
    results["imgclf train (no flags)"] = imgclf_run(args.labels_csv, args.work / "no-flags", [])
    results["imgclf train --time-budget 3m"] = imgclf_run(args.labels_csv, args.work / "3m", ["--time-budget", "3m"])
    print("| run | macro-F1 | micro-F1 | mAP | exact sets | seconds | notes |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, row in results.items():
        notes = ""
        if "model" in row:
            notes = f"{row['model']}, kept {row['kept']}, thresholds from {row['thresholds_chosen_on']}"
        print(f"| {name} | {row['macro_f1']:.4f} | {row['micro_f1']:.4f} | {row['map']:.4f} | "
              f"{row['exact_match']:.4f} | {row['seconds']:.0f} | {notes} |")  # fmt: skip
    print(json.dumps(results))


if __name__ == "__main__":
    main()
