"""DATA forms: folders with and without splits, archives, CSV, built-ins; junk is never a class."""

from __future__ import annotations

import gzip
import shutil
import struct
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import write_class_folder
from imgclf.data.builtins import FASHION_MNIST_DIR
from imgclf.data.dataset import SplitPolicy, load_dataset
from imgclf.data.prepare import Preprocess, decode_split, profile_dataset
from imgclf.data.split import stratified_split
from imgclf.errors import DataError


def test_folder_without_splits_gets_a_stratified_recorded_split(image_folder: Path):
    dataset = load_dataset(str(image_folder), SplitPolicy(seed=3, val_fraction=0.25, test_fraction=0.25))
    assert dataset.classes == ["left", "right", "top"]
    assert {name: len(split) for name, split in dataset.splits.items()} == {"train": 36, "val": 18, "test": 18}
    for split in dataset.splits.values():  # stratified: every class in every split, equally
        assert np.bincount(split.targets).tolist() == [len(split) // 3] * 3
    info = dataset.split_info
    assert (
        info["method"] == "stratified" and info["seed"] == 3 and set(info["fingerprints"]) == {"train", "val", "test"}
    )
    again = load_dataset(str(image_folder), SplitPolicy(seed=3, val_fraction=0.25, test_fraction=0.25))
    assert again.splits["test"].keys == dataset.splits["test"].keys


def test_split_folders_are_used_and_val_is_carved_when_missing(tmp_path: Path):
    write_class_folder(tmp_path / "data" / "train", ["a", "b"], per_class=10)
    write_class_folder(tmp_path / "data" / "test", ["a", "b"], per_class=3)
    dataset = load_dataset(str(tmp_path / "data"), SplitPolicy(val_fraction=0.2))
    assert {name: len(split) for name, split in dataset.splits.items()} == {"train": 16, "val": 4, "test": 6}
    assert dataset.split_info["method"] == "given, val carved from train"


def test_hidden_folders_and_os_junk_are_never_classes(image_folder: Path):
    for junk in (".ipynb_checkpoints", "__MACOSX", ".hidden"):
        (image_folder / junk).mkdir()
        shutil.copy(next((image_folder / "left").iterdir()), image_folder / junk / "x.png")
    (image_folder / ".DS_Store").write_bytes(b"\0\0")
    (image_folder / "left" / "._000.png").write_bytes(b"AppleDouble")
    (image_folder / "left" / "notes.txt").write_text("not an image")
    dataset = load_dataset(str(image_folder))
    assert dataset.classes == ["left", "right", "top"]
    reasons = dict(dataset.ignored)
    assert reasons["left/notes.txt"] == "not an image file extension"
    assert reasons[".ipynb_checkpoints/x.png"] == "hidden file or OS junk"


@pytest.mark.parametrize("suffix", [".zip", ".tar.gz"])
def test_archives_are_read_directly(image_folder: Path, tmp_path: Path, suffix: str):
    archive = tmp_path / f"shapes{suffix}"
    files = sorted(path for path in image_folder.rglob("*.png"))
    if suffix == ".zip":
        with zipfile.ZipFile(archive, "w") as handle:
            for path in files:  # wrapped in one top folder, as archives usually are
                handle.write(path, f"shapes/{path.relative_to(image_folder)}")
    else:
        with tarfile.open(archive, "w:gz") as handle:
            handle.add(image_folder, arcname="shapes")
    dataset = load_dataset(str(archive))
    assert dataset.classes == ["left", "right", "top"] and dataset.kind == "archive"
    decoded, skipped = decode_split(dataset.splits["train"], Preprocess(16, 3, (0,) * 3, (1,) * 3))
    assert skipped == [] and decoded.images.shape[1:] == (3, 16, 16)


def test_csv_of_paths_and_labels(image_folder: Path):
    rows = ["path,label"] + [
        f"{path.relative_to(image_folder)},{path.parent.name}" for path in sorted(image_folder.rglob("*.png"))
    ]
    (image_folder / "labels.csv").write_text("\n".join(rows) + "\n")
    dataset = load_dataset(str(image_folder / "labels.csv"))
    assert dataset.classes == ["left", "right", "top"] and sum(len(s) for s in dataset.splits.values()) == 72


def test_grayscale_dataset_keeps_one_channel_and_bad_files_are_skipped(tmp_path: Path):
    root = write_class_folder(tmp_path / "gray", ["a", "b"], per_class=8, channels=1)
    (root / "a" / "broken.png").write_bytes(b"")
    dataset = load_dataset(str(root), SplitPolicy(val_fraction=0.2, test_fraction=0.0))
    profile = profile_dataset(dataset)
    assert profile.channels == 1 and profile.native_size == 16
    assert [Path(file).name for file, _ in profile.skipped] == ["broken.png"]
    assert sum(profile.sizes.values()) == 16


def test_digits_builtin():
    dataset = load_dataset("digits")
    assert dataset.classes == [str(i) for i in range(10)]
    assert sum(len(s) for s in dataset.splits.values()) == 1797
    assert dataset.splits["train"].images.shape[1:] == (8, 8, 1)
    assert dataset.splits["train"].images.max() == 255


def _write_idx(path: Path, values: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, values.ndim) + struct.pack(f">{values.ndim}I", *values.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + values.astype(np.uint8).tobytes())


def test_fashion_mnist_from_idx_files_in_data_dir(tmp_path: Path):
    rng = np.random.default_rng(0)
    for prefix, count in (("train", 40), ("t10k", 10)):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 255, (count, 28, 28)))
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", np.arange(count) % 10)
    dataset = load_dataset("fashion-mnist", data_dir=tmp_path)
    assert dataset.classes[0] == "T-shirt/top" and len(dataset.splits["test"]) == 10
    assert len(dataset.splits["train"]) + len(dataset.splits["val"]) == 40


@pytest.mark.skipif(not FASHION_MNIST_DIR.exists(), reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_from_the_debian_package():
    dataset = load_dataset("fashion-mnist")
    assert len(dataset.splits["test"]) == 10_000
    assert len(dataset.splits["train"]) + len(dataset.splits["val"]) == 60_000


def test_fashion_mnist_missing_files_say_how_to_get_them(tmp_path: Path):
    with pytest.raises(DataError, match="dataset-fashion-mnist"):
        load_dataset("fashion-mnist", data_dir=tmp_path)


def test_stratified_split_keeps_a_training_image_for_tiny_classes():
    parts = stratified_split(np.array([0, 0, 1]), {"val": 0.5, "test": 0.5}, seed=0)
    assert 2 in parts["train"]  # the one image of class 1 stays for training
    assert sorted(np.concatenate(list(parts.values())).tolist()) == [0, 1, 2]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda root: root / "missing", "no such file or folder"),
        (lambda root: root, "no images found"),
        (lambda root: write_class_folder(root, ["only"], per_class=3), "needs at least 2"),
    ],
)
def test_unusable_data_gives_a_clear_error(tmp_path: Path, make, message: str):
    target = make(tmp_path / "data")
    (tmp_path / "data").mkdir(exist_ok=True)
    with pytest.raises(DataError, match=message):
        load_dataset(str(target))


def test_capping_training_images_keeps_enough_validation_images_to_judge_by(tmp_path: Path):
    """``--max-train-per-class 10``: validation is capped too (evaluating thousands of images
    would dominate such a run), but to at least 50 a class where the data has them, not to the
    10% proportion (2 a class): the validation split chooses between the probe and the
    fine-tuned model, and 12 a class once kept a probe 7 points worse on the test images."""
    import json

    import imgclf

    write_class_folder(tmp_path / "data" / "train", ["a", "b"], per_class=30, size=8)
    write_class_folder(tmp_path / "data" / "val", ["a", "b"], per_class=60, size=8, seed=1)
    output = tmp_path / "run"
    imgclf.train(str(tmp_path / "data"), output=output, model="simple_cnn", epochs=1, max_train_per_class=10)
    sizes = json.loads((output / "model.json").read_text())["data"]["sizes"]
    assert (sizes["train"], sizes["val"]) == (20, 100)


def test_a_folder_given_to_predict_lists_its_images_folder_by_folder_in_name_order(tmp_path, monkeypatch):
    """Path components compare one by one (``a/b/x.jpg`` before ``a/c.jpg``, ``b`` before ``b c``),
    names are written as Path writes them, hidden files and folder links are left out, as os.walk
    left them out."""
    from imgclf.data.layout import image_files_below

    for name in ["a/c.jpg", "a/b/x.jpg", "a/b c/y.PNG", "a/b-1/w.jpg", "a/.hidden/h.jpg", "a/._mac.jpg",
                 "top.jpg", "a/b/d/e.jpeg", "a/notes.txt"]:  # fmt: skip
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "a" / "link").symlink_to(tmp_path / "a" / "b")
    (tmp_path / "a" / "same.jpg").symlink_to(tmp_path / "a" / "c.jpg")
    expected = ["a/b/d/e.jpeg", "a/b/x.jpg", "a/b c/y.PNG", "a/b-1/w.jpg", "a/c.jpg", "a/same.jpg", "top.jpg"]
    assert image_files_below(f"{tmp_path}/") == [f"{tmp_path}/{name}" for name in expected]
    monkeypatch.chdir(tmp_path)
    assert image_files_below(".") == expected and image_files_below("./a") == [n for n in expected if n[0] == "a"]
