"""The zoo: published parameter counts, torchvision twins, one shared interface for every model."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torchvision

from imgclf.errors import UsageError
from imgclf.models import choose_input_size, count_parameters, create_model, get_model_spec, list_models
from imgclf.models.inference import folded_for_inference
from imgclf.models.layers import Conv2dTfSame

# The published / torchvision counts at the default configuration.
PUBLISHED_PARAMETERS = {
    "alexnet": 61_100_840,
    "vgg11": 132_863_336,
    "vgg16": 138_357_544,
    "vgg16_bn": 138_365_992,
    "vgg19": 143_667_240,
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
    "mobilenet_v2": 3_504_872,
    "mobilenet_v3_small": 2_542_856,
    "mobilenet_v3_large": 5_483_032,
    "squeezenet1_0": 1_248_424,
    "squeezenet1_1": 1_235_496,
    "resnet20": 269_722,
    "resnet32": 464_154,
    "resnet44": 658_586,
    "resnet56": 853_018,
    "resnet110": 1_727_962,
    "lenet5": 61_706,
    "efficientnet_lite0": 4_652_008,
}
TORCHVISION_TWINS = [
    "alexnet",
    "vgg11",
    "vgg11_bn",
    "vgg13",
    "vgg13_bn",
    "vgg16",
    "vgg16_bn",
    "vgg19",
    "vgg19_bn",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "squeezenet1_0",
    "squeezenet1_1",
]
LARGE = {name for name in list_models() if name.startswith(("vgg", "alexnet"))}  # over 60M parameters
# The default suite keeps one of each large family and of each depth variant group; ``make test-all``
# (the slow tier) checks every one.
FAST_REPRESENTATIVES = {"alexnet", "vgg11", "vgg11_bn", "resnet18", "resnet50", "efficientnet_lite0"}
DEEP_OR_LARGE = LARGE | {"resnet101", "resnet152", "efficientnet_lite1", "efficientnet_lite2"}


def _tiered(names) -> list:
    """Each name as a test parameter; the large and deep ones outside the representatives are slow."""
    return [pytest.param(n, marks=pytest.mark.slow) if n in DEEP_OR_LARGE - FAST_REPRESENTATIVES else n
            for n in names]  # fmt: skip


def smallest_input_size(name: str) -> int:
    spec = get_model_spec(name)
    return min(spec.fixed_input_sizes) if spec.fixed_input_sizes else spec.min_input_size


@pytest.mark.parametrize(("name", "expected"), PUBLISHED_PARAMETERS.items())
def test_parameter_counts_match_the_published_ones(name: str, expected: int):
    assert count_parameters(create_model(name)) == expected


@pytest.mark.parametrize("name", _tiered(TORCHVISION_TWINS))
def test_torchvision_weights_load_strictly_and_give_the_same_logits(name: str):
    torch.manual_seed(0)
    reference = getattr(torchvision.models, name)().eval()
    ours = create_model(name).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    images = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(ours(images), reference(images), rtol=1e-4, atol=1e-5)


def test_lenet5_pads_28px_inputs_and_takes_only_its_sizes():
    model = create_model("lenet5", input_size=28)
    assert count_parameters(model) == 61_706 and model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(UsageError, match="28 or 32"):
        create_model("lenet5", input_size=64)


def test_small_input_policy_is_chosen_from_the_input_size():
    small, large = create_model("resnet18", input_size=32), create_model("resnet18", input_size=128)
    assert small.conv1.kernel_size == (3, 3) and isinstance(small.maxpool, torch.nn.Identity)
    assert large.conv1.kernel_size == (7, 7)
    assert small.forward_features(torch.zeros(1, 3, 32, 32)).shape == (1, 512, 4, 4)
    assert create_model("mobilenet_v2", input_size=32).features[0][0].stride == (1, 1)
    assert create_model("mobilenet_v2", input_size=224).features[0][0].stride == (2, 2)
    assert create_model("alexnet", input_size=32).features[0].kernel_size == (3, 3)


@pytest.mark.parametrize("in_chans", [1, 3])
@pytest.mark.parametrize("name", _tiered(list_models()))
def test_every_model_trains_at_its_smallest_input_through_the_shared_interface(name: str, in_chans: int):
    size = smallest_input_size(name)
    model = create_model(name, num_classes=7, in_chans=in_chans, input_size=size)
    images = torch.randn(2, in_chans, size, size)
    features = model.forward_features(images)
    assert features.ndim == 4  # a spatial map for Grad-CAM
    logits = model.forward_head(features)
    assert logits.shape == (2, 7)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    features = model.forward_features(images)
    embedding = model.forward_head(features, pre_logits=True)
    classifier = model.get_classifier()
    assert embedding.shape == (2, getattr(classifier, "in_features", None) or classifier.in_channels)
    together = model.forward_head_and_embedding(features)  # the one-pass version gives the same two
    assert torch.allclose(together[0], model.forward_head(features)) and torch.allclose(together[1], embedding)
    model.reset_classifier(3)
    assert model(images).shape == (2, 3)
    groups = model.parameter_groups()
    assert list(groups) == ["stem", "stages", "head"]
    grouped = sorted(id(p) for params in groups.values() for p in params)
    assert grouped == sorted(id(p) for p in model.parameters())  # each parameter exactly once


# The TorchScript exporter needs no extra package; the export issue may move to torch.export.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in DEEP_OR_LARGE else n
                                  for n in list_models()])  # fmt: skip
def test_every_model_exports_to_onnx_with_the_same_logits(name: str):
    onnxruntime = pytest.importorskip("onnxruntime")
    size = smallest_input_size(name) if name != "simple_cnn" else 16
    in_chans = get_model_spec(name).in_chans
    model = create_model(name, num_classes=5, in_chans=in_chans, input_size=size).eval()
    images = torch.randn(2, in_chans, size, size)
    buffer = io.BytesIO()
    torch.onnx.export(
        model,
        images,
        buffer,
        dynamo=False,
        opset_version=17,
        input_names=["images"],
        dynamic_axes={"images": {0: "batch"}},
    )
    session = onnxruntime.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    exported = session.run(None, {"images": images.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(exported, model(images).numpy(), rtol=1e-3, atol=1e-4)


def test_unknown_model_suggests_close_names():
    with pytest.raises(UsageError, match="did you mean resnet18"):
        create_model("resnet81")


def test_input_size_policy_keeps_small_images_and_caps_large_ones():
    assert choose_input_size(get_model_spec("simple_cnn"), 8) == 8
    assert choose_input_size(get_model_spec("resnet18"), 32) == 32
    assert choose_input_size(get_model_spec("resnet18"), 1000) == 224
    assert choose_input_size(get_model_spec("lenet5"), 28) == 28
    assert choose_input_size(get_model_spec("lenet5"), 8) == 32


def test_the_shipped_zoo_table_is_what_the_models_count_now(tmp_path, monkeypatch):
    """``imgclf models`` answers from models/zoo_table.json: it must equal a fresh count (after
    changing a model file, run ``python -c "from imgclf.runners.models import write_shipped_table;
    write_shipped_table()"``)."""
    import json

    from imgclf.models import describe_model, list_models
    from imgclf.runners.models import SHIPPED_TABLE, run_models, table_key

    shipped = json.loads(SHIPPED_TABLE.read_text())
    assert shipped["key"] == table_key(None), "a model file changed: regenerate models/zoo_table.json"
    assert shipped["rows"] == [describe_model(name) for name in list_models()]
    monkeypatch.setenv("IMGCLF_CACHE_DIR", str(tmp_path))
    assert run_models() == shipped["rows"]
    assert run_models(input_size=64)[0]["flops_input_size"] in (32, 64)  # another size: counted, then cached
    assert list((tmp_path / "zoo").glob("*.json"))


@pytest.mark.parametrize("name", ["efficientnet_lite0", "resnet18", "mobilenet_v2", "simple_cnn"])
def test_folded_batch_norms_give_the_same_outputs_and_leave_the_model_alone(name: str):
    torch.manual_seed(0)
    model = create_model(name, num_classes=5, in_chans=3, input_size=64)
    for module in model.modules():  # statistics that are not the identity, as after training
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    model.train()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    images = torch.randn(3, 3, 64, 64)
    folded = folded_for_inference(model.eval())
    with torch.no_grad():
        expected, actual = model(images), folded(images)
    assert torch.allclose(actual, expected, atol=1e-4, rtol=1e-4)
    remaining = sum(isinstance(module, torch.nn.BatchNorm2d) for module in folded.modules())
    assert remaining < sum(isinstance(module, torch.nn.BatchNorm2d) for module in model.modules())
    assert all(torch.equal(value, before[key]) for key, value in model.state_dict().items())


@pytest.mark.parametrize("kernel", [1, 3, 5])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [7, 8, 16])
def test_tensorflow_same_padding_puts_the_extra_row_and_column_last(kernel: int, stride: int, size: int):
    torch.manual_seed(0)
    conv = Conv2dTfSame(2, 3, kernel, stride)
    image = torch.randn(1, 2, size, size + 1)
    padded = []  # TensorFlow's rule: out = ceil(in / stride), the odd pixel of padding at the end
    for length in reversed(image.shape[-2:]):
        total = max((-(-length // stride) - 1) * stride + kernel - length, 0)
        padded += [total // 2, total - total // 2]
    expected = torch.nn.functional.conv2d(torch.nn.functional.pad(image, padded), conv.weight, conv.bias, stride)
    with torch.no_grad():
        actual = conv(image)
    assert actual.shape[-2:] == (-(-size // stride), -(-(size + 1) // stride))
    assert torch.allclose(actual, expected, atol=1e-5)


def test_every_model_runs_at_sizes_whose_halvings_turn_odd():
    """24 px halves to 12, 6, 3 and 1: a plain 2x2 max-pool rounds 3 down to 1, so a fifth pool
    would meet a 1 px map (VGG at 24 px failed so before). Every model at 20 and 24 px (a scan of
    12-60 px found no other failing size)."""
    failures = []
    for name in list_models():
        spec = get_model_spec(name)
        sizes = spec.fixed_input_sizes or [s for s in (20, 24) if s >= spec.min_input_size]
        for size in sizes:
            model = create_model(name, num_classes=3, in_chans=3, input_size=size).eval()
            with torch.no_grad():
                try:
                    assert model(torch.zeros(2, 3, size, size)).shape == (2, 3)
                except Exception as error:  # noqa: BLE001 - collect every failing (model, size)
                    failures.append(f"{name} at {size} px: {error}")
    assert failures == []
