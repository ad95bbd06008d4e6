"""The model zoo. Importing this package registers every family (in this order in listings)."""

from imgclf.models import (  # noqa: F401  (registration side effect)
    alexnet,
    efficientnet_lite,
    fastnet,
    lenet,
    mobilenet,
    resnet,
    resnet_cifar,
    simple_cnn,
    squeezenet,
    vgg,
)
from imgclf.models._base import ImageClassifier
from imgclf.models._registry import (
    ModelSpec,
    choose_input_size,
    create_model,
    families_with,
    get_model_spec,
    list_models,
    register_model,
)
from imgclf.models.info import count_flops, count_parameters, describe_model

__all__ = [
    "ImageClassifier",
    "ModelSpec",
    "choose_input_size",
    "count_flops",
    "count_parameters",
    "create_model",
    "describe_model",
    "families_with",
    "get_model_spec",
    "list_models",
    "register_model",
]
