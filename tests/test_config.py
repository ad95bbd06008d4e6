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
    from imgclf.runners.train.output import write_config_yaml

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
        ("epochs: -3\n", "epochs must be in [1, 100000], not -3"),
        # Values that once trained a chance-level model or ended in a traceback:
        ("warmup_fraction: 5\n", "warmup_fraction must be in [0, 1), not 5"),
        ("grad_clip: -1\n", "grad_clip must be in [0, 1e+06], not -1"),
        ("early_stopping: -3\n", "early_stopping must be in [0, 100000], not -3"),
        ("weight_decay: -1\n", "weight_decay must be in [0, 1), not -1"),
        ("momentum: .nan\n", "momentum must be in [0, 1), not nan"),
        ("model: null\n", "model needs a value"),
        ("augment: [flip]\n", "augment must be text, not ['flip']"),
        ("pretrained: 5\n", "pretrained must be text, not 5"),
    ],
)
def test_a_bad_yaml_file_is_one_line_naming_the_file_and_exit_2(tmp_path: Path, capsys, text, expected):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    assert main(["train", "digits", "--config", str(path), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err
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


def _bad_values(name: str) -> dict[str, object]:
    """A wrong type, NaN, a negative and an out-of-range value for the option ``name``
    (what cannot be out of range for a kind of option is left out)."""
    from imgclf.config import OPTIONS

    spec = OPTIONS[name]
    if spec.kind is bool:
        return {"wrong type": 5, "nan": float("nan"), "negative": -1, "out of range": "maybe"}
    if spec.kind is str:
        values = {"wrong type": ["a"], "nan": float("nan"), "negative": -5}
        if name != "pretrained":  # any text may name a weights file; a missing one is refused on its own
            values["out of range"] = "bogus-value"
        return values
    high = spec.high if spec.high is not None else 1e12
    return {"wrong type": ["1"], "nan": float("nan"), "negative": -5, "out of range": high * 10 + 1}


def _option_cases() -> list[tuple[str, str, object]]:
    from imgclf.config import OPTIONS

    return [(name, case, value) for name in OPTIONS for case, value in _bad_values(name).items()]


def _one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err and not captured.out
    return lines[0]


@pytest.mark.parametrize(("name", "case", "value"), _option_cases())
def test_every_option_refuses_a_bad_value_in_one_line_through_a_file_the_api_and_the_command_line(
    tmp_path: Path, capsys, name, case, value
):
    """Whichever way a value arrives, it is checked by type and range before any data is read:
    exit 2 and one line naming the option (and the file) and the value."""
    from imgclf.config import OPTIONS

    spec = OPTIONS[name]
    recipe = tmp_path / "run.yaml"
    recipe.write_text(yaml.safe_dump({name: value}))
    output = tmp_path / "out"
    assert main(["train", "/no/such/data", "--config", str(recipe), "--output", str(output)]) == 2
    line = _one_error_line(capsys)
    assert str(recipe) in line and name in line

    with pytest.raises(UsageError, match=name.replace("_", "[-_]")):
        imgclf.train("/no/such/data", output=output, **{name: value})

    # On the command line every value is text; --pretrained's text that is not a weights file is
    # taken as DATA (``cli.output.pretrained_source``), so it has no bad value there.
    if spec.cli == "value" and not isinstance(value, list):
        flag = spec.flag or f"--{name.replace('_', '-')}"
        assert main(["train", "/no/such/data", f"{flag}={value}", "--output", str(output)]) == 2
        assert flag in _one_error_line(capsys)
    assert not output.exists()


def test_numbers_that_yaml_reads_as_text_are_numbers(tmp_path: Path):
    """YAML 1.1 reads 1e-9 (no dot) as a string; the option is a number, so it is one."""
    path = tmp_path / "run.yaml"
    path.write_text("checkpoint_interval: 1e-9\nlr: 3e-3\n")
    config = resolve(config_file=path).config
    assert config.checkpoint_interval == 1e-9 and config.lr == 3e-3
