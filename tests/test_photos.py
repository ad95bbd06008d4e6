"""A folder of the user's own photos (only train/ and val/, 300 px, a few dozen per class) on
every path a newcomer takes: no flags, a time budget, each fine-tuning mode, the advisor, and
folders of two images per class or one."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_sample_images

from imgclf.cli.launch import ALLOCATOR_TUNABLES, wants_tuned_allocator
from imgclf.cli.main import main
from imgclf.config import TrainConfig
from imgclf.data.augment import Augmentation
from imgclf.data.batches import TensorBatches
from imgclf.data.prepare import Preprocess, TensorSplit
from imgclf.engine.budget import measure_train_speed
from imgclf.engine.plan import training_batch
from imgclf.engine.probe import fit_linear_probe
from imgclf.engine.recipe import trial_setup
from imgclf.models import create_model

CLASSES = ("temple", "flower")


def _write_photos(root: Path, per_class: dict[str, int], seed: int = 0, size: int = 300,
                  saved_size: int | None = None) -> Path:  # fmt: skip
    """Random 300 px crops of scikit-learn's two sample photos (a temple, a flower), as JPEGs in
    ``root/<split>/<class>/`` (``saved_size``: shrunk to that, as thumbnails): real photographs,
    made at test time."""
    rng = np.random.default_rng(seed)
    photos = dict(zip(CLASSES, load_sample_images().images))
    for split, count in per_class.items():
        for name, pixels in photos.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            height, width = pixels.shape[:2]
            for index in range(count):
                y, x = int(rng.integers(0, height - size)), int(rng.integers(0, width - size))
                crop = Image.fromarray(pixels[y : y + size, x : x + size])
                if saved_size is not None:
                    crop = crop.resize((saved_size, saved_size), Image.Resampling.LANCZOS)
                crop.save(folder / f"{index:02d}.jpg", quality=90)
    return root


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """train/ 16 and val/ 6 photos per class."""
    return _write_photos(tmp_path_factory.mktemp("own") / "photos", {"train": 16, "val": 6})


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("IMGCLF_CACHE_DIR", str(tmp_path / "cache"))


def _train(arguments: list[str], capsys) -> tuple[int, dict, str]:
    code = main(["train", *arguments, "--json"])
    captured = capsys.readouterr()
    return code, json.loads(captured.out) if code == 0 else {}, captured.err


def test_no_flags_on_photos_trains_a_probe_on_imagenet_features_and_says_why(photos, tmp_path, capsys):
    output = tmp_path / "bundle"
    code, result, log = _train([str(photos), "--output", str(output)], capsys)
    assert code == 0, log
    assert result["model"].startswith("efficientnet_lite")
    # Crops of two unrelated photos (a temple, a flower) lie far apart in any ImageNet feature
    # space: any correct probe separates them, on any CPU.
    assert result["metrics"]["val_accuracy"] >= 0.9
    assert result["metrics"]["val_chose"] == ""  # C was chosen by cross-validation on train
    assert "nothing was chosen on it" in log
    description = json.loads((output / "model.json").read_text())
    advice = description["advisor"]
    assert advice["pretrained"] and advice["train_options"]["finetune"] == "anytime"
    assert advice["train_command"].startswith(f"imgclf train {photos} --model {result['model']} --pretrained")
    assert any("natural photos" in reason for reason in advice["reasons"])
    assert description["pretrained"]["finetune"] == "anytime"
    # The probe separates these crops in cross-validation and on validation: nothing left to gain.
    assert description["kept"]["kept"] == "probe" and "fine-tuning skipped" in description["kept"]["why"]
    assert "kept: the linear probe" in log
    report = (output / "report.html").read_text()
    assert "probe accuracy against C" in report and "No per-epoch history" not in report


def test_small_photos_are_embedded_at_four_times_their_size_not_the_imagenet_size(tmp_path, capsys):
    """40 px thumbnails: 160 px holds all there is to see, at 38% of the pixels of 260 px."""
    photos = _write_photos(tmp_path / "thumbnails", {"train": 12, "val": 4}, size=200, saved_size=40)
    output = tmp_path / "bundle"
    # The budget bounds the test where a probe short of 0.99 in cross-validation fine-tunes.
    code, result, log = _train([str(photos), "--time-budget", "30s", "--output", str(output)], capsys)
    assert code == 0, log
    description = json.loads((output / "model.json").read_text())
    assert description["preprocess"]["input_size"] == 160
    assert "--input-size 160" in description["advisor"]["train_command"]
    assert any("160 px input" in reason for reason in description["advisor"]["reasons"])
    assert result["metrics"]["val_accuracy"] >= 0.75  # 8 validation thumbnails of two unrelated photos


def test_the_input_size_for_photos_enlarges_small_ones_at_most_four_times():
    from imgclf.advise.photos import input_size_for

    assert [input_size_for("efficientnet_lite2", size) for size in (16, 32, 40, 64, 65, 300)] == [
        128, 128, 160, 256, 260, 260]  # fmt: skip
    assert input_size_for("efficientnet_lite0", 32) == 128 and input_size_for("efficientnet_lite0", 60) == 224


@pytest.mark.slow  # the advisor's own probe test below stays in the default suite
def test_the_advisors_train_command_reproduces_the_run(photos, tmp_path, capsys):
    code, first, log = _train([str(photos), "--output", str(tmp_path / "first")], capsys)
    assert code == 0, log
    command = json.loads((tmp_path / "first" / "model.json").read_text())["advisor"]["train_command"]
    arguments = command.split()[2:]  # after "imgclf train"
    code, second, log = _train([*arguments, "--output", str(tmp_path / "second")], capsys)
    assert code == 0, log
    assert second["model"] == first["model"] and second["metrics"] == first["metrics"]


@pytest.mark.parametrize("budget", [pytest.param("1m", marks=pytest.mark.slow), "3m"])
def test_a_time_budget_without_a_model_on_photos_trains_the_probe(photos, tmp_path, capsys, budget):
    code, result, log = _train([str(photos), "--time-budget", budget, "--output", str(tmp_path / "b")], capsys)
    assert code == 0, log
    assert result["model"].startswith("efficientnet_lite") and result["metrics"]["val_accuracy"] >= 0.9
    assert result["time_budget"]["used_s"] > 0


@pytest.mark.parametrize("mode", ["full", "head", "two-stage", "linear-probe"])
def test_every_finetune_mode_runs_on_a_small_photo_folder(photos, tmp_path, capsys, mode):
    """The default batch (128) is larger than the 32 training photos: it shrinks to them."""
    arguments = [str(photos), "--model", "efficientnet_lite0", "--pretrained", "--finetune", mode,
                 "--input-size", "96", "--output", str(tmp_path / mode)]  # fmt: skip
    if mode != "linear-probe":
        arguments += ["--epochs", "2"]
    code, result, log = _train(arguments, capsys)
    assert code == 0, log
    assert result["epochs"] >= 1
    if mode != "linear-probe":
        assert "batch: 32" in log


def test_the_advisor_recommends_the_mode_its_probe_measured(photos, capsys):
    code = main(["advise", str(photos), "--models", "simple_cnn,efficientnet_lite0", "--time-budget", "1m", "--json"])
    advice = json.loads(capsys.readouterr().out)
    assert code == 0 and advice["recommended"] == "efficientnet_lite0" and advice["pretrained"]
    assert advice["train_options"]["finetune"] == "linear-probe"
    assert "--finetune linear-probe" in advice["train_command"]


@pytest.mark.slow  # trains twice; one image per class (a fast test) covers the smallest folders by default
def test_two_photos_per_class_train_with_and_without_a_budget(tmp_path, capsys):
    tiny = _write_photos(tmp_path / "tiny", {"train": 2}, seed=1)
    code, result, log = _train([str(tiny), "--output", str(tmp_path / "a")], capsys)
    assert code == 0, log
    # Budgets short enough for a test: a run from scratch fills its budget.
    code, result, log = _train([str(tiny), "--time-budget", "15s", "--output", str(tmp_path / "b")], capsys)
    assert code == 0, log
    code, result, log = _train([str(tiny), "--model", "simple_cnn", "--time-budget", "8s", "--input-size", "32",
                                "--output", str(tmp_path / "c")], capsys)  # fmt: skip
    assert code == 0, log


def test_one_photo_per_class_is_a_clear_error(tmp_path, capsys):
    single = _write_photos(tmp_path / "single", {"train": 1}, seed=2)
    code = main(["train", str(single), "--output", str(tmp_path / "out")])
    error = capsys.readouterr().err
    assert code == 2 and "no validation images" in error and "at least 2" in error
    assert "Traceback" not in error


def test_training_batch_never_exceeds_the_data_and_drops_little():
    assert training_batch(128, 245) == (128, False)  # 117 left over: kept as a second step
    assert training_batch(128, 40) == (40, False)
    assert training_batch(128, 129) == (128, True)  # one image left: batch norm cannot train on it
    assert training_batch(32, 330) == (32, True)  # 10 of 330 (3%): dropped, reshuffled each epoch
    assert training_batch(128, 1_000, processes=4) == (128, False)  # 250 each: 122 left over is kept
    assert training_batch(64, 2) == (2, False)


def test_training_speed_is_measured_on_a_set_of_one_batch():
    images = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8)
    split = TensorSplit(images, torch.tensor([0, 1, 0, 1, 0, 1]), [str(i) for i in range(6)])
    model = create_model("simple_cnn", num_classes=2, in_chans=3, input_size=16)
    batches = TensorBatches(split, 6)
    setup = trial_setup(TrainConfig(batch_size=6), model, Preprocess.unnormalized(16, 3), Augmentation(),
                        split.targets, 2, torch.device("cpu"), len(batches))  # fmt: skip
    speed = measure_train_speed(setup, batches, 0.05)
    assert speed > 0


def test_training_speed_leaves_the_slow_first_steps_out(monkeypatch):
    """The first steps of a run are slower (allocation, kernel choice): the speed a budget is
    planned on is that of the steps after them. Steps made to take 0.5, 0.3, then 0.1 s: 6 images
    a step, 60 images/s (timing from the second step on said 33)."""
    import imgclf.engine.budget as budget

    durations = iter([0.5, 0.3] + [0.1] * 50)

    def step(setup, images, targets):
        time.sleep(next(durations))
        return None, None, targets

    monkeypatch.setattr(budget, "training_step", step)
    images = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8)
    split = TensorSplit(images, torch.tensor([0, 1, 0, 1, 0, 1]), [str(i) for i in range(6)])
    model = create_model("simple_cnn", num_classes=2, in_chans=3, input_size=16)
    setup = trial_setup(TrainConfig(batch_size=6), model, Preprocess.unnormalized(16, 3), Augmentation(),
                        split.targets, 2, torch.device("cpu"), 1)  # fmt: skip
    speed = measure_train_speed(setup, TensorBatches(split, 6), 0.25)
    assert 40 < speed <= 60  # a sleep never ends early; a busy machine only lowers it


def test_probe_regularization_is_chosen_by_cross_validation_on_train():
    rng = np.random.default_rng(0)
    targets = torch.tensor(np.repeat([0, 1, 2], 20))
    centres = rng.normal(size=(3, 16)) * 3
    features = torch.tensor(centres[targets.numpy()] + rng.normal(size=(60, 16)), dtype=torch.float32)
    val = (features[::3] + 0.1, targets[::3])
    probe = fit_linear_probe((features, targets), val, num_classes=3, train_flipped=features + 0.05)
    assert probe.chosen_on == "cross-validation" and probe.cv_accuracy is not None
    assert {row["flipped_views"] for row in probe.scores} == {False, True}
    assert probe.val_accuracy == 1.0  # three clusters 3 standard deviations apart
    # A class with a single training image leaves only the validation split to choose on.
    single = fit_linear_probe((features[:41], targets[:41]), val, num_classes=3)
    assert single.chosen_on == "validation" and single.cv_accuracy is None


def test_the_allocator_settings_apply_to_computing_commands_only():
    environ: dict[str, str] = {}
    on_glibc = __import__("platform").libc_ver()[0] == "glibc" and __import__("sys").platform == "linux"
    assert wants_tuned_allocator(["train", "photos/"], environ) is on_glibc
    assert wants_tuned_allocator(["predict", "bundle", "photos/"], environ) is on_glibc
    assert not wants_tuned_allocator(["serve", "bundle"], environ)
    assert not wants_tuned_allocator(["predict", "model.onnx", "photos/", "--output", "rows.parquet"], environ)
    assert not wants_tuned_allocator(["train", "photos/"], {"IMGCLF_MALLOC": "system"})
    assert not wants_tuned_allocator(["train", "photos/"], {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})
    assert "mmap_threshold" in ALLOCATOR_TUNABLES and "trim_threshold" in ALLOCATOR_TUNABLES


def test_the_speed_trial_of_a_two_stage_run_trains_the_backbone_as_its_epochs_will():
    """Two-stage's first stage is a linear probe (no steps): timing it would plan a budget from
    head-only steps, several times faster than the epochs that follow."""
    model = create_model("simple_cnn", num_classes=2, in_chans=3, input_size=16)
    config = TrainConfig(model="simple_cnn", pretrained="default", finetune="two-stage", batch_size=6)
    setup = trial_setup(config, model, Preprocess.unnormalized(16, 3), Augmentation(), torch.tensor([0, 1] * 3), 2,
                        torch.device("cpu"), 1)  # fmt: skip
    backbone = [p for module in setup.runtime.model.group_modules()["stages"] for p in module.parameters()]
    assert backbone and all(p.requires_grad for p in backbone)
    assert setup.recipe.scheduler.lr_lambdas[0].total_steps >= 1


def test_a_tight_budget_still_probes_with_the_cheapest_backbone(monkeypatch):
    """Where even Lite0's passes take more than the usual share of the time but still fit, the
    probe is planned anyway (saying the time is tight): training from scratch instead is far
    worse on a hundred photos a class. Speeds are stand-ins: 100 images/s for every backbone."""
    from imgclf.advise import photos
    from imgclf.advise.facts import DataFacts

    monkeypatch.setattr(photos, "pretrained_available", lambda name: True)
    monkeypatch.setattr(photos, "_forward_speed", lambda name, device, size: 100.0)
    facts = DataFacts("cifar", 1_000, 10, [100] * 10, 32, 3, photos=True)
    cpu = torch.device("cpu")
    # 58 s left: 60% is 34.8 s, 80% is 46.4 s; 3,500 passes take 35 s, 5,000 take 50 s.
    tight = photos.plan_photo_transfer(facts, {"train": 1_000, "val": 500, "test": 2_000}, 60.0, 2.0, False, cpu)
    assert tight is not None and tight.model == "efficientnet_lite0"
    assert "the time is tight" in " ".join(tight.reasons)
    roomy = photos.plan_photo_transfer(facts, {"train": 1_000, "val": 500, "test": 1_000}, 60.0, 2.0, False, cpu)
    assert roomy is not None and not any("tight" in reason for reason in roomy.reasons)
    assert photos.plan_photo_transfer(facts, {"train": 1_000, "val": 500, "test": 3_500}, 60.0, 2.0, False, cpu) is None


def test_where_not_all_photos_fit_the_probe_takes_the_most_a_class_that_do(monkeypatch):
    """10,000 training photos at 100 images/s do not fit a minute; the probe then learns from the
    most photos a class whose passes (with the validation split capped as --max-train-per-class
    caps it) fit the usual share, rather than the run training a network from scratch."""
    from imgclf.advise import photos
    from imgclf.advise.facts import DataFacts

    monkeypatch.setattr(photos, "pretrained_available", lambda name: True)
    monkeypatch.setattr(photos, "_forward_speed", lambda name, device, size: 100.0)
    facts = DataFacts("many", 10_000, 10, [1_000] * 10, 224, 3, photos=True)
    cpu = torch.device("cpu")
    # 58 s left, 60% of it 34.8 s: 3,480 passes. A cap of 298 a class: 2,980 training photos and
    # 500 validation ones (at least 50 a class) = 3,480; 299 is one pass a class too many.
    plan = photos.plan_photo_transfer(facts, {"train": 10_000, "val": 1_000}, 60.0, 2.0, True, cpu, val_fraction=0.1)
    assert plan is not None and plan.model == "efficientnet_lite0" and plan.train_per_class == 298
    assert not plan.mirror_views and "learns from 298 training photos a class" in " ".join(plan.reasons)
    # Not even 20 a class beside a large test split: no probe.
    assert photos.plan_photo_transfer(facts, {"train": 10_000, "val": 1_000, "test": 3_000}, 60.0, 2.0, False,
                                      cpu) is None  # fmt: skip
