"""Hostile input and interrupted work: a run killed after its last epoch, damaged or hand-edited
bundles and training states, unwritable outputs and folders that loop back on themselves."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.torch import load_file

from conftest import write_class_folder


def _train_arguments(data: Path, output: Path, *extra: str) -> list[str]:
    return ["train", str(data), "--model", "simple_cnn", "--epochs", "3", "--batch-size", "4", "--threads", "1",
            "--output", str(output), *extra]  # fmt: skip


def test_resume_after_the_last_epoch_ends_with_the_trained_weights_not_a_fresh_model(tmp_path: Path, capsys):
    """Killed during the final evaluation or while the bundle is written: on disk there is the state
    written after the last epoch and no (or half a) bundle. --resume must finish that run."""
    from imgclf.cli.main import main

    data = write_class_folder(tmp_path / "data", ["a", "b"], per_class=10, size=16)
    output = tmp_path / "run"
    assert main(_train_arguments(data, output)) == 0
    whole = load_file(str(output / "model.safetensors"))
    for name in ("model.safetensors", "model.json", "metrics.json"):
        (output / name).unlink()
    assert main([*_train_arguments(data, output), "--resume"]) == 0
    assert "every epoch was already trained" in capsys.readouterr().err
    resumed = load_file(str(output / "model.safetensors"))
    assert whole.keys() == resumed.keys()
    assert all(np.array_equal(whole[name].numpy(), resumed[name].numpy()) for name in whole)


def _bundle_for_edits(tmp_path: Path) -> Path:
    from imgclf.cli.main import main

    data = write_class_folder(tmp_path / "data", ["a", "b"], per_class=10, size=16)
    assert main(_train_arguments(data, tmp_path / "bundle", "--epochs", "1")) == 0
    return tmp_path / "bundle"


BAD_VALUES = {
    "format_version": ["1", -1],
    "model_kwargs.num_classes": ["2", -2, 3],
    "model_kwargs.in_chans": [7],
    "model_kwargs.input_size": [float("nan"), float("inf"), 1_000_000],
    "model_kwargs.drop_rate": [5],
    "preprocess.input_size": [1_000_000, "16"],
    "preprocess.std": [[0.0, 1.0, 1.0], [float("nan")] * 3],
    "calibration.temperature": [0, -1.0, "1"],
    "calibration.abstain_threshold": ["0.5", 2.0],
    "classes": [["a", "a"], "ab"],
}


def test_every_bad_value_in_model_json_is_one_line_and_exit_2(tmp_path: Path, capsys):
    from imgclf.cli.main import main

    bundle = _bundle_for_edits(tmp_path)
    original = json.loads((bundle / "model.json").read_text())
    image = next((tmp_path / "data" / "a").iterdir())
    capsys.readouterr()
    for key, values in BAD_VALUES.items():
        for value in values:
            edited = json.loads(json.dumps(original))
            *parents, last = key.split(".")
            holder = edited
            for parent in parents:
                holder = holder.setdefault(parent, {})
            holder[last] = value
            (bundle / "model.json").write_text(json.dumps(edited))  # json writes NaN and Infinity as Python does
            for command in (["predict", str(bundle), str(image)], ["evaluate", str(bundle), str(tmp_path / "data")]):
                assert main(command) == 2, (key, value, command[0])
                err = capsys.readouterr().err
                assert err.count("\n") == 1 and last in err and "Traceback" not in err, (key, value, err)


def test_a_changed_byte_in_the_bundle_weights_is_detected(tmp_path: Path, capsys):
    from imgclf.cli.main import main

    bundle = _bundle_for_edits(tmp_path)
    weights = bytearray((bundle / "model.safetensors").read_bytes())
    weights[-5] ^= 0x01  # the last weight's lowest bits: the file still loads, the model is not the one trained
    (bundle / "model.safetensors").write_bytes(bytes(weights))
    assert main(["predict", str(bundle), str(next((tmp_path / "data" / "a").iterdir()))]) == 2
    assert "damaged or replaced" in capsys.readouterr().err


def _state_edits():
    def flip_tensor_byte(data: bytearray) -> None:
        data[-3] ^= 0x10

    def overwrite_4k(data: bytearray) -> None:
        data[-4096:] = b"\xff" * 4096

    def edit_meta(key, value):
        def edit(data: bytearray) -> None:
            header_size = int.from_bytes(data[:8], "little")
            header = json.loads(bytes(data[8 : 8 + header_size]))
            meta = json.loads(header["__metadata__"]["imgclf_training_state"])
            if value is None:
                meta.pop(key)
            else:
                meta[key] = value
            header["__metadata__"]["imgclf_training_state"] = json.dumps(meta)
            encoded = json.dumps(header).encode()
            encoded += b" " * (-len(encoded) % 8)
            data[:] = len(encoded).to_bytes(8, "little") + encoded + data[8 + header_size :]

        return edit

    return {"flipped byte": flip_tensor_byte, "4 KB of 0xFF": overwrite_4k, "no config": edit_meta("config", None),
            "string history": edit_meta("history", "x"), "epoch 999": edit_meta("epoch", 999)}  # fmt: skip


def test_a_damaged_training_state_is_refused_and_resume_falls_back_to_the_previous_one(tmp_path: Path, capsys):
    from imgclf.cli.main import main

    data = write_class_folder(tmp_path / "data", ["a", "b"], per_class=10, size=16)
    whole = tmp_path / "whole"
    assert main(_train_arguments(data, whole)) == 0
    expected = load_file(str(whole / "model.safetensors"))
    for name, damage in _state_edits().items():
        output = tmp_path / name.replace(" ", "-")
        assert main(_train_arguments(data, output)) == 0
        for bundle_file in ("model.safetensors", "model.json", "metrics.json"):
            (output / bundle_file).unlink()
        state = output / "training_state.safetensors"
        damaged = bytearray(state.read_bytes())
        damage(damaged)
        state.write_bytes(bytes(damaged))
        capsys.readouterr()
        assert main([*_train_arguments(data, output), "--resume"]) == 0, name
        err = capsys.readouterr().err
        assert "trying the previous training state" in err, (name, err)
        resumed = load_file(str(output / "model.safetensors"))
        assert all(np.array_equal(expected[k].numpy(), resumed[k].numpy()) for k in expected), name


def test_a_second_run_into_the_same_output_is_refused(tmp_path: Path, capsys):
    from imgclf.cli.main import main
    from imgclf.engine.run_folder import output_lock

    data = write_class_folder(tmp_path / "data", ["a", "b"], per_class=10, size=16)
    output = tmp_path / "run"
    with output_lock(output):  # a first run holds the folder
        assert main(_train_arguments(data, output)) == 2
    assert "another imgclf run is writing to it" in capsys.readouterr().err
    assert not (output / "model.json").exists()
    assert main(_train_arguments(data, output)) == 0  # once it is done, the folder is free


def test_an_unwritable_output_is_one_line_before_any_data_is_read(tmp_path: Path, capsys):
    from imgclf.cli.main import main

    data = write_class_folder(tmp_path / "data", ["a", "b"], per_class=10, size=16)
    for output in ("/proc/imgclf-run", str(tmp_path / "file-not-folder" / "run")):
        (tmp_path / "file-not-folder").write_text("x")
        assert main(_train_arguments(data, Path(output))) == 2
        err = capsys.readouterr().err
        assert "cannot write there" in err and err.count("\n") == 1 and "loading" not in err.lower(), err


def test_links_that_loop_back_are_not_followed(tmp_path: Path, capsys):
    import os

    from imgclf.cli.main import main
    from imgclf.data.dataset import load_dataset

    data = write_class_folder(tmp_path / "data", ["a", "b"], per_class=12, size=8)
    os.symlink("..", data / "up")  # the parent of the data folder
    os.symlink(".", data / "a" / "again")  # the class folder itself
    os.symlink(str(data), data / "b" / "root")  # the data folder, by absolute path
    (tmp_path / "elsewhere" / "c").mkdir(parents=True)  # a class folder kept elsewhere, linked in: followed
    write_class_folder(tmp_path / "elsewhere", ["c"], per_class=12, size=8)
    os.symlink(str(tmp_path / "elsewhere" / "c"), data / "c")
    dataset = load_dataset(str(data))
    sizes = {name: len(split) for name, split in dataset.splits.items()}
    assert sum(sizes.values()) == 36 and dataset.classes == ["a", "b", "c"], sizes
    assert main(["doctor", str(data), "--json"]) == 0
    ignored = json.loads(capsys.readouterr().out)["ignored"]
    assert {Path(row["file"]).name for row in ignored if "not followed" in row["reason"]} == {"up", "again", "root"}


def test_bundle_files_share_one_mode_and_tar_links_are_listed_as_ignored(tmp_path: Path):
    import io
    import os
    import tarfile

    from imgclf.data.dataset import load_dataset

    bundle = _bundle_for_edits(tmp_path)
    written = [path for path in bundle.iterdir() if path.suffix in (".json", ".safetensors")]
    modes = {path.name: os.stat(path).st_mode & 0o777 for path in written}
    assert len(set(modes.values())) == 1, modes  # safetensors files were 0600 while JSON was 0644
    archive = tmp_path / "data.tar"
    with tarfile.open(archive, "w") as handle:
        for folder in ("a", "b"):
            for path in sorted((tmp_path / "data" / folder).iterdir()):
                handle.add(path, arcname=f"{folder}/{path.name}")
        link = tarfile.TarInfo("a/link.png")
        link.type, link.linkname = tarfile.SYMTYPE, "../../etc/passwd"
        handle.addfile(link, io.BytesIO())
    dataset = load_dataset(str(archive))
    assert any(file.endswith("a/link.png") and "link" in reason for file, reason in dataset.ignored)


def test_a_full_disk_mid_run_is_one_line_and_the_training_state_survives(tmp_path: Path, capsys, monkeypatch):
    import errno

    import imgclf.runners.train.output as train_output
    from imgclf.cli.main import main

    def full_disk(directory, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(directory / "model.safetensors"))

    data = write_class_folder(tmp_path / "data", ["a", "b"], per_class=10, size=16)
    output = tmp_path / "run"
    monkeypatch.setattr(train_output, "save_bundle", full_disk)
    assert main(_train_arguments(data, output)) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith("cannot write " + str(output / "model.safetensors") + ": No space left on device")
    assert "Traceback" not in "\n".join(err)
    monkeypatch.undo()
    assert main([*_train_arguments(data, output), "--resume"]) == 0  # space freed: the run finishes
    assert (output / "model.json").is_file()


SHIPPED_OLD_BUNDLE = Path(__file__).parent / "data" / "bundle-before-description"


def test_a_bundle_and_training_state_from_the_earlier_version_load_predict_and_resume(tmp_path: Path, capsys):
    """Written by imgclf 0.1.0 before model.json and the training state got their typed readers
    (tests/data/README.md): the bundle loads and predicts as before, and --resume reads its state."""
    import shutil

    import imgclf
    from imgclf.cli.main import main

    bundle = tmp_path / "old"
    shutil.copytree(SHIPPED_OLD_BUNDLE, bundle)
    classifier = imgclf.load(bundle)
    assert classifier.classes == [str(digit) for digit in range(10)]
    assert main(["evaluate", str(bundle), "digits", "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    recorded = json.loads((SHIPPED_OLD_BUNDLE / "metrics.json").read_text())["test"]["accuracy"]
    assert abs(evaluated["accuracy"] - recorded) < 0.02  # the same split remade, the same model
    assert main(["train", "digits", "--model", "lenet5", "--epochs", "2", "--threads", "1", "--output", str(bundle),
                 "--resume"]) == 0  # fmt: skip
    assert "every epoch was already trained" in capsys.readouterr().err
    assert imgclf.load(bundle).classes == classifier.classes
