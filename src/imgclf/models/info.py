"""Model facts a user asks for: parameters and FLOPs at an input size."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from imgclf.models._registry import create_model, get_model_spec

__all__ = ["count_flops", "count_parameters", "describe_model"]


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
        row = {
            "name": name,
            "family": spec.family,
            "params": count_parameters(create_model(name)),
            "input_size": spec.input_size,
            "in_chans": spec.in_chans,
            "num_classes": spec.num_classes,
            "description": spec.description,
        }
        if with_flops:
            row["flops"] = count_flops(create_model(name, input_size=size), spec.in_chans, size)
            row["flops_input_size"] = size
    return row
