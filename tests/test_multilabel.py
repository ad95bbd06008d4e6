"""Multi-label data: a CSV of label sets is read as one, split so every label is on both sides,
described by doctor, trained (a network, or the probe), measured, predicted and evaluated; the
steps that do not handle it yet say so in one line."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import imgclf
from conftest import pattern_image
from imgclf.cli.main import main
from imgclf.data.dataset import MULTI_LABEL, SINGLE_LABEL, load_dataset, split_labels
from imgclf.data.split import iterative_split
from imgclf.engine.label_sets import bce_loss, choose_thresholds, label_calibration_error, label_set_metrics
from imgclf.errors import DataError

LABELS = ("left", "right", "top", "bottom")


def write_label_set_csv(root: Path, rows: list[str], column: str = "labels") -> Path:
    """One small image per row of labels (the first label's pattern), listed in ``labels.csv``."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    with (root / "labels.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", column])
        for index, labels in enumerate(rows):
            first = LABELS.index(split_labels(labels)[0]) if labels.strip() else 0
            pattern_image(first, 16, rng).save(root / "images" / f"{index:03d}.png")
            writer.writerow([f"images/{index:03d}.png", labels])
    return root / "labels.csv"


def _label_sets(count: int = 60) -> list[str]:
    rng = np.random.default_rng(1)
    rows = []
    for _ in range(count):
        chosen = [label for label in LABELS if rng.random() < 0.4] or [LABELS[int(rng.integers(4))]]
        rows.append(" ".join(chosen))
    return rows


def test_a_csv_of_label_sets_is_multi_label_with_a_row_of_labels_per_image(tmp_path: Path):
    data = write_label_set_csv(tmp_path, _label_sets())
    dataset = load_dataset(str(data))
    assert dataset.task == MULTI_LABEL and dataset.classes == sorted(LABELS)
    train = dataset.splits["train"]
    assert train.targets.shape == (len(train), 4) and set(np.unique(train.targets)) <= {0, 1}
    for split in dataset.splits.values():  # iterative stratification: every label on every side
        assert (split.targets.sum(axis=0) > 0).all()


def test_a_folder_of_images_beside_its_labels_csv_is_read_from_the_csv(tmp_path: Path):
    """The layout the Planet chips come in: DIR/images/*.jpg and DIR/labels.csv. ``imgclf train
    DIR`` reads the listing (the one subfolder is no class); with two listings the user says which,
    and a folder of class folders stays a folder of class folders whatever CSV sits beside them."""
    write_label_set_csv(tmp_path / "planet", _label_sets())
    for task in (None, MULTI_LABEL):
        dataset = load_dataset(str(tmp_path / "planet"), task=task)
        assert dataset.task == MULTI_LABEL and dataset.classes == sorted(LABELS)
        assert dataset.name.endswith("labels.csv") and sum(len(split) for split in dataset.splits.values()) == 60
    (tmp_path / "planet" / "other.csv").write_text("path,labels\nimages/000.png,left\n")
    with pytest.raises(DataError, match="found 1 class"):
        load_dataset(str(tmp_path / "planet"))
    folders = tmp_path / "folders"
    for label in ("left", "right"):
        (folders / label).mkdir(parents=True)
        for index in range(6):
            pattern_image(LABELS.index(label), 16, np.random.default_rng(index)).save(folders / label / f"{index}.png")
    (folders / "notes.csv").write_text("path,labels\nleft/0.png,right\n")
    assert load_dataset(str(folders)).classes == ["left", "right"]


def test_a_kaggle_listing_of_names_without_suffixes_finds_its_images(tmp_path: Path):
    """Kaggle's Planet layout: ``train_v2.csv`` with ``image_name,tags`` rows naming ``train_0``
    for ``train-jpg/train_0.jpg``. The folder and the CSV both train; a name two images share is
    not guessed (its row says the file was not found)."""
    root = tmp_path / "planet"
    (root / "train-jpg").mkdir(parents=True)
    rows = _label_sets(24)
    for index in range(24):
        first = LABELS.index(rows[index].split()[0])
        pattern_image(first, 16, np.random.default_rng(index)).save(root / "train-jpg" / f"train_{index}.jpg")
    (root / "train_v2.csv").write_text("image_name,tags\n" + "".join(f"train_{i},{rows[i]}\n" for i in range(24)))
    for data in (root, root / "train_v2.csv"):
        dataset = load_dataset(str(data))
        assert dataset.task == MULTI_LABEL and sum(len(split) for split in dataset.splits.values()) == 24
        keys = [key for split in dataset.splits.values() for key in split.keys]
        assert all(key.startswith("train-jpg/train_") and key.endswith(".jpg") for key in keys), keys[:3]
    pattern_image(0, 16, np.random.default_rng(0)).save(root / "train_0.png")  # a second train_0
    keys = [key for split in load_dataset(str(root)).splits.values() for key in split.keys]
    assert "train_0" in keys


def test_one_label_per_row_stays_single_label_and_a_label_column_keeps_its_spaces(tmp_path: Path):
    single = load_dataset(str(write_label_set_csv(tmp_path / "one", ["left", "right"] * 12)))
    assert single.task == SINGLE_LABEL and single.splits["train"].targets.ndim == 1
    spaced = write_label_set_csv(tmp_path / "spaced", ["left right", "top bottom"] * 12, column="label")
    dataset = load_dataset(str(spaced))
    assert dataset.task == SINGLE_LABEL and dataset.classes == ["left right", "top bottom"]
    forced = load_dataset(str(spaced), task=MULTI_LABEL)
    assert forced.task == MULTI_LABEL and forced.classes == sorted(LABELS)


def test_labels_split_on_semicolons_or_spaces_and_an_empty_cell_is_no_label(tmp_path: Path):
    assert split_labels("golden retriever; dog ;dog") == ["golden retriever", "dog"]
    assert split_labels("clear  primary road") == ["clear", "primary", "road"]
    rows = _label_sets() + ["", ""]
    dataset = load_dataset(str(write_label_set_csv(tmp_path, rows)))
    empty = sum(int(split.targets.sum(axis=1).tolist().count(0)) for split in dataset.splits.values())
    assert empty == 2


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_iterative_split_gives_each_split_its_share_of_every_label(seed: int):
    rng = np.random.default_rng(seed)
    targets = (rng.random((400, 6)) < np.array([0.9, 0.5, 0.2, 0.05, 0.02, 0.01])).astype(np.uint8)
    parts = iterative_split(targets, {"val": 0.1, "test": 0.1}, seed)
    assert sorted(np.concatenate(list(parts.values())).tolist()) == list(range(400))  # each image once
    totals = targets.sum(axis=0)
    for name, share in (("train", 0.8), ("val", 0.1), ("test", 0.1)):
        got = targets[parts[name]].sum(axis=0)
        assert np.all(np.abs(got - share * totals) <= np.maximum(2, 0.15 * share * totals)), (name, got, totals)
        assert np.all(got[totals >= 3] >= 1)  # a label on 3+ images is on every side
    again = iterative_split(targets, {"val": 0.1, "test": 0.1}, seed)
    assert all(np.array_equal(parts[name], again[name]) for name in parts)


def test_doctor_describes_label_sets_and_warns_of_labels_too_rare(tmp_path: Path, capsys):
    rows = _label_sets() + ["left rare", "top rare"]
    data = write_label_set_csv(tmp_path, rows)
    assert main(["doctor", str(data), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["task"] == MULTI_LABEL and "rare" in report["classes"]
    facts = report["multi_label"]
    assert facts["labels_per_image"]["max"] >= 2 and facts["co_occurrence"]
    assert any(item["label"] == "rare" and item["train"] < 5 for item in facts["rare"])
    assert any("'rare' is on" in warning for warning in report["warnings"])
    assert all("labels" in row and "class" not in row for row in report["files"])
    assert main(["doctor", str(data)]) == 0
    shown = capsys.readouterr().out
    assert "multi-label, 5 labels" in shown and "most frequent together" in shown


BARS = {
    "top": (slice(0, 6), slice(None)),
    "bottom": (slice(18, 24), slice(None)),
    "middle": (slice(9, 15), slice(None)),
    "column": (slice(None), slice(9, 15)),
}  # each survives a mirror


def bars_image(labels: list[str], rng: np.random.Generator) -> Image.Image:
    """24 px, noise with a bright bar for each label (top, bottom and middle rows, a centre
    column): any set of the four, none included, can be drawn, a small network learns each bar on
    its own, and a left-right mirror keeps every label (as flip augmentation assumes)."""
    pixels = rng.integers(0, 70, size=(24, 24, 3), dtype=np.uint8)
    for label in labels:
        region = BARS[label]
        pixels[region] = np.clip(pixels[region].astype(int) + 170, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def write_bars_csv(root: Path, count: int, seed: int = 0) -> Path:
    """``count`` images of random bar sets (each bar on 40% of them) in ``labels.csv``, split
    train 70% / val 30% by the CSV's split column."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    with (root / "labels.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "labels", "split"])
        for index in range(count):
            labels = [name for name in BARS if rng.random() < 0.4]
            bars_image(labels, rng).save(root / "images" / f"{index:03d}.png")
            writer.writerow([f"images/{index:03d}.png", ";".join(labels), "train" if index % 10 < 7 else "val"])
    return root / "labels.csv"


@pytest.fixture(scope="module")
def bars(tmp_path_factory) -> Path:
    return write_bars_csv(tmp_path_factory.mktemp("bars"), 240)


@pytest.fixture(scope="module")
def scratch_bundle(bars, tmp_path_factory) -> tuple[Path, dict]:
    output = tmp_path_factory.mktemp("runs") / "scratch"
    code = main(
        [
            "train",
            str(bars),
            "--model",
            "simple_cnn",
            "--epochs",
            "15",
            "--batch-size",
            "16",
            "--output",
            str(output),
            "--json",
        ]
    )
    assert code == 0
    return output, json.loads((output / "metrics.json").read_text())


def test_a_network_trained_on_label_sets_learns_each_label_and_says_how_it_chose(scratch_bundle):
    output, metrics = scratch_bundle
    model = json.loads((output / "model.json").read_text())
    assert model["task"] == MULTI_LABEL and model["classes"] == sorted(BARS)
    calibration = model["calibration"]
    assert len(calibration["thresholds"]) == 4 and len(calibration["temperatures"]) == 4
    assert 0.0 <= calibration["val_ece_after"] <= 1.0 and 0.0 <= calibration["val_ece_before"] <= 1.0
    assert calibration["thresholds_chosen_on"] == "val"  # a trained network: val chose, and says so
    val = metrics["val"]
    for key in ("macro_f1", "micro_f1", "map", "exact_match", "hamming_loss"):
        assert 0.0 <= val[key] <= 1.0
    # Data seeds 0-4 (240 images, 15 epochs): macro-F1 and mAP 1.00 each time.
    assert val["macro_f1"] >= 0.85 and val["map"] >= 0.9
    assert set(val["per_class"]["top"]) >= {"precision", "recall", "f1", "average_precision", "support"}
    report = (output / "report.html").read_text()
    assert "Per-label metrics" in report and "macro-F1" in report


def test_predict_gives_each_image_its_label_set_and_every_probability(scratch_bundle, tmp_path, capsys):
    output, _ = scratch_bundle
    rng = np.random.default_rng(7)
    sets = [["column", "top"], ["middle"], ["bottom", "column", "top"], []]
    paths = []
    for index, labels in enumerate(sets):
        paths.append(tmp_path / f"new{index}.png")
        bars_image(labels, rng).save(paths[-1])
    assert main(["predict", str(output), *map(str, paths), "--json", "--no-abstain"]) == 0
    answers = json.loads(capsys.readouterr().out)
    assert [sorted(answer["labels"]) for answer in answers] == [sorted(labels) for labels in sets]
    for answer in answers:
        assert set(answer["probabilities"]) == set(BARS)
        chosen = [answer["probabilities"][label] for label in answer["labels"]]
        assert chosen == sorted(chosen, reverse=True)  # most probable first
    classifier = imgclf.load(output, abstain=False)
    assert sorted(classifier.predict([paths[0]])[0]["labels"]) == ["column", "top"]
    assert classifier.predict_proba([paths[0]]).shape == (1, 4)


def test_evaluate_scores_a_label_set_bundle_as_training_did(scratch_bundle, bars, capsys):
    output, metrics = scratch_bundle
    assert main(["evaluate", str(output), str(bars), "--split", "val", "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    for key in ("macro_f1", "micro_f1", "map", "exact_match", "hamming_loss"):
        assert evaluated[key] == pytest.approx(metrics["val"][key], abs=1e-6)
    assert main(["evaluate", str(output), str(bars), "--split", "val"]) == 0
    shown = capsys.readouterr().out
    assert "macro-F1" in shown and "threshold" in shown


def test_the_probe_on_label_sets_chooses_c_and_thresholds_on_the_training_images(bars, tmp_path, monkeypatch):
    monkeypatch.setenv("IMGCLF_CACHE_DIR", str(tmp_path / "cache"))
    output = tmp_path / "probe"
    code = main(["train", str(bars), "--model", "efficientnet_lite0", "--pretrained", "--finetune", "linear-probe",
                 "--input-size", "64", "--output", str(output)])  # fmt: skip
    assert code == 0
    model = json.loads((output / "model.json").read_text())
    assert model["calibration"]["thresholds_chosen_on"] == "cross-validation on train"
    metrics = json.loads((output / "metrics.json").read_text())
    probe = metrics["history"][0]
    assert len(probe["probe_label_c"]) == 4 and probe["probe_folds"] == 5
    # Data seeds 0-4: macro-F1 0.98-1.00 and mAP 0.96-1.00 on val; val chose nothing, and the summary says so.
    assert metrics["val"]["macro_f1"] >= 0.75 and metrics["val"]["map"] >= 0.75
    assert metrics["summary"]["val_chose"] == ""
    from sklearn.datasets import load_sample_image

    photo = load_sample_image("china.jpg")  # a temple: unlike every label's training images
    (answer,) = imgclf.load(output).predict([photo])
    assert answer["labels"] == [] and "unlike the training images of every label" in answer["abstained"]


def test_label_set_metrics_and_thresholds_on_known_logits():
    labels = ["a", "b"]
    targets = torch.tensor([[1, 0], [1, 1], [0, 1], [0, 0]], dtype=torch.float32)
    logits = torch.tensor([[2.0, -1.0], [1.0, -0.5], [-1.0, 3.0], [0.5, -2.0]])
    metrics = label_set_metrics(logits, targets, labels)  # at p = 0.5: a on rows 0, 1, 3; b on row 2
    assert metrics["per_class"]["a"] == pytest.approx({"precision": 2 / 3, "recall": 1.0, "f1": 0.8,
                                                       "average_precision": 1.0, "support": 2})  # fmt: skip
    assert metrics["per_class"]["b"]["recall"] == 0.5 and metrics["exact_match"] == 0.5
    assert metrics["hamming_loss"] == pytest.approx(2 / 8) and metrics["accuracy"] == pytest.approx(6 / 8)
    assert metrics["map"] == pytest.approx((1.0 + 1.0) / 2)
    assert metrics["error_pairs"] == []  # a missed on row 1 and invented on row 3: never on one image
    swapped = label_set_metrics(torch.tensor([[1.0, -1.0]]), torch.tensor([[0.0, 1.0]]), labels)
    assert swapped["error_pairs"] == [{"missed": "b", "given_instead": "a", "images": 1}]
    # The F1-best threshold of b lies between its positives' scores and the best negative's.
    scores = torch.tensor([[0.9, 0.8], [0.8, 0.35], [0.2, 0.9], [0.3, 0.1], [0.6, 0.3], [0.7, 0.6]])
    truth = torch.tensor([[1, 1], [1, 1], [0, 1], [0, 0], [1, 0], [1, 1]], dtype=torch.float32)
    thresholds = choose_thresholds(scores, truth)
    assert thresholds[1] == pytest.approx((0.35 + 0.3) / 2) and thresholds[0] == pytest.approx((0.6 + 0.3) / 2)
    assert choose_thresholds(scores[:2], truth[:2]) == [0.5, 0.5]  # too few positives to choose
    half = torch.full((4, 2), 0.5)  # p = 0.5 where half the images carry the label: calibrated
    assert label_calibration_error(half, targets) == 0.0
    assert label_calibration_error(torch.ones(4, 2), torch.zeros(4, 2)) == 1.0


def test_the_onnx_export_carries_sigmoids_and_thresholds_and_answers_as_the_bundle(scratch_bundle, bars, tmp_path,
                                                                                   capsys):  # fmt: skip
    from imgclf.engines import OnnxEngine

    output, _ = scratch_bundle
    target = tmp_path / "model.onnx"
    assert main(["export", str(output), "--data", str(bars), "--output", str(target), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["parity"]["top1_agreement"] == 1.0  # every validation image: the same label set
    engine = OnnxEngine(target)
    model = json.loads((output / "model.json").read_text())
    assert engine.task == MULTI_LABEL and engine.thresholds == model["calibration"]["thresholds"]
    rng = np.random.default_rng(11)
    sets = [["column", "top"], [], ["middle", "bottom"]]
    images = [np.asarray(bars_image(labels, rng)) for labels in sets]
    answers = engine.predict(images, top_k=4)
    bundle_answers = imgclf.load(output).predict([Image.fromarray(image) for image in images], top_k=4)
    for answer, expected, labels in zip(answers, bundle_answers, sets):
        assert sorted(answer["labels"]) == sorted(expected["labels"]) == sorted(labels)
        for label, probability in expected["probabilities"].items():
            assert answer["probabilities"][label] == pytest.approx(probability, abs=1e-3)


def test_explain_draws_a_grad_cam_for_each_label_given(scratch_bundle, tmp_path, capsys):
    output, _ = scratch_bundle
    rng = np.random.default_rng(3)
    bars_image(["column", "bottom"], rng).save(tmp_path / "two.png")
    bars_image(["middle"], rng).save(tmp_path / "one.png")
    paths = [str(tmp_path / "two.png"), str(tmp_path / "one.png")]
    assert main(["explain", str(output), *paths, "--output", str(tmp_path / "cams"), "--json"]) == 0
    two, one = json.loads(capsys.readouterr().out)
    assert sorted(two["labels"]) == ["bottom", "column"] and one["labels"] == ["middle"]
    with Image.open(two["output"]) as stacked, Image.open(one["output"]) as single:
        assert stacked.height == 2 * single.height  # one row of pictures per label given


def test_doctor_labels_finds_missing_and_wrong_labels_in_label_sets(tmp_path, capsys):
    """Six images whose label sets were damaged (a bar's label dropped, a label for no bar added)
    come first, each with the dropped label as likely missing and the added one as likely wrong."""
    data = write_bars_csv(tmp_path / "data", 200)
    rows = list(csv.reader(data.open()))
    damaged = {}
    for row in rows[1:]:
        labels = row[1].split(";") if row[1] else []
        absent = [name for name in BARS if name not in labels]
        if row[2] == "train" and len(labels) == 2 and absent and len(damaged) < 6:
            damaged[row[0]] = (labels[0], absent[0])  # (dropped, added)
            row[1] = ";".join([*labels[1:], absent[0]])
    with data.open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    assert main(["doctor", str(data), "--labels", "--output", str(tmp_path / "check"), "--json"]) == 0
    issues = json.loads(capsys.readouterr().out)["label_issues"]["issues"]
    top = {Path(row["file"]).name: row for row in issues[:12]}
    found = [name for name in damaged if Path(name).name in top]
    assert len(found) >= 5, [row["file"] for row in issues[:12]]  # data seeds 0-4: all 6, each time
    for name in found:
        dropped, added = damaged[name]
        row = top[Path(name).name]
        assert dropped in row["likely_missing"] and added in row["likely_wrong"]
    assert (tmp_path / "check" / "label_issues.html").is_file()


def test_the_advisor_measures_and_recommends_on_label_sets(bars, capsys):
    code = main(["advise", str(bars), "--models", "simple_cnn,lenet5", "--time-budget", "30s", "--json"])
    advice = json.loads(capsys.readouterr().out)
    assert code == 0 and advice["recommended"] in ("simple_cnn", "lenet5")
    probed = [row for row in advice["candidates"] if row.get("probe_accuracy") is not None]
    assert probed and all(0.0 <= row["probe_accuracy"] <= 1.0 for row in probed)  # the share of labels right


def test_training_with_no_flags_on_label_sets_gives_a_label_set_bundle(bars, tmp_path, capsys):
    """No --model: the default small network, trained with binary cross-entropy (mixup on too)."""
    output = tmp_path / "plain"
    assert main(["train", str(bars), "--output", str(output), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["metrics"]["val_macro_f1"] >= 0.85  # data seeds 0-4: 1.00 each time
    mixed = tmp_path / "mixed"
    assert main(["train", str(bars), "--augment", "translate+mixup", "--epochs", "3", "--label-smoothing", "0.1",
                 "--output", str(mixed)]) == 0  # fmt: skip
    assert json.loads((mixed / "model.json").read_text())["task"] == MULTI_LABEL


def test_label_smoothing_and_mixing_act_on_each_label():
    """Smoothing moves each 0/1 toward 0.5; the loss of a mixed batch (lam on one row of labels,
    1 - lam on the other) equals the loss of the mixed row, so mixup gives label sets their shares."""
    logits = torch.tensor([[2.0, -1.0, 0.5]])
    first, second = torch.tensor([[1.0, 0.0, 1.0]]), torch.tensor([[0.0, 0.0, 1.0]])
    smoothed = bce_loss(first, smoothing=0.2, balanced=False, device="cpu")
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.tensor([[0.9, 0.1, 0.9]]))
    assert smoothed(logits, first) == pytest.approx(float(expected))
    plain, lam = bce_loss(first, 0.0, False, "cpu"), 0.3
    mixed_row = lam * first + (1 - lam) * second
    assert float(lam * plain(logits, first) + (1 - lam) * plain(logits, second)) == pytest.approx(
        float(plain(logits, mixed_row)))  # fmt: skip
    targets = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 1.0]])
    balanced = bce_loss(targets, 0.0, True, "cpu")  # label 0: 3 negatives per positive
    assert balanced.pos_weight.tolist() == [3.0, 3.0]


def test_json_lines_list_label_sets_as_a_csv_does(tmp_path: Path):
    """``labels.jsonl``: one object per line, labels as a list (or a cell like the CSV's), the
    split optional; the same dataset as the CSV of the same rows; a broken line is named."""
    csv_file = write_bars_csv(tmp_path, 60)
    rows = list(csv.DictReader(csv_file.open()))
    lines = [json.dumps({"path": row["path"], "labels": row["labels"].split(";") if row["labels"] else [],
                         "split": row["split"]}) for row in rows]  # fmt: skip
    (tmp_path / "labels.jsonl").write_text("\n".join(lines) + "\n")
    from_csv, from_json = load_dataset(str(csv_file)), load_dataset(str(tmp_path / "labels.jsonl"))
    assert from_json.task == MULTI_LABEL and from_json.classes == from_csv.classes
    for split in ("train", "val"):
        assert from_json.splits[split].keys == from_csv.splits[split].keys
        assert (from_json.splits[split].targets == from_csv.splits[split].targets).all()
    (tmp_path / "broken.jsonl").write_text(lines[0] + "\n{not json\n")
    with pytest.raises(DataError, match=r"broken.jsonl: line 2 is not JSON"):
        load_dataset(str(tmp_path / "broken.jsonl"))
