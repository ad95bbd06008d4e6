"""One resolver for the command line and the Python API; YAML recipes; the bundle's config.yaml."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import imgclf
from imgclf.cli.main import main
from imgclf.config import TrainConfig, load_config_file, resolve
from imgclf.errors import UsageError


def _recorded(bundle: Path) -> tuple[dict, dict]:
    description = json.loads((bundle / "model.json").read_text())
    training = {key: value for key, value in description["training"].items() if key != "epochs"}
    return training, yaml.safe_load((bundle / "config.yaml").read_text())


def test_the_api_and_the_cli_record_the_same_resolved_configuration(tmp_path: Path, capsys):
    """A preset and a duration given to imgclf.train are expanded and parsed exactly as the
    command line does it (the planned epochs depend on the measured speed, so they are left out)."""
    imgclf.train("digits", output=tmp_path / "api", preset="fast", time_budget="6s", seed=1)
    assert main(["train", "digits", "--preset", "fast", "--time-budget", "6s", "--seed", "1",
                 "--output", str(tmp_path / "cli")]) == 0  # fmt: skip
    api_training, api_config = _recorded(tmp_path / "api")
    cli_training, cli_config = _recorded(tmp_path / "cli")
    assert api_config == cli_config
    assert api_training == cli_training
    assert api_config["preset"] == "fast" and api_config["model"] == "fastnet_small"  # the recipe, not just its name
    assert api_config["ema"] == 0.99 and api_config["time_budget"] == 6.0


def test_a_bundle_config_yaml_resolves_to_the_configuration_it_was_written_from(tmp_path: Path):
    config = resolve({"model": "lenet5", "epochs": 2, "time_budget": None, "label_smoothing": 0.05}).config
    path = tmp_path / "config.yaml"
    from imgclf.runners.train_output import write_config_yaml

    write_config_yaml(path, config)
    assert resolve(config_file=path).config == config
    # Options given with the file override it.
    assert resolve({"epochs": 5}, path).config == TrainConfig.from_dict({**config.to_dict(), "epochs": 5})


def test_yaml_recipe_with_command_line_style_keys(tmp_path: Path):
    path = tmp_path / "run.yaml"
    path.write_text("model: lenet5\ntime-budget: 2m\naugment: flip\n")
    resolved = resolve(config_file=path)
    assert resolved.config.time_budget == 120.0 and resolved.config.augment == "flip"
    assert not resolved.choose_model  # the file named a model


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("modle: lenet5\n", "unknown key(s): modle (did you mean model?)"),
        ("model: [unclosed\n", "not valid YAML"),
        ("- a\n- b\n", "a mapping"),
        ("epochs: -3\n", "--epochs must be at least 1"),
    ],
)
def test_a_bad_yaml_file_is_one_line_naming_the_file_and_exit_2(tmp_path: Path, capsys, text, expected):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    assert main(["train", "digits", "--config", str(path), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err
    if "key" in expected or "YAML" in expected or "mapping" in expected:
        assert str(path) in err
    assert not (tmp_path / "out").exists()


def test_json_config_files_still_work_and_name_their_unknown_keys(tmp_path: Path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"model": "lenet5", "epochs": 2}))
    assert load_config_file(path) == {"model": "lenet5", "epochs": 2}
    path.write_text(json.dumps({"epoch": 2}))
    with pytest.raises(UsageError, match=r"run\.json: unknown key\(s\): epoch \(did you mean epochs\?\)"):
        load_config_file(path)


def test_pretrained_true_means_the_built_in_weights_and_names_a_choice():
    resolved = resolve({"model": "efficientnet_lite0", "pretrained": True, "finetune": "linear-probe"})
    assert resolved.config.pretrained == "default" and not resolved.choose_model
    assert resolve({"epochs": 3}).choose_model  # nothing chosen: imgclf chooses


def test_two_stage_keeps_the_early_layers_frozen_unless_told_to_unfreeze_them():
    from imgclf.engine.plan import plan_stages

    options = {"model": "efficientnet_lite0", "pretrained": True, "finetune": "two-stage"}
    default = plan_stages(resolve(options).config, 4)[-1]
    unfrozen = plan_stages(resolve({**options, "unfreeze_all": True}).config, 4)[-1]
    assert default.freeze_early and "but the stem and the first stages" in default.name
    assert not unfrozen.freeze_early and unfrozen.name.startswith("stage 2: all layers,")
    with pytest.raises(UsageError, match="--unfreeze-all applies to --finetune two-stage"):
        resolve({"model": "efficientnet_lite0", "pretrained": True, "finetune": "full", "unfreeze_all": True})
