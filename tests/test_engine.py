"""The training engine's parts: schedule, weight-decay groups, augmentation, checkpoints."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from imgclf.data.augment import choose_augmentation
from imgclf.engine.checkpoint import load_training_state, save_training_state
from imgclf.engine.loop import FitState, _update_best, accuracy_noise
from imgclf.engine.optim import create_optimizer, lr_multiplier
from imgclf.files import atomic_write_bytes
from imgclf.models import create_model


def test_schedule_warms_up_then_decays_to_zero():
    values = [lr_multiplier(step, 100, "onecycle", 0.25) for step in range(100)]
    assert values[0] < 0.05 and values[24] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(values[25:], values[26:]))  # monotone decay
    assert values[-1] < 0.01
    assert lr_multiplier(50, 100, "constant", 0.0) == 1.0


def test_no_weight_decay_on_norms_and_biases():
    model = create_model("simple_cnn", num_classes=3)
    decayed, plain = create_optimizer(model, "sgd", 0.1, 5e-4).param_groups
    assert decayed["weight_decay"] == 5e-4 and plain["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decayed["params"]) and all(p.ndim == 1 for p in plain["params"])


def test_augmentation_is_chosen_per_data_kind_with_a_reason():
    digits = choose_augmentation("auto", "digits", 1, 8, epochs=20)
    photos = choose_augmentation("auto", "folder", 3, 32, epochs=20)
    assert not digits.flip and "flipped digit" in digits.reason
    assert photos.flip and photos.translate == 4
    assert not choose_augmentation("auto", "folder", 3, 32, epochs=2).enabled


def test_augmentation_keeps_shape_and_is_reproducible():
    augment = choose_augmentation("flip+translate", "folder", 3, 16)
    images = torch.randn(8, 3, 16, 16)
    first = augment(images, torch.Generator().manual_seed(1))
    second = augment(images, torch.Generator().manual_seed(1))
    assert first.shape == images.shape and torch.equal(first, second) and not torch.equal(first, images)


def test_atomic_write_replaces_whole_files(tmp_path):
    target = tmp_path / "state.bin"
    atomic_write_bytes(target, b"old")
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["state.bin"]  # no temporary file left


def test_training_state_round_trips_without_pickle(tmp_path):
    model = create_model("lenet5")
    optimizer = create_optimizer(model, "sgd", 0.1, 5e-4)
    model(torch.randn(4, 1, 32, 32)).sum().backward()
    optimizer.step()
    path = tmp_path / "training_state.safetensors"
    save_training_state(path, model, optimizer, None, {"torch": torch.get_rng_state()}, {"epoch": 3, "step": 7})
    with safe_open(str(path), framework="pt") as handle:  # a plain safetensors file with JSON metadata
        assert json.loads(handle.metadata()["imgclf_training_state"])["epoch"] == 3
    loaded = load_training_state(path)
    assert loaded["meta"]["step"] == 7 and loaded["best"] is None
    restored = torch.optim.SGD(create_optimizer(model, "sgd", 0.1, 5e-4).param_groups)
    restored.load_state_dict(loaded["optimizer"])
    for key, value in optimizer.state_dict()["state"][0].items():
        assert torch.equal(restored.state_dict()["state"][0][key], value)


def test_best_weights_equal_to_the_current_ones_are_stored_once_and_restored(tmp_path):
    model = create_model("lenet5")
    optimizer = create_optimizer(model, "sgd", 0.1, 5e-4)
    path = tmp_path / "training_state.safetensors"
    best = {k: v.detach().clone() for k, v in model.state_dict().items()}
    save_training_state(path, model, optimizer, best, {"torch": torch.get_rng_state()}, {"epoch": 1})
    with safe_open(str(path), framework="pt") as handle:
        assert not [key for key in handle.keys() if key.startswith("best.")]  # noqa: SIM118
    loaded = load_training_state(path)
    assert all(torch.equal(loaded["best"][k], v) for k, v in best.items()) and "best_is_model" not in loaded["meta"]
    model(torch.randn(4, 1, 32, 32)).sum().backward()
    optimizer.step()  # the model moves on; the best weights stay behind and are written separately
    save_training_state(path, model, optimizer, best, {"torch": torch.get_rng_state()}, {"epoch": 2})
    loaded = load_training_state(path)
    assert all(torch.equal(loaded["best"][k], v) for k, v in best.items())
    assert not torch.equal(loaded["model"]["conv1.weight"], loaded["best"]["conv1.weight"])
    assert [p.name for p in tmp_path.iterdir()] == ["training_state.safetensors"]  # no temporary file left


def test_progress_in_a_log_file_prints_step_and_epoch_lines():
    import io

    from rich.console import Console

    from imgclf.engine.observers import ProgressObserver

    log = io.StringIO()
    observer = ProgressObserver(Console(file=log, width=200), log_every_s=0.0)
    observer.on_fit_start(epochs=2, steps_per_epoch=10, start_epoch=0)
    observer.on_step(0, 4, 0.5, 0.8, 1000.0)
    record = {
        "epoch": 1,
        "train_loss": 0.5,
        "train_accuracy": 0.8,
        "val_loss": 0.4,
        "val_accuracy": 0.85,
        "lr": 0.1,
        "train_images_per_s": 1000.0,
        "seconds": 1.0,
        "is_best": True,
    }
    observer.on_epoch_end(record)
    lines = log.getvalue().splitlines()
    assert lines[0].startswith("epoch   1/2  step 5/10") and "val loss 0.4000 acc 0.8500" in lines[1]
    observer.on_epoch_end({**record, "epoch": 2, "epochs": 3})  # a time budget re-planned 2 epochs to 3
    observer.on_step(2, 0, 0.5, 0.8, 1000.0)
    assert log.getvalue().splitlines()[2:] == [
        "epoch   2/3  train loss 0.5000 acc 0.8000  val loss 0.4000 acc 0.8500  lr 1.00e-01  1,000 img/s  1.0s *",
        "epoch   3/3  step 1/10  train loss 0.5000 acc 0.8000  1,000 img/s",
    ]


def _kept_epochs(accuracies: list[float], images: int) -> tuple[int, int]:
    """The epoch whose weights are kept and the epochs without improvement, after ``accuracies``."""
    state, model = FitState(), torch.nn.Linear(2, 2)
    for accuracy in accuracies:
        state.epoch += 1
        _update_best(state, model, accuracy, images)
        state.history.append({"epoch": state.epoch, "val_accuracy": accuracy})  # as the loop records it
    return state.best_epoch, state.epochs_without_improvement


def test_a_later_epoch_is_kept_unless_an_earlier_one_was_clearly_better():
    # The run that motivated it: 120 validation images, a lucky second epoch (0.7833), the rest
    # within two standard errors of it (0.076): the last epoch is kept.
    run = [0.6917, 0.7833, 0.7083, 0.7417, 0.75, 0.7417, 0.7333, 0.75, 0.7417]
    assert _kept_epochs(run, 120) == (9, 7)
    # The same numbers on 5,000 images tell epochs apart: the peak is kept.
    assert _kept_epochs(run, 5_000) == (2, 7)
    # A collapse after the peak is beyond any noise.
    assert _kept_epochs([0.80, 0.90, 0.40], 120) == (2, 1)
    assert accuracy_noise(0.78, 120) == pytest.approx(0.0756, abs=1e-4)
    assert accuracy_noise(1.0, 50) == 0.0  # a perfect epoch is replaced only by another perfect one
