"""Batches of uint8 images and int64 targets, shuffled deterministically per (seed, epoch).

Both kinds of source (decoded tensors, streamed files) give the same thing, so the training
loop does not care which one it gets. Shuffling depends only on the seed and the epoch number,
which makes a resumed run see the same order the interrupted one would have seen.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Sampler

from imgclf.data.prepare import StreamingSplit, TensorSplit

__all__ = [
    "Batches",
    "MirroredBatches",
    "StreamingBatches",
    "TensorBatches",
    "collate_skipping_bad",
    "eval_batch_size",
    "make_batches",
]

Batch = tuple[torch.Tensor, torch.Tensor]


def _epoch_order(size: int, seed: int, epoch: int, shuffle: bool, rank: int = 0, world_size: int = 1) -> torch.Tensor:
    """The epoch's image order; with several processes, this rank's share of it. Every rank
    gets the same number of images (the last ``size % world_size`` of the order sit this epoch
    out), so all ranks take the same number of steps, as DistributedDataParallel requires."""
    if not shuffle:
        order = torch.arange(size)
    else:
        order = torch.randperm(size, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    if world_size == 1:
        return order
    return order[: size - size % world_size][rank::world_size]


class TensorBatches:
    """Batches sliced from tensors already in memory (CPU or GPU): no per-image Python work."""

    def __init__(
        self,
        data: TensorSplit,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.data = data
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.rank, self.world_size = rank, world_size
        self.images_per_epoch = len(data) // world_size  # this rank's share
        self.drop_last = drop_last and self.images_per_epoch > batch_size
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """The epoch whose order to give, starting after its first ``skip`` batches (resume)."""
        self.epoch, self.skip = epoch, skip

    def __len__(self) -> int:
        full, rest = divmod(self.images_per_epoch, self.batch_size)
        return full if self.drop_last or rest == 0 else full + 1

    def __iter__(self) -> Iterator[Batch]:
        order = _epoch_order(len(self.data), self.seed, self.epoch, self.shuffle, self.rank, self.world_size)
        order = order.to(self.data.images.device)
        for batch in range(self.skip, len(self)):
            indices = order[batch * self.batch_size : (batch + 1) * self.batch_size]
            yield self.data.images[indices], self.data.targets[indices]


class _EpochSampler(Sampler[int]):
    """The streaming counterpart of TensorBatches' order: per (seed, epoch), this rank's share."""

    def __init__(self, size: int, seed: int, shuffle: bool, rank: int = 0, world_size: int = 1):
        self.size, self.seed, self.shuffle, self.epoch = size, seed, shuffle, 0
        self.rank, self.world_size = rank, world_size
        self.skip_images = 0  # a resumed epoch starts after the images already trained on

    def __len__(self) -> int:
        return self.size // self.world_size

    def __iter__(self) -> Iterator[int]:
        order = _epoch_order(self.size, self.seed, self.epoch, self.shuffle, self.rank, self.world_size)
        return iter(order[self.skip_images :].tolist())


def collate_skipping_bad(items: list) -> Batch:
    """Stack (image, target) pairs, leaving out the ``None`` of files that failed to decode."""
    good = [item for item in items if item is not None]
    if not good:
        return torch.empty(0, dtype=torch.uint8), torch.empty(0, dtype=torch.int64)
    images = torch.stack([image for image, _ in good])
    if isinstance(good[0][1], torch.Tensor):  # multi-label: a float row of 0/1 per image
        targets = torch.stack([target for _, target in good])
    else:
        targets = torch.tensor([target for _, target in good], dtype=torch.int64)
    return images, targets


class StreamingBatches:
    """Batches decoded by DataLoader worker processes, for data that does not fit in memory."""

    def __init__(
        self,
        data: StreamingSplit,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        workers: int = 2,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.sampler = _EpochSampler(len(data), seed, shuffle, rank, world_size)
        self.batch_size = batch_size
        self.loader = DataLoader(
            data,
            batch_size=batch_size,
            sampler=self.sampler,
            num_workers=workers,
            collate_fn=collate_skipping_bad,
            drop_last=drop_last and len(self.sampler) > batch_size,
            persistent_workers=workers > 0,
            pin_memory=torch.cuda.is_available(),
            # Its own generator: creating an epoch's iterator must not draw from the global RNG,
            # or dropout in a resumed run would see different random numbers.
            generator=torch.Generator().manual_seed(seed),
        )

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """The epoch whose order to give, starting after its first ``skip`` batches (resume)."""
        self.sampler.epoch, self.sampler.skip_images = epoch, skip * self.batch_size

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Batch]:
        return iter(self.loader)


class MirroredBatches:
    """Other batches with every image mirrored left to right (an extra view of each image)."""

    def __init__(self, batches: TensorBatches | StreamingBatches):
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[Batch]:
        for images, targets in self.batches:
            yield torch.flip(images, dims=(3,)), targets


Batches = TensorBatches | StreamingBatches | MirroredBatches


def eval_batch_size(input_size: int) -> int:
    """Images per inference batch: about 32 images of 128 px worth of pixels, at least 16.
    EfficientNet-Lite0 with folded batch norms on 2 CPU cores, images/s at batch 8/16/32/64:
    171/168/227/198 at 128 px with glibc's default allocator, 161/200/220/262 with the settings
    the command line starts with (``cli/launch.py``); 106/104/101/102 at 224 px
    (bench/inference_speed.py)."""
    return max(16, min(256, 32 * 128 * 128 // (input_size * input_size)))


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
