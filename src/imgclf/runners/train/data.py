"""Data for a training run: load DATA, cap it, scan it, choose the preprocessing, decode it."""

from __future__ import annotations

import os
import time
from dataclasses import replace

import numpy as np
import torch
from rich.console import Console
from rich.text import Text

from imgclf.config import TrainConfig
from imgclf.data.checks import data_warnings
from imgclf.data.dataset import MULTI_LABEL, Dataset, SplitPolicy, load_dataset
from imgclf.data.prepare import (
    DataProfile,
    PreparedSplits,
    Preprocess,
    TensorSplit,
    estimate_mean_std,
    label_counts,
    prepare_splits,
    profile_dataset,
    split_targets,
)
from imgclf.data.split import cap_per_label, capped_val_per_class
from imgclf.errors import DataError
from imgclf.models import choose_input_size, get_model_spec
from imgclf.text import stderr_console
from imgclf.transfer import PretrainedWeights

__all__ = ["describe_data", "load_training_data"]


def _cap_per_class(dataset: Dataset, split: str, limit: int, seed: int) -> None:
    """Keep at most ``limit`` images of each class in ``split`` (a seeded random choice)."""
    targets = dataset.splits[split].targets
    rng = np.random.default_rng(seed)
    if targets.ndim == 2:
        keep = [cap_per_label(targets, limit, rng)]
    else:
        keep = [rng.permutation(np.flatnonzero(targets == label))[:limit] for label in np.unique(targets)]
    dataset.splits[split] = dataset.splits[split].subset(np.sort(np.concatenate(keep)))


def apply_train_cap(dataset: Dataset, config: TrainConfig) -> None:
    """``max_train_per_class``: the validation split shrinks in proportion, so that a
    "100 images per class" run is not dominated by evaluating thousands of validation images, but
    keeps at least CAPPED_VAL_PER_CLASS a class (where the data has them) to judge by."""
    limit = config.max_train_per_class
    if limit is None:
        return
    _cap_per_class(dataset, "train", limit, config.seed)
    val_limit = capped_val_per_class(limit, config.val_fraction)
    _cap_per_class(dataset, "val", val_limit, config.seed)
    dataset.split_info.update(
        max_train_per_class=limit,
        max_val_per_class=val_limit,
        sizes={name: len(split) for name, split in dataset.splits.items()},
    )


def _choose_preprocess(profile: DataProfile, config: TrainConfig, weights: PretrainedWeights | None) -> Preprocess:
    """Input size and channels from the data and model; pretrained weights bring their own
    preprocessing (3 channels, their mean/std, their resize-then-crop ratio)."""
    if weights is not None:
        return weights.preprocess(config.input_size)
    size = config.input_size or choose_input_size(get_model_spec(config.model), profile.native_size)
    channels = profile.channels
    return Preprocess.unnormalized(size, channels)


def _decode(
    dataset: Dataset,
    profile: DataProfile,
    preprocess: Preprocess,
    config: TrainConfig,
    weights: PretrainedWeights | None,
    console: Console,
    share: tuple[int, int] | None = None,
) -> tuple[Preprocess, PreparedSplits]:
    """``share`` = (rank, processes) under DDP: this process decodes only its share of train."""
    size, channels = preprocess.input_size, preprocess.channels
    images = sum(len(split) for split in dataset.splits.values())
    if share is not None:
        images -= len(dataset.splits["train"]) - len(dataset.splits["train"]) // share[1]
    pixels = images * channels * size * size
    in_memory = pixels <= config.max_memory_gb * 1024**3
    started = time.perf_counter()
    prepared = prepare_splits(dataset, preprocess, in_memory, config.workers, share)
    if weights is None:  # mean/std of this training set
        preprocess = replace(preprocess, **_training_mean_std(prepared))
    where = "decoded into memory" if in_memory else "streamed from disk"
    if prepared.train_share is not None:
        share_size, whole = len(prepared.splits["train"]), len(dataset.splits["train"])
        where += f" (train: this process's share, {share_size:,} of {whole:,})"
    console.print(
        f"data: {size}x{size} px, {channels} channel(s), {where} "
        f"({pixels / 1024**2:,.0f} MiB) in {time.perf_counter() - started:.1f}s"
    )
    return preprocess, prepared


def _training_mean_std(prepared: PreparedSplits) -> dict:
    """Per-channel mean and std of the training images. With a share per process, the sums of
    every share, added across processes (every model must normalize the same way): no process
    decodes another's images for it."""
    train = prepared.splits["train"]
    if prepared.train_share is not None:
        return _shared_mean_std(train.images)
    if isinstance(train, TensorSplit):
        mean, std = estimate_mean_std(train.images)
    else:
        sample = [train[i] for i in range(0, len(train), max(1, len(train) // 2000))]
        mean, std = estimate_mean_std(torch.stack([item[0] for item in sample if item is not None]))
    return {"mean": mean, "std": std}


def _shared_mean_std(images: torch.Tensor) -> dict:
    import torch.distributed as dist

    pixels = images.to(torch.float64).transpose(0, 1).reshape(images.shape[1], -1) / 255.0
    count = torch.full((len(pixels),), float(pixels.shape[1]), dtype=torch.float64)
    sums = torch.stack([pixels.sum(dim=1), (pixels**2).sum(dim=1), count])
    if dist.is_available() and dist.is_initialized():
        on_gpu = dist.get_backend() == "nccl"  # NCCL reduces CUDA tensors only
        moved = sums.to(torch.device("cuda", torch.cuda.current_device())) if on_gpu else sums
        dist.all_reduce(moved)
        sums = moved.cpu()
    mean = sums[0] / sums[2]
    std = (sums[1] / sums[2] - mean**2).clamp_min(0).sqrt().clamp_min(1e-3)  # a constant channel: no division by 0
    return {"mean": tuple(round(float(v), 6) for v in mean), "std": tuple(round(float(v), 6) for v in std)}


def scan_training_data(data: str, config: TrainConfig, data_dir) -> tuple[Dataset, DataProfile]:
    """DATA split as this run splits it (and capped by ``max_train_per_class``), with the profile
    from one header scan of its files. The advisor and the training run share the result."""
    policy = SplitPolicy(config.seed, config.val_fraction, config.test_fraction)
    dataset = load_dataset(data, policy, data_dir)
    apply_train_cap(dataset, config)
    report = stderr_console().print if int(os.environ.get("RANK", "0")) == 0 else None  # rank 0 speaks
    return dataset, profile_dataset(dataset, report)


def check_trainable(data: str, dataset: Dataset, profile: DataProfile) -> None:
    """Training needs images to learn from and images to choose the epoch (and the calibration)
    on: a clear error for a folder of one image per class, before anything is decoded."""
    if len(dataset.splits["train"]) == 0:
        raise DataError(f"{data}: no usable training images ({len(profile.skipped)} skipped)")
    if len(dataset.splits["val"]) == 0:
        counts = label_counts(torch.from_numpy(np.asarray(dataset.splits["train"].targets)), dataset.num_classes)
        single = [name for name, count in zip(dataset.classes, counts) if count < 2]
        detail = f" ({', '.join(single[:5])} {'has' if len(single) == 1 else 'have'} one)" if single else ""
        raise DataError(f"{data}: no validation images: give each class at least 2 usable images, one to train "
                        f"on and one to validate{detail}, or a val/ folder")  # fmt: skip


def load_training_data(
    data: str,
    config: TrainConfig,
    data_dir,
    weights: PretrainedWeights | None,
    console: Console,
    scanned: tuple[Dataset, DataProfile] | None = None,
    share: tuple[int, int] | None = None,
) -> tuple[Dataset, DataProfile, Preprocess, PreparedSplits]:
    """``scanned``: what ``scan_training_data`` returned, when the advisor has already read it;
    ``share`` = (rank, processes): decode only this process's share of the training images."""
    dataset, profile = scanned or scan_training_data(data, config, data_dir)
    check_trainable(data, dataset, profile)
    sizes = ", ".join(f"{name} {count:,}" for name, count in profile.sizes.items())
    skipped = f", {len(profile.skipped)} unusable files skipped" if profile.skipped else ""
    kinds = "labels (several per image)" if dataset.task == MULTI_LABEL else "classes"
    console.print(f"data: {dataset.name}: {dataset.num_classes} {kinds}, {sizes} images{skipped}")
    total_files = sum(profile.sizes.values()) + len(profile.skipped)
    _check_bad_files(data, profile.skipped, total_files, config)
    # imgclf doctor's dataset checks, from the scan just made: nothing is read again.
    profile.duplicates, profile.warnings = data_warnings(profile.files, dataset.classes)
    for warning in profile.warnings:
        console.print(Text("warning: ", style="bold yellow"), f"{warning} (see: imgclf doctor {data})", sep="")
    preprocess = _choose_preprocess(profile, config, weights)
    preprocess, prepared = _decode(dataset, profile, preprocess, config, weights, console, share)
    _check_bad_files(data, profile.skipped + prepared.skipped, total_files, config)
    return dataset, profile, preprocess, prepared


def _check_bad_files(data: str, skipped: list[tuple[str, str]], total_files: int, config: TrainConfig) -> None:
    """``--strict``: the first bad file ends the run; otherwise too many bad files do."""
    if not skipped:
        return
    first_file, first_reason = skipped[0]
    if config.strict:
        raise DataError(f"{first_file}: {first_reason} (--strict; imgclf doctor {data} lists every problem)")
    share = len(skipped) / max(1, total_files)
    if share > config.max_bad_fraction:
        raise DataError(
            f"{data}: {len(skipped)} files ({share:.0%}) cannot be used, over --max-bad-fraction "
            f"{config.max_bad_fraction:g}; first: {first_file}: {first_reason}. See: imgclf doctor {data}"
        )


def describe_data(dataset: Dataset, profile: DataProfile, prepared: PreparedSplits) -> dict:
    """The bundle's record of the data: source, split, sizes, and every skipped file."""
    skipped = profile.skipped + prepared.skipped
    sizes = {name: len(split) for name, split in prepared.splits.items()}
    counts = {name: label_counts(split_targets(split), dataset.num_classes) for name, split in prepared.splits.items()}
    if prepared.train_share is not None:  # this process decoded a share: the whole split, as listed
        train = dataset.splits["train"]
        sizes["train"] = len(train)
        counts["train"] = label_counts(torch.as_tensor(train.targets), dataset.num_classes)
    return {
        "source": dataset.name,
        "kind": dataset.kind,
        "split": dataset.split_info,
        "sizes": sizes,
        "class_counts": counts,
        "native_size": profile.native_size,
        "shorter_side_range": list(profile.shorter_side_range),
        "channels": profile.channels,
        "skipped": [{"file": file, "reason": reason} for file, reason in skipped],
        "warnings": profile.warnings,
        "duplicates": {kind: len(groups) for kind, groups in profile.duplicates.items()},
        "ignored": len(dataset.ignored),
    }
