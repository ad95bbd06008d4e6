"""Measuring a candidate model on this machine: size and cost counted on the meta device, then
inference latency and training throughput timed on the real one (synthetic pixels: speed does
not depend on what the pixels show)."""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from imgclf.config import TrainConfig
from imgclf.data.augment import Augmentation
from imgclf.data.batches import TensorBatches
from imgclf.data.prepare import Preprocess, TensorSplit
from imgclf.engine.budget import measure_train_speed
from imgclf.engine.recipe import trial_setup
from imgclf.export.onnx_graph import network_proto
from imgclf.export.runtime import onnx_session
from imgclf.models import count_parameters, create_model
from imgclf.models.info import measure_latency

__all__ = ["Candidate", "measure_candidate", "onnx_latency", "static_facts", "timed_batch_size", "training_speed"]

LATENCY_SECONDS = 1.5  # timing per candidate for latency (at least 5 passes after a warm-up one)
TRAINING_SECONDS = 2.0  # timing per candidate for training steps (after untimed ones: engine.budget)
MAX_REPEATS = 30
TIMED_BATCHES = 8  # random batches made for timing; fewer are used when the time runs out
# The timed training batch is the run's batch, made smaller for heavy models so that one step
# stays near this many FLOPs (forward + backward is about 3x the forward pass).
STEP_FLOPS = 3e10
BYTES_PER_VALUE = 4  # fp32
# Training memory: weights, gradients and SGD momentum (3 copies of the parameters), plus each
# layer's output, kept for the backward pass (gradient buffers come and go layer by layer).
PARAMETER_COPIES, ACTIVATION_COPIES = 3, 1


@dataclass
class Candidate:
    """One model as the advisor sees it; ``rejected_because`` empty means it is still in."""

    name: str
    family: str
    input_size: int
    pretrained: str | None = None  # the weights' source when the candidate starts from ImageNet
    params: int = 0
    flops: int = 0  # one forward pass at batch 1 (multiply-add = 2)
    weight_layers: int = 0  # Conv2d and Linear layers
    gradcam_size: int = 0  # side of the Grad-CAM map (the last feature map) at input_size
    activation_bytes: int = 0  # layer outputs of one image, fp32
    memory_mb: float = 0.0  # training memory estimate at the run's batch (or measured on CUDA)
    latency_ms_p50: float | None = None  # PyTorch eager, channels-last
    latency_ms_p95: float | None = None
    onnx_latency_ms_p50: float | None = None  # the network exported to ONNX, in onnxruntime (CPU)
    onnx_latency_ms_p95: float | None = None
    train_images_per_s: float | None = None
    timed_batch: int = 0
    epochs_in_budget: float | None = None
    probe_accuracy: float | None = None
    probe_seconds: float | None = None
    probe_images: int | None = None
    rejected_because: list[str] = field(default_factory=list)

    def best_latency(self) -> tuple[str, float | None, float | None]:
        """(runtime, p50, p95) of the faster runtime measured, by p95."""
        runtimes = [("PyTorch", self.latency_ms_p50, self.latency_ms_p95),
                    ("ONNX Runtime", self.onnx_latency_ms_p50, self.onnx_latency_ms_p95)]  # fmt: skip
        measured = [runtime for runtime in runtimes if runtime[1] is not None]
        if not measured:
            return "PyTorch", None, None
        return min(measured, key=lambda runtime: runtime[2] if runtime[2] is not None else runtime[1])

    @property
    def label(self) -> str:
        return f"{self.name} (pretrained)" if self.pretrained else self.name

    def to_dict(self) -> dict:
        values = asdict(self)
        values["meets_budgets"] = not self.rejected_because
        return values


def _weight_layers(model: nn.Module) -> int:
    return sum(isinstance(module, nn.Conv2d | nn.Linear) for module in model.modules())


@torch.no_grad()
def _one_counted_pass(model: nn.Module, in_chans: int, input_size: int) -> tuple[int, int, int]:
    """One forward pass on the meta device: FLOPs (PyTorch's counter, multiply-add = 2), bytes of
    every leaf layer's output for one image, and the side of the last feature map."""
    total = 0

    def count(_module, _inputs, output):
        nonlocal total
        if isinstance(output, torch.Tensor):
            total += output.numel() * BYTES_PER_VALUE

    leaves = [module for module in model.modules() if not list(module.children())]
    handles = [module.register_forward_hook(count) for module in leaves]
    try:
        with FlopCounterMode(display=False) as counter:
            features = model.forward_features(torch.zeros(1, in_chans, input_size, input_size))
            model.forward_head(features)
    finally:
        for handle in handles:
            handle.remove()
    side = int(features.shape[-1]) if features.dim() == 4 else 1
    return int(counter.get_total_flops()), total, side


def _count(candidate: Candidate, in_chans: int, num_classes: int) -> None:
    with torch.device("meta"):
        model = create_model(
            candidate.name, num_classes=num_classes, in_chans=in_chans, input_size=candidate.input_size
        ).eval()
        candidate.params = count_parameters(model)
        candidate.weight_layers = _weight_layers(model)
        counted = _one_counted_pass(model, in_chans, candidate.input_size)
        candidate.flops, candidate.activation_bytes, candidate.gradcam_size = counted


def static_facts(candidate: Candidate, in_chans: int, num_classes: int, batch_size: int) -> None:
    """Parameters, FLOPs, layers, Grad-CAM map size and a memory estimate, on the meta device
    (shapes only: VGG's 133M weights cost no memory and no arithmetic)."""
    try:
        _count(candidate, in_chans, num_classes)
    except RuntimeError as error:  # e.g. pooling that leaves nothing of a small input
        candidate.rejected_because.append(
            f"cannot take {candidate.input_size} px inputs ({str(error).splitlines()[0][:100]})"
        )
        return
    parameter_bytes = PARAMETER_COPIES * BYTES_PER_VALUE * candidate.params
    activation_bytes = ACTIVATION_COPIES * batch_size * candidate.activation_bytes
    candidate.memory_mb = round((parameter_bytes + activation_bytes) / 1024**2, 1)


def timed_batch_size(flops: int, batch_size: int) -> int:
    return int(max(2, min(batch_size, STEP_FLOPS // max(1, 3 * flops))))


def onnx_latency(model: nn.Module, batch: int, in_chans: int, input_size: int, seconds: float) -> tuple[float, float]:
    """p50 and p95 in ms of the network exported to ONNX (float input: the preprocessing graph
    ``imgclf export`` adds is left out) and run by onnxruntime on the CPU."""
    network = network_proto(copy.deepcopy(model).cpu().to(memory_format=torch.contiguous_format), in_chans,
                            input_size)  # fmt: skip
    session = onnx_session(network)
    name = session.get_inputs()[0].name
    images = {name: np.random.default_rng(0).standard_normal((batch, in_chans, input_size, input_size), np.float32)}
    session.run(None, images)  # the first run allocates
    times, started = [], time.perf_counter()
    while len(times) < MAX_REPEATS and (len(times) < 5 or time.perf_counter() - started < seconds):
        begin = time.perf_counter()
        session.run(None, images)
        times.append((time.perf_counter() - begin) * 1000)
    return round(float(np.median(times)), 3), round(float(np.percentile(times, 95)), 3)


def training_speed(
    model: nn.Module, batch: int, in_chans: int, input_size: int, num_classes: int, device: torch.device, seconds: float
) -> float:
    """Training images per second on random pixels (speed does not depend on what they show),
    measured the way ``--time-budget`` measures it, on a copy of the model."""
    generator = torch.Generator().manual_seed(0)
    count = batch * TIMED_BATCHES
    images = torch.randint(0, 256, (count, in_chans, input_size, input_size), dtype=torch.uint8, generator=generator)
    split = TensorSplit(images, torch.randint(0, num_classes, (count,), generator=generator), [""] * count)
    batches = TensorBatches(split, batch, shuffle=False)
    identity = Preprocess.unnormalized(input_size, in_chans)
    config = TrainConfig(batch_size=batch)  # plain SGD steps on every layer, as a run from scratch takes
    setup = trial_setup(config, model, identity, Augmentation(), split.targets, num_classes, device, len(batches))
    return measure_train_speed(setup, batches, seconds)


def measure_candidate(
    candidate: Candidate,
    in_chans: int,
    num_classes: int,
    batch_size: int,
    latency_batch: int,
    device: torch.device,
    latency_seconds: float = LATENCY_SECONDS,
    training_seconds: float = TRAINING_SECONDS,
    onnx_seconds: float = 0.0,
) -> None:
    """Latency (unless ``latency_seconds`` is 0; in ONNX Runtime too when ``onnx_seconds`` is
    not), and training speed, measured on ``device`` (``static_facts`` first: the timed batch
    depends on the FLOPs)."""
    model = create_model(candidate.name, num_classes=num_classes, in_chans=in_chans, input_size=candidate.input_size)
    model = model.to(device, memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if latency_seconds > 0:
        latency = measure_latency(
            model, latency_batch, in_chans, candidate.input_size, repeats=MAX_REPEATS, warmup=1,
            max_seconds=latency_seconds,
        )  # fmt: skip
        candidate.latency_ms_p50, candidate.latency_ms_p95 = latency["p50_ms"], latency["p95_ms"]
    if onnx_seconds > 0 and device.type == "cpu":
        candidate.onnx_latency_ms_p50, candidate.onnx_latency_ms_p95 = onnx_latency(
            model, latency_batch, in_chans, candidate.input_size, onnx_seconds
        )
    candidate.timed_batch = timed_batch_size(candidate.flops, batch_size)
    speed = training_speed(
        model, candidate.timed_batch, in_chans, candidate.input_size, num_classes, device, training_seconds
    )
    candidate.train_images_per_s = round(speed, 1)
    if device.type == "cuda":  # measured, not estimated (at the timed batch)
        candidate.memory_mb = round(torch.cuda.max_memory_allocated(device) / 1024**2, 1)
