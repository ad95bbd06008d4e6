"""What every runner needs: device choice, thread settings, seeding, loading data for a model."""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass

import numpy as np
import torch
from rich.console import Console

from imgclf.data.batches import Batches, StreamingBatches, TensorBatches
from imgclf.data.dataset import Dataset
from imgclf.data.prepare import Preprocess, StreamingSplit, TensorSplit, decode_split
from imgclf.errors import UsageError

__all__ = [
    "PreparedSplits",
    "eval_batch_size",
    "make_batches",
    "prepare_splits",
    "resolve_device",
    "seed_everything",
    "stderr_console",
]


def stderr_console() -> Console:
    return Console(file=sys.stderr, highlight=False, soft_wrap=True)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device must be auto, cpu, cuda or cuda:N, not {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for, but PyTorch sees no CUDA GPU here")
    return device


def eval_batch_size(input_size: int) -> int:
    """Images per inference batch: about 8 images of 128 px worth of pixels. Small batches stay in
    the CPU caches: EfficientNet-Lite0 at 128 px ran 160 images/s at batch 8 and 62 at batch 256."""
    return max(8, min(256, 8 * 128 * 128 // (input_size * input_size)))


def seed_everything(seed: int) -> None:
    """Seeds the global generators that layers (dropout, init) draw from."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class PreparedSplits:
    splits: dict[str, TensorSplit | StreamingSplit]
    skipped: list[tuple[str, str]]  # files that failed to decode, with the reason
    in_memory: bool


def prepare_splits(dataset: Dataset, preprocess: Preprocess, in_memory: bool, workers: int) -> PreparedSplits:
    """Decode each split into memory, or wrap it for streaming."""
    splits, skipped = {}, []
    for name, split in dataset.splits.items():
        if in_memory or not hasattr(split, "reader"):
            splits[name], bad = decode_split(split, preprocess, workers)
            skipped.extend(bad)
        else:
            splits[name] = StreamingSplit(split, preprocess)
    return PreparedSplits(splits, skipped, in_memory)


def make_batches(
    split: TensorSplit | StreamingSplit,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    drop_last: bool = False,
    workers: int = 2,
    rank: int = 0,
    world_size: int = 1,
) -> Batches:
    """Batches of a split; with ``world_size`` > 1, only this rank's share of each epoch."""
    if isinstance(split, TensorSplit):
        return TensorBatches(split, batch_size, shuffle, seed, drop_last, rank, world_size)
    return StreamingBatches(split, batch_size, shuffle, seed, drop_last, workers, rank, world_size)
