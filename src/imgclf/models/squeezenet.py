"""SqueezeNet: Iandola et al., "SqueezeNet: AlexNet-level accuracy with 50x fewer parameters and
<0.5MB model size", arXiv:1602.07360; version 1.1 from the authors' repository (2.4x less
computation). torchvision's layout and names: 1,248,424 (1.0) and 1,235,496 (1.1) parameters.

The classifier is a 1x1 convolution to the classes followed by global average pooling.
Small-input policy (64 px and below): the first convolution becomes 3x3 stride 1, and each
max-pool is kept while the map is at least 2 px.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from imgclf.models._base import ImageClassifier
from imgclf.models._registry import register_model
from imgclf.models.layers import SMALL_INPUT_MAX_SIZE, Fire, plan_downsampling

__all__ = ["SqueezeNet", "squeezenet1_0", "squeezenet1_1"]

# (in, squeeze, expand 1x1, expand 3x3) of each fire module; "M" is a 3x3/2 max-pool.
FIRE_LAYOUTS = {
    "1_0": [
        (96, 16, 64, 64),
        (128, 16, 64, 64),
        (128, 32, 128, 128),
        "M",
        (256, 32, 128, 128),
        (256, 48, 192, 192),
        (384, 48, 192, 192),
        (384, 64, 256, 256),
        "M",
        (512, 64, 256, 256),
    ],
    "1_1": [
        (64, 16, 64, 64),
        (128, 16, 64, 64),
        "M",
        (128, 32, 128, 128),
        (256, 32, 128, 128),
        "M",
        (256, 48, 192, 192),
        (384, 48, 192, 192),
        (384, 64, 256, 256),
        (512, 64, 256, 256),
    ],
}
STEMS = {"1_0": (96, 7), "1_1": (64, 3)}  # (filters, kernel) of the stride-2 first convolution


class SqueezeNet(ImageClassifier):
    classifier_name = "classifier.1"

    def __init__(
        self, version: str, num_classes: int = 1000, in_chans: int = 3, input_size: int = 224, drop_rate: float = 0.5
    ):
        super().__init__()
        self.num_classes = num_classes
        small = input_size <= SMALL_INPUT_MAX_SIZE
        filters, kernel = STEMS[version]
        stem = nn.Conv2d(in_chans, filters, 3, 1, 1) if small else nn.Conv2d(in_chans, filters, kernel, 2)
        keep = iter(plan_downsampling(input_size if small else input_size // 2, 3))
        layers: list[nn.Module] = [stem, nn.ReLU(inplace=True), self._pool(next(keep))]
        for item in FIRE_LAYOUTS[version]:
            layers.append(self._pool(next(keep)) if item == "M" else Fire(*item))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Dropout(drop_rate), nn.Conv2d(512, num_classes, 1), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1)
        )
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                if module is self.classifier[1]:
                    nn.init.normal_(module.weight, 0.0, 0.01)
                else:
                    nn.init.kaiming_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    @staticmethod
    def _pool(keep: bool) -> nn.Module:
        return nn.MaxPool2d(3, 2, ceil_mode=True) if keep else nn.Identity()

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(images)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if pre_logits:
            return torch.flatten(F.adaptive_avg_pool2d(features, 1), 1)
        return torch.flatten(self.classifier(features), 1)

    def reset_classifier(self, num_classes: int) -> None:
        super().reset_classifier(num_classes)
        nn.init.normal_(self.classifier[1].weight, 0.0, 0.01)
        nn.init.zeros_(self.classifier[1].bias)

    def group_modules(self) -> dict[str, list[nn.Module]]:
        return {"stem": [self.features[0]], "stages": [self.features[1:]], "head": [self.classifier]}


@register_model("squeezenet", input_size=224)
def squeezenet1_0(num_classes: int, in_chans: int, input_size: int, **kwargs) -> SqueezeNet:
    """SqueezeNet 1.0 (1.2M params): fire modules, AlexNet accuracy at 1/50 of the parameters."""
    return SqueezeNet("1_0", num_classes=num_classes, in_chans=in_chans, input_size=input_size, **kwargs)


@register_model("squeezenet", input_size=224, advisor_candidate=True)
def squeezenet1_1(num_classes: int, in_chans: int, input_size: int, **kwargs) -> SqueezeNet:
    """SqueezeNet 1.1 (1.2M params): 2.4x less computation than 1.0 at the same accuracy."""
    return SqueezeNet("1_1", num_classes=num_classes, in_chans=in_chans, input_size=input_size, **kwargs)
