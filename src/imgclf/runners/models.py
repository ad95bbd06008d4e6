"""The models runner: the zoo as rows, optionally with latency measured on this machine."""

from __future__ import annotations

import time

import torch

from imgclf.models import create_model, describe_model, get_model_spec, list_models

__all__ = ["measure_latency_ms", "run_models"]


@torch.no_grad()
def measure_latency_ms(name: str, batch: int, input_size: int, repeats: int = 5) -> float:
    """Median wall time of one eval-mode forward pass at ``batch`` (after 2 warm-up passes)."""
    spec = get_model_spec(name)
    model = create_model(name, input_size=input_size).eval()
    images = torch.randn(batch, spec.in_chans, input_size, input_size)
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
            size = row["flops_input_size"]
            row["latency_ms_batch1"] = measure_latency_ms(name, 1, size)
            row["latency_ms_batch32"] = measure_latency_ms(name, 32, size)
        rows.append(row)
    return rows
