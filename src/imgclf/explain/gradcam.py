"""Where did the model look? Grad-CAM and vanilla-gradient saliency for every zoo model.

Grad-CAM (Selvaraju et al., ICCV 2017) weights each channel of the last spatial feature map by
the mean gradient of the class score over that map, sums, and keeps the positive part. The
feature map comes from the model interface's ``forward_features``, so no model needs its own
target layer and the user never picks one. Saliency (Simonyan et al., 2014) is the absolute
gradient of the class score with respect to the input pixels, the maximum over channels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from imgclf.models import ImageClassifier

__all__ = ["Explanation", "explain_batch", "grad_cam", "heat_overlay", "saliency"]


def _normalize_maps(maps: torch.Tensor) -> torch.Tensor:
    """Each (H, W) map scaled to [0, 1]; an all-zero map stays zero."""
    flat = maps.flatten(1)
    low = flat.min(dim=1).values.view(-1, 1, 1)
    span = (flat.max(dim=1).values.view(-1, 1, 1) - low).clamp_min(1e-12)
    return (maps - low) / span


def _chosen_classes(logits: torch.Tensor, classes: torch.Tensor | None) -> torch.Tensor:
    return logits.argmax(dim=1) if classes is None else classes.to(logits.device)


def grad_cam(
    model: ImageClassifier, inputs: torch.Tensor, classes: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Grad-CAM maps (N, H, W) in [0, 1] at the input resolution, and the logits.
    ``classes``: the class to explain per image (default: the predicted one)."""
    model.eval()
    with torch.enable_grad():
        # Gradients are needed only from the head back to the feature map, not into the backbone.
        features = model.forward_features(inputs).detach().requires_grad_(True)
        logits = model.forward_head(features)
        chosen = _chosen_classes(logits, classes)
        (gradients,) = torch.autograd.grad(logits.gather(1, chosen.view(-1, 1)).sum(), features)
    channel_weights = gradients.mean(dim=(2, 3), keepdim=True)
    cam = nn.functional.relu((channel_weights * features.detach()).sum(dim=1, keepdim=True))
    cam = nn.functional.interpolate(cam.float(), size=inputs.shape[-2:], mode="bilinear", align_corners=False)
    return _normalize_maps(cam[:, 0]).cpu(), logits.detach().float().cpu()


def saliency(model: ImageClassifier, inputs: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
    """Vanilla-gradient saliency maps (N, H, W) in [0, 1]."""
    model.eval()
    with torch.enable_grad():
        pixels = inputs.detach().clone().requires_grad_(True)
        logits = model(pixels)
        chosen = _chosen_classes(logits, classes)
        (gradients,) = torch.autograd.grad(logits.gather(1, chosen.view(-1, 1)).sum(), pixels)
    maps = gradients.abs().amax(dim=1).float()
    # Clip at the 99th percentile per image: a few extreme pixels would otherwise wash out the map.
    ceiling = torch.quantile(maps.flatten(1), 0.99, dim=1).view(-1, 1, 1).clamp_min(1e-12)
    return _normalize_maps(torch.minimum(maps, ceiling)).cpu()


@dataclass
class Explanation:
    """One image's explanation: the pixels the model saw (H, W, C uint8) and the maps."""

    pixels: np.ndarray
    cam: np.ndarray  # (H, W) in [0, 1]
    saliency: np.ndarray  # (H, W) in [0, 1]
    predicted: int
    probability: float
    feature_map_size: tuple[int, int]  # Grad-CAM's resolution before upsampling


def explain_batch(
    model: ImageClassifier,
    images: torch.Tensor,
    normalize,
    temperature: float = 1.0,
    classes: torch.Tensor | None = None,
) -> list[Explanation]:
    """Explain uint8 images (N, C, H, W) prepared for ``model``; ``normalize`` turns them into inputs."""
    inputs = normalize(images)
    cams, logits = grad_cam(model, inputs, classes)
    saliencies = saliency(model, inputs, classes)
    probabilities = torch.softmax(logits / temperature, dim=1)
    confidence, predicted = probabilities.max(dim=1)
    with torch.no_grad():
        feature_size = tuple(model.forward_features(inputs[:1]).shape[-2:])
    return [
        Explanation(
            images[i].permute(1, 2, 0).cpu().numpy(),
            cams[i].numpy(),
            saliencies[i].numpy(),
            int(predicted[i]),
            float(confidence[i]),
            feature_size,
        )
        for i in range(len(images))
    ]


def heat_overlay(pixels: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """An RGB uint8 picture: the image with ``heat`` (H, W in [0, 1]) blended on top in the
    'jet' colour map (red is where the map is high)."""
    from matplotlib import colormaps

    rgb = np.repeat(pixels, 3, axis=2) if pixels.shape[2] == 1 else pixels
    colours = colormaps["jet"](heat)[:, :, :3] * 255.0
    return np.clip((1 - alpha) * rgb + alpha * colours, 0, 255).astype(np.uint8)
