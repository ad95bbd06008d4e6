"""``imgclf review``: the journal's moves and their undo, and the page in headless Chromium."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import write_class_folder
from imgclf.cli.main import main
from imgclf.review.journal import open_journal
from serving import free_port
from test_page import _chromium, _wait, new_browser

CLASSES = ["left", "right", "top"]


def _tree(folder: Path) -> dict[str, str]:
    """Every file below ``folder`` (hidden ones too) with the SHA-256 of its bytes, and every folder."""
    tree = {}
    for path in sorted(folder.rglob("*")):
        key = str(path.relative_to(folder))
        tree[key] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "folder"
    return tree


@pytest.fixture
def labelled(tmp_path) -> Path:
    root = tmp_path / "data"
    write_class_folder(root / "train", CLASSES, per_class=16)
    write_class_folder(root / "val", CLASSES, per_class=6, seed=1)
    return root


def test_moves_are_logged_and_undo_gives_back_the_same_tree(labelled, capsys):
    before = _tree(labelled)
    journal = open_journal(labelled)
    journal.relabel("train/left/000.png", "right")
    journal.relabel("train/left/001.png", "bottom")  # a class folder the review makes
    journal.remove("train/top/002.png")
    journal.keep("train/top/003.png")
    assert (labelled / "train/right/000.png").is_file() and (labelled / "train/bottom/001.png").is_file()
    assert (labelled / ".imgclf-review/trash/train/top/002.png").is_file()
    assert not (labelled / "train/top/002.png").exists()
    journal.undo_last("train/left/000.png")  # the page's U key: that decision alone
    assert (labelled / "train/left/000.png").is_file()
    assert main(["review", str(labelled), "--undo", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["undone"] == 2
    assert _tree(labelled) == before


def test_a_listing_is_edited_and_restored_byte_for_byte(labelled, capsys):
    listing = labelled / "labels.csv"
    rows = ["path,label"] + [f"train/{name}/{i:03d}.png,{name}" for name in CLASSES for i in range(16)]
    listing.write_bytes(("\r\n".join(rows) + "\r\n").encode())  # Windows line ends: kept by the undo
    before = _tree(labelled)
    journal = open_journal(listing)
    journal.relabel("train/left/000.png", "top")
    journal.remove("train/right/001.png")
    text = listing.read_text()
    assert "train/left/000.png,top" in text and "train/right/001.png" not in text
    assert (labelled / "train/right/001.png").is_file()  # a listing's remove keeps the image file
    journal.undo_last("train/right/001.png")
    assert "train/right/001.png,right" in listing.read_text() and "train/left/000.png,top" in listing.read_text()
    assert main(["review", str(listing), "--undo"]) == 0
    assert _tree(labelled) == before


def test_an_archive_is_refused_as_read_only(tmp_path, capsys):
    archive = tmp_path / "photos.zip"
    archive.write_bytes(b"PK")
    assert main(["review", str(archive), "--undo"]) == 2
    assert "read-only" in capsys.readouterr().err


def _label_finder_top(data: Path, output: Path, count: int = 10) -> list[str]:
    result = subprocess.run([sys.executable, "-m", "imgclf", "doctor", str(data), "--labels", "--json", "--output",
                             str(output)], capture_output=True, text=True, check=True)  # fmt: skip
    rows = json.loads(result.stdout)["label_issues"]["issues"][:count]
    return [Path(row["file"]).relative_to(data).as_posix() for row in rows]


def _click_row(driver, index: int) -> None:
    """Click the queue's ``index``-th row. After a change the page draws the queue again, and a row
    found just before that is gone by the click: it is looked up again until a click lands."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    def clicked(driver) -> bool:
        try:
            driver.find_elements(By.CSS_SELECTOR, "#queue li")[index].click()
        except (StaleElementReferenceException, IndexError):
            return False
        return True

    _wait(driver, clicked)


@pytest.mark.skipif(_chromium() is None, reason="needs chromium and chromium-driver (.ci/run installs them)")
def test_review_page_relabels_removes_and_undo_restores(labelled, tmp_path):
    from selenium.webdriver.common.by import By

    flipped = labelled / "train" / "left" / "flipped.png"
    shutil.move(labelled / "train" / "right" / "005.png", flipped)  # a "right" image labelled "left"
    original = _tree(labelled)
    assert "train/left/flipped.png" in _label_finder_top(labelled, tmp_path / "labels")
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "imgclf", "review", str(labelled), "--port", str(port)],
                              stderr=subprocess.PIPE)  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/items", timeout=5)
                break
            except OSError:
                assert server.poll() is None, server.stderr.read().decode()[-2000:]
                time.sleep(0.5)
        driver = new_browser()
        try:
            driver.get(f"http://127.0.0.1:{port}/")
            _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#queue li"))
            files = [row.text.split(" ")[0] for row in driver.find_elements(By.CSS_SELECTOR, "#queue li")]
            target = files.index("train/left/flipped.png")
            _click_row(driver, target)
            driver.find_element(By.CSS_SELECTOR, "body").send_keys(str(CLASSES.index("right") + 1))
            _wait(driver, lambda d: (labelled / "train/right/flipped.png").is_file())
            other = next(i for i, name in enumerate(files) if i != target and name != "train/left/flipped.png")
            _click_row(driver, other)
            driver.find_element(By.ID, "remove").click()
            _wait(driver, lambda d: (labelled / ".imgclf-review" / "trash" / files[other]).is_file())
            _click_row(driver, other)
            driver.find_element(By.CSS_SELECTOR, "body").send_keys("u")  # the removal undone on the page
            _wait(driver, lambda d: (labelled / files[other]).is_file())
            assert "1 of" in driver.find_element(By.ID, "summary").text
        finally:
            driver.quit()
    finally:
        server.terminate()
        server.wait(timeout=30)
    top = _label_finder_top(labelled, tmp_path / "labels")
    assert "train/right/flipped.png" not in top and "train/left/flipped.png" not in top
    assert main(["review", str(labelled), "--undo"]) == 0
    assert _tree(labelled) == original
