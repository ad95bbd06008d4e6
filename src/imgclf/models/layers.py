"""Building blocks shared by the model families."""

from __future__ import annotations

from torch import nn

__all__ = ["ConvNormAct"]


class ConvNormAct(nn.Sequential):
    """Conv (no bias: the norm has one) -> BatchNorm -> activation; "same" padding."""

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        activation: type[nn.Module] | None = nn.ReLU,
    ):
        layers: list[nn.Module] = [
            nn.Conv2d(
                in_chans, out_chans, kernel_size, stride, padding=(kernel_size - 1) // 2, groups=groups, bias=False
            ),
            nn.BatchNorm2d(out_chans),
        ]
        if activation is not None:
            layers.append(activation(inplace=True))
        super().__init__(*layers)
