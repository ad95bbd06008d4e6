"""Accuracy that grows with time and never falls below the probe: monotonic schedules after a
re-plan, divergence rolled back at a lower rate, the anytime plan and the better-of-two choice."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_sample_images
from torch import nn

from imgclf.cli.main import main
from imgclf.data.augment import Augmentation
from imgclf.data.batches import make_batches
from imgclf.data.prepare import Preprocess, TensorSplit
from imgclf.engine.budget import plan_epochs
from imgclf.engine.loop import ROLLBACK_LR_FACTOR, FitSetup, Recipe, Runtime, diverged, fit
from imgclf.engine.observers import NullObserver
from imgclf.engine.optim import create_optimizer, create_schedule, stretch_schedule
from imgclf.models import create_model
from imgclf.runners.train.stages import MIN_FINETUNE_EPOCHS, probe_is_saturated, too_few_epochs


def _learning_rates(total: int, stretch_at: int, stretch_to: int) -> list[float]:
    parameter = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=0.1)
    scheduler = create_schedule(optimizer, total, "onecycle", 0.25)
    rates, steps = [], total
    for step in range(10 * total):
        if step == stretch_at:
            stretch_schedule(scheduler, stretch_to)
            steps = stretch_to
        if step >= steps:
            break
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def _never_rises_after_peak(rates: list[float]) -> bool:
    peak = int(np.argmax(rates))
    return all(later <= earlier + 1e-12 for earlier, later in zip(rates[peak:], rates[peak + 1 :]))


@pytest.mark.parametrize(("stretch_at", "stretch_to"), [(40, 200), (40, 60), (60, 61), (10, 200), (10, 30)])
def test_a_replanned_schedule_never_rises_after_its_peak(stretch_at, stretch_to):
    """Lengthened or shortened, after or inside the warm-up: one peak, then a decay to about 0."""
    rates = _learning_rates(100, stretch_at, stretch_to)
    assert len(rates) == stretch_to
    assert _never_rises_after_peak(rates)
    assert max(rates) <= 0.1 + 1e-12
    if stretch_to - stretch_at >= 10:  # room left to decay: it ends near 0
        assert rates[-1] < 0.01 * max(rates)


def _separable_problem(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (64, 1, 8, 8), dtype=torch.uint8, generator=generator)
    targets = (images.float().mean(dim=(1, 2, 3)) > 127.5).long()
    split = TensorSplit(images, targets, [str(i) for i in range(len(targets))])
    return make_batches(split, 16, shuffle=True, seed=seed, workers=0), make_batches(split, 64, workers=0)


def _setup(model: nn.Module, lr: float, steps: int, schedule: str = "constant") -> FitSetup:
    optimizer = create_optimizer(model, "sgd", lr, 0.0)
    warmup = 0.25 if schedule == "onecycle" else 0.0
    recipe = Recipe(optimizer, create_schedule(optimizer, steps, schedule, warmup), nn.CrossEntropyLoss(),
                    Augmentation())  # fmt: skip
    runtime = Runtime(model, Preprocess(8, 1, (0.5,), (0.25,)), torch.device("cpu"), torch.Generator().manual_seed(0))
    return FitSetup(recipe, runtime)


def test_an_epoch_that_diverges_is_rolled_back_to_the_last_good_weights_at_a_lower_rate():
    torch.manual_seed(0)
    model = create_model("simple_cnn", num_classes=2, in_chans=1, input_size=8)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    train, val = _separable_problem()
    setup = _setup(model, 1e6, 5 * len(train))  # far too high: the loss explodes in the first epoch
    state = fit(setup, train, val, 5, ["dark", "light"], NullObserver())
    first = state.history[0]
    assert first["diverged"] and first["lr_after"] == pytest.approx(1e6 * ROLLBACK_LR_FACTOR)
    assert state.rollbacks >= 1 and not first["is_best"]
    rates = [record["lr"] for record in state.history]
    assert rates[1] == pytest.approx(rates[0] * ROLLBACK_LR_FACTOR)  # each rollback lowers the rate
    assert all(torch.isfinite(value).all() for value in model.state_dict().values())
    if state.best_weights is None:  # every epoch diverged: the starting weights are what is left
        assert all(torch.equal(model.state_dict()[k], start[k]) for k in start)


def test_a_sane_rate_never_rolls_back_and_keeps_learning():
    torch.manual_seed(0)
    model = create_model("simple_cnn", num_classes=2, in_chans=1, input_size=8)
    train, val = _separable_problem()
    setup = _setup(model, 0.05, 8 * len(train), "onecycle")
    state = fit(setup, train, val, 8, ["dark", "light"], NullObserver())
    assert state.rollbacks == 0 and state.history[-1]["val_accuracy"] >= 0.9


def test_divergence_is_told_by_a_loss_above_guessing_or_a_fall_to_chance():
    val = {"accuracy": 0.52, "num_images": 200, "per_class": {"a": {"support": 100}, "b": {"support": 100}}}
    assert "not a number" in diverged({"train_loss": math.nan}, val, 2, 0.9)
    assert "above" in diverged({"train_loss": 8.86}, val, 6, -1.0)  # the steel-surface epoch: ln 6 = 1.79
    at_chance = {"train_loss": 0.7, "train_accuracy": 0.5}
    assert "fell to chance" in diverged(at_chance, val, 2, 0.95)
    assert diverged(at_chance, val, 2, 0.55) is None  # never clearly above chance: still learning
    assert diverged({"train_loss": 0.03, "train_accuracy": 0.99}, val, 2, 0.95) is None  # a validation dip only
    assert diverged({"train_loss": 0.3, "train_accuracy": 0.9}, {**val, "accuracy": 0.9}, 2, 0.95) is None
    # Far below where fine-tuning started (a probe at 0.976, loss 0.08): the steel-surface first epoch.
    steel = {
        "accuracy": 0.684,
        "loss": 0.9,
        "num_images": 450,
        "per_class": {str(i): {"support": 75} for i in range(6)},
    }
    fine = {"train_loss": 0.5, "train_accuracy": 0.8}
    assert "where training started" in diverged(fine, steel, 6, 0.976, start=(0.976, 0.08))
    assert diverged(fine, {**steel, "accuracy": 0.97, "loss": 0.1}, 6, 0.976, start=(0.976, 0.08)) is None


def test_the_anytime_plan_fine_tunes_where_epochs_are_cheap_and_the_probe_leaves_errors():
    """The same rule on two speed tables: 2 CPU cores (EfficientNet-Lite2 at 260 px, 600 training
    and 225 validation photos: 13 training and 61 evaluation images/s, as measured here) and a
    GPU's order of magnitude (not measured here: no GPU on this machine)."""
    left_s, train, val, final = 150.0, 600, 225, 825
    cpu = plan_epochs(240.0, 240.0 - left_s, train, val, final, 13.0, 61.0)
    gpu = plan_epochs(240.0, 240.0 - left_s, train, val, final, 1_000.0, 3_000.0)
    assert cpu.epochs < MIN_FINETUNE_EPOCHS and f"it takes {MIN_FINETUNE_EPOCHS} to pay" in too_few_epochs(
        cpu, cpu.epochs
    )
    assert gpu.epochs >= MIN_FINETUNE_EPOCHS and too_few_epochs(gpu, gpu.epochs) is None
    assert probe_is_saturated(0.9958, 1.0) is not None  # cats and dogs: nothing left to gain
    assert probe_is_saturated(0.995, 0.976) is None  # steel surfaces: validation says otherwise
    assert probe_is_saturated(0.8567, 0.8444) is None and probe_is_saturated(None, 1.0) is None


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
    """Two classes of random crops of scikit-learn's two sample photos, train and val."""
    root = tmp_path_factory.mktemp("anytime") / "photos"
    rng = np.random.default_rng(0)
    for split, count in (("train", 12), ("val", 8)):
        for name, pixels in zip(["temple", "flower"], load_sample_images().images):
            (root / split / name).mkdir(parents=True)
            height, width = pixels.shape[:2]
            for index in range(count):
                size = int(rng.integers(120, 260))
                y, x = int(rng.integers(0, height - size)), int(rng.integers(0, width - size))
                Image.fromarray(pixels[y : y + size, x : x + size]).save(root / split / name / f"{index}.jpg")
    return root


def test_finetuning_at_a_rate_far_too_high_rolls_back_and_ships_at_least_the_probe(photo_folder, tmp_path, capsys):
    output = tmp_path / "bundle"
    code = main(["train", str(photo_folder), "--model", "efficientnet_lite0", "--pretrained", "--finetune",
                 "two-stage", "--epochs", "3", "--batch-size", "8", "--input-size", "64", "--lr", "40",
                 "--output", str(output), "--json"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = json.loads(captured.out)
    description = json.loads((output / "model.json").read_text())
    kept = description["kept"]
    assert kept["finetuned"]["rollbacks"] >= 1 and "diverged" in captured.err
    assert result["metrics"]["val_accuracy"] >= kept["probe"]["val_accuracy"]  # never below the probe
    assert result["kept"]["kept"] in ("probe", "fine-tuned") and "kept: the" in captured.err


def _anytime_run(photo_folder, output, capsys):
    """``train --finetune anytime`` with a 40 s budget on the small photo folder: its output."""
    code = main(["train", str(photo_folder), "--model", "efficientnet_lite0", "--pretrained", "--finetune",
                 "anytime", "--time-budget", "40s", "--input-size", "64", "--output", str(output),
                 "--json"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured


def test_an_anytime_run_says_what_it_kept_and_why(photo_folder, tmp_path, capsys):
    output = tmp_path / "bundle"
    captured = _anytime_run(photo_folder, output, capsys)
    result = json.loads(captured.out)
    kept = json.loads((output / "model.json").read_text())["kept"]
    assert kept["kept"] == result["kept"]["kept"] and kept["why"] == result["kept"]["why"]
    assert result["metrics"]["val_accuracy"] >= kept["probe"]["val_accuracy"]
    assert result["time_budget"]["used_s"] <= 40 * 1.25  # a short budget: start-up weighs more


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGINT"])
def test_sigterm_or_ctrl_c_during_training_ships_the_best_epoch_so_far(tmp_path, signal_name):
    """A scheduler's SIGTERM or the user's Ctrl-C: training stops, the bundle is written, exit 0."""
    import signal
    import subprocess
    import sys
    import time

    output = tmp_path / "bundle"
    command = [sys.executable, "-m", "imgclf", "train", "digits", "--model", "lenet5", "--epochs", "300",
               "--schedule", "constant", "--output", str(output)]  # fmt: skip
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    deadline, seen = time.monotonic() + 120, []
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        seen.append(line)
        if line.startswith("epoch   2/"):
            break
    process.send_signal(getattr(signal, signal_name))
    _, rest = process.communicate(timeout=120)
    log = "".join(seen) + rest
    assert process.returncode == 0, log
    assert f"{signal_name}: finishing with the best weights so far" in log
    metrics = json.loads((output / "metrics.json").read_text())
    summary, history = metrics["summary"], metrics["history"]
    assert 2 <= summary["epochs_run"] < 300 and summary["stopped_early"]
    kept = history[summary["best_epoch"] - 1]  # the bundle holds the kept epoch's weights
    assert summary["val_accuracy"] == pytest.approx(kept["val_accuracy"]) and summary["val_accuracy"] > 0.2


def test_lr_find_suggests_a_tenth_of_the_lowest_losss_rate_and_writes_its_plot(photo_folder, tmp_path, capsys):
    from imgclf.engine.lr_find import LrFinding, _suggest

    finding = LrFinding(rates=[1e-5, 1e-4, 1e-3, 1e-2, 1e-1], losses=[1.0, 0.9, 0.5, 0.2, 3.0])
    _suggest(finding)
    assert finding.lowest == 1e-2 and finding.suggestion == pytest.approx(1e-3) and finding.steepest == 1e-3
    output = tmp_path / "lr"
    command = ["lr-find", str(photo_folder), "--model", "efficientnet_lite0", "--pretrained", "--finetune",
               "two-stage", "--input-size", "64", "--batch-size", "8", "--steps", "30", "--output", str(output),
               "--json"]  # fmt: skip
    assert main(command) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert "suggested peak learning rate" in captured.err and len(result["rates"]) >= 3
    assert 1e-7 <= result["suggestion"] <= 10 and result["suggestion"] == pytest.approx(result["lowest"] / 10)
    with Image.open(output / "lr_find.png") as plot:
        assert plot.format == "PNG" and plot.width > 300
    assert main(command) == 0  # its own files are replaced
    capsys.readouterr()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "lr_find.png").write_bytes(b"my picture")
    assert main([*command[:-2], str(tmp_path / "mine")]) == 2  # a file of the user's is never replaced
    assert (tmp_path / "mine" / "lr_find.png").read_bytes() == b"my picture"


def test_an_anytime_run_fine_tunes_in_the_time_left_when_it_may_pay(photo_folder, tmp_path, capsys, monkeypatch):
    """The probe on these crops is perfect, so saturation and the epoch minimum are lowered to
    reach the fine-tuning path: planned from the measured speed, then judged against the probe."""
    from imgclf.runners.train import stages as train_stages

    monkeypatch.setattr(train_stages, "SATURATED_PROBE_ACCURACY", 1.01)
    monkeypatch.setattr(train_stages, "MIN_FINETUNE_EPOCHS", 1)
    output = tmp_path / "bundle"
    captured = _anytime_run(photo_folder, output, capsys)
    kept = json.loads((output / "model.json").read_text())["kept"]
    assert kept["finetuned"]["epochs"] >= 1 and "time budget 40 s:" in captured.err
    assert "stage 2: all layers but the stem" in captured.err
    result = json.loads(captured.out)
    assert result["metrics"]["val_accuracy"] >= kept["probe"]["val_accuracy"]
