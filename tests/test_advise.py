"""The advisor: each case of "which model?" as a rule, the photo detector, the choice, and
`imgclf advise` / `imgclf compare` / `train --time-budget` without --model end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_sample_images

from conftest import pattern_image
from imgclf.advise import advisor as advise_runner
from imgclf.advise.facts import DataFacts, HardwareFacts, image_statistics, looks_like_photos
from imgclf.advise.measure import Candidate, onnx_latency, static_facts
from imgclf.advise.pareto import mark_dominated
from imgclf.advise.rules import (
    Budgets,
    choose,
    collapses_small_images,
    epochs_in_budget,
    hard_to_interpret,
    probe_order,
    resnet_verdict,
    too_big_for_memory,
    too_large_for_data,
    too_many_parameters,
    too_slow_to_answer,
    too_slow_to_train,
    transfer_is_promising,
)
from imgclf.cli.main import main
from imgclf.models import create_model
from imgclf.models.info import measure_latency

DIGITS = DataFacts("digits", 1_437, 10, [144] * 10, 8, 1, photos=False)
PHOTOS = DataFacts("photos", 200, 2, [100, 100], 224, 3, photos=True)
LAPTOP = HardwareFacts("cpu", 2, 2, 16.0)
NO_LIMITS = Budgets()


def candidate(name="model", family="simple", **values) -> Candidate:
    defaults = {"input_size": 32, "params": 100_000, "flops": 10**7, "weight_layers": 5, "gradcam_size": 4}
    return Candidate(name, family, **{**defaults, **values})


# -- 1. small or simple datasets: a large network overfits --------------------------------------


def test_a_resnet50_sized_network_would_overfit_digits_and_the_reason_says_so_with_numbers():
    resnet50 = candidate("resnet50", "resnet", params=25_557_032)
    reason = too_large_for_data(resnet50, DIGITS, NO_LIMITS, LAPTOP)
    assert "25.6M parameters for 1,437 training images" in reason and "overfit" in reason
    assert too_large_for_data(candidate("lenet5", "lenet", params=61_706), DIGITS, NO_LIMITS, LAPTOP) is None


def test_pretrained_weights_are_not_judged_by_parameters_per_image():
    lite0 = candidate("efficientnet_lite0", "efficientnet_lite", params=4_652_008, pretrained="ImageNet")
    assert too_large_for_data(lite0, PHOTOS, NO_LIMITS, LAPTOP) is None


def test_a_224px_design_that_leaves_a_1x1_map_of_small_images_is_out():
    collapsed = candidate("squeezenet1_1", "squeezenet", input_size=8, gradcam_size=1)
    assert "1x1 map of a 8 px input" in collapsed_reason(collapsed)
    assert collapsed_reason(candidate(input_size=8, gradcam_size=2)) is None


def collapsed_reason(model: Candidate):
    return collapses_small_images(model, DIGITS, NO_LIMITS, LAPTOP)


# -- 2. real-time or resource-limited use --------------------------------------------------------


def test_latency_budget_judges_the_95th_percentile():
    budgets = Budgets(latency_ms=5.0)
    assert too_slow_to_answer(candidate(latency_ms_p50=3.0, latency_ms_p95=4.9), DIGITS, budgets, LAPTOP) is None
    reason = too_slow_to_answer(candidate(latency_ms_p50=4.0, latency_ms_p95=6.0), DIGITS, budgets, LAPTOP)
    assert "p95 6.00 ms" in reason and "5 ms budget" in reason
    assert too_slow_to_answer(candidate(latency_ms_p50=40, latency_ms_p95=60), DIGITS, NO_LIMITS, LAPTOP) is None


def test_parameter_and_memory_limits():
    assert too_many_parameters(candidate(params=2_000_000), DIGITS, Budgets(max_params=1_000_000), LAPTOP)
    assert too_many_parameters(candidate(params=900_000), DIGITS, Budgets(max_params=1_000_000), LAPTOP) is None
    assert too_big_for_memory(candidate(memory_mb=9_000), DIGITS, NO_LIMITS, LAPTOP)  # over half of 16 GiB
    assert too_big_for_memory(candidate(memory_mb=7_000), DIGITS, NO_LIMITS, LAPTOP) is None


def test_counted_facts_match_the_published_parameter_counts_and_the_memory_estimate_grows_with_the_batch():
    small, large = Candidate("resnet50", "resnet", 224), Candidate("resnet50", "resnet", 224)
    static_facts(small, 3, 1000, batch_size=8)
    static_facts(large, 3, 1000, batch_size=64)
    assert small.params == 25_557_032 and small.weight_layers == 54  # 53 convs + the classifier
    assert small.gradcam_size == 7 and 7e9 < small.flops < 9e9
    assert large.memory_mb > small.memory_mb * 4


# -- 3. the model must be interpretable ----------------------------------------------------------


def test_interpretable_keeps_plain_shallow_stacks_only():
    budgets = Budgets(interpretable=True)
    assert hard_to_interpret(candidate("vgg11", "vgg", weight_layers=11), DIGITS, budgets, LAPTOP) is None
    assert "residual" in hard_to_interpret(candidate("resnet20", "resnet_cifar", weight_layers=20), DIGITS, budgets,
                                           LAPTOP)  # fmt: skip
    assert hard_to_interpret(candidate("vgg19", "vgg", weight_layers=19), DIGITS, budgets, LAPTOP)
    assert hard_to_interpret(candidate("resnet20", "resnet_cifar"), DIGITS, NO_LIMITS, LAPTOP) is None


# -- 4. transfer learning ------------------------------------------------------------------------


def test_transfer_is_promising_for_few_natural_photos_only():
    assert transfer_is_promising(PHOTOS)
    plentiful = DataFacts("many", 100_000, 10, [10_000] * 10, 224, 3, photos=True)
    assert not transfer_is_promising(plentiful) and not transfer_is_promising(DIGITS)


def test_probe_order_puts_transfer_first_on_few_photos():
    scratch = candidate("resnet18", "resnet", train_images_per_s=500.0, flops=10**9)
    transfer = candidate("efficientnet_lite0", "efficientnet_lite", pretrained="ImageNet", train_images_per_s=50.0)
    assert probe_order([scratch, transfer], PHOTOS, Budgets(time_budget_s=600))[0] is transfer
    assert probe_order([scratch, transfer], DataFacts("x", 200, 2, [100, 100], 224, 3, False), Budgets(600))[0] is (
        scratch
    )


@pytest.fixture(scope="module")
def sample_photo_crops() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    crops = []
    for pixels in load_sample_images().images:
        for _ in range(10):
            size = int(rng.integers(150, 300))
            y, x = int(rng.integers(0, pixels.shape[0] - size)), int(rng.integers(0, pixels.shape[1] - size))
            crops.append(np.asarray(Image.fromarray(pixels[y : y + size, x : x + size]).resize((64, 64))))
    return crops


def as_batch(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)


def test_photographs_are_told_from_noise_patterns_and_flat_drawings(sample_photo_crops):
    rng = np.random.default_rng(1)
    patterns = [np.asarray(pattern_image(i % 4, 64, rng)) for i in range(20)]
    drawings = []
    for _ in range(20):
        canvas = np.full((64, 64, 3), rng.integers(0, 256, 3), dtype=np.uint8)
        y, x = rng.integers(0, 40, 2)
        canvas[y : y + 20, x : x + 20] = rng.integers(0, 256, 3)
        drawings.append(canvas)
    assert looks_like_photos(image_statistics(as_batch(sample_photo_crops)), 64)
    assert not looks_like_photos(image_statistics(as_batch(patterns)), 64)
    assert not looks_like_photos(image_statistics(as_batch(drawings)), 64)
    assert not looks_like_photos(image_statistics(as_batch(sample_photo_crops)), 16)  # thumbnails: not photos


# -- 5. training time is short -------------------------------------------------------------------


def test_epochs_in_budget_arithmetic_and_the_slow_to_train_rule():
    model = candidate(train_images_per_s=1_437.0, params=0)  # one digits epoch per second
    assert epochs_in_budget(model, DIGITS, Budgets(time_budget_s=10)) == pytest.approx(8.5)  # 85% trains
    heavy = candidate(train_images_per_s=1_437.0, params=25_000_000)  # a 300 MB checkpoint: 1 s more per epoch
    assert epochs_in_budget(heavy, DIGITS, Budgets(time_budget_s=10)) == pytest.approx(8.5 / 2)
    slow = candidate(train_images_per_s=100.0)
    reason = too_slow_to_train(slow, DIGITS, Budgets(time_budget_s=10), LAPTOP)
    assert "0.6 epochs" in reason and "3 needed" in reason
    assert too_slow_to_train(slow.__class__(**{**slow.__dict__, "pretrained": "ImageNet"}), DIGITS,
                             Budgets(time_budget_s=20), LAPTOP) is None  # fmt: skip  # 1 epoch is enough


# -- 6. speed matters more than accuracy ---------------------------------------------------------


def test_within_one_point_the_faster_model_wins_and_beyond_it_the_more_accurate():
    accurate = candidate("resnet56", "resnet_cifar", probe_accuracy=0.975, latency_ms_p50=3.0, probe_seconds=9,
                         probe_images=1437)  # fmt: skip
    fast = candidate("lenet5", "lenet", probe_accuracy=0.968, latency_ms_p50=0.2, probe_seconds=9, probe_images=1437)
    choice = choose([accurate, fast], DIGITS, NO_LIMITS)
    assert choice.candidate is fast and "speed over accuracy" in choice.reasons[1]
    fast.probe_accuracy = 0.96
    assert choose([accurate, fast], DIGITS, NO_LIMITS).candidate is accurate


def test_nothing_meeting_the_budgets_is_said_with_the_closest_miss():
    slow = candidate("resnet18", "resnet", rejected_because=["latency p95 9.00 ms at batch 1, over the 1 ms budget"])
    choice = choose([slow], DIGITS, Budgets(latency_ms=1))
    assert choice.candidate is None and "resnet18" in choice.reasons[0] and "9.00 ms" in choice.reasons[0]


def test_the_resnet_verdict_says_when_it_is_and_is_not_the_right_choice():
    resnet = candidate("resnet20", "resnet_cifar", params=269_722)
    assert resnet_verdict([resnet], resnet, DIGITS).startswith("ResNet is the right choice here")
    big = candidate("resnet50", "resnet", rejected_because=["25.6M parameters ...: would overfit a dataset this small"])
    verdict = resnet_verdict([big, candidate("lenet5")], candidate("lenet5"), DIGITS)
    assert verdict.startswith("ResNet is not the choice here: resnet50") and "many more training images" in verdict
    lenet = candidate("lenet5", probe_accuracy=0.994)
    tied = resnet_verdict([candidate("resnet20", "resnet_cifar", probe_accuracy=0.994), lenet], lenet, DIGITS)
    assert "resnet20 reached 99.4% in its probe, within 1 point of lenet5's 99.4%, and lenet5 is faster" in tied
    behind = resnet_verdict([candidate("resnet20", "resnet_cifar", probe_accuracy=0.95), lenet], lenet, DIGITS)
    assert "resnet20 reached 95.0% in its probe against 99.4%" in behind


def test_pareto_marks_models_beaten_on_both_accuracy_and_latency():
    rows = [{"name": "a", "accuracy": 0.98, "latency_ms": 1.0}, {"name": "b", "accuracy": 0.97, "latency_ms": 2.0},
            {"name": "c", "accuracy": 0.99, "latency_ms": 5.0}, {"name": "d", "error": "failed"}]  # fmt: skip
    marked = {row["name"]: row["dominated_by"] for row in mark_dominated(rows)}
    assert marked == {"a": None, "b": "a", "c": None, "d": None}


# -- end to end ----------------------------------------------------------------------------------


@pytest.fixture
def quick_probes(monkeypatch):
    """Probes of 4 s each instead of the command's 10+: the ranking, not the final accuracy, is tested."""
    monkeypatch.setattr(advise_runner, "PROBE_TOTAL_RANGE", (8.0, 8.0))
    monkeypatch.setattr(advise_runner, "MIN_PROBE_SECONDS", 2.0)


def test_advise_digits_with_a_one_minute_budget_recommends_no_deep_network(quick_probes, capsys):
    code = main(["advise", "digits", "--time-budget", "1m", "--models", "lenet5,simple_cnn,resnet50,vgg11,alexnet",
                 "--probes", "2", "--json"])  # fmt: skip
    advice = json.loads(capsys.readouterr().out)
    assert code == 0
    assert advice["recommended"] in {"lenet5", "simple_cnn"}
    rows = {row["name"]: row for row in advice["candidates"]}
    for deep in ("resnet50", "vgg11", "alexnet"):
        assert not rows[deep]["meets_budgets"] and rows[deep]["rejected_because"]
    chosen = rows[advice["recommended"]]
    keys = {"name", "params", "flops", "latency_ms_p50", "latency_ms_p95", "train_images_per_s", "probe_accuracy",
            "meets_budgets", "rejected_because"}  # fmt: skip
    # The probe stops at a wall-clock limit, so a busy machine trains it less: 0.79 was seen with a
    # second test run sharing the two cores, 0.30 with benchmarks and a Ray cluster on them too
    # (chance is 0.1); the ranking is what this test is about, the probe only has to have learned.
    assert keys <= set(chosen) and chosen["probe_accuracy"] > 0.2 and chosen["latency_ms_p50"] > 0
    assert any("would overfit" in reason for reason in rows["resnet50"]["rejected_because"])
    assert advice["train_command"].startswith(f"imgclf train digits --model {advice['recommended']}")


@pytest.mark.slow  # 50 s of latency measurements; the fast latency test below stays in the default suite
def test_the_recommended_model_meets_the_latency_budget_when_measured_again(quick_probes, capsys):
    models = "lenet5,simple_cnn,resnet56"
    rows = {}
    main(["advise", "digits", "--models", models, "--probes", "0", "--latency-ms", "1e6", "--json"])  # time both
    for row in json.loads(capsys.readouterr().out)["candidates"]:
        rows[row["name"]] = row

    def best(name: str) -> float:  # PyTorch or ONNX Runtime, whichever is faster
        return min(rows[name]["latency_ms_p50"], rows[name]["onnx_latency_ms_p50"])

    # Halfway, on a log scale, between the fastest and the slowest model (measured 5-10x apart):
    # a margin of 2-3x either way, which other work on a busy machine does not eat.
    budget = round((best("lenet5") * best("resnet56")) ** 0.5, 3)
    for _ in range(2):  # once more if a burst of other work on this machine spoiled the timing
        code = main(["advise", "digits", "--models", models, "--latency-ms", str(budget), "--batch", "1", "--json"])
        advice = json.loads(capsys.readouterr().out)
        if code == 0:
            break
    assert code == 0 and advice["recommended"] is not None
    rows = {row["name"]: row for row in advice["candidates"]}
    assert not rows["resnet56"]["meets_budgets"] and "budget" in rows["resnet56"]["rejected_because"][0]
    chosen = rows[advice["recommended"]]
    assert chosen["onnx_latency_ms_p95"] is not None  # with a latency budget both runtimes are timed
    model = create_model(chosen["name"], num_classes=10, in_chans=1, input_size=chosen["input_size"])
    if chosen["latency_ms_p95"] <= budget:  # it meets the budget in PyTorch: measure that again
        assert measure_latency(model, 1, 1, chosen["input_size"], repeats=20)["p50_ms"] <= budget
    else:  # only in ONNX Runtime, as the reasons say
        assert any("imgclf export" in reason for reason in advice["reasons"])
        assert onnx_latency(model, 1, 1, chosen["input_size"], seconds=1.0)[0] <= budget


def test_no_model_meeting_the_latency_budget_exits_with_a_clear_message(capsys):
    code = main(["advise", "digits", "--models", "lenet5,simple_cnn", "--latency-ms", "0.0001", "--probes", "0"])
    captured = capsys.readouterr()
    assert code == 1
    assert "no candidate meets the budgets" in captured.err and "over the 0.0001 ms budget" in captured.err


def test_natural_photos_with_pretrained_weights_get_transfer_learning(tmp_path, quick_probes, capsys):
    root = tmp_path / "photos"
    rng = np.random.default_rng(0)
    for name, pixels in zip(["temple", "flower"], load_sample_images().images):
        (root / name).mkdir(parents=True)
        for index in range(12):
            size = int(rng.integers(150, 300))
            y, x = int(rng.integers(0, pixels.shape[0] - size)), int(rng.integers(0, pixels.shape[1] - size))
            Image.fromarray(pixels[y : y + size, x : x + size]).save(root / name / f"{index}.jpg")
    code = main(["advise", str(root), "--models", "simple_cnn,efficientnet_lite0", "--time-budget", "2m",
                 "--json"])  # fmt: skip
    advice = json.loads(capsys.readouterr().out)
    assert code == 0 and advice["data"]["photos"]
    assert advice["recommended"] == "efficientnet_lite0" and advice["pretrained"]
    assert advice["train_options"]["pretrained"] == "default"
    assert any("ImageNet" in reason or "pretrained" in reason for reason in advice["reasons"])
    assert "--pretrained" in advice["train_command"]


def test_compare_writes_a_leaderboard_and_a_pareto_plot(tmp_path, capsys):
    code = main(["compare", "digits", "--models", "lenet5,simple_cnn", "--epochs", "2", "-o", str(tmp_path),
                 "--json"])  # fmt: skip
    result = json.loads(capsys.readouterr().out)
    assert code == 0
    board = result["leaderboard"]
    accuracies = [row["accuracy"] for row in board]
    assert accuracies == sorted(accuracies, reverse=True)
    for row in board:
        assert 0 < row["accuracy"] <= 1 and 0 < row["macro_f1"] <= 1 and row["latency_ms"] > 0 and row["flops"] > 0
        assert (tmp_path / row["name"] / "model.json").is_file()
    assert (tmp_path / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "compare.json").read_text())["leaderboard"] == board


def test_compare_refuses_an_unknown_model_before_training(tmp_path, capsys):
    assert main(["compare", "digits", "--models", "lenet5,resnet81", "-o", str(tmp_path)]) == 2
    assert "unknown model 'resnet81'" in capsys.readouterr().err


def test_train_with_a_budget_and_no_model_trains_the_advisors_choice_and_records_why(tmp_path, capsys, monkeypatch):
    import imgclf.advise.advisor
    import imgclf.runners.train.data

    scans = []  # a folder's header scan can take a while: the advisor and training share one
    for module in (imgclf.advise.advisor, imgclf.runners.train.data):
        counted = module.profile_dataset
        monkeypatch.setattr(module, "profile_dataset", lambda *args, counted=counted: scans.append(1) or counted(*args))
    output = tmp_path / "run"
    code = main(["train", "digits", "--time-budget", "20s", "-o", str(output), "--json"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0 and result["advisor"]["recommended"] == result["model"]
    assert len(scans) == 1
    # Inside the budget on an idle machine (BENCHMARKS); a busy one may run over it by half.
    assert result["seconds"] <= 20 * 1.5
    description = json.loads((output / "model.json").read_text())
    assert description["architecture"] == result["model"] and description["advisor"]["reasons"]
    assert (
        'id="choice"' in (output / "report.html").read_text()
        and "The advisor chose" in (output / "report.html").read_text()
    )
