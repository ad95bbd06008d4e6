"""VGG: Simonyan and Zisserman, "Very Deep Convolutional Networks for Large-Scale Image
Recognition", ICLR 2015 (arXiv:1409.1556), configurations A (11), B (13), D (16), E (19), and
the batch-norm variants, with torchvision's parameter names (VGG-16: 138,357,544 parameters).

Only 3x3 convolutions and 2x2 max-pools, so small inputs (64 px and below) need no new stem: each
of the five pools is kept while the map is at least 2 px (32 px ends at 1x1, 8 px loses its last
two pools), and the 7x7 adaptive pool becomes a global pool repeated 7x7 (see GlobalPoolRepeat).
"""

from __future__ import annotations

import torch
from torch import nn

from imgclf.models._base import ImageClassifier
from imgclf.models._registry import register_model
from imgclf.models.layers import SMALL_INPUT_MAX_SIZE, GlobalPoolRepeat, init_weights, plan_downsampling

__all__ = ["VGG", "vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn"]

# Output channels of each 3x3 convolution; "M" is a 2x2 max-pool (the paper's table 1).
CONFIGS = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


def _features(config: list, in_chans: int, batch_norm: bool, input_size: int) -> nn.Sequential:
    keep = iter(plan_downsampling(input_size, config.count("M"), ceil=False))  # nn.MaxPool2d(2, 2) rounds down
    layers: list[nn.Module] = []
    for item in config:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2) if next(keep) else nn.Identity())
            continue
        layers.append(nn.Conv2d(in_chans, item, 3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(item))
        layers.append(nn.ReLU(inplace=True))
        in_chans = item
    return nn.Sequential(*layers)


class VGG(ImageClassifier):
    classifier_name = "classifier.6"

    def __init__(
        self,
        depth: int,
        batch_norm: bool = False,
        num_classes: int = 1000,
        in_chans: int = 3,
        input_size: int = 224,
        drop_rate: float = 0.5,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.features = _features(CONFIGS[depth], in_chans, batch_norm, input_size)
        small = input_size <= SMALL_INPUT_MAX_SIZE
        self.avgpool = GlobalPoolRepeat(7) if small else nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(drop_rate),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(drop_rate),
            nn.Linear(4096, num_classes),
        )
        init_weights(self)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(images)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.classifier[:6](torch.flatten(self.avgpool(features), 1))
        return x if pre_logits else self.classifier[6](x)

    def forward_head_and_embedding(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = self.forward_head(features, pre_logits=True)
        return self.classifier[6](embedding), embedding

    def group_modules(self) -> dict[str, list[nn.Module]]:
        first_pool = next(i for i, m in enumerate(self.features) if isinstance(m, nn.MaxPool2d | nn.Identity))
        return {
            "stem": [self.features[:first_pool]],
            "stages": [self.features[first_pool:]],
            "head": [self.classifier],
        }


def _vgg(depth: int, batch_norm: bool, num_classes: int, in_chans: int, input_size: int, **kwargs) -> VGG:
    return VGG(depth, batch_norm, num_classes=num_classes, in_chans=in_chans, input_size=input_size, **kwargs)


@register_model("vgg", input_size=224, plain_stack=True, advisor_candidate=True)
def vgg11(num_classes: int, in_chans: int, input_size: int, **kwargs) -> VGG:
    """VGG-11 (configuration A): 8 convolutions, 3 fully connected layers."""
    return _vgg(11, False, num_classes, in_chans, input_size, **kwargs)


@register_model("vgg", input_size=224, plain_stack=True)
def vgg11_bn(num_classes: int, in_chans: int, input_size: int, **kwargs) -> VGG:
    """VGG-11 with batch normalization."""
    return _vgg(11, True, num_classes, in_chans, input_size, **kwargs)


@register_model("vgg", input_size=224, plain_stack=True)
def vgg13(num_classes: int, in_chans: int, input_size: int, **kwargs) -> VGG:
    """VGG-13 (configuration B): 10 convolutions, 3 fully connected layers."""
    return _vgg(13, False, num_classes, in_chans, input_size, **kwargs)


@register_model("vgg", input_size=224, plain_stack=True)
def vgg13_bn(num_classes: int, in_chans: int, input_size: int, **kwargs) -> VGG:
    """VGG-13 with batch normalization."""
    return _vgg(13, True, num_classes, in_chans, input_size, **kwargs)


@register_model("vgg", input_size=224, plain_stack=True)
def vgg16(num_classes: int, in_chans: int, input_size: int, **kwargs) -> VGG:
    """VGG-16 (configuration D): 13 convolutions, 3 fully connected layers."""
    return _vgg(16, False, num_classes, in_chans, input_size, **kwargs)


@register_model("vgg", input_size=224, plain_stack=True)
def vgg16_bn(num_classes: int, in_chans: int, input_size: int, **kwargs) -> VGG:
    """VGG-16 with batch normalization."""
    return _vgg(16, True, num_classes, in_chans, input_size, **kwargs)


@register_model("vgg", input_size=224, plain_stack=True)
def vgg19(num_classes: int, in_chans: int, input_size: int, **kwargs) -> VGG:
    """VGG-19 (configuration E): 16 convolutions, 3 fully connected layers."""
    return _vgg(19, False, num_classes, in_chans, input_size, **kwargs)


@register_model("vgg", input_size=224, plain_stack=True)
def vgg19_bn(num_classes: int, in_chans: int, input_size: int, **kwargs) -> VGG:
    """VGG-19 with batch normalization."""
    return _vgg(19, True, num_classes, in_chans, input_size, **kwargs)
