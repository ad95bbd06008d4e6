"""Building blocks shared by the model families, in torchvision's module layout so that
torchvision state dicts load by name: conv-norm-act, squeeze-excite, inverted residual, fire."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = [
    "Conv2dTfSame",
    "ConvNormAct",
    "Fire",
    "GlobalPoolRepeat",
    "InvertedResidual",
    "SqueezeExcite",
    "SMALL_INPUT_MAX_SIZE",
    "init_weights",
    "make_divisible",
    "plan_downsampling",
]

# At this input size and below, families built for 224 px use their small-input stem: the
# ImageNet stems downsample 4x to 8x at once, which would leave a 32 px image 4-8 px wide
# before the first block.
SMALL_INPUT_MAX_SIZE = 64


class Conv2dTfSame(nn.Conv2d):
    """A convolution with TensorFlow's "SAME" padding: for a stride-2 layer on an even-sized
    map the extra row and column go at the bottom and right. Weights ported from TensorFlow
    (EfficientNet-Lite) expect it; PyTorch's symmetric padding would shift every strided layer."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        before, after = [], []  # per spatial dimension, height first
        for size, kernel, stride in zip(x.shape[-2:], self.kernel_size, self.stride):
            total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
            before.append(total // 2)
            after.append(total - total // 2)
        # The symmetric part goes to the convolution itself; only a leftover row and column (a
        # strided layer on an even-sized map) needs a padded copy. Padding every layer by copy,
        # EfficientNet-Lite0 ran 75-94 images/s forward at 128 px (NCHW, batch 8-64, 2 cores)
        # against 85-113 without.
        if before != after:
            x = nn.functional.pad(x, [0, after[1] - before[1], 0, after[0] - before[0]])
        return nn.functional.conv2d(x, self.weight, self.bias, self.stride, before, self.dilation, self.groups)


class ConvNormAct(nn.Sequential):
    """Conv (no bias: the norm has one) -> BatchNorm -> activation, "same" padding
    (TensorFlow's asymmetric kind with ``tf_same``). Indices 0/1/2 match torchvision's
    Conv2dNormActivation."""

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        activation: type[nn.Module] | None = nn.ReLU,
        norm_eps: float = 1e-5,
        norm_momentum: float = 0.1,
        tf_same: bool = False,
    ):
        if tf_same:
            conv: nn.Conv2d = Conv2dTfSame(in_chans, out_chans, kernel_size, stride, groups=groups, bias=False)
        else:
            padding = (kernel_size - 1) // 2
            conv = nn.Conv2d(in_chans, out_chans, kernel_size, stride, padding, groups=groups, bias=False)
        layers: list[nn.Module] = [
            conv,
            nn.BatchNorm2d(out_chans, eps=norm_eps, momentum=norm_momentum),
        ]
        if activation is not None:
            layers.append(activation(inplace=True))
        super().__init__(*layers)


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round channels to a multiple of ``divisor``, never more than 10% down (MobileNet rule)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Hu et al. 2018): channel weights from globally pooled features."""

    def __init__(self, channels: int, squeeze_chans: int, gate: type[nn.Module] = nn.Sigmoid):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze_chans, 1)
        self.fc2 = nn.Conv2d(squeeze_chans, channels, 1)
        self.activation = nn.ReLU()
        self.scale_activation = gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return x * scale


class InvertedResidual(nn.Module):
    """MobileNetV2's inverted residual (arXiv:1801.04381): 1x1 expand, kxk depthwise,
    optional squeeze-excite, 1x1 linear projection; the input is added back when shapes match.

    ``layout="v2"`` names the layers ``conv.N`` with a separate projection conv and norm
    (torchvision's MobileNetV2); ``layout="v3"`` names them ``block.N`` (MobileNetV3, EfficientNet).
    """

    def __init__(
        self,
        in_chans: int,
        expanded_chans: int,
        out_chans: int,
        kernel_size: int,
        stride: int,
        activation: type[nn.Module],
        squeeze_chans: int = 0,
        gate: type[nn.Module] = nn.Hardsigmoid,
        layout: str = "v3",
        norm_eps: float = 1e-5,
        norm_momentum: float = 0.1,
        tf_same: bool = False,
    ):
        super().__init__()
        norm = {"norm_eps": norm_eps, "norm_momentum": norm_momentum, "tf_same": tf_same}
        layers: list[nn.Module] = []
        if expanded_chans != in_chans:
            layers.append(ConvNormAct(in_chans, expanded_chans, 1, activation=activation, **norm))
        layers.append(
            ConvNormAct(expanded_chans, expanded_chans, kernel_size, stride, expanded_chans, activation, **norm)
        )
        if squeeze_chans:
            layers.append(SqueezeExcite(expanded_chans, squeeze_chans, gate))
        if layout == "v2":
            layers += [
                nn.Conv2d(expanded_chans, out_chans, 1, bias=False),
                nn.BatchNorm2d(out_chans, eps=norm_eps, momentum=norm_momentum),
            ]
        else:
            layers.append(ConvNormAct(expanded_chans, out_chans, 1, activation=None, **norm))
        self.layers_name = "conv" if layout == "v2" else "block"
        setattr(self, self.layers_name, nn.Sequential(*layers))
        self.use_residual = stride == 1 and in_chans == out_chans

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = getattr(self, self.layers_name)(x)
        return out + x if self.use_residual else out


class Fire(nn.Module):
    """SqueezeNet's fire module (arXiv:1602.07360): a 1x1 squeeze, then 1x1 and 3x3 expands
    whose outputs are concatenated along the channels."""

    def __init__(self, in_chans: int, squeeze_chans: int, expand1x1_chans: int, expand3x3_chans: int):
        super().__init__()
        self.squeeze = nn.Conv2d(in_chans, squeeze_chans, 1)
        self.squeeze_activation = nn.ReLU(inplace=True)
        self.expand1x1 = nn.Conv2d(squeeze_chans, expand1x1_chans, 1)
        self.expand1x1_activation = nn.ReLU(inplace=True)
        self.expand3x3 = nn.Conv2d(squeeze_chans, expand3x3_chans, 3, padding=1)
        self.expand3x3_activation = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.squeeze_activation(self.squeeze(x))
        return torch.cat(
            [self.expand1x1_activation(self.expand1x1(x)), self.expand3x3_activation(self.expand3x3(x))], dim=1
        )


class GlobalPoolRepeat(nn.Module):
    """Global average pooling, then the pooled value repeated over a ``size`` x ``size`` grid.

    The small-input stand-in for AlexNet's and VGG's adaptive (6x6 / 7x7) pooling: on the 1x1
    map a small image leaves, adaptive pooling repeats that one value too, so the classifier
    keeps its shape; unlike adaptive pooling to a larger grid, this exports to ONNX.
    """

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3), keepdim=True).expand(-1, -1, self.size, self.size)


class DropPath(nn.Module):
    """Stochastic depth (Huang et al., "Deep Networks with Stochastic Depth", ECCV 2016): in
    training, each sample's residual branch is dropped with chance ``p`` and kept ones are scaled
    by 1 / (1 - p). The same draws as ``torchvision.ops.StochasticDepth(p, "row")``, written here
    so that building a model does not import torchvision (2.3 s of every command's start-up)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        survival = 1.0 - self.p
        noise = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device)
        noise.bernoulli_(survival)
        if survival > 0.0:
            noise.div_(survival)
        return x * noise

    def extra_repr(self) -> str:
        return f"p={self.p}"


def init_weights(model: nn.Module, linear_std: float | None = 0.01) -> None:
    """He (fan-out) initialization for convolutions, unit/zero batch norms, and N(0, std)
    linear layers (PyTorch's default when ``linear_std`` is None): torchvision's recipe."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear) and linear_std is not None:
            nn.init.normal_(module.weight, 0, linear_std)
            nn.init.zeros_(module.bias)


def plan_downsampling(size: int, count: int, ceil: bool = True) -> list[bool]:
    """Which of ``count`` 2x downsampling steps to keep for a ``size`` px map: each is kept
    while the map is at least 2 px, so an 8 px input ends at 1x1 instead of failing. ``ceil``:
    how a step rounds an odd size (a padded stride-2 convolution or a ``ceil_mode`` pool round up;
    a plain 2x2 max-pool rounds down: 24 px goes 12, 6, 3, 1)."""
    keep = []
    for _ in range(count):
        keep.append(size >= 2)
        if size >= 2:
            size = math.ceil(size / 2) if ceil else size // 2
    return keep
