"""What imgclf does with every file of a dataset, without training: each file used, converted (and
how) or skipped (and why), with its content hash; sizes and modes per class. ``imgclf doctor``
reports it."""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict

import numpy as np

from imgclf.data.checks import imbalance_ratio, row_labels
from imgclf.data.dataset import Dataset, label_fields
from imgclf.data.decode import MAX_COUNTED_FRAMES, ImageInfo, decode_image, probe_image
from imgclf.data.prepare import ScanProgress
from imgclf.errors import BadImageError

__all__ = ["array_rows", "label_set_facts", "scan_files", "summary"]

_EXTENSION_FORMATS = {
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".jpe": "JPEG",
    ".jfif": "JPEG",
    ".png": "PNG",
    ".gif": "GIF",
    ".bmp": "BMP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".webp": "WEBP",
    ".heic": "HEIF",
    ".heif": "HEIF",
    ".avif": "AVIF",
}


def _conversions(info: ImageInfo, key: str, dataset_channels: int) -> list[str]:
    mode, notes = info.mode, []
    if info.exif_rotated:
        notes.append("rotated by its EXIF orientation")
    if mode == "1":
        notes.append("1-bit expanded to 8-bit grayscale")
    elif mode in ("LA", "La", "PA", "RGBA", "RGBa") or info.transparency:
        notes.append("transparency composited on white")
    elif mode.startswith("I"):
        notes.append("16-bit values rescaled to 8-bit")
    elif mode == "F":
        notes.append("floating-point values rescaled to 8-bit")
    elif mode in ("P", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        notes.append(f"{mode} converted to RGB")
    if info.is_grayscale and dataset_channels == 3:
        notes.append("grayscale repeated to 3 channels")
    if info.frames > 1:
        frames = f"{info.frames}+" if info.frames >= MAX_COUNTED_FRAMES else str(info.frames)
        notes.append(f"animated ({frames} frames): the first frame is used")
    suffix = "." + key.rsplit(".", 1)[-1].lower() if "." in key else ""
    expected = _EXTENSION_FORMATS.get(suffix)
    if expected and info.format not in (expected, "MPO"):
        notes.append(f"named {suffix} but holds {info.format}: read by content")
    return notes


def _inspect_file(split, key: str) -> tuple[ImageInfo | None, str | None, str]:
    """Header, the reason it cannot be used (or None), and the content hash."""
    source = split.reader.describe(key)
    try:
        data = split.reader.read(key)
    except BadImageError as error:
        return None, error.reason, ""
    digest = hashlib.sha256(data).hexdigest()
    try:
        info = probe_image(data, source)
        decode_image(data, source)  # the full decode finds truncated and corrupt files
    except BadImageError as error:
        return None, error.reason, digest
    return info, None, digest


def scan_files(dataset: Dataset, report=None) -> list[dict]:
    """A row per file: used, converted (how) or skipped (why); ``report`` is told how far a long
    scan has come."""
    rows, infos = [], []
    progress = ScanProgress(sum(len(split) for split in dataset.splits.values()), report)
    for split_name, split in dataset.splits.items():
        for key, target in zip(split.keys, split.targets):
            progress.step()
            info, reason, digest = _inspect_file(split, key)
            row = {
                "file": split.reader.describe(key),
                "split": split_name,
                **_label_fields(dataset, target),
                "sha256": digest,
            }
            rows.append(row)
            infos.append((row, info, reason, key))
    usable = [info for _, info, _, _ in infos if info is not None]
    channels = 1 if usable and all(info.is_grayscale for info in usable) else 3
    for row, info, reason, key in infos:
        if info is None:
            row.update(status="skipped", detail=reason)
            continue
        notes = _conversions(info, key, channels)
        row.update(
            status="converted" if notes else "used",
            detail="; ".join(notes) or None,
            size=[info.width, info.height],
            mode=info.mode,
            format=info.format,
        )
    return rows


def array_rows(dataset: Dataset) -> list[dict]:
    rows = []
    for split_name, split in dataset.splits.items():
        for index, (key, target) in enumerate(zip(split.keys, split.targets)):
            image = split.images[index]
            rows.append(
                {
                    "file": key,
                    "split": split_name,
                    **_label_fields(dataset, target),
                    "status": "used",
                    "detail": None,
                    "sha256": hashlib.sha256(image.tobytes()).hexdigest(),
                    "size": [int(image.shape[1]), int(image.shape[0])],
                    "mode": "L" if image.shape[2] == 1 else "RGB",
                    "format": "array",
                }
            )
    return rows


def _label_fields(dataset: Dataset, target) -> dict:
    return label_fields(target, dataset.classes)


def summary(dataset: Dataset, rows: list[dict]) -> dict:
    usable = [row for row in rows if row["status"] != "skipped"]
    per_split = {name: dict(Counter(label for row in usable if row["split"] == name for label in row_labels(row)))
                 for name in dataset.splits}  # fmt: skip
    sizes = defaultdict(list)
    modes = defaultdict(Counter)
    for row in usable:
        for label in row_labels(row):
            sizes[label].append(row["size"])
            modes[label][row["mode"]] += 1
    size_summary = {
        name: {
            "min": np.min(values, axis=0).tolist(),
            "median": np.median(values, axis=0).tolist(),
            "max": np.max(values, axis=0).tolist(),
        }
        for name, values in sizes.items()
    }
    return {
        "per_split": per_split,
        "sizes": size_summary,
        "modes": {k: dict(v) for k, v in modes.items()},
        "imbalance_ratio": imbalance_ratio(rows, dataset.classes),
    }


# A label on fewer training images than this is too rare to learn; one missing from a held-out
# split cannot be measured there.
RARE_LABEL_TRAIN_IMAGES = 5
COMMON_LABEL_SHARE = 0.9  # a label on more of the images than this says little about any of them
CO_OCCURRING_PAIRS = 10  # pairs of labels listed, most frequent first


def label_set_facts(dataset: Dataset, rows: list[dict]) -> tuple[dict, list[str]]:
    """Multi-label data: labels per image, images with no label per split, the labels seen together
    most often, and the labels too rare to learn or to measure; with the warnings they call for."""
    usable = [row for row in rows if row["status"] != "skipped"]
    per_image = [len(row["labels"]) for row in usable]
    pairs = Counter((first, second) for row in usable for index, first in enumerate(sorted(row["labels"]))
                    for second in sorted(row["labels"])[index + 1:])  # fmt: skip
    counts = {split: Counter(label for row in usable if row["split"] == split for label in row["labels"])
              for split in dataset.splits}  # fmt: skip
    images = Counter(row["split"] for row in usable)
    facts = {
        "labels_per_image": {
            "mean": round(float(np.mean(per_image)), 3) if per_image else 0.0,
            "max": max(per_image, default=0),
        },
        "images_without_labels": {
            split: sum(1 for row in usable if row["split"] == split and not row["labels"]) for split in dataset.splits
        },
        "co_occurrence": [
            {"labels": list(pair), "images": count} for pair, count in pairs.most_common(CO_OCCURRING_PAIRS)
        ],
        "rare": [],
    }
    warnings = []
    for label in dataset.classes:
        train = counts.get("train", Counter())[label]
        unmeasured = [split for split in dataset.splits if split != "train" and counts[split][label] == 0]
        if train < RARE_LABEL_TRAIN_IMAGES or unmeasured:
            facts["rare"].append({"label": label, "train": train, "missing_from": unmeasured})
        if train < RARE_LABEL_TRAIN_IMAGES:
            warnings.append(f"label {label!r} is on {train} training image(s): too few to learn it")
        if unmeasured:
            warnings.append(
                f"label {label!r} is on no {' or '.join(unmeasured)} image: its score cannot be measured there"
            )
        total = sum(counts[split][label] for split in dataset.splits)
        if usable and total / len(usable) > COMMON_LABEL_SHARE:
            warnings.append(f"label {label!r} is on {total / len(usable):.0%} of the images: a model that always "
                            "says it scores well on it, so judge it by the other labels")  # fmt: skip
    facts["images"] = dict(images)
    return facts, warnings
