"""``imgclf update BUNDLE DATA``: a bundle's last layer refitted on DATA in seconds, new classes
added, without training again.

The bundle's backbone stays as it is (a linear probe's ImageNet backbone, or a fine-tuned one);
only files it has not embedded before go through it (``engine.image_embeddings``). The last
layer is then fitted as the training's linear probe is (logistic regression, C by
cross-validation on train), calibration and the abstain rule are fitted again on val, and the
result is written as a new bundle that records what it was updated from. The old classes keep
their indices; new classes come after them. The old bundle is never changed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from torch import nn

from imgclf.bundle import Bundle, BundleDescription, load_bundle, save_bundle
from imgclf.data.dataset import Dataset, FileSplit, load_dataset
from imgclf.data.prepare import StreamingSplit, label_counts
from imgclf.engine.final import FinalEvaluation, ModelOnData, final_evaluation
from imgclf.engine.image_embeddings import ImageEmbeddingCache, embed_files
from imgclf.engine.label_sets import label_set_metrics, logit_thresholds
from imgclf.engine.probe import LinearProbe, classifier_logits, fit_label_probe, fit_linear_probe, set_classifier
from imgclf.engine.runtime import resolve_device
from imgclf.errors import DataError, OutputError
from imgclf.explain.bundle_report import write_report
from imgclf.models import count_parameters
from imgclf.text import stderr_console

__all__ = ["run_update"]

WRITTEN_KEYS = ("format", "format_version", "sha256", "versions", "created")  # the bundle writer adds these


@dataclass
class _Split:
    """One split of DATA as embedded: rows, targets in the new class order, and file names."""

    files: FileSplit  # the files that could be read, targets remapped
    embeddings: torch.Tensor


def _class_order(bundle: Bundle, dataset: Dataset, data: str) -> list[str]:
    """The bundle's classes in their order, then DATA's new ones; every old class must be in DATA."""
    missing = [name for name in bundle.classes if name not in dataset.classes]
    if missing:
        raise DataError(f"{data}: no images of {', '.join(repr(name) for name in missing)}, which {bundle.path} "
                        "knows; update refits the last layer on DATA, so DATA must hold every class of the bundle "
                        "(train a new model to drop a class)")  # fmt: skip
    return bundle.classes + [name for name in dataset.classes if name not in bundle.classes]


def _remapped(targets: np.ndarray, dataset_classes: list[str], classes: list[str]) -> np.ndarray:
    position = np.array([classes.index(name) for name in dataset_classes])
    if targets.ndim == 2:  # label sets: columns reordered
        remapped = np.zeros((len(targets), len(classes)), dtype=targets.dtype)
        remapped[:, position] = targets
        return remapped
    return position[targets]


def _embed_splits(bundle: Bundle, dataset: Dataset, classes: list[str], cache, device, workers: int,
                  console: Console):  # fmt: skip
    splits, counts, skipped = {}, {"from_cache": 0, "computed": 0}, []
    for name, split in dataset.splits.items():
        if not isinstance(split, FileSplit):
            raise DataError(f"{dataset.name}: update reads image files (a folder, an archive, a CSV); "
                            "a built-in dataset has none")  # fmt: skip
        embedded = embed_files(bundle.model, bundle.preprocess, split.reader, split.keys, device, cache, workers)
        kept = split.subset(embedded.indices)
        kept.targets = _remapped(kept.targets, dataset.classes, classes)
        splits[name] = _Split(kept, embedded.embeddings)
        counts["from_cache"] += embedded.from_cache
        counts["computed"] += embedded.computed
        skipped += embedded.skipped
        console.print(f"{name}: {len(kept):,} images, {embedded.computed:,} embedded now, {embedded.from_cache:,} "
                      f"from the cache ({embedded.seconds:.1f} s)", highlight=False)  # fmt: skip
    return splits, counts, skipped


def _fit(splits: dict[str, _Split], bundle: Bundle, num_classes: int, seed: int, full_search: bool) -> LinearProbe:
    """The last layer, fitted as train's probe is; C searched from the one the bundle's probe chose
    (``full_search``: over the whole grid, as train does)."""
    train, val = splits["train"], splits["val"]
    pairs = [(split.embeddings, torch.as_tensor(split.files.targets)) for split in (train, val)]
    if bundle.description.multi_label:
        return fit_label_probe(pairs[0], pairs[1], seed)
    history = bundle.metrics.get("history") or [{}]
    near_c = None if full_search else history[0].get("probe_c")
    return fit_linear_probe(pairs[0], pairs[1], num_classes, seed, near_c=near_c)


def _new_logits(probe: LinearProbe, embeddings: torch.Tensor) -> torch.Tensor:
    weight, bias = torch.as_tensor(probe.weight).float(), torch.as_tensor(probe.bias).float()
    return nn.functional.linear(embeddings.float(), weight, bias)


def _before_after(bundle: Bundle, before: torch.Tensor, probe: LinearProbe, evaluation: FinalEvaluation,
                  val: _Split) -> dict:  # fmt: skip
    """The old classes on the validation images, with the old last layer (``before``: its logits)
    and with the new one: accuracy (single-label) or macro F1 over the old labels (label sets)."""
    old, targets = len(bundle.classes), torch.as_tensor(val.files.targets)
    after = _new_logits(probe, val.embeddings)
    if targets.dim() == 2:
        description = bundle.description
        old_cut = logit_thresholds(description.label_thresholds, description.label_temperatures, old)
        calibration = evaluation.calibration
        new_cut = logit_thresholds(calibration["thresholds"], calibration["temperatures"], after.shape[1])[:old]
        pairs = (("before", before, old_cut), ("after", after[:, :old], new_cut))
        score = {when: label_set_metrics(logits[:, :old], targets[:, :old], bundle.classes, cut)["macro_f1"]
                 for when, logits, cut in pairs}  # fmt: skip
        return {"metric": "macro_f1", "images": len(targets), **score}
    rows = targets < old

    def accuracy(logits: torch.Tensor) -> float | None:
        return float((logits[rows].argmax(1) == targets[rows]).float().mean()) if rows.any() else None

    return {"metric": "accuracy", "images": int(rows.sum()), "before": accuracy(before), "after": accuracy(after)}


def _new_class_accuracy(probe: LinearProbe, val: _Split, old: int, classes: list[str]) -> dict[str, float | None]:
    targets = torch.as_tensor(val.files.targets)
    if targets.dim() == 2:
        return {}
    predicted = _new_logits(probe, val.embeddings).argmax(1)
    return {classes[index]: float((predicted[targets == index] == index).float().mean())
            if (targets == index).any() else None for index in range(old, len(classes))}  # fmt: skip


def _output_folder(bundle_path: Path, output: str | Path | None) -> Path:
    """``output``, or the first of BUNDLE-updated, BUNDLE-updated-2 ... that does not exist; an
    existing bundle is never overwritten."""
    if output is not None:
        output = Path(output)
        if output.exists() and (not output.is_dir() or any(output.iterdir())):
            raise OutputError(f"{output}: already exists; name a new folder with --output (nothing is overwritten)")
        return output
    base = bundle_path if bundle_path.name else bundle_path.resolve()  # "." has no name to extend
    candidates = (base.with_name(f"{base.name}-updated" + (f"-{n}" if n > 1 else "")) for n in range(1, 10_000))
    return next(path for path in candidates if not path.exists())


def _description(bundle: Bundle, model, classes: list[str], evaluation: FinalEvaluation, data_record: dict,
                 updated_from: dict, summary: dict) -> BundleDescription:  # fmt: skip
    values = {key: value for key, value in bundle.description.to_json().items() if key not in WRITTEN_KEYS}
    values.update(classes=classes, params=count_parameters(model), calibration=evaluation.calibration,
                  data=data_record, metrics=summary, updated_from=updated_from)  # fmt: skip
    values["model_kwargs"] = {**values["model_kwargs"], "num_classes": len(classes)}
    return BundleDescription(values)


def _data_record(dataset: Dataset, splits: dict[str, _Split], classes: list[str], skipped: list) -> dict:
    return {
        "source": dataset.name,
        "kind": dataset.kind,
        "split": dataset.split_info,
        "sizes": {name: len(split.files) for name, split in splits.items()},
        "class_counts": {
            name: label_counts(torch.as_tensor(split.files.targets), len(classes)) for name, split in splits.items()
        },  # fmt: skip
        "skipped": [{"file": file, "reason": reason} for file, reason in skipped],
        "ignored": len(dataset.ignored),
    }


def _summary(evaluation: FinalEvaluation, probe: LinearProbe) -> dict:
    final = evaluation.metrics
    return {"val_accuracy": final["val"]["accuracy"], "test_accuracy": final["test"]["accuracy"] if "test" in final
            else None, "cv_accuracy": probe.cv_accuracy, "val_chose": "" if probe.chosen_on == "cross-validation"
            else "the probe's regularization", "best_epoch": 1, "epochs_run": 1, "stopped_early": False}  # fmt: skip


def run_update(
    bundle_dir: str | Path,
    data: str,
    output: str | Path | None = None,
    device: str = "auto",
    workers: int = 2,
    console: Console | None = None,
    report: bool = False,
    full_search: bool = False,
) -> dict:
    """Refit BUNDLE's last layer (and its calibration and abstain rule) on DATA, adding DATA's new
    classes; write the new bundle to ``output`` (with ``report``: its report.html too, 2-3 s more
    for a Lite2 bundle on 2 cores) and return what changed."""
    started, console = time.perf_counter(), console or stderr_console()
    bundle = load_bundle(bundle_dir)
    folder = _output_folder(bundle.path, output)
    description = bundle.description
    dataset = load_dataset(data, description.split_policy(), task=description.task)
    classes = _class_order(bundle, dataset, data)
    run_device = resolve_device(device)
    cache = ImageEmbeddingCache.for_model(bundle.model, bundle.preprocess)
    splits, counts, skipped = _embed_splits(bundle, dataset, classes, cache, run_device, workers, console)
    before = classifier_logits(bundle.model, splits["val"].embeddings)  # the old last layer, before it is replaced
    seed = int(description.training.get("seed", 0))
    probe = _fit(splits, bundle, len(classes), seed, full_search)
    model = bundle.model
    model.reset_classifier(len(classes))
    set_classifier(model, probe)
    evaluation = final_evaluation(_on_data(model, splits, bundle, run_device, workers, probe, cache), classes, seed)
    compared = _before_after(bundle, before, probe, evaluation, splits["val"])
    updated_from = {"bundle": str(bundle.path.resolve()), "created": description.created,
                    "weights_sha256": description.recorded_digests().get("model.safetensors"),
                    "classes": bundle.classes, "added_classes": classes[len(bundle.classes):], "data": dataset.name,
                    "images_embedded": counts["computed"], "images_from_cache": counts["from_cache"],
                    "old_classes_val": compared, "seconds": round(time.perf_counter() - started, 2)}  # fmt: skip
    summary = _summary(evaluation, probe)
    record = _data_record(dataset, splits, classes, skipped)
    save_bundle(
        folder,
        model.cpu(),
        _description(bundle, model, classes, evaluation, record, updated_from, summary),
        {**evaluation.metrics, "summary": summary, "history": [_history(probe)]},
        evaluation.centroids,
    )
    if report:
        write_report(load_bundle(folder), f"Updated from {bundle.path}: run imgclf report {folder} DATA to show the "
                     "worst mistakes.")  # fmt: skip
    return {**updated_from, "bundle": str(folder), "updated_from": str(bundle.path), "classes": classes,
            "new_classes_val_accuracy": _new_class_accuracy(probe, splits["val"], len(bundle.classes), classes),
            "val_accuracy": summary["val_accuracy"], "test_accuracy": summary["test_accuracy"],
            "seconds": round(time.perf_counter() - started, 2)}  # fmt: skip


def _on_data(model, splits: dict[str, _Split], bundle: Bundle, device, workers: int, probe: LinearProbe, cache):
    """The refitted model with its embedded splits, as the final evaluation reads them."""
    embeddings = {name: (split.embeddings, torch.as_tensor(split.files.targets)) for name, split in splits.items()}
    files = {name: StreamingSplit(split.files, bundle.preprocess) for name, split in splits.items()}
    return ModelOnData(model.to(device), files, bundle.preprocess, device, workers=workers, embeddings=embeddings,
                       held_out_logits=probe.held_out_logits, embedding_cache=cache)  # fmt: skip


def _history(probe: LinearProbe) -> dict:
    return {"epoch": 1, "val_accuracy": probe.val_accuracy, "probe_c": probe.c_value,
            "probe_chosen_on": probe.chosen_on, "probe_cv_accuracy": probe.cv_accuracy, "probe_scores": probe.scores,
            "probe_folds": probe.folds, "probe_label_c": probe.label_c_values}  # fmt: skip
