"""LeNet-5: LeCun, Bottou, Bengio and Haffner, "Gradient-based learning applied to document
recognition", Proc. IEEE 1998 (http://yann.lecun.com/exdb/publis/pdf/lecun-98.pdf).

Matches the published layer sizes: C1 6@5x5, S2 pool, C3 16@5x5, S4 pool, C5 120, F6 84,
output 10; 61,706 parameters for 32x32 grayscale input and 10 classes. 28x28 inputs (MNIST,
Fashion-MNIST) are zero-padded by 2 pixels in C1, as the paper did for MNIST.

Deviations, each the common modern reading: ReLU instead of scaled tanh, max-pooling instead
of trainable sub-sampling, C3 connected to all six S2 maps instead of the paper's sparse table,
and a linear output layer instead of RBF units. None changes the parameter count above.
"""

from __future__ import annotations

import torch
from torch import nn

from imgclf.models._base import ImageClassifier
from imgclf.models._registry import register_model

__all__ = ["LeNet5", "lenet5"]


class LeNet5(ImageClassifier):
    classifier_name = "fc3"

    def __init__(self, num_classes: int = 10, in_chans: int = 1, input_size: int = 32, drop_rate: float = 0.0):
        super().__init__()
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(in_chans, 6, kernel_size=5, padding=2 if input_size == 28 else 0)
        self.conv2 = nn.Conv2d(6, 16, kernel_size=5)
        self.pool = nn.MaxPool2d(2)
        self.act = nn.ReLU(inplace=True)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)  # C5: a 5x5 convolution over a 5x5 map
        self.fc2 = nn.Linear(120, 84)
        self.dropout = nn.Dropout(drop_rate)
        self.fc3 = nn.Linear(84, num_classes)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.act(self.conv1(images)))  # C1, S2: 28x28 -> 14x14
        return self.pool(self.act(self.conv2(x)))  # C3, S4: 10x10 -> 5x5

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.act(self.fc1(torch.flatten(features, 1)))
        x = self.dropout(self.act(self.fc2(x)))
        return x if pre_logits else self.fc3(x)

    def group_modules(self) -> dict[str, list[nn.Module]]:
        return {"stem": [self.conv1], "stages": [self.conv2], "head": [self.fc1, self.fc2, self.fc3]}


@register_model(
    "lenet",
    input_size=32,
    in_chans=1,
    num_classes=10,
    fixed_input_sizes=(28, 32),
    plain_stack=True,
    pretrained_source="",
    advisor_candidate=True,
)
def lenet5(num_classes: int, in_chans: int, input_size: int, **kwargs) -> LeNet5:
    """LeNet-5 (1998): two 5x5 convolutions with pooling, three fully connected layers."""
    return LeNet5(num_classes=num_classes, in_chans=in_chans, input_size=input_size, **kwargs)
