"""Predicting at scale: rows written as they come, shards, resuming after kill -9, the Predictor."""

from __future__ import annotations

import csv
import json
import os
import pickle
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest

from imgclf.cli.main import main
from imgclf.scale import Predictor, in_shard, list_sources
from serving import digit_png

IMAGES = 600


@pytest.fixture(scope="module")
def digit_files(tmp_path_factory) -> Path:
    """600 digit PNGs in ten folders, and one file that is not an image."""
    root = tmp_path_factory.mktemp("many")
    for index in range(IMAGES):
        data, label = digit_png(index)
        folder = root / label
        folder.mkdir(exist_ok=True)
        (folder / f"{index:04d}.png").write_bytes(data)
    (root / "3" / "broken.png").write_bytes(b"not a png")
    return root


@pytest.fixture(scope="module")
def digits_onnx(digits_bundle, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("onnx") / "digits.onnx"
    assert main(["export", str(digits_bundle), "--output", str(output)]) == 0
    return output


def _rows(path: Path) -> list[dict]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as parquet

        return sorted(parquet.read_table(path).to_pylist(), key=lambda row: row["path"])
    if path.suffix == ".jsonl":
        return sorted((json.loads(line) for line in path.read_text().splitlines()), key=lambda row: row["path"])
    return sorted(csv.DictReader(path.open()), key=lambda row: row["path"])


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
def test_rows_for_every_file_and_one_for_the_broken_one(digits_bundle, digit_files, tmp_path, suffix, capsys):
    output = tmp_path / f"rows{suffix}"
    assert main(["predict", str(digits_bundle), str(digit_files), "--output", str(output), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == IMAGES + 1
    rows = _rows(output)
    assert len(rows) == IMAGES + 1 and len({row["path"] for row in rows}) == IMAGES + 1
    broken = [row for row in rows if row["path"].endswith("broken.png")]
    assert broken[0]["error"] and not broken[0]["label"]
    right = [row for row in rows if row["label"] == Path(row["path"]).parent.name]
    assert len(right) > 0.8 * IMAGES  # the same bundle the server tests use: about 95% right
    assert not output.with_name(output.name + ".parts").exists()
    assert main(["predict", str(digits_bundle), str(digit_files), "--output", str(output)]) == 2  # never overwritten


def _recording_start_methods(monkeypatch) -> list[str]:
    """The start method of every worker pool the run makes (fork, spawn), recorded as it is made."""
    import concurrent.futures

    methods: list[str] = []
    pool_class = concurrent.futures.ProcessPoolExecutor

    def recording(*args, mp_context=None, **kwargs):
        methods.append(mp_context.get_start_method())
        return pool_class(*args, mp_context=mp_context, **kwargs)

    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", recording)
    return methods


def test_two_shards_are_the_whole_without_overlap(digits_onnx, digit_files, tmp_path, capsys, monkeypatch):
    """The halves come from two worker processes each, the whole from one process: the same rows."""
    methods = _recording_start_methods(monkeypatch)
    whole = tmp_path / "whole.csv"
    assert main(["predict", str(digits_onnx), str(digit_files), "--output", str(whole), "--processes", "1"]) == 0
    halves = []
    for index in (0, 1):
        half = tmp_path / f"half{index}.csv"
        arguments = ["predict", str(digits_onnx), str(digit_files), "--output", str(half), "--shard", f"{index}/2",
                     "--processes", "2", "--rows-per-part", "50"]  # fmt: skip
        assert main(arguments) == 0
        halves.append(_rows(half))
    assert methods == (["fork", "fork"] if sys.platform == "linux" else ["spawn", "spawn"])  # the halves only
    assert len(halves[0]) > 200 and len(halves[1]) > 200
    assert not {row["path"] for row in halves[0]} & {row["path"] for row in halves[1]}
    assert sorted(halves[0] + halves[1], key=lambda row: row["path"]) == _rows(whole)


def _processes_writing(output: Path) -> list[int]:
    """The processes whose command line names ``output`` (a run and its workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and str(output).encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:  # gone meanwhile
            continue
    return found


def test_a_bundle_in_two_worker_processes_gives_the_rows_of_one(digits_bundle, digit_files, tmp_path, monkeypatch):
    """Worker processes of a bundle are started afresh (PyTorch's threads do not survive a fork)."""
    methods = _recording_start_methods(monkeypatch)
    listing = tmp_path / "some.txt"
    listing.write_text("".join(f"{path}\n" for path in sorted(digit_files.rglob("*.png"))[:40]))
    rows = {}
    for processes in (1, 2):
        output = tmp_path / f"rows-{processes}.jsonl"
        arguments = ["predict", str(digits_bundle), str(listing), "--output", str(output), "--processes",
                     str(processes), "--batch-size", "10", "--rows-per-part", "20"]  # fmt: skip
        assert main(arguments) == 0
        rows[processes] = _rows(output)
    assert len(rows[1]) == 40 and methods == ["spawn"]
    # The same labels and rows; PyTorch's last digit may move with threads and batches (1e-6).
    for one, two in zip(rows[1], rows[2]):
        assert {**one, "top_k": None, "probability": None} == {**two, "top_k": None, "probability": None}
        if one["probability"] is None:  # abstained: no probability on either side
            assert two["probability"] is None
        else:
            assert one["probability"] == pytest.approx(two["probability"], abs=2e-6)


@pytest.mark.parametrize("processes", [1, 2])
def test_kill_9_three_times_then_resume_gives_the_uninterrupted_rows(digits_onnx, digit_files, tmp_path, processes):
    reference = tmp_path / "reference.jsonl"
    assert main(["predict", str(digits_onnx), str(digit_files), "--output", str(reference)]) == 0
    output = tmp_path / "killed.jsonl"
    parts = output.with_name(output.name + ".parts")
    command = [sys.executable, "-m", "imgclf", "predict", str(digits_onnx), str(digit_files), "--output", str(output),
               "--rows-per-part", "10", "--batch-size", "10", "--resume", "--processes", str(processes)]  # fmt: skip
    kills = 0
    for wanted_parts in (3, 20, 40):
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while process.poll() is None and time.monotonic() < deadline:
            if parts.is_dir() and len(list(parts.glob("part-*"))) >= wanted_parts:
                os.kill(process.pid, signal.SIGKILL)
                kills += 1
                break
            time.sleep(0.005)
        process.wait()
    assert kills >= 1  # on a fast machine a run may finish before its kill: the rows must still be right
    if sys.platform == "linux":  # the killed run's workers leave too, instead of waiting forever
        deadline = time.monotonic() + 30
        while _processes_writing(output) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _processes_writing(output)
    assert subprocess.run(command, capture_output=True).returncode == 0
    assert _rows(output) == _rows(reference)


@pytest.mark.parametrize("processes", ["1", "2"])
def test_a_file_that_is_no_imgclf_model_is_one_error_and_leaves_nothing(digit_files, tmp_path, capsys, processes):
    """Not a row per file saying the model is wrong, and no parts folder that asks for --resume."""
    import onnx
    from onnx import TensorProto, helper

    plain = tmp_path / "plain.onnx"
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])  # fmt: skip
    onnx.save(helper.make_model(graph), plain)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_text("not a model")
    for model, reason in ((plain, "not an ONNX file written by imgclf export"), (garbage, "onnxruntime cannot load")):
        output = tmp_path / f"{model.stem}.csv"
        assert main(["predict", str(model), str(digit_files / "1"), "--output", str(output), "--processes",
                     processes]) == 2  # fmt: skip
        assert reason in capsys.readouterr().err
        assert not output.exists() and not output.with_name(output.name + ".parts").exists()


def test_sources_can_be_archives_and_listings(digit_files, tmp_path):
    archive = tmp_path / "digits.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(digit_files / "1", arcname="1")
    listing = tmp_path / "list.txt"
    listing.write_text(f"# two files\n{digit_files / '2' / '0002.png'}\n{digit_files / '0' / '0000.png'}\n")
    table = tmp_path / "files.csv"
    table.write_text(f"path,label\n{digit_files / '4' / '0004.png'},4\n")
    names = [name for name, _, _ in list_sources([str(archive), str(listing), str(table)])]
    assert len(names) == len(list((digit_files / "1").iterdir())) + 2 + 1
    assert names[-3:] == [str(digit_files / "2" / "0002.png"), str(digit_files / "0" / "0000.png"),
                          str(digit_files / "4" / "0004.png")]  # fmt: skip
    assert all(name.startswith(f"{archive}:1/") for name in names[:-3])


def test_parts_are_joined_across_row_groups_in_order(tmp_path, monkeypatch):
    """The output is joined a few parts at a time (never whole in memory): every row, in order, in
    as many Parquet row groups as that takes; a run with nothing to predict writes an empty file."""
    import pyarrow.parquet as parquet

    from imgclf import scale

    monkeypatch.setattr(scale, "ROW_GROUP_ROWS", 25)
    writer = scale.PartWriter(tmp_path / "rows.parquet", resume=False)
    names = [f"photos/{index:03d}.jpg" for index in range(70)]
    for start in range(0, 70, 10):
        writer.write([scale.row_of(name, {"label": "cat", "top_k": [{"label": "cat", "probability": 0.9}]})
                      for name in names[start : start + 10]])  # fmt: skip
    output = parquet.ParquetFile(writer.finish())
    assert output.metadata.num_row_groups == 3  # 30, 30 and 10 rows
    assert output.read(columns=["path"]).column("path").to_pylist() == names
    assert not (tmp_path / "rows.parquet.parts").exists()
    empty = scale.PartWriter(tmp_path / "none.csv", resume=False).finish()
    assert empty.read_text().splitlines() == [",".join(scale.COLUMNS)]


def test_shards_split_any_names_evenly():
    names = [f"photos/{index}.jpg" for index in range(4000)]
    counts = [sum(in_shard(name, index, 4) for name in names) for index in range(4)]
    assert sum(counts) == 4000 and min(counts) > 900


def test_predictor_pickles_small_and_answers_like_predict(digits_onnx, digits_bundle, digit_files):
    for source in (digits_onnx, digits_bundle):
        predictor = Predictor(source, top_k=2)
        files = sorted((digit_files / "7").glob("*.png"))[:5]
        expected = [predictor.answers([path.read_bytes()])[0]["label"] for path in files]
        copy = pickle.loads(pickle.dumps(predictor))
        assert len(pickle.dumps(predictor)) < 1000 and copy._engine is None
        columns = copy({"bytes": [path.read_bytes() for path in files] + [b"junk"]})
        assert columns["label"][:5] == expected and columns["error"][5] and columns["label"][5] is None
        assert set(columns) == {"label", "probability", "labels", "top_k", "abstained", "error"}


def test_predicting_with_an_onnx_file_never_loads_pytorch(digits_onnx, digit_files, tmp_path):
    """An exported file runs on onnxruntime alone: PyTorch's 1 GB and 2 s stay out of the process."""
    output = tmp_path / "rows.csv"
    script = ("import sys; from imgclf.cli.main import main; "
              f"code = main(['predict', {str(digits_onnx)!r}, {str(digit_files)!r}, '--output', {str(output)!r}]); "
              "assert code == 0; assert 'torch' not in sys.modules, 'PyTorch was imported'")  # fmt: skip
    finished = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr
    assert len(list(csv.DictReader(output.open()))) == IMAGES + 1  # every file, the broken one included


def test_decoding_goes_to_threads_only_where_they_are_faster():
    from concurrent.futures import ThreadPoolExecutor

    from imgclf.runners.predict import _DecodeChooser

    def waits(item):  # like a photo: the wait releases the interpreter lock, so threads overlap
        time.sleep(0.004)
        return item

    def slower_in_threads(item):  # like a tiny file: threads only fight over the interpreter lock
        if threading.current_thread() is not threading.main_thread():
            time.sleep(0.01)
        return item

    with ThreadPoolExecutor(max_workers=4) as pool:
        for function, expected in ((waits, "threads"), (slower_in_threads, "in turn")):
            chooser = _DecodeChooser(pool, workers=4)
            for batch in range(2 + 2 * _DecodeChooser.TRIALS):
                items = list(range(batch * 8, batch * 8 + 8))
                assert chooser.decode(function, items) == items  # in order, whichever way
            assert chooser.chosen == expected
        assert _DecodeChooser(pool, workers=1).chosen == "in turn"


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
def test_a_file_name_that_is_not_utf8_is_a_row_and_resumes(digits_onnx, tmp_path, suffix):
    """Linux names may hold any bytes: the row says which file it was (odd bytes as escapes), and a
    resumed run knows it is done."""
    from imgclf.runners.predict import run_predict_to_file
    from imgclf.scale import PartWriter, row_of

    folder = tmp_path / "photos"
    folder.mkdir()
    odd = os.path.join(os.fsencode(folder), b"caf\xe9-1.png")
    with open(odd, "wb") as handle:
        handle.write(digit_png(1)[0])
    (folder / "plain-2.png").write_bytes(digit_png(2)[0])
    odd_name = os.fsdecode(odd)
    output = tmp_path / f"rows{suffix}"
    PartWriter(output, resume=False).write([row_of(odd_name, {"label": "1", "top_k": []})])  # as a killed run left it
    result = run_predict_to_file(digits_onnx, [str(folder)], output, resume=True)
    assert (result["done_before"], result["predicted_now"]) == (1, 1)
    assert [row["path"] for row in _rows(output)] == [str(folder / "caf\\xe9-1.png"), str(folder / "plain-2.png")]
