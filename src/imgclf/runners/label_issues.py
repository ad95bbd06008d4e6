"""``imgclf doctor DATA --labels``: the training images whose label the data disagrees with.

Natural photos are embedded once with an ImageNet backbone and a logistic regression gives each
image out-of-sample probabilities (5 folds); other data get five short training runs of the small
default network. cleanlab ranks the labels. The list is written as CSV and JSON, with an HTML
gallery of the most doubtful images; no file is ever moved or deleted.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from rich.console import Console

from imgclf.advise.facts import data_facts
from imgclf.advise.rules import transfer_is_promising
from imgclf.config import TrainConfig
from imgclf.data.batches import eval_batch_size, make_batches
from imgclf.data.prepare import TensorSplit
from imgclf.engine.label_issues import (
    cross_validated_label_probe,
    cross_validated_probe,
    cross_validated_training,
    rank_label_issues,
    rank_label_set_issues,
)
from imgclf.engine.probe import extract_embeddings
from imgclf.engine.runtime import resolve_device
from imgclf.errors import UsageError
from imgclf.files import atomic_write_bytes
from imgclf.models import create_model
from imgclf.runners.train.data import check_trainable, load_training_data, scan_training_data
from imgclf.text import for_html, stderr_console
from imgclf.transfer import load_pretrained, load_weights_into, pretrained_available

__all__ = ["run_label_check"]

BACKBONE = "efficientnet_lite0"  # the fastest offline ImageNet backbone: labels need no more
GALLERY_IMAGES = 60  # the most doubtful images shown in label_issues.html
THUMBNAIL_PX = 112
CSV_COLUMNS = ("rank", "file", "label", "suggested", "suggested_probability", "label_probability", "quality",
               "flagged")  # fmt: skip
LABEL_SET_COLUMNS = ("rank", "file", "labels", "likely_missing", "likely_wrong", "quality", "flagged")


def _probabilities(data: str, config: TrainConfig, data_dir, console: Console):
    """The training split as decoded, and each image's out-of-sample class probabilities."""
    dataset, profile = scan_training_data(data, config, data_dir)
    check_trainable(data, dataset, profile)
    device = resolve_device(config.device)
    facts = data_facts(dataset, profile.native_size, profile.channels, config.workers)
    if transfer_is_promising(facts) and pretrained_available(BACKBONE):
        weights = load_pretrained(BACKBONE)
        config = replace(config, model=BACKBONE, pretrained="default")
        dataset, _, preprocess, prepared = load_training_data(data, config, data_dir, weights, console,
                                                              (dataset, profile))  # fmt: skip
        model = create_model(BACKBONE, num_classes=dataset.num_classes, input_size=preprocess.input_size)
        load_weights_into(model, weights)
        train = prepared.splits["train"]
        batches = make_batches(train, eval_batch_size(preprocess.input_size), workers=config.workers)
        features, targets = extract_embeddings(model.to(device), batches, preprocess, device)
        method = f"logistic regression on {BACKBONE} ImageNet embeddings, 5-fold out-of-sample"
        if targets.dim() == 2:  # label sets: a regression per label
            return dataset, train, cross_validated_label_probe(features, targets, config.seed), method + ", per label"
        return dataset, train, cross_validated_probe(features, targets, dataset.num_classes, config.seed), method
    dataset, _, preprocess, prepared = load_training_data(data, config, data_dir, None, console, (dataset, profile))
    train = prepared.splits["train"]
    if not isinstance(train, TensorSplit):
        raise UsageError(f"{data}: too large to check labels in memory (over --max-memory-gb when decoded)")
    probabilities = cross_validated_training(train, preprocess, dataset.kind, dataset.num_classes, device,
                                             config.seed)  # fmt: skip
    return dataset, train, probabilities, f"{config.model} trained on the other folds, 5-fold out-of-sample"


def _file_name(dataset, key: str) -> str:
    split = dataset.splits["train"]
    return split.reader.describe(key) if hasattr(split, "reader") else key


def run_label_check(data: str, seed: int = 0, data_dir=None, output: str | Path | None = None,
                    console: Console | None = None) -> dict:  # fmt: skip
    """Rank DATA's training images by how much the data disagrees with their labels; write
    ``label_issues.csv``, ``.json`` and ``.html`` into ``output`` (when given)."""
    started, console = time.perf_counter(), console or stderr_console()
    config = TrainConfig(model="simple_cnn", seed=seed)
    dataset, train, probabilities, method = _probabilities(data, config, data_dir, console)
    targets = train.targets.numpy()
    if targets.ndim == 2:
        check = rank_label_set_issues(targets, probabilities)
        rows = _label_set_rows(dataset, train, targets, check)
    else:
        check = rank_label_issues(targets, probabilities)
        rows = _class_rows(dataset, train, targets, check)
    result = {"data": dataset.name, "method": method, "images": len(rows), "flagged": int(check.flagged.sum()),
              "issues": rows, "seconds": round(time.perf_counter() - started, 2)}  # fmt: skip
    if output is not None:
        result["files"] = _write(Path(output), result, train, check.ranking())
    return result


def _class_rows(dataset, train, targets: np.ndarray, check) -> list[dict]:
    probabilities, rows = check.probabilities, []
    for rank, index in enumerate(check.ranking(), start=1):
        suggested = int(np.argmax(probabilities[index]))
        rows.append({
            "rank": rank,
            "file": _file_name(dataset, train.keys[index]),
            "label": dataset.classes[targets[index]],
            "suggested": dataset.classes[suggested],
            "suggested_probability": round(float(probabilities[index, suggested]), 4),
            "label_probability": round(float(probabilities[index, targets[index]]), 4),
            "quality": round(float(check.quality[index]), 4),
            "flagged": bool(check.flagged[index]),
        })  # fmt: skip
    return rows


def _label_set_rows(dataset, train, targets: np.ndarray, check) -> list[dict]:
    """Label sets: per image the labels it carries, the labels likely missing (not given, but
    probable from images like it) and likely wrong (given, but improbable), most doubtful first."""
    probabilities, rows = check.probabilities, []
    for rank, index in enumerate(check.ranking(), start=1):
        given, p = targets[index] > 0.5, probabilities[index]
        missing = [i for i in np.argsort(-p) if not given[i] and p[i] >= 0.5]
        wrong = [i for i in np.argsort(p) if given[i] and p[i] < 0.5]
        rows.append({
            "rank": rank,
            "file": _file_name(dataset, train.keys[index]),
            "labels": ";".join(dataset.classes[i] for i in np.flatnonzero(given)),
            "likely_missing": ";".join(f"{dataset.classes[i]} ({p[i]:.2f})" for i in missing),
            "likely_wrong": ";".join(f"{dataset.classes[i]} ({p[i]:.2f})" for i in wrong),
            "quality": round(float(check.quality[index]), 4),
            "flagged": bool(check.flagged[index]),
        })  # fmt: skip
    return rows


def _write(folder: Path, result: dict, train: TensorSplit, ranking: np.ndarray) -> dict[str, str]:
    text = io.StringIO()
    columns = LABEL_SET_COLUMNS if result["issues"] and "labels" in result["issues"][0] else CSV_COLUMNS
    writer = csv.DictWriter(text, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(result["issues"])
    paths = {kind: folder / f"label_issues.{kind}" for kind in ("csv", "json", "html")}
    atomic_write_bytes(paths["csv"], text.getvalue().encode("utf-8"))
    atomic_write_bytes(paths["json"], json.dumps(result, indent=1).encode("utf-8"))
    atomic_write_bytes(paths["html"], _gallery(result, train, ranking).encode("utf-8"))
    return {kind: str(path) for kind, path in paths.items()}


def _thumbnail(image: torch.Tensor) -> str:
    pixels = image.permute(1, 2, 0).numpy()
    picture = Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels)
    picture.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _caption(row: dict) -> str:
    if "labels" in row:  # label sets
        return (f"labelled <b>{for_html(row['labels'] or '(none)')}</b><br>likely missing: "
                f"<b>{for_html(row['likely_missing'] or '-')}</b><br>likely wrong: "
                f"<b>{for_html(row['likely_wrong'] or '-')}</b>")  # fmt: skip
    return (
        f"labelled <b>{for_html(row['label'])}</b> ({row['label_probability']:.0%})<br>looks like "
        f"<b>{for_html(row['suggested'])}</b> ({row['suggested_probability']:.0%})"
    )


def _gallery(result: dict, train: TensorSplit, ranking: np.ndarray) -> str:
    """The most doubtful images with their label, the suggested one and the confidence."""
    cards = []
    for row, index in zip(result["issues"][:GALLERY_IMAGES], ranking[:GALLERY_IMAGES]):
        flag = ' class="flagged"' if row["flagged"] else ""
        cards.append(
            f'<figure{flag}><img alt="{for_html(row["file"])}" src="data:image/png;base64,'
            f'{_thumbnail(train.images[index].cpu())}"><figcaption><b>#{row["rank"]}</b> {_caption(row)}<br>'
            f"<small>{for_html(row['file'])}</small></figcaption></figure>"
        )
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>Likely mislabelled images: {for_html(result["data"])}</title>
<style>body{{font:14px system-ui,sans-serif;margin:24px;color:#222}}
main{{display:grid;grid-template-columns:repeat(auto-fill,minmax(180px,1fr));gap:12px}}
figure{{margin:0;padding:8px;border:1px solid #ddd;border-radius:6px}}figure.flagged{{border-color:#c62828}}
img{{display:block;margin:0 auto 6px;max-width:100%}}small{{color:#666;word-break:break-all}}</style></head>
<body><h1>Likely mislabelled images</h1>
<p>{for_html(result["data"])}: {result["images"]} training images checked ({for_html(result["method"])});
{result["flagged"]} flagged as label issues (red border). The {min(GALLERY_IMAGES, result["images"])} least
trustworthy labels first; the full list is in label_issues.csv. Nothing was moved or deleted.</p>
<main>{"".join(cards)}</main></body></html>
"""
