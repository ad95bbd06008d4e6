"""The CIFAR ResNets of He, Zhang, Ren and Sun, "Deep Residual Learning for Image Recognition",
CVPR 2016 (arXiv:1512.03385), section 4.2: a 3x3 convolution with 16 filters, then three
stages of n basic blocks with 16, 32 and 64 filters on 32, 16 and 8 px maps, global average
pooling and a 10-way fully connected layer: 6n+2 layers (ResNet-20 has n = 3).

Shortcuts are the paper's option A, parameter-free: where the shape changes, the input is
subsampled by 2 and zero-padded with the missing channels. ResNet-20 has 269,722 parameters at
10 classes, as in the paper's table 6 (0.27M). The blocks are ``resnet.BasicBlock``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from imgclf.models._base import ImageClassifier
from imgclf.models._registry import register_model
from imgclf.models.layers import init_weights
from imgclf.models.resnet import BasicBlock, drop_path_rates

__all__ = ["CifarResNet", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110"]


class PadShortcut(nn.Module):
    """Option A: take every second pixel and append zero channels (no parameters)."""

    def __init__(self, extra_chans: int, stride: int):
        super().__init__()
        self.extra_chans, self.stride = extra_chans, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        half = self.extra_chans // 2
        return F.pad(x, (0, 0, 0, 0, half, self.extra_chans - half))


class CifarResNet(ImageClassifier):
    classifier_name = "fc"

    def __init__(
        self,
        blocks_per_stage: int,
        num_classes: int = 10,
        in_chans: int = 3,
        input_size: int = 32,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        self.num_classes = num_classes
        drop_paths = iter(drop_path_rates(3 * blocks_per_stage, drop_path_rate))
        self.conv1 = nn.Conv2d(in_chans, 16, 3, 1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        widths, in_width = (16, 32, 64), 16
        for index, width in enumerate(widths):
            stride = 1 if index == 0 else 2
            stage = []
            for block_index in range(blocks_per_stage):
                block_stride = stride if block_index == 0 else 1
                block = BasicBlock(in_width, width, block_stride, next(drop_paths))
                if block.downsample is not None:  # replace the projection with option A
                    block.downsample = PadShortcut(width - in_width, block_stride)
                stage.append(block)
                in_width = width
            setattr(self, f"layer{index + 1}", nn.Sequential(*stage))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(drop_rate)
        self.fc = nn.Linear(64, num_classes)
        init_weights(self, linear_std=None)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(images)))
        return self.layer3(self.layer2(self.layer1(x)))

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.dropout(torch.flatten(self.avgpool(features), 1))
        return x if pre_logits else self.fc(x)

    def group_modules(self) -> dict[str, list[nn.Module]]:
        return {"stem": [self.conv1, self.bn1], "stages": [self.layer1, self.layer2, self.layer3], "head": [self.fc]}


def _cifar_resnet(depth: int, num_classes: int, in_chans: int, input_size: int, **kwargs) -> CifarResNet:
    return CifarResNet((depth - 2) // 6, num_classes=num_classes, in_chans=in_chans, input_size=input_size, **kwargs)


@register_model(
    "resnet_cifar",
    input_size=32,
    num_classes=10,
    stochastic_depth=True,
    pretrained_source="",
    advisor_candidate=True,
)
def resnet20(num_classes: int, in_chans: int, input_size: int, **kwargs) -> CifarResNet:
    """CIFAR ResNet-20 (0.27M params): 3 blocks per stage, 16-32-64 filters."""
    return _cifar_resnet(20, num_classes, in_chans, input_size, **kwargs)


@register_model("resnet_cifar", input_size=32, num_classes=10, stochastic_depth=True, pretrained_source="")
def resnet32(num_classes: int, in_chans: int, input_size: int, **kwargs) -> CifarResNet:
    """CIFAR ResNet-32 (0.46M params): 5 blocks per stage."""
    return _cifar_resnet(32, num_classes, in_chans, input_size, **kwargs)


@register_model("resnet_cifar", input_size=32, num_classes=10, stochastic_depth=True, pretrained_source="")
def resnet44(num_classes: int, in_chans: int, input_size: int, **kwargs) -> CifarResNet:
    """CIFAR ResNet-44 (0.66M params): 7 blocks per stage."""
    return _cifar_resnet(44, num_classes, in_chans, input_size, **kwargs)


@register_model(
    "resnet_cifar",
    input_size=32,
    num_classes=10,
    stochastic_depth=True,
    pretrained_source="",
    advisor_candidate=True,
)
def resnet56(num_classes: int, in_chans: int, input_size: int, **kwargs) -> CifarResNet:
    """CIFAR ResNet-56 (0.85M params): 9 blocks per stage."""
    return _cifar_resnet(56, num_classes, in_chans, input_size, **kwargs)


@register_model("resnet_cifar", input_size=32, num_classes=10, stochastic_depth=True, pretrained_source="")
def resnet110(num_classes: int, in_chans: int, input_size: int, **kwargs) -> CifarResNet:
    """CIFAR ResNet-110 (1.7M params): 18 blocks per stage."""
    return _cifar_resnet(110, num_classes, in_chans, input_size, **kwargs)
