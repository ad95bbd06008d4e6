"""A compact residual network for small images, the model of ``--preset fast``.

Written here after the designs that hold the CIFAR-10 speed records: the DAWNBench "ResNet-9"
(Page 2018: prep conv, then stages of conv + max-pool with a residual pair of convs) and airbench
(Jordan 2024, arXiv:2404.00498: few wide stages, max-pooling instead of strides, a scaled
linear head). Stem 3x3 conv; three stages of conv-BN-ReLU, 2x2 max-pool, and a residual pair
of conv-BN-ReLU layers; global max-pool; linear head whose logits are scaled by 1/8 (keeps the
softmax soft early on, as both designs do). Widths w, 2w, 4w: ``fastnet`` (w = 64, 1.94M
parameters, 228 MFLOPs at 32 px by PyTorch's counter) for GPUs, ``fastnet_small`` (w = 32, 0.49M,
58 MFLOPs) for CPUs, where arithmetic, not memory traffic, bounds the speed.
"""

from __future__ import annotations

import torch
from torch import nn

from imgclf.models._base import ImageClassifier
from imgclf.models._registry import register_model
from imgclf.models.layers import ConvNormAct, init_weights

__all__ = ["FastNet", "fastnet", "fastnet_small"]

LOGIT_SCALE = 1 / 8


class ResidualPair(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.first = ConvNormAct(width, width)
        self.second = ConvNormAct(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.second(self.first(x))


class FastNet(ImageClassifier):
    classifier_name = "fc"

    def __init__(self, num_classes: int = 10, in_chans: int = 3, input_size: int = 32, width: int = 64,
                 drop_rate: float = 0.0):  # fmt: skip
        super().__init__()
        self.num_classes = num_classes
        self.stem = ConvNormAct(in_chans, width // 2)
        widths = (width, 2 * width, 4 * width)
        stages, previous = [], width // 2
        for stage_width in widths:
            stages.append(nn.Sequential(
                ConvNormAct(previous, stage_width), nn.MaxPool2d(2), ResidualPair(stage_width)
            ))  # fmt: skip
            previous = stage_width
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.dropout = nn.Dropout(drop_rate)
        self.fc = nn.Linear(widths[-1], num_classes, bias=False)
        init_weights(self, linear_std=None)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(images))

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.dropout(torch.flatten(self.pool(features), 1))
        return x if pre_logits else self.fc(x) * LOGIT_SCALE

    def group_modules(self) -> dict[str, list[nn.Module]]:
        return {"stem": [self.stem], "stages": [self.stages], "head": [self.fc]}


@register_model("fast", input_size=32, num_classes=10, pretrained_source="")
def fastnet(num_classes: int, in_chans: int, input_size: int, **kwargs) -> FastNet:
    """Compact residual net for small images on a GPU (1.94M params), the fast preset's model."""
    return FastNet(num_classes=num_classes, in_chans=in_chans, input_size=input_size, width=64, **kwargs)


@register_model("fast", input_size=32, num_classes=10, pretrained_source="", advisor_candidate=True)
def fastnet_small(num_classes: int, in_chans: int, input_size: int, **kwargs) -> FastNet:
    """Half-width fastnet for CPUs (0.5M params), the fast preset's model there."""
    return FastNet(num_classes=num_classes, in_chans=in_chans, input_size=input_size, width=32, **kwargs)
