"""The models runner: the zoo as rows, optionally with latency measured on this machine."""

from __future__ import annotations

import torch

from imgclf.models import create_model, describe_model, get_model_spec, list_models
from imgclf.models.info import measure_latency

__all__ = ["measure_latency_ms", "run_models"]


def measure_latency_ms(model: torch.nn.Module, batch: int, in_chans: int, input_size: int, repeats: int = 5) -> float:
    """Median wall time of one forward pass at ``batch`` (see ``measure_latency``), in ms."""
    return measure_latency(model, batch, in_chans, input_size, repeats=repeats)["p50_ms"]


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
