"""The model zoo. Importing this package registers every family."""

from imgclf.models import lenet, resnet, simple_cnn  # noqa: F401  (registration side effect)
from imgclf.models._base import ImageClassifier
from imgclf.models._registry import (
    ModelSpec,
    choose_input_size,
    create_model,
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
    "get_model_spec",
    "list_models",
    "register_model",
]
