"""`imgclf doctor` and `train` on a messy folder: each bad file named once, with its reason."""

from __future__ import annotations

import html
import io
import json
import re
from pathlib import Path

from PIL import Image

from conftest import write_class_folder
from imgclf.cli.main import main


def _png_bytes(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _messy_folder(root: Path) -> tuple[Path, set[str], dict[str, str]]:
    """Good images plus one of each problem; returns the folder, the bad file names and the
    expected conversion of some converted files."""
    data = write_class_folder(root / "messy", ["cat", "dog"], per_class=12, size=16)
    cat, dog = data / "cat", data / "dog"
    good = (cat / "000.png").read_bytes()
    bad = {
        "empty.jpg": b"",
        "page.jpg": b"<!DOCTYPE html><html><body>404</body></html>",
        "truncated.png": _png_bytes(Image.effect_noise((64, 64), 40).convert("RGB"))[:300],
        "vector.eps": b"%!PS-Adobe-3.0 EPSF-3.0\n",
    }
    for name, content in bad.items():
        (cat / name).write_bytes(content)
    (dog / "cmyk.jpg").write_bytes(_png_bytes(Image.new("CMYK", (16, 16), (0, 80, 80, 0)), "JPEG"))
    (dog / "alpha.png").write_bytes(_png_bytes(Image.new("RGBA", (16, 16), (0, 0, 0, 0))))
    (dog / "really_png.jpg").write_bytes(good)
    (dog / "copy of cat 000.png").write_bytes(good)  # an exact duplicate in another class
    (dog / "ünïcode name with spaces.png").write_bytes(_png_bytes(Image.new("RGB", (1, 1), (9, 9, 9))))
    # The rest of the messy folder: every one either converted (and used) or skipped with its reason.
    jpeg = _png_bytes(Image.effect_noise((64, 64), 40).convert("RGB"), "JPEG")
    bad.update(
        {
            "truncated.jpg": jpeg[: len(jpeg) // 3],
            "bomb.png": _png_bytes(Image.new("1", (9000, 9000))),  # 81 megapixels in a few kB
            "postscript named.png": b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n",
        }
    )
    for name in ("truncated.jpg", "bomb.png", "postscript named.png"):
        (cat / name).write_bytes(bad[name])
    (cat / "gone.png").symlink_to(cat / "no such target.png")  # unreadable: a dangling link
    palette = Image.new("P", (16, 16), 3)
    palette.info["transparency"] = 3
    (dog / "palette_transparent.png").write_bytes(_png_bytes(palette))
    (dog / "la.png").write_bytes(_png_bytes(Image.new("LA", (16, 16), (100, 128))))
    (dog / "sixteen.png").write_bytes(_png_bytes(Image.new("I;16", (16, 16), 40000)))
    (dog / "onebit.png").write_bytes(_png_bytes(Image.new("1", (16, 16), 1)))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees
    (dog / "phone.jpg").write_bytes(_png_bytes(Image.new("RGB", (20, 16), (200, 10, 10)), "JPEG", exif=exif))
    frames = [Image.new("RGB", (16, 16), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    (dog / "animated.gif").write_bytes(buffer.getvalue())
    (dog / ("very long name " * 14 + ".png")).write_bytes(good)
    (data / ".ipynb_checkpoints").mkdir()
    (data / ".ipynb_checkpoints" / "x.png").write_bytes(good)
    expected = {
        "cmyk.jpg": "CMYK converted to RGB",
        "alpha.png": "transparency composited on white",
        "really_png.jpg": "named .jpg but holds PNG",
        "palette_transparent.png": "transparency composited on white",
        "la.png": "transparency composited on white",
        "sixteen.png": "16-bit values rescaled to 8-bit",
        "onebit.png": "1-bit expanded to 8-bit grayscale",
        "phone.jpg": "rotated by its EXIF orientation",
        "animated.gif": "the first frame is used",
    }
    # .eps is not an image extension: ignored, never opened
    skipped = {
        "empty.jpg",
        "page.jpg",
        "truncated.png",
        "truncated.jpg",
        "bomb.png",
        "postscript named.png",
        "gone.png",
    }
    return data, skipped, expected


def test_doctor_lists_each_bad_file_and_conversion(tmp_path, capsys):
    data, skipped, expected = _messy_folder(tmp_path)
    assert main(["doctor", str(data), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {Path(item["file"]).name for item in report["skipped"]} == skipped
    reasons = {Path(item["file"]).name: item["reason"] for item in report["skipped"]}
    assert "empty file" in reasons["empty.jpg"] and "not an image" in reasons["page.jpg"]
    assert "cannot decode" in reasons["truncated.png"] and "cannot decode" in reasons["truncated.jpg"]
    assert "pixels" in reasons["bomb.png"] and "not found" in reasons["gone.png"]
    assert (
        "not an allowed image format" in reasons["postscript named.png"]
        or "not an image" in reasons["postscript named.png"]
    )
    details = {Path(row["file"]).name: row["detail"] for row in report["files"]}
    for name, conversion in expected.items():
        assert conversion in details[name]
    ignored = {Path(item["file"]).name: item["reason"] for item in report["ignored"]}
    assert ignored["vector.eps"] == "not an image file extension" and "x.png" in ignored
    duplicated = [sorted(Path(f).name for f in group) for group in sum(report["duplicates"].values(), [])]
    long_name = "very long name " * 14 + ".png"
    assert sorted(["000.png", "copy of cat 000.png", long_name, "really_png.jpg"]) in duplicated
    assert report["classes"] == ["cat", "dog"]


def test_train_on_the_messy_folder_skips_exactly_the_files_doctor_names(tmp_path, capsys):
    data, skipped, _ = _messy_folder(tmp_path)
    command = ["train", str(data), "--epochs", "1", "--max-bad-fraction", "0.3", "--output", str(tmp_path / "bundle")]
    assert main([*command, "--json"]) == 0
    capsys.readouterr()
    description = json.loads((tmp_path / "bundle" / "model.json").read_text())
    assert {Path(item["file"]).name for item in description["data"]["skipped"]} == skipped
    report = (tmp_path / "bundle" / "report.html").read_text(encoding="utf-8")
    data_section = report[report.index('<section id="dataset">') : report.index('<section id="training">')]
    listed = re.findall(r"<tr><td>([^<]+)</td><td>([^<]+)</td></tr>", data_section)
    assert {Path(html.unescape(file)).name for file, _ in listed} == skipped
    assert all(reason.strip() for _, reason in listed)
    assert any("duplicate" in w or "more than one split" in w for w in description["data"]["warnings"]) or (
        description["data"]["duplicates"]["within_split"] >= 1
    )


def test_doctor_warns_when_a_format_predicts_the_label(tmp_path, capsys):
    data = write_class_folder(tmp_path / "a", ["png_class"], per_class=6, size=8, suffix=".png")
    write_class_folder(tmp_path / "a", ["jpg_class"], per_class=6, size=8, suffix=".jpg", seed=1)
    assert main(["doctor", str(data), "--json"]) == 0
    warnings = json.loads(capsys.readouterr().out)["warnings"]
    assert any("format PNG" in warning and "png_class" in warning for warning in warnings)


def test_doctor_warns_about_imbalance(tmp_path, capsys):
    data = write_class_folder(tmp_path / "b", ["many"], per_class=20, size=8)
    write_class_folder(tmp_path / "b", ["few"], per_class=4, size=8, seed=2)
    assert main(["doctor", str(data)]) == 0
    assert "--class-weights balanced" in capsys.readouterr().out


def test_class_sets_that_differ_between_splits_and_empty_class_folders(tmp_path, capsys):
    root = tmp_path / "given"
    write_class_folder(root / "train", ["a", "b", "c"], per_class=6, size=8)
    write_class_folder(root / "val", ["a", "b"], per_class=2, size=8, seed=1)
    write_class_folder(root / "test", ["a", "d"], per_class=2, size=8, seed=2)
    (root / "train" / "empty").mkdir()
    assert main(["doctor", str(root)]) == 2
    assert "class 'd' is in test but has no training images" in capsys.readouterr().err
    for image in (root / "test" / "d").iterdir():
        image.unlink()
    (root / "test" / "d").rmdir()
    assert main(["doctor", str(root), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["classes"] == ["a", "b", "c"]  # c may be missing from val and test: it is still a class
    ignored = {Path(item["file"]).name: item["reason"] for item in report["ignored"]}
    assert ignored["empty"] == "class folder without images: not a class"


def test_a_file_that_vanishes_after_the_scan_is_skipped_and_named(tmp_path):
    from imgclf.data.dataset import load_dataset
    from imgclf.data.prepare import Preprocess, prepare_splits, profile_dataset

    data = write_class_folder(tmp_path / "data", ["a", "b"], per_class=6, size=8)
    dataset = load_dataset(str(data))
    profile_dataset(dataset)  # the scan saw every file
    (data / "a" / "003.png").unlink()  # gone before decoding
    preprocess = Preprocess(8, 3, (0.5,) * 3, (0.5,) * 3)
    for in_memory in (True, False):
        prepared = prepare_splits(dataset, preprocess, in_memory=in_memory, workers=1)
        if in_memory:
            assert [(Path(f).name, r) for f, r in prepared.skipped] == [
                ("003.png", "file not found (moved or deleted?)")
            ]
        else:  # streaming: the file is skipped in its batch when it is reached
            items = [prepared.splits[name][i] for name in prepared.splits for i in range(len(prepared.splits[name]))]
            assert sum(item is None for item in items) == 1


def test_a_long_file_scan_says_how_far_it_has_come(image_folder, capsys, monkeypatch):
    """A scan of many files prints a progress line every so often (every 10 s; here at once)."""
    import imgclf.data.prepare
    from imgclf.cli.main import main

    monkeypatch.setattr(imgclf.data.prepare, "SCAN_REPORT_EVERY_S", 0.0)
    assert main(["doctor", str(image_folder)]) == 0
    assert "scanning files: 72 of 72" in capsys.readouterr().err
    assert main(["train", str(image_folder), "--model", "simple_cnn", "--epochs", "1", "--threads", "1",
                 "--output", str(image_folder.parent / "run")]) == 0  # fmt: skip
    assert "scanning files: 72 of 72" in capsys.readouterr().err
