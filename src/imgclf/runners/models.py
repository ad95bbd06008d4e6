"""The models runner: the zoo as rows, optionally with latency measured on this machine."""

from __future__ import annotations

import time

import torch

from imgclf.models import create_model, describe_model, get_model_spec, list_models

__all__ = ["measure_latency_ms", "run_models"]


@torch.no_grad()
def measure_latency_ms(model: torch.nn.Module, batch: int, in_chans: int, input_size: int, repeats: int = 5) -> float:
    """Median wall time of one eval-mode forward pass at ``batch`` (after 2 warm-up passes), in
    the channels-last layout that prediction uses."""
    model = model.eval().to(memory_format=torch.channels_last)
    images = torch.randn(batch, in_chans, input_size, input_size).contiguous(memory_format=torch.channels_last)
    for _ in range(2):
        model(images)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(images)
        times.append(time.perf_counter() - start)
    return round(sorted(times)[len(times) // 2] * 1000, 3)


def run_models(input_size: int | None = None, measure: bool = False, names: list[str] | None = None) -> list[dict]:
    rows = []
    for name in names or list_models():
        row = describe_model(name, input_size=input_size)
        if measure:
            size, in_chans = row["flops_input_size"], get_model_spec(name).in_chans
            model = create_model(name, input_size=size)
            row["latency_ms_batch1"] = measure_latency_ms(model, 1, in_chans, size)
            row["latency_ms_batch32"] = measure_latency_ms(model, 32, in_chans, size)
        rows.append(row)
    return rows
