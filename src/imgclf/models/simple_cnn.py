"""A small VGG-style conv-BN-ReLU network: the quick baseline for small images on a CPU.

Three stages of two 3x3 conv-BN-ReLU layers (32, 64, 128 channels), 2x2 max-pooling between
stages, global average pooling and one linear layer: about 0.29M parameters. It works from 8x8
inputs (scikit-learn's digits) upwards, since the feature map shrinks only twice (8 -> 2 px).
Not a published architecture: a "LeNet/VGG-size model" for small datasets.
"""

from __future__ import annotations

import torch
from torch import nn

from imgclf.models._base import ImageClassifier
from imgclf.models._registry import register_model
from imgclf.models.layers import ConvNormAct

__all__ = ["SimpleCNN", "simple_cnn"]


class SimpleCNN(ImageClassifier):
    classifier_name = "fc"

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 3,
        input_size: int = 32,
        widths: tuple[int, int, int] = (32, 64, 128),
        drop_rate: float = 0.1,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.stem = ConvNormAct(in_chans, widths[0])
        self.stage1 = ConvNormAct(widths[0], widths[0])
        self.stage2 = nn.Sequential(
            nn.MaxPool2d(2), ConvNormAct(widths[0], widths[1]), ConvNormAct(widths[1], widths[1])
        )
        self.stage3 = nn.Sequential(
            nn.MaxPool2d(2), ConvNormAct(widths[1], widths[2]), ConvNormAct(widths[2], widths[2])
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(drop_rate)
        self.fc = nn.Linear(widths[2], num_classes)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        x = self.stage1(self.stem(images))
        return self.stage3(self.stage2(x))

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.dropout(torch.flatten(self.pool(features), 1))
        return x if pre_logits else self.fc(x)

    def group_modules(self) -> dict[str, list[nn.Module]]:
        return {"stem": [self.stem], "stages": [self.stage1, self.stage2, self.stage3], "head": [self.fc]}


@register_model(
    "simple",
    input_size=32,
    in_chans=3,
    num_classes=10,
    plain_stack=True,
    pretrained_source="",
    advisor_candidate=True,
)
def simple_cnn(num_classes: int, in_chans: int, input_size: int, **kwargs) -> SimpleCNN:
    """Small conv-BN-ReLU network (0.29M params): fast baseline for small images."""
    return SimpleCNN(num_classes=num_classes, in_chans=in_chans, input_size=input_size, **kwargs)
