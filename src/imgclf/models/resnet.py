"""ResNet: He, Zhang, Ren and Sun, "Deep Residual Learning for Image Recognition", CVPR 2016
(arXiv:1512.03385).

Parameter names follow torchvision's layout (``conv1``, ``bn1``, ``layer1.0.conv1``, ``fc``), so
a torchvision state dict loads with ``strict=True`` and the parameter counts equal torchvision's
(ResNet-18: 11,689,512 at 1000 classes).

Stem policy, chosen from the input size: above 64 px the ImageNet stem (7x7 stride-2 conv and
3x3 stride-2 max-pool, 4x downsampling); at 64 px and below a 3x3 stride-1 conv and no max-pool,
because the ImageNet stem would shrink a 32 px image to 8 px before the first residual block.
The small stem changes ``conv1``'s shape, so ImageNet weights then load for every layer but it.
"""

from __future__ import annotations

import torch
from torch import nn

from imgclf.models._base import ImageClassifier
from imgclf.models._registry import register_model
from imgclf.models.layers import DropPath, init_weights

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]

SMALL_STEM_MAX_SIZE = 64


def _downsample(in_chans: int, out_chans: int, stride: int) -> nn.Module | None:
    """1x1 projection shortcut (the paper's option B) where the shape changes."""
    if stride == 1 and in_chans == out_chans:
        return None
    return nn.Sequential(nn.Conv2d(in_chans, out_chans, 1, stride, bias=False), nn.BatchNorm2d(out_chans))


def drop_path_rates(blocks: int, rate: float) -> list[float]:
    """Stochastic depth (Huang et al. 2016, arXiv:1603.09382): the chance of skipping a block's
    residual branch in training grows linearly from near 0 at the first block to ``rate`` at the
    last, since early blocks compute features every later one needs."""
    return [rate * (index + 1) / blocks for index in range(blocks)]


class BasicBlock(nn.Module):
    """Two 3x3 convolutions; the input is added back before the last ReLU (identity skip)."""

    expansion = 1

    def __init__(self, in_chans: int, planes: int, stride: int = 1, drop_path: float = 0.0):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, planes, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _downsample(in_chans, planes, stride)
        self.drop_path = DropPath(drop_path)  # no parameters: bundles are unchanged

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(self.drop_path(out) + shortcut)

    def last_norm(self) -> nn.BatchNorm2d:
        return self.bn2


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (stride here, as torchvision's "ResNet v1.5"), 1x1 expand by 4, skip added."""

    expansion = 4

    def __init__(self, in_chans: int, planes: int, stride: int = 1, drop_path: float = 0.0):
        super().__init__()
        out_chans = planes * self.expansion
        self.conv1 = nn.Conv2d(in_chans, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_chans, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_chans)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(in_chans, out_chans, stride)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(self.drop_path(out) + shortcut)

    def last_norm(self) -> nn.BatchNorm2d:
        return self.bn3


class ResNet(ImageClassifier):
    classifier_name = "fc"

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        layers: tuple[int, int, int, int],
        num_classes: int = 1000,
        in_chans: int = 3,
        input_size: int = 224,
        zero_init_residual: bool = True,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        self.num_classes = num_classes
        drop_paths = iter(drop_path_rates(sum(layers), drop_path_rate))
        self.small_stem = input_size <= SMALL_STEM_MAX_SIZE
        if self.small_stem:
            self.conv1 = nn.Conv2d(in_chans, 64, 3, 1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_chans, 64, 7, 2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, padding=1)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        widths, in_width = (64, 128, 256, 512), 64
        for index, (width, blocks) in enumerate(zip(widths, layers)):
            stride = 1 if index == 0 else 2
            stage = [block(in_width, width, stride, next(drop_paths))]
            in_width = width * block.expansion
            stage += [block(in_width, width, 1, next(drop_paths)) for _ in range(blocks - 1)]
            setattr(self, f"layer{index + 1}", nn.Sequential(*stage))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(drop_rate)
        self.fc = nn.Linear(in_width, num_classes)
        self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual: bool) -> None:
        init_weights(self, linear_std=None)
        if zero_init_residual:
            # Each residual block starts as the identity: arXiv:1706.02677 section 5.1.
            for module in self.modules():
                if isinstance(module, BasicBlock | Bottleneck):
                    nn.init.zeros_(module.last_norm().weight)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.dropout(torch.flatten(self.avgpool(features), 1))
        return x if pre_logits else self.fc(x)

    def group_modules(self) -> dict[str, list[nn.Module]]:
        return {
            "stem": [self.conv1, self.bn1],
            "stages": [self.layer1, self.layer2, self.layer3, self.layer4],
            "head": [self.fc],
        }


def _resnet(block, layers, num_classes: int, in_chans: int, input_size: int, **kwargs) -> ResNet:
    return ResNet(block, layers, num_classes=num_classes, in_chans=in_chans, input_size=input_size, **kwargs)


@register_model("resnet", input_size=224, stochastic_depth=True, advisor_candidate=True)
def resnet18(num_classes: int, in_chans: int, input_size: int, **kwargs) -> ResNet:
    """ResNet-18: basic blocks [2, 2, 2, 2]."""
    return _resnet(BasicBlock, (2, 2, 2, 2), num_classes, in_chans, input_size, **kwargs)


@register_model("resnet", input_size=224, stochastic_depth=True)
def resnet34(num_classes: int, in_chans: int, input_size: int, **kwargs) -> ResNet:
    """ResNet-34: basic blocks [3, 4, 6, 3]."""
    return _resnet(BasicBlock, (3, 4, 6, 3), num_classes, in_chans, input_size, **kwargs)


@register_model("resnet", input_size=224, stochastic_depth=True, advisor_candidate=True)
def resnet50(num_classes: int, in_chans: int, input_size: int, **kwargs) -> ResNet:
    """ResNet-50: bottleneck blocks [3, 4, 6, 3]."""
    return _resnet(Bottleneck, (3, 4, 6, 3), num_classes, in_chans, input_size, **kwargs)


@register_model("resnet", input_size=224, stochastic_depth=True)
def resnet101(num_classes: int, in_chans: int, input_size: int, **kwargs) -> ResNet:
    """ResNet-101: bottleneck blocks [3, 4, 23, 3]."""
    return _resnet(Bottleneck, (3, 4, 23, 3), num_classes, in_chans, input_size, **kwargs)


@register_model("resnet", input_size=224, stochastic_depth=True)
def resnet152(num_classes: int, in_chans: int, input_size: int, **kwargs) -> ResNet:
    """ResNet-152: bottleneck blocks [3, 8, 36, 3]."""
    return _resnet(Bottleneck, (3, 8, 36, 3), num_classes, in_chans, input_size, **kwargs)
