"""MobileNets, the choice for real-time and embedded use.

- MobileNetV2: Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks",
  CVPR 2018 (arXiv:1801.04381): 3,504,872 parameters.
- MobileNetV3: Howard et al., "Searching for MobileNetV3", ICCV 2019 (arXiv:1905.02244), Large
  (5,483,032) and Small (2,542,856): squeeze-excite, hard-swish.

torchvision's layout and names (``features.N``, ``classifier``), so its weights load directly.
Small-input policy (64 px and below): the stride-2 stem convolution runs at stride 1, and every
later stride-2 block keeps its stride while the map is at least 2 px (32 px ends at 2x2).
"""

from __future__ import annotations

import torch
from torch import nn

from imgclf.models._base import ImageClassifier
from imgclf.models._registry import register_model
from imgclf.models.layers import (
    SMALL_INPUT_MAX_SIZE,
    ConvNormAct,
    InvertedResidual,
    init_weights,
    make_divisible,
    plan_downsampling,
)

__all__ = ["MobileNet", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small"]

# MobileNetV2 table 2: expansion t, output channels c, repeats n, first stride s.
V2_STAGES = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
# MobileNetV3 tables 1 and 2: kernel, expanded channels, output channels, squeeze-excite,
# activation (RE = ReLU, HS = hard-swish), stride.
V3_LARGE = [
    (3, 16, 16, False, "RE", 1), (3, 64, 24, False, "RE", 2), (3, 72, 24, False, "RE", 1),
    (5, 72, 40, True, "RE", 2), (5, 120, 40, True, "RE", 1), (5, 120, 40, True, "RE", 1),
    (3, 240, 80, False, "HS", 2), (3, 200, 80, False, "HS", 1), (3, 184, 80, False, "HS", 1),
    (3, 184, 80, False, "HS", 1), (3, 480, 112, True, "HS", 1), (3, 672, 112, True, "HS", 1),
    (5, 672, 160, True, "HS", 2), (5, 960, 160, True, "HS", 1), (5, 960, 160, True, "HS", 1),
]  # fmt: skip
V3_SMALL = [
    (3, 16, 16, True, "RE", 2), (3, 72, 24, False, "RE", 2), (3, 88, 24, False, "RE", 1),
    (5, 96, 40, True, "HS", 2), (5, 240, 40, True, "HS", 1), (5, 240, 40, True, "HS", 1),
    (5, 120, 48, True, "HS", 1), (5, 144, 48, True, "HS", 1), (5, 288, 96, True, "HS", 2),
    (5, 576, 96, True, "HS", 1), (5, 576, 96, True, "HS", 1),
]  # fmt: skip
ACTIVATIONS = {"RE": nn.ReLU, "HS": nn.Hardswish}
V3_NORM = {"norm_eps": 0.001, "norm_momentum": 0.01}  # the TensorFlow defaults torchvision uses


class MobileNet(ImageClassifier):
    """Stem, a list of inverted residual blocks, a 1x1 head convolution, pooling, classifier."""

    def __init__(self, features: list[nn.Module], classifier: nn.Sequential, num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        self.features = nn.Sequential(*features)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = classifier
        self.classifier_name = f"classifier.{len(classifier) - 1}"
        init_weights(self)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(images)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.classifier[:-1](torch.flatten(self.avgpool(features), 1))
        return x if pre_logits else self.classifier[-1](x)

    def group_modules(self) -> dict[str, list[nn.Module]]:
        return {"stem": [self.features[0]], "stages": list(self.features[1:]), "head": [self.classifier]}


def _strides(requested: list[int], input_size: int) -> tuple[int, list[int]]:
    """Stem stride and block strides after the small-input policy."""
    if input_size > SMALL_INPUT_MAX_SIZE:
        return 2, requested
    keep = iter(plan_downsampling(input_size, requested.count(2)))
    return 1, [2 if stride == 2 and next(keep) else 1 for stride in requested]


def _mobilenet_v2(num_classes: int, in_chans: int, input_size: int, drop_rate: float = 0.2) -> MobileNet:
    plan = [(t, c, 2 if i == 0 and s == 2 else 1) for t, c, n, s in V2_STAGES for i in range(n)]
    stem_stride, strides = _strides([stride for _, _, stride in plan], input_size)
    features: list[nn.Module] = [ConvNormAct(in_chans, 32, 3, stem_stride, activation=nn.ReLU6)]
    width = 32
    for (expansion, out_chans, _), stride in zip(plan, strides):
        features.append(InvertedResidual(width, round(width * expansion), out_chans, 3, stride, nn.ReLU6, layout="v2"))
        width = out_chans
    features.append(ConvNormAct(width, 1280, 1, activation=nn.ReLU6))
    classifier = nn.Sequential(nn.Dropout(drop_rate), nn.Linear(1280, num_classes))
    return MobileNet(features, classifier, num_classes)


def _mobilenet_v3(table: list, last_channels: int, num_classes: int, in_chans: int, input_size: int,
                  drop_rate: float = 0.2) -> MobileNet:  # fmt: skip
    stem_stride, strides = _strides([row[5] for row in table], input_size)
    features: list[nn.Module] = [ConvNormAct(in_chans, 16, 3, stem_stride, activation=nn.Hardswish, **V3_NORM)]
    width = 16
    for (kernel, expanded, out_chans, use_se, activation, _), stride in zip(table, strides):
        squeeze = make_divisible(expanded // 4) if use_se else 0
        features.append(
            InvertedResidual(width, expanded, out_chans, kernel, stride, ACTIVATIONS[activation], squeeze, **V3_NORM)
        )
        width = out_chans
    features.append(ConvNormAct(width, 6 * width, 1, activation=nn.Hardswish, **V3_NORM))
    classifier = nn.Sequential(
        nn.Linear(6 * width, last_channels), nn.Hardswish(inplace=True), nn.Dropout(drop_rate),
        nn.Linear(last_channels, num_classes),
    )  # fmt: skip
    return MobileNet(features, classifier, num_classes)


@register_model("mobilenet", input_size=224, advisor_candidate=True)
def mobilenet_v2(num_classes: int, in_chans: int, input_size: int, **kwargs) -> MobileNet:
    """MobileNetV2 (3.5M params): inverted residuals with linear bottlenecks, for phones."""
    return _mobilenet_v2(num_classes, in_chans, input_size, **kwargs)


@register_model("mobilenet", input_size=224, advisor_candidate=True)
def mobilenet_v3_small(num_classes: int, in_chans: int, input_size: int, **kwargs) -> MobileNet:
    """MobileNetV3-Small (2.5M params): the fastest of the zoo at 224 px."""
    return _mobilenet_v3(V3_SMALL, 1024, num_classes, in_chans, input_size, **kwargs)


@register_model("mobilenet", input_size=224)
def mobilenet_v3_large(num_classes: int, in_chans: int, input_size: int, **kwargs) -> MobileNet:
    """MobileNetV3-Large (5.5M params): squeeze-excite and hard-swish, searched for phones."""
    return _mobilenet_v3(V3_LARGE, 1280, num_classes, in_chans, input_size, **kwargs)
