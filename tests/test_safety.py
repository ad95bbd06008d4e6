"""Untrusted input: archives that point outside themselves or inflate without end, pickles offered
as models, random bytes offered as images, and a training run killed with SIGKILL."""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from conftest import write_class_folder
from imgclf.bundle import load_bundle
from imgclf.data.dataset import load_dataset
from imgclf.data.decode import decode_image
from imgclf.data.readers import ZipReader
from imgclf.errors import BadImageError, BundleError, DataError

PNG = io.BytesIO()
Image.new("RGB", (6, 5), (10, 200, 30)).save(PNG, format="PNG")


@pytest.mark.parametrize("member", ["../escape/cat/x.png", "/abs/cat/x.png", "data/../../cat/x.png"])
def test_archive_members_pointing_outside_are_refused(tmp_path: Path, member: str):
    archive = tmp_path / "data.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("data/dog/a.png", PNG.getvalue())
        handle.writestr(member, PNG.getvalue())
    with pytest.raises(DataError, match="points outside the archive"):
        load_dataset(str(archive))


def test_tar_members_pointing_outside_are_refused(tmp_path: Path):
    archive = tmp_path / "data.tar.gz"
    with tarfile.open(archive, "w:gz") as handle:
        info = tarfile.TarInfo("../cat/x.png")
        info.size = len(PNG.getvalue())
        handle.addfile(info, io.BytesIO(PNG.getvalue()))
    with pytest.raises(DataError, match="points outside the archive"):
        load_dataset(str(archive))


def test_zip_bomb_is_refused_before_inflating(tmp_path: Path):
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as handle:
        handle.writestr("cat/huge.png", b"\0" * 5_000_000)  # 5 MB of zeros, about 5 KB compressed
    assert archive.stat().st_size < 50_000
    with pytest.raises(DataError, match="zip bomb"):
        ZipReader(archive, max_member_bytes=1_000_000)


class _Marker:
    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_a_pickle_in_a_bundle_folder_never_executes(tmp_path: Path):
    marker = tmp_path / "executed"
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    description = {
        "format": "imgclf-bundle",
        "format_version": 1,
        "architecture": "lenet5",
        "model_kwargs": {"num_classes": 2, "in_chans": 1, "input_size": 28},
        "classes": ["a", "b"],
        "preprocess": {"input_size": 28, "channels": 1, "mean": [0.5], "std": [0.5]},
    }
    (bundle / "model.json").write_text(json.dumps(description))
    (bundle / "model.safetensors").write_bytes(pickle.dumps({"fc3.weight": _Marker(str(marker))}))
    with pytest.raises(BundleError, match="unreadable weights"):
        load_bundle(bundle)
    assert not marker.exists()


def _seed_images() -> list[bytes]:
    images = []
    for fmt, mode in (("PNG", "RGBA"), ("JPEG", "RGB"), ("GIF", "P"), ("BMP", "L"), ("TIFF", "I;16")):
        buffer = io.BytesIO()
        Image.new(mode, (9, 7)).save(buffer, format=fmt)
        images.append(buffer.getvalue())
    return images


# A short run in CI; a longer one: IMGCLF_FUZZ_EXAMPLES=20000 pytest tests/test_safety.py -k fuzz
@settings(max_examples=int(os.environ.get("IMGCLF_FUZZ_EXAMPLES", "300")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
@given(
    seed=st.sampled_from(_seed_images()),
    cuts=st.lists(st.tuples(st.integers(0, 4000), st.integers(0, 255)), max_size=8),
    truncate=st.integers(0, 4000),
    noise=st.binary(max_size=64),
)
def test_fuzz_decoding_only_ever_says_bad_image(seed: bytes, cuts, truncate: int, noise: bytes):
    """Mutated, truncated and random bytes: an array or BadImageError, never another exception."""
    data = bytearray(seed)
    for position, value in cuts:
        if data:
            data[position % len(data)] = value
    data = bytes(data[: max(truncate, 0) or len(data)]) + noise
    try:
        pixels = decode_image(data, "fuzz.bin", max_pixels=1_000_000)
    except BadImageError as error:
        assert error.source == "fuzz.bin"
    else:
        assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] in (1, 3)


def _train_command(data: Path, output: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "imgclf", "train", str(data), "--model", "resnet20", "--epochs", "4",
            "--batch-size", "8", "--threads", "1", "--output", str(output), *extra]  # fmt: skip


def _batches_done(state: Path) -> int:
    """Where inside its epoch the latest training state was written (0: at an epoch end)."""
    try:
        with safe_open(str(state), framework="pt") as file:
            meta = json.loads(file.metadata()["imgclf_training_state"])
    except Exception:  # not there yet, or being replaced
        return 0
    return int((meta.get("epoch_progress") or {}).get("batches_done", 0))


@pytest.mark.parametrize(
    "streaming", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["in-memory", "streaming"]
)
def test_a_run_killed_mid_epoch_resumes_to_the_same_weights(tmp_path: Path, streaming: bool):
    data = write_class_folder(tmp_path / "data", ["a", "b", "c"], per_class=24, size=48)
    extra = ["--checkpoint-interval", "0.05"] + (["--max-memory-gb", "0", "--workers", "1"] if streaming else [])
    subprocess.run(_train_command(data, tmp_path / "whole", *extra), check=True, capture_output=True, timeout=600)
    process = subprocess.Popen(_train_command(data, tmp_path / "cut", *extra), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # fmt: skip
    state = tmp_path / "cut" / "training_state.safetensors"
    deadline = time.monotonic() + 300
    while _batches_done(state) == 0 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL  # killed while training, not finished
    assert not (tmp_path / "cut" / "model.safetensors").exists()
    assert _batches_done(state) > 0  # the state it resumes from was written inside an epoch
    subprocess.run(
        _train_command(data, tmp_path / "cut", *extra, "--resume"), check=True, capture_output=True, timeout=600
    )
    whole = load_file(str(tmp_path / "whole" / "model.safetensors"))
    resumed = load_file(str(tmp_path / "cut" / "model.safetensors"))
    assert all(np.array_equal(whole[name].numpy(), resumed[name].numpy()) for name in whole)
    shutil.rmtree(tmp_path / "whole")


def test_strict_fails_on_the_first_bad_file_and_too_many_bad_files_abort(tmp_path: Path, capsys):
    from imgclf.cli.main import main

    data = write_class_folder(tmp_path / "data", ["a", "b"], per_class=6, size=8)
    (data / "a" / "zero.png").write_bytes(b"")
    assert main(["train", str(data), "--epochs", "1", "--strict", "--output", str(tmp_path / "s")]) == 2
    assert "zero.png: empty file" in capsys.readouterr().err
    for index in range(3):
        (data / "b" / f"junk{index}.jpg").write_bytes(b"<html>")
    assert main(["train", str(data), "--epochs", "1", "--output", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "4 files (25%) cannot be used" in err and "imgclf doctor" in err
    assert (
        main(["train", str(data), "--epochs", "1", "--max-bad-fraction", "0.5", "--output", str(tmp_path / "ok")]) == 0
    )


def test_resume_uses_the_previous_state_when_the_latest_is_damaged(tmp_path: Path, capsys):
    from imgclf.cli.main import main

    data = write_class_folder(tmp_path / "data", ["a", "b"], per_class=8, size=8)
    output = tmp_path / "run"
    arguments = ["train", str(data), "--epochs", "3", "--batch-size", "4", "--output", str(output)]
    assert main(arguments) == 0
    state = output / "training_state.safetensors"
    state.write_bytes(state.read_bytes()[:100])  # a truncated copy
    assert main([*arguments, "--resume"]) == 0
    err = capsys.readouterr().err
    assert "not a readable imgclf training state" in err and "trying the previous" in err


def test_resume_refuses_different_data_unless_forced(tmp_path: Path, capsys):
    from imgclf.cli.main import main

    data = write_class_folder(tmp_path / "data", ["a", "b"], per_class=8, size=8)
    output = tmp_path / "run"
    assert main(["train", str(data), "--epochs", "2", "--batch-size", "4", "--output", str(output)]) == 0
    write_class_folder(tmp_path / "data", ["c"], per_class=8, size=8)
    assert main(["train", str(data), "--resume", "--output", str(output)]) == 2
    assert "the classes differ" in capsys.readouterr().err


def test_resume_auto_starts_then_continues(tmp_path: Path, capsys):
    from imgclf.cli.main import main

    data = write_class_folder(tmp_path / "data", ["a", "b"], per_class=8, size=8)
    arguments = ["train", str(data), "--epochs", "2", "--batch-size", "4", "--output", str(tmp_path / "run"),
                 "--resume", "auto"]  # fmt: skip
    assert main(arguments) == 0
    assert "resuming" not in capsys.readouterr().err
    assert main(arguments) == 0
    assert "resuming" in capsys.readouterr().err


def test_train_refuses_a_folder_of_the_users_files_naming_one_and_leaves_it_untouched(tmp_path: Path, capsys):
    from imgclf.cli.main import main

    output = tmp_path / "out"
    output.mkdir()
    (output / "config.yaml").write_text("mine: true\n")
    (output / "model.safetensors").write_bytes(b"my own weights")
    code = main(["train", "digits", "--model", "lenet5", "--epochs", "1", "--output", str(output)])
    assert code == 2 and "config.yaml and more, which imgclf did not write" in capsys.readouterr().err
    assert (output / "config.yaml").read_text() == "mine: true\n"
    assert (output / "model.safetensors").read_bytes() == b"my own weights"
    assert sorted(p.name for p in output.iterdir()) == ["config.yaml", "model.safetensors"]


def test_a_run_killed_before_its_bundle_can_run_again_and_its_temporary_files_go(tmp_path: Path, capsys):
    from imgclf.cli.main import main
    from imgclf.engine.run_folder import OWNED_FILE

    output = tmp_path / "out"
    assert main(["train", "digits", "--model", "lenet5", "--epochs", "1", "--output", str(output)]) == 0
    for name in ("model.json", "model.safetensors", "metrics.json", "training_state.safetensors"):
        (output / name).unlink(missing_ok=True)  # as if killed before its first checkpoint
    stale = output / ".model.json.x1y2z3.tmp"  # a write killed between its temporary file and the rename
    stale.write_text("{")
    assert (output / OWNED_FILE).exists()
    assert main(["train", "digits", "--model", "lenet5", "--epochs", "1", "--output", str(output)]) == 0
    assert not stale.exists() and (output / "model.json").exists()


def test_explain_never_replaces_the_users_images_and_updates_its_own(tmp_path: Path, digits_bundle, capsys):
    from imgclf.cli.main import main

    images = write_class_folder(tmp_path / "imgs", ["0", "1"], per_class=2, size=8, channels=1)
    originals = {path: path.read_bytes() for path in images.rglob("*.png")}
    folder = images / "0"
    code = main(["explain", str(digits_bundle), str(folder), "--output", str(folder)])
    assert code == 2 and "000.png is already there and imgclf did not write it" in capsys.readouterr().err
    assert {path: path.read_bytes() for path in images.rglob("*.png")} == originals
    assert main(["explain", str(digits_bundle), str(folder), "--output", str(tmp_path / "why")]) == 0
    assert main(["explain", str(digits_bundle), str(folder), "--output", str(tmp_path / "why")]) == 0  # its own
    (tmp_path / "file").write_text("not a folder")
    code = main(["explain", str(digits_bundle), str(folder), "--output", str(tmp_path / "file")])
    assert code == 2 and "exists and is not a folder" in capsys.readouterr().err


def test_with_no_model_and_no_output_the_runs_folder_is_checked_before_any_data_is_read(tmp_path: Path, capsys,
                                                                                         monkeypatch):  # fmt: skip
    """imgclf names the folder after the model it chooses, from the data; the folder it goes in
    must take it before the data is read (here DATA does not even exist)."""
    from imgclf.cli.main import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").write_text("a file where the runs folder would be\n")
    assert main(["train", str(tmp_path / "no-such-photos")]) == 2
    error = capsys.readouterr().err
    assert "runs: cannot write there" in error and "no-such-photos" not in error


def test_a_fifo_and_a_link_to_a_device_are_skipped_not_read(tmp_path: Path):
    """A FIFO named like an image would block every reader forever; a link to /dev/zero would
    fill memory. Both are listed as skipped with the reason, and the commands finish (run as child
    processes with a time limit, so a regression fails instead of hanging the suite)."""
    import subprocess
    import sys

    data = write_class_folder(tmp_path / "data", ["a", "b"], per_class=14, size=16)  # 2 of 30: under 10% unusable
    os.mkfifo(data / "a" / "trap.png")
    (data / "b" / "zero.png").symlink_to("/dev/zero")
    command = [sys.executable, "-m", "imgclf", "doctor", str(data), "--json"]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert finished.returncode == 0, finished.stderr
    skipped = {Path(item["file"]).name: item["reason"] for item in json.loads(finished.stdout)["skipped"]}
    assert "a FIFO" in skipped["trap.png"] and "a character device" in skipped["zero.png"]
    command = [sys.executable, "-m", "imgclf", "train", str(data), "--model", "simple_cnn", "--epochs", "1",
               "--threads", "1", "--output", str(tmp_path / "run")]  # fmt: skip
    finished = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert finished.returncode == 0, finished.stderr
    recorded = json.loads((tmp_path / "run" / "model.json").read_text())["data"]["skipped"]
    assert {Path(item["file"]).name for item in recorded} == {"trap.png", "zero.png"}


def test_resume_auto_on_a_fresh_folder_is_the_run_the_plain_command_makes(tmp_path: Path, capsys):
    """Nothing to resume: the same choices as without --resume (imgclf's label smoothing for the
    model it picks), not a run with the choosing left out."""
    import yaml

    from imgclf.cli.main import main

    assert main(["train", "digits", "--epochs", "1", "--output", str(tmp_path / "plain")]) == 0
    assert main(["train", "digits", "--epochs", "1", "--resume", "auto", "--output", str(tmp_path / "auto")]) == 0
    plain, auto = (yaml.safe_load((tmp_path / name / "config.yaml").read_text()) for name in ("plain", "auto"))
    assert auto == plain and auto["label_smoothing"] == 0.1


@pytest.mark.parametrize("planted", [".imgclf.lock", "tensorboard"])
def test_a_link_planted_in_the_output_is_never_written_through(tmp_path: Path, capsys, planted):
    from imgclf.cli.main import main

    output, target = tmp_path / "run", tmp_path / "elsewhere"
    arguments = ["train", "digits", "--epochs", "1", "--log", "tensorboard", "--output", str(output)]
    assert main(arguments) == 0  # a run of imgclf's own, then a link where it writes
    target.mkdir()
    shutil.rmtree(output / planted, ignore_errors=True)
    (output / planted).symlink_to(target if planted == "tensorboard" else target / "lock")
    capsys.readouterr()
    assert main([*arguments, "--overwrite"]) == 2
    assert f"{planted} is a link" in capsys.readouterr().err
    assert list(target.iterdir()) == []


def test_a_write_to_a_place_that_takes_no_files_is_one_line(digits_bundle, tmp_path: Path, capsys):
    from imgclf.cli.main import main

    assert main(["export", str(digits_bundle), "--output", "/proc/imgclf-test.onnx"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "/proc/imgclf-test.onnx: cannot write there" in error


_FULL_STORAGE = r"""
import resource, signal, sys
from imgclf.cli.main import main
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing
resource.setrlimit(resource.RLIMIT_FSIZE, (96_000, 96_000))  # bytes per file: the training state is larger
sys.exit(main(sys.argv[1:]))
"""


def test_storage_that_refuses_a_write_ends_training_in_one_line(tmp_path):
    """A full disk (here: a per-file size limit, which fails the same write calls) must end the run
    with one line naming the file, not a traceback, and leave no temporary files behind."""
    output = tmp_path / "run"
    command = [sys.executable, "-c", _FULL_STORAGE, "train", "digits", "--output", str(output), "--epochs", "1"]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert finished.returncode == 2, finished.stderr[-2000:]
    assert "Traceback" not in finished.stderr
    last = finished.stderr.strip().splitlines()[-1]
    assert "could not be written (File too large" in last and str(output) in last
    assert not [path.name for path in output.iterdir() if path.name.endswith(".tmp")]


def test_an_image_file_is_read_whole_and_refused_over_its_limit_even_if_it_grew(tmp_path):
    """read_image_file reads as many bytes as the file has; one that grew after its size was read
    is read on (in chunks, never the whole limit at once) and refused once over the limit."""
    from imgclf.data.readers import READ_CHUNK_BYTES, _read_up_to, read_image_file
    from imgclf.errors import BadImageError

    data = os.urandom(3 * READ_CHUNK_BYTES + 17)
    path = tmp_path / "big.jpg"
    path.write_bytes(data)
    assert read_image_file(path) == data
    with pytest.raises(BadImageError, match="over the 1,000-byte limit"):
        read_image_file(path, limit=1000)
    descriptor = os.open(path, os.O_RDONLY)
    try:  # the size read before the file grew: 10 bytes
        assert _read_up_to(descriptor, 10, 10 * READ_CHUNK_BYTES, str(path)) == data
        os.lseek(descriptor, 0, os.SEEK_SET)
        assert len(_read_up_to(descriptor, 10, 2 * READ_CHUNK_BYTES, str(path))) == 2 * READ_CHUNK_BYTES + 1
    finally:
        os.close(descriptor)
