"""Model facts a user asks for: parameters, FLOPs at an input size, latency on this machine."""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from imgclf.models._registry import create_model, get_model_spec

__all__ = ["count_flops", "count_parameters", "describe_model", "layer_summary", "measure_latency"]

MIN_TIMED_PASSES = 5  # p95 of fewer passes is just the slowest one


def count_parameters(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


@torch.no_grad()
def count_flops(model: nn.Module, in_chans: int, input_size: int) -> int:
    """FLOPs of one forward pass at batch 1 (a multiply-add counts 2), by PyTorch's counter.
    Works on models built on the meta device, where nothing is computed."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    images = torch.zeros(1, in_chans, input_size, input_size, device=device)
    with FlopCounterMode(display=False) as counter:
        model(images)
    model.train(was_training)
    return int(counter.get_total_flops())


def describe_model(name: str, input_size: int | None = None, with_flops: bool = True) -> dict:
    """One row of ``imgclf models``: parameters at the model's default configuration, FLOPs at
    ``input_size`` (default: the model's own; a model with fixed sizes uses its largest)."""
    spec = get_model_spec(name)
    size = input_size or spec.input_size
    if spec.fixed_input_sizes and size not in spec.fixed_input_sizes:
        size = max(spec.fixed_input_sizes)
    with torch.device("meta"):  # shapes only: no memory for VGG's 138M weights, no arithmetic
        model = create_model(name)
        row = {
            "name": name,
            "family": spec.family,
            "params": count_parameters(model),
            "input_size": spec.input_size,
            "in_chans": spec.in_chans,
            "num_classes": spec.num_classes,
            "description": spec.description,
        }
        if with_flops:  # the default model again, unless the size changes it (LeNet-5's classifier)
            sized = model if size == spec.input_size else create_model(name, input_size=size)
            row["flops"] = count_flops(sized, spec.in_chans, size)
            row["flops_input_size"] = size
    return row


def layer_summary(model: nn.Module) -> dict[str, int]:
    """How many layers of each kind (Conv2d, Linear, BatchNorm2d...) the model has, most first."""
    counts: dict[str, int] = {}
    for module in model.modules():
        if not list(module.children()) and list(module.parameters(recurse=False)):
            counts[type(module).__name__] = counts.get(type(module).__name__, 0) + 1
    return dict(sorted(counts.items(), key=lambda item: -item[1]))


@torch.no_grad()
def measure_latency(
    model: nn.Module,
    batch: int,
    in_chans: int,
    input_size: int,
    repeats: int = 20,
    warmup: int = 2,
    max_seconds: float | None = None,
) -> dict[str, float]:
    """Wall time of one eval-mode forward pass at ``batch`` on the model's device, in the
    channels-last layout that prediction uses: median and 95th percentile over ``repeats`` passes
    after ``warmup`` untimed ones, in milliseconds. ``max_seconds``: stop timing once this much
    time has passed and at least MIN_TIMED_PASSES passes are in (for slow models)."""
    model = model.eval().to(memory_format=torch.channels_last)
    device = next(model.parameters()).device
    images = torch.randn(batch, in_chans, input_size, input_size, device=device)
    images = images.contiguous(memory_format=torch.channels_last)
    for _ in range(warmup):
        model(images)
    times = []
    started = time.perf_counter()
    for _ in range(repeats):
        if max_seconds is not None and len(times) >= MIN_TIMED_PASSES and time.perf_counter() - started > max_seconds:
            break
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        model(images)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - start) * 1000)
    return {"p50_ms": round(float(np.median(times)), 3), "p95_ms": round(float(np.percentile(times, 95)), 3)}
