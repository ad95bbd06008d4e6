"""The data loop: the per-image embedding cache, ``update`` (refit, add classes) and ``suggest``."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_sample_images

from imgclf.bundle import load_bundle
from imgclf.cli.main import main
from imgclf.data.readers import FolderReader
from imgclf.engine.active import STRATEGIES, choose_for_labelling, uncertainty
from imgclf.engine.image_embeddings import ImageEmbeddingCache, embed_files

TRAIN = ["train", "--model", "efficientnet_lite0", "--pretrained", "--finetune", "linear-probe", "--input-size", "64"]


def _crops(folder: Path, pixels: np.ndarray, count: int, rng: np.random.Generator) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    height, width = pixels.shape[:2]
    for index in range(count):
        size = int(rng.integers(150, 300))
        y, x = int(rng.integers(0, height - size)), int(rng.integers(0, width - size))
        Image.fromarray(pixels[y : y + size, x : x + size]).save(folder / f"{index}.jpg")


def _stripes(folder: Path, count: int, rng: np.random.Generator) -> None:
    """A third kind of photo: diagonal stripes of random period and colour."""
    folder.mkdir(parents=True, exist_ok=True)
    grid = np.add.outer(np.arange(200), np.arange(200))
    for index in range(count):
        period, colour = int(rng.integers(8, 24)), rng.integers(60, 255, size=3)
        band = ((grid // period) % 2)[:, :, None]
        Image.fromarray((band * colour).astype(np.uint8)).save(folder / f"{index}.jpg")


@pytest.fixture(scope="module")
def loop_data(tmp_path_factory) -> dict[str, Path]:
    """``base``: temple and flower crops (train/val); ``plus``: the same files and a new class."""
    root = tmp_path_factory.mktemp("loop")
    rng = np.random.default_rng(0)
    photos = dict(zip(["temple", "flower"], load_sample_images().images))
    for split, count in (("train", 10), ("val", 6)):
        for name, pixels in photos.items():
            _crops(root / "base" / split / name, pixels, count, rng)
    shutil.copytree(root / "base", root / "plus")
    _stripes(root / "plus" / "train" / "stripes", 10, rng)
    _stripes(root / "plus" / "val" / "stripes", 6, rng)
    return {"base": root / "base", "plus": root / "plus", "root": root}


@pytest.fixture(scope="module")
def base_bundle(loop_data, tmp_path_factory) -> tuple[Path, Path]:
    """A linear-probe bundle of ``base`` and the embedding cache its training filled."""
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("IMGCLF_CACHE_DIR", str(cache))
        output = loop_data["root"] / "runs" / "base"
        assert main([*TRAIN, str(loop_data["base"]), "--output", str(output)]) == 0
    return output, cache


def _digests(folder: Path) -> dict[str, str]:
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}  # fmt: skip


def test_update_adds_a_class_embedding_only_the_new_files(loop_data, base_bundle, monkeypatch, capsys, tmp_path):
    bundle, cache = base_bundle
    monkeypatch.setenv("IMGCLF_CACHE_DIR", str(cache))
    before = _digests(bundle)
    output = tmp_path / "updated"
    assert main(["update", str(bundle), str(loop_data["plus"]), "--output", str(output), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["classes"] == ["flower", "temple", "stripes"]  # old classes keep their indices
    assert result["added_classes"] == ["stripes"]
    assert result["images_embedded"] == 16 and result["images_from_cache"] == 32  # training filled the cache
    assert result["old_classes_val"]["images"] == 12 and result["old_classes_val"]["before"] is not None
    assert result["new_classes_val_accuracy"]["stripes"] == 1.0
    assert _digests(bundle) == before  # the old bundle is never changed
    description = json.loads((output / "model.json").read_text())
    assert description["updated_from"]["bundle"] == str(bundle.resolve())
    assert description["model_kwargs"]["num_classes"] == 3
    assert main(["predict", str(output), str(loop_data["plus"] / "val" / "stripes"), "--json"]) == 0
    predictions = json.loads(capsys.readouterr().out)
    assert [row["label"] for row in predictions] == ["stripes"] * 6
    # Again, with one training photo renamed and one changed: only the changed one is embedded.
    moved = tmp_path / "plus"
    shutil.copytree(loop_data["plus"], moved)
    (moved / "train" / "temple" / "0.jpg").rename(moved / "train" / "temple" / "renamed.jpg")
    Image.open(moved / "train" / "flower" / "1.jpg").rotate(90).save(moved / "train" / "flower" / "1.jpg")
    assert main(["update", str(output), str(moved), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["images_embedded"] == 1 and again["added_classes"] == []
    assert Path(again["bundle"]).name == "updated-updated"


def test_update_refuses_data_without_an_old_class_and_never_overwrites(loop_data, base_bundle, tmp_path, capsys):
    bundle, _ = base_bundle
    lacking = tmp_path / "lacking"
    shutil.copytree(loop_data["plus"], lacking)
    shutil.rmtree(lacking / "train" / "temple")
    shutil.rmtree(lacking / "val" / "temple")
    assert main(["update", str(bundle), str(lacking)]) == 2
    assert "no images of 'temple'" in capsys.readouterr().err
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "model.json").write_text("{}")
    assert main(["update", str(bundle), str(loop_data["plus"]), "--output", str(taken)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (taken / "model.json").read_text() == "{}"


def test_embedding_cache_keys_by_content_and_drops_a_damaged_shard(loop_data, base_bundle, tmp_path):
    bundle = load_bundle(base_bundle[0])
    cache = ImageEmbeddingCache(tmp_path / "shards")
    folder = loop_data["base"] / "val" / "flower"
    keys = sorted(path.name for path in folder.iterdir())
    first = embed_files(bundle.model, bundle.preprocess, FolderReader(folder), keys, torch.device("cpu"), cache)
    assert first.computed == len(keys) and first.from_cache == 0
    fresh = ImageEmbeddingCache(tmp_path / "shards")  # read back from disk
    second = embed_files(bundle.model, bundle.preprocess, FolderReader(folder), keys, torch.device("cpu"), fresh)
    assert second.computed == 0 and torch.equal(first.embeddings, second.embeddings)
    for shard in (tmp_path / "shards").glob("*.safetensors"):
        shard.write_bytes(b"damaged")
    third = embed_files(bundle.model, bundle.preprocess, FolderReader(folder), keys, torch.device("cpu"),
                        ImageEmbeddingCache(tmp_path / "shards"))  # fmt: skip
    assert third.computed == len(keys)
    assert torch.allclose(third.embeddings, first.embeddings, atol=1e-5)


def test_suggest_ranks_copies_and_leaves_the_originals(loop_data, base_bundle, monkeypatch, capsys, tmp_path):
    bundle, cache = base_bundle
    monkeypatch.setenv("IMGCLF_CACHE_DIR", str(cache))
    unlabelled = loop_data["plus"] / "train" / "stripes"
    before = _digests(unlabelled)
    copies = tmp_path / "suggested"
    assert main(["suggest", str(bundle), str(unlabelled), "--n", "4", "--copy-to", str(copies), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 10 and len(result["suggestions"]) == 4
    assert len({row["file"] for row in result["suggestions"]}) == 4
    assert _digests(unlabelled) == before
    for row in result["suggestions"]:
        assert Path(row["copy"]).read_bytes() == Path(row["file"]).read_bytes()
        assert Path(row["copy"]).parent.name == row["predicted"]
    assert (copies / "suggested.csv").read_text().startswith("rank,file,predicted")


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_returns_distinct_images(strategy):
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(60, 8))
    probabilities = rng.dirichlet(np.ones(3), size=60)
    chosen = choose_for_labelling(embeddings, probabilities, 10, embeddings[:5] + 0.01, strategy)
    assert len(chosen) == 10 == len(set(chosen)) and all(0 <= i < 60 for i in chosen)
    assert len(choose_for_labelling(embeddings[:4], probabilities[:4], 10, None, strategy)) == 4


def test_typical_choice_covers_groups_nothing_labelled_is_in():
    """Three tight groups; the first already has a labelled image: two picks go to the others."""
    rng = np.random.default_rng(0)
    centres = np.array([[10.0, 0, 0], [0, 10.0, 0], [0, 0, 10.0]])
    points = np.concatenate([centre + rng.normal(scale=0.1, size=(20, 3)) for centre in centres])
    chosen = choose_for_labelling(points, np.full((60, 2), 0.5), 2, centres[:1], "typical")
    assert sorted(index // 20 for index in chosen) == [1, 2]


def test_uncertainty_is_highest_for_a_coin_toss():
    scores = uncertainty(np.array([[0.98, 0.01, 0.01], [0.5, 0.49, 0.01]]))
    assert scores[1] > 0.95 and scores[0] < 0.05
    assert uncertainty(np.array([[0.5, 0.99]]), multi_label=True)[0] == pytest.approx(0.51)
