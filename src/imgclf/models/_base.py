"""The one interface every zoo model implements, so transfer learning, Grad-CAM, export and
serving never need per-architecture code."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ImageClassifier"]


class ImageClassifier(nn.Module):
    """Base of the zoo. A model defines ``forward_features``, ``forward_head``, its classifier
    attribute name and its parameter groups; ``forward`` is always features then head."""

    classifier_name: str = "fc"  # dotted path of the final layer ("fc", "classifier.6")

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """The last spatial feature map (N, C, H, W); Grad-CAM hooks here."""
        raise NotImplementedError

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool and classify; with ``pre_logits`` the embedding before the last linear layer."""
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(images))

    def forward_head_and_embedding(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The logits and the pre-logits embedding together. This default runs the head twice;
        models whose head is expensive (VGG's and AlexNet's 4096-wide layers) run it once."""
        return self.forward_head(features), self.forward_head(features, pre_logits=True)

    def get_classifier(self) -> nn.Module:
        return self.get_submodule(self.classifier_name)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the last layer with a freshly initialized one for ``num_classes``."""
        old = self.get_classifier()
        if isinstance(old, nn.Conv2d):  # SqueezeNet classifies with a 1x1 convolution
            new: nn.Module = nn.Conv2d(old.in_channels, num_classes, 1)
        else:
            new = nn.Linear(old.in_features, num_classes)
        parent_name, _, child_name = self.classifier_name.rpartition(".")
        parent = self.get_submodule(parent_name) if parent_name else self
        setattr(parent, child_name, new)
        self.num_classes = num_classes

    def group_modules(self) -> dict[str, list[nn.Module]]:
        """Modules of the "stem", the "stages" (in order) and the "head"."""
        raise NotImplementedError

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by group, for freezing and per-group learning rates."""
        return {
            group: [p for module in modules for p in module.parameters()]
            for group, modules in self.group_modules().items()
        }
