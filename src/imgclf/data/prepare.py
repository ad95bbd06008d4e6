"""From labelled splits to fixed-size uint8 tensors: scan, decode once, resize, normalize.

A scan reads every file's header first (size, mode; bad headers are skipped and reported), so
the input size and the channel count are decided from the data before any pixel is decoded.
Datasets whose decoded pixels fit in ``max_memory_bytes`` are decoded once, in parallel, into
one uint8 tensor; larger ones stream (decoded per batch by DataLoader workers).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from imgclf.data.dataset import ArraySplit, Dataset, FileSplit, Split, label_fields
from imgclf.data.decode import convert_channels, decode_image, probe_image, resize_shorter_center_crop
from imgclf.errors import BadImageError

__all__ = [
    "ScanProgress",
    "label_counts",
    "PreparedSplits",
    "prepare_splits",
    "DataProfile",
    "Preprocess",
    "StreamingSplit",
    "TensorSplit",
    "decode_split",
    "estimate_mean_std",
    "profile_dataset",
]

DEFAULT_MAX_MEMORY_BYTES = 4 * 1024**3


@dataclass(frozen=True)
class Preprocess:
    """Everything needed to turn any image into model input; stored in the bundle."""

    input_size: int
    channels: int
    mean: tuple[float, ...]  # per channel, on the 0..1 scale
    std: tuple[float, ...]
    resize: str = "shorter_side_center_crop"
    resize_size: int | None = None  # shorter side before the centre crop; None: input_size

    @property
    def decode_side(self) -> int:
        """The shortest sides an image needs for ``prepare_pixels`` (``decode_image``'s ``min_side``)."""
        return max(self.input_size, self.resize_size or self.input_size)

    def decode(self, data: bytes, source: str) -> np.ndarray:
        """Encoded image bytes -> CxSxS uint8, decoded no larger than the resize needs
        (raises BadImageError naming ``source``)."""
        return self.prepare_pixels(decode_image(data, source, self.channels, min_side=self.decode_side))

    def prepare_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """HxWxC uint8 of any size and channel count -> CxSxS uint8."""
        pixels = convert_channels(pixels, self.channels)
        pixels = resize_shorter_center_crop(pixels, self.input_size, self.resize_size)
        return np.ascontiguousarray(pixels.transpose(2, 0, 1))

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 NCHW (any device) -> float32 NCHW, (x / 255 - mean) / std, in channels-last
        memory layout. With a channels-last model, on 2 CPU cores: training steps 17-24% faster
        (ResNet-18, LeNet-5), inference 25-79% faster (ResNet-18, EfficientNet-Lite0); the table
        is in BENCHMARKS.md ("CPU inference speed")."""
        mean = torch.tensor(self.mean, device=images.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=images.device).view(1, -1, 1, 1)
        normalized = (images.float() / 255.0 - mean) / std
        return normalized.contiguous(memory_format=torch.channels_last)

    def to_dict(self) -> dict:
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def unnormalized(cls, input_size: int, channels: int) -> Preprocess:
        """Resize and crop only (mean 0, std 1): for decoding before the mean and std are known."""
        return cls(input_size, channels, (0.0,) * channels, (1.0,) * channels)

    @classmethod
    def from_dict(cls, values: dict) -> Preprocess:
        return cls(
            input_size=int(values["input_size"]),
            channels=int(values["channels"]),
            mean=tuple(float(v) for v in values["mean"]),
            std=tuple(float(v) for v in values["std"]),
            resize=values.get("resize", "shorter_side_center_crop"),
            resize_size=int(values["resize_size"]) if values.get("resize_size") else None,
        )


@dataclass
class DataProfile:
    """What the header scan found: channels, typical size, and files that cannot be used."""

    channels: int
    native_size: int  # median of the shorter image side, in pixels
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    sizes: dict[str, int] = field(default_factory=dict)  # usable images per split
    shorter_side_range: tuple[int, int] = (0, 0)  # smallest and largest shorter image side, pixels
    files: list[dict] = field(default_factory=list)  # one row per file, see imgclf.data.checks
    duplicates: dict[str, list[list[str]]] = field(default_factory=dict)  # filled by the train runner
    warnings: list[str] = field(default_factory=list)


@dataclass
class TensorSplit:
    """A decoded split: (N, C, S, S) uint8 images and int64 targets, on any device."""

    images: torch.Tensor
    targets: torch.Tensor
    keys: list[str]

    def __len__(self) -> int:
        return len(self.keys)


@dataclass
class _SplitScan:
    valid: list[int] = field(default_factory=list)  # indices of usable files
    bad: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    short_sides: list[int] = field(default_factory=list)
    all_gray: bool = True
    rows: list[dict] = field(default_factory=list)  # per file, for imgclf.data.checks


SCAN_REPORT_EVERY_S = 10.0  # seconds between progress lines of a long file scan


class ScanProgress:
    """Says how far a long scan of the files has come, every ``every_s`` seconds: a quick scan says
    nothing, a million-row CSV no longer runs for minutes without a word."""

    def __init__(self, total: int, report: Callable[[str], None] | None, every_s: float | None = None):
        self.total, self.report = total, report
        self.every_s = SCAN_REPORT_EVERY_S if every_s is None else every_s
        self.done, self.started = 0, time.perf_counter()
        self.last = self.started

    def step(self) -> None:
        self.done += 1
        now = time.perf_counter()
        if self.report is not None and now - self.last >= self.every_s:
            self.last = now
            rate = self.done / max(now - self.started, 1e-9)
            left = (self.total - self.done) / max(rate, 1e-9)
            self.report(f"scanning files: {self.done:,} of {self.total:,} ({rate:,.0f}/s, about {left:.0f} s left)")


def _scan_file_split(name: str, split: FileSplit, classes: list[str], progress: ScanProgress) -> _SplitScan:
    scan = _SplitScan()
    for index, (key, target) in enumerate(zip(split.keys, split.targets)):
        progress.step()
        source = split.reader.describe(key)
        row = {"file": source, "split": name, **label_fields(target, classes), "status": "skipped"}
        scan.rows.append(row)
        try:
            data = split.reader.read(key)
            row["sha256"] = hashlib.sha256(data).hexdigest()  # exact duplicates and leakage
            info = probe_image(data, source, count_frames=False)  # a scan needs sizes and modes only
        except BadImageError as error:
            scan.bad.append((error.source, error.reason))
            continue
        row.update(status="used", mode=info.mode, format=info.format)
        scan.valid.append(index)
        scan.short_sides.append(min(info.width, info.height))
        scan.all_gray = scan.all_gray and info.is_grayscale
    return scan


def _scan_array_split(name: str, split: ArraySplit, classes: list[str]) -> _SplitScan:
    scan = _SplitScan(short_sides=[min(split.images.shape[1:3])] * len(split), all_gray=split.images.shape[3] == 1)
    mode = "L" if scan.all_gray else "RGB"
    scan.rows = [
        {"file": key, "split": name, **label_fields(target, classes), "status": "used", "mode": mode,
         "format": "array", "sha256": hashlib.sha256(image.tobytes()).hexdigest()}
        for key, target, image in zip(split.keys, split.targets, split.images)
    ]  # fmt: skip
    return scan


def profile_dataset(dataset: Dataset, report: Callable[[str], None] | None = None) -> DataProfile:
    """Scan every split's headers (and hash every file); drop unusable files from
    ``dataset.splits`` (skip and report). ``report``: told how far a long scan has come."""
    progress = ScanProgress(sum(len(split) for split in dataset.splits.values()), report)
    skipped: list[tuple[str, str]] = []
    short_sides: list[int] = []
    rows: list[dict] = []
    all_gray = True
    for name, split in list(dataset.splits.items()):
        if isinstance(split, ArraySplit):
            scan = _scan_array_split(name, split, dataset.classes)
        else:
            scan = _scan_file_split(name, split, dataset.classes, progress)
            if scan.bad:
                dataset.splits[name] = split.subset(np.array(scan.valid, dtype=np.int64))
        skipped.extend(scan.bad)
        short_sides.extend(scan.short_sides)
        rows.extend(scan.rows)
        all_gray = all_gray and scan.all_gray
    native = int(np.median(short_sides)) if short_sides else 0
    sizes = {name: len(split) for name, split in dataset.splits.items()}
    side_range = (int(min(short_sides)), int(max(short_sides))) if short_sides else (0, 0)
    return DataProfile(
        channels=1 if all_gray else 3,
        native_size=native,
        skipped=skipped,
        sizes=sizes,
        shorter_side_range=side_range,
        files=rows,
    )


def _decode_one(split: FileSplit, index: int, preprocess: Preprocess) -> np.ndarray | tuple[str, str]:
    key = split.keys[index]
    try:
        return preprocess.decode(split.reader.read(key), split.reader.describe(key))
    except BadImageError as error:
        return (error.source, error.reason)


def decode_split(split: Split, preprocess: Preprocess, workers: int = 2) -> tuple[TensorSplit, list[tuple[str, str]]]:
    """Decode a whole split once into memory; returns it and the files skipped (with reasons)."""
    if isinstance(split, ArraySplit):
        chw = [preprocess.prepare_pixels(image) for image in split.images]
        images = (
            torch.from_numpy(np.stack(chw))
            if chw
            else torch.empty(0, preprocess.channels, preprocess.input_size, preprocess.input_size, dtype=torch.uint8)
        )
        return TensorSplit(images, torch.from_numpy(split.targets.copy()), list(split.keys)), []
    # Pillow releases the GIL while decoding and resizing, so threads use every core.
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(pool.map(lambda i: _decode_one(split, i, preprocess), range(len(split)), chunksize=64))
    kept = [i for i, result in enumerate(results) if isinstance(result, np.ndarray)]
    skipped = [result for result in results if not isinstance(result, np.ndarray)]
    size = preprocess.input_size
    images = np.zeros((len(kept), preprocess.channels, size, size), dtype=np.uint8)
    for row, index in enumerate(kept):
        images[row] = results[index]
    targets = torch.from_numpy(split.targets[kept].copy())
    return TensorSplit(torch.from_numpy(images), targets, [split.keys[i] for i in kept]), skipped


class StreamingSplit(torch.utils.data.Dataset):
    """A split decoded on demand, for data too large to hold in memory.

    A file that fails to decode yields ``None``; ``collate_skipping_bad`` drops it from the batch,
    so one bad file never ends a run.
    """

    def __init__(self, split: FileSplit, preprocess: Preprocess):
        self.split = split
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int] | None:
        result = _decode_one(self.split, index, self.preprocess)
        if not isinstance(result, np.ndarray):
            return None
        target = self.split.targets[index]
        return torch.from_numpy(result), torch.from_numpy(target.copy()) if target.ndim else int(target)


def label_counts(targets: torch.Tensor, num_classes: int) -> list[int]:
    """Images per class (per label, on multi-label targets)."""
    if targets.dim() == 2:
        return targets.sum(dim=0).round().long().tolist()
    return torch.bincount(targets, minlength=num_classes).tolist()


def split_targets(split: TensorSplit | StreamingSplit) -> torch.Tensor:
    """The class index of every image of a decoded or streaming split, on the CPU (on multi-label
    data a float row of 0/1 per image, a column per label)."""
    return split.targets.cpu() if isinstance(split, TensorSplit) else torch.from_numpy(split.split.targets)


def estimate_mean_std(images: torch.Tensor, max_images: int = 10_000) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std on the 0..1 scale, from up to ``max_images`` evenly spaced images."""
    step = max(1, len(images) // max_images)
    sample = images[::step].to(torch.float64) / 255.0
    mean = sample.mean(dim=(0, 2, 3))
    std = sample.std(dim=(0, 2, 3)).clamp_min(1e-3)  # a constant channel must not divide by 0
    return tuple(round(float(v), 6) for v in mean), tuple(round(float(v), 6) for v in std)


@dataclass
class PreparedSplits:
    splits: dict[str, TensorSplit | StreamingSplit]
    skipped: list[tuple[str, str]]  # files that failed to decode, with the reason
    in_memory: bool
    # (rank, processes) when "train" holds only this process's share (decoded in memory under DDP)
    train_share: tuple[int, int] | None = None


def training_share(split: Split, rank: int, processes: int) -> Split:
    """Process ``rank``'s share of a training split under DDP: every ``processes``-th image from
    ``rank`` on (a class-balanced slice of a split listed class by class), cut to the same length
    on every process, so all take the same number of steps (at most ``processes - 1`` images sit
    out, the same ones every epoch)."""
    each = len(split) // processes
    return split.subset(np.arange(rank, len(split), processes)[:each])


def prepare_splits(dataset: Dataset, preprocess: Preprocess, in_memory: bool, workers: int,
                   train_share: tuple[int, int] | None = None) -> PreparedSplits:  # fmt: skip
    """Decode each split into memory, or wrap it for streaming. ``train_share`` = (rank, processes):
    decode only this process's share of the training split (a streamed split is already read
    share by share: its sampler gives each process its own images)."""
    splits, skipped = {}, []
    for name, split in dataset.splits.items():
        if in_memory or not hasattr(split, "reader"):
            if name == "train" and train_share is not None:
                split = training_share(split, *train_share)
            splits[name], bad = decode_split(split, preprocess, workers)
            skipped.extend(bad)
        else:
            splits[name] = StreamingSplit(split, preprocess)
    shared = train_share if train_share is not None and isinstance(splits["train"], TensorSplit) else None
    return PreparedSplits(splits, skipped, in_memory, shared)
