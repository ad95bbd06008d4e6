"""The zoo: published parameter counts, torchvision-compatible names, one shared interface."""

from __future__ import annotations

import pytest
import torch
import torchvision

from imgclf.errors import UsageError
from imgclf.models import choose_input_size, count_parameters, create_model, get_model_spec, list_models


def test_lenet5_has_the_published_61706_parameters_and_pads_28px_inputs():
    assert count_parameters(create_model("lenet5")) == 61_706
    model = create_model("lenet5", input_size=28)
    assert count_parameters(model) == 61_706
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(UsageError, match="28 or 32"):
        create_model("lenet5", input_size=64)


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"])
def test_resnets_match_torchvision_parameters_and_names(name: str):
    reference = getattr(torchvision.models, name)()
    ours = create_model(name)
    assert count_parameters(ours) == count_parameters(reference)
    ours.load_state_dict(reference.state_dict(), strict=True)
    reference.eval(), ours.eval()
    images = torch.randn(1, 3, 64 * 2, 64 * 2)
    torch.testing.assert_close(ours(images), reference(images))


def test_resnet_uses_the_small_stem_at_64px_and_below():
    small, large = create_model("resnet18", input_size=32), create_model("resnet18", input_size=128)
    assert small.conv1.kernel_size == (3, 3) and isinstance(small.maxpool, torch.nn.Identity)
    assert large.conv1.kernel_size == (7, 7)
    assert small.forward_features(torch.zeros(1, 3, 32, 32)).shape == (1, 512, 4, 4)


@pytest.mark.parametrize("name", list_models())
def test_every_model_implements_the_shared_interface(name: str):
    spec = get_model_spec(name)
    size = 32 if not spec.fixed_input_sizes else spec.fixed_input_sizes[-1]
    model = create_model(name, num_classes=7, in_chans=1, input_size=size).eval()
    images = torch.randn(2, 1, size, size)
    features = model.forward_features(images)
    assert features.ndim == 4  # a spatial map for Grad-CAM
    torch.testing.assert_close(model.forward_head(features), model(images))
    embedding = model.forward_head(features, pre_logits=True)
    assert embedding.shape == (2, model.get_classifier().in_features)
    model.reset_classifier(3)
    assert model(images).shape == (2, 3)
    groups = model.parameter_groups()
    assert list(groups) == ["stem", "stages", "head"]
    grouped = [id(p) for params in groups.values() for p in params]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())  # each exactly once


def test_unknown_model_suggests_close_names():
    with pytest.raises(UsageError, match="did you mean resnet18"):
        create_model("resnet81")


def test_input_size_policy_keeps_small_images_and_caps_large_ones():
    assert choose_input_size(get_model_spec("simple_cnn"), 8) == 8
    assert choose_input_size(get_model_spec("resnet18"), 32) == 32
    assert choose_input_size(get_model_spec("resnet18"), 1000) == 224
    assert choose_input_size(get_model_spec("lenet5"), 28) == 28
    assert choose_input_size(get_model_spec("lenet5"), 8) == 32
