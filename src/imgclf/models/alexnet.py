"""AlexNet: Krizhevsky, Sutskever and Hinton, "ImageNet Classification with Deep Convolutional
Neural Networks", NeurIPS 2012.

torchvision's single-GPU variant (64-192-384-256-256 filters, as in "One weird trick",
arXiv:1404.5997), with its parameter names: 61,100,840 parameters at 1000 classes.

Small-input policy (64 px and below): the 11x11 stride-4 first convolution becomes 3x3 stride 1,
each 3x3/2 max-pool becomes a 2x2/2 pool kept while the map is at least 2 px, and the 6x6
adaptive pool becomes a global pool repeated 6x6 (see GlobalPoolRepeat), so every weight but the
first convolution keeps its shape.
"""

from __future__ import annotations

import torch
from torch import nn

from imgclf.models._base import ImageClassifier
from imgclf.models._registry import register_model
from imgclf.models.layers import SMALL_INPUT_MAX_SIZE, GlobalPoolRepeat, plan_downsampling

__all__ = ["AlexNet", "alexnet"]


def _pool(small: bool, keep: bool) -> nn.Module:
    if not small:
        return nn.MaxPool2d(3, 2)
    return nn.MaxPool2d(2, 2, ceil_mode=True) if keep else nn.Identity()


class AlexNet(ImageClassifier):
    classifier_name = "classifier.6"

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, input_size: int = 224, drop_rate: float = 0.5):
        super().__init__()
        self.num_classes = num_classes
        small = input_size <= SMALL_INPUT_MAX_SIZE
        keep = plan_downsampling(input_size, 3)
        stem = nn.Conv2d(in_chans, 64, 3, 1, 1) if small else nn.Conv2d(in_chans, 64, 11, 4, 2)
        self.features = nn.Sequential(
            stem, nn.ReLU(inplace=True), _pool(small, keep[0]),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True), _pool(small, keep[1]),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True), _pool(small, keep[2]),
        )  # fmt: skip
        self.avgpool = GlobalPoolRepeat(6) if small else nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(drop_rate), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(inplace=True),
            nn.Dropout(drop_rate), nn.Linear(4096, 4096), nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )  # fmt: skip

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(images)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(self.avgpool(features), 1)
        x = self.classifier[:6](x)
        return x if pre_logits else self.classifier[6](x)

    def forward_head_and_embedding(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = self.forward_head(features, pre_logits=True)
        return self.classifier[6](embedding), embedding

    def group_modules(self) -> dict[str, list[nn.Module]]:
        return {"stem": [self.features[0]], "stages": [self.features[1:]], "head": [self.classifier]}


@register_model("alexnet", input_size=224, plain_stack=True, advisor_candidate=True)
def alexnet(num_classes: int, in_chans: int, input_size: int, **kwargs) -> AlexNet:
    """AlexNet (2012): five convolutions, three fully connected layers, dropout."""
    return AlexNet(num_classes=num_classes, in_chans=in_chans, input_size=input_size, **kwargs)
