"""`imgclf train` works with every model name on a tiny folder, and the bundle predicts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import imgclf
from conftest import write_class_folder
from imgclf.cli.main import main
from imgclf.models import list_models


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    return write_class_folder(tmp_path_factory.mktemp("tiny") / "data", ["a", "b"], per_class=6, size=16)


# One model of each family runs in the default suite; the rest of the zoo in the slow tier
# (`make test-all`): the VGGs alone take 15 s each on 2 cores.
REPRESENTATIVES = {"lenet5", "resnet18", "resnet20", "mobilenet_v3_small", "squeezenet1_1",
                   "efficientnet_lite0", "simple_cnn", "fastnet_small"}  # fmt: skip
ZOO = [name if name in REPRESENTATIVES else pytest.param(name, marks=pytest.mark.slow) for name in list_models()]


@pytest.mark.parametrize("name", ZOO)
def test_train_works_with_every_model(name: str, tiny_folder: Path, tmp_path: Path, capsys):
    output = tmp_path / name
    code = main(
        [
            "train",
            str(tiny_folder),
            "--model",
            name,
            "--epochs",
            "1",
            "--batch-size",
            "4",
            "--val-fraction",
            "0.34",
            "--test-fraction",
            "0",
            "--output",
            str(output),
            "--json",
        ]
    )
    result = json.loads(capsys.readouterr().out)
    assert code == 0 and result["model"] == name and result["epochs"] == 1
    description = json.loads((output / "model.json").read_text())
    assert description["architecture"] == name
    expected_size = 32 if name == "lenet5" else 16  # LeNet-5 takes 28 or 32 px only
    assert description["input_size"] == expected_size
    predicted = imgclf.load(output).predict([next((tiny_folder / "a").iterdir())], top_k=2)
    assert [item["label"] for item in predicted[0]["top_k"]] in (["a", "b"], ["b", "a"])
