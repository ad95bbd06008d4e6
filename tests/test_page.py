"""The web page at / as a person uses it, in headless Chromium: layout at desktop and phone
widths, drop, paste, several images at once, readable errors, and a server with a token."""

from __future__ import annotations

import base64
import io
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from serving import TOKEN, Server, digit_png

WIDTHS = (1200, 390)  # a desktop window and a phone


def _chromium() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver") or (
        "/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists() else None
    )
    return (browser, driver) if browser and driver else None


pytestmark = pytest.mark.skipif(
    _chromium() is None, reason="needs chromium and chromium-driver (.ci/run installs them)"
)


def new_browser():
    """Headless Chromium driven by Selenium (the review page's test uses it too)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = _chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver_path), options=options)


@pytest.fixture
def browser():
    driver = new_browser()
    yield driver
    driver.quit()


def _photo(tmp_path: Path, name: str = "china.jpg") -> Path:
    """A real photo: one of scikit-learn's sample images (it ships them)."""
    from sklearn.datasets import load_sample_image

    path = tmp_path / name
    Image.fromarray(load_sample_image(name)).save(path, quality=90)
    return path


def _wait(driver, condition, seconds: float = 30):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, seconds).until(condition)


def _boxes(driver) -> dict[str, dict]:
    script = """const boxes = {};
    for (const id of ["model", "drop", "card", "code", "classify"]) {
      const r = document.getElementById(id).getBoundingClientRect();
      boxes[id] = {left: r.left, top: r.top, right: r.right, bottom: r.bottom};
    }
    boxes.header = document.querySelector("header").getBoundingClientRect().toJSON();
    return boxes;"""
    return driver.execute_script(script)


def _overlap(a: dict, b: dict) -> bool:
    return a["left"] < b["right"] and b["left"] < a["right"] and a["top"] < b["bottom"] and b["top"] < a["bottom"]


def _send_by_event(driver, kind: str, path: Path) -> None:
    """Drop a file on the drop zone, or paste it, as the browser would deliver it."""
    data = base64.b64encode(path.read_bytes()).decode()
    driver.execute_script(
        """const [kind, name, data] = arguments;
        const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], name, {type: "image/jpeg"}));
        if (kind === "drop") document.getElementById("drop").dispatchEvent(
            new DragEvent("drop", {dataTransfer: transfer, bubbles: true, cancelable: true}));
        else document.dispatchEvent(
            new ClipboardEvent("paste", {clipboardData: transfer, bubbles: true, cancelable: true}));""",
        kind,
        path.name,
        data,
    )


def _screenshot(driver, name: str) -> None:
    """With IMGCLF_SCREENSHOTS=DIR the README's pictures are written there."""
    folder = os.environ.get("IMGCLF_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(folder) / name))


def _files(tmp_path: Path) -> dict[str, Path]:
    files = {"photo": _photo(tmp_path), "flower": _photo(tmp_path, "flower.jpg"), "digit": tmp_path / "seven.png",
             "text": tmp_path / "notes.txt", "large": tmp_path / "large.png"}  # fmt: skip
    files["digit"].write_bytes(digit_png(7)[0])
    files["text"].write_text("not a picture\n" * 10)
    Image.frombytes("RGB", (800, 800), os.urandom(800 * 800 * 3)).save(files["large"])  # ~1.9 MB of noise
    return files


def _check_layout(browser, server: Server, width: int, token: bool) -> None:
    from selenium.webdriver.common.by import By

    boxes = _boxes(browser)
    for first, second in (("header", "drop"), ("header", "card"), ("drop", "card"), ("header", "classify")):
        assert not _overlap(boxes[first], boxes[second]), (width, first, second, boxes)
    assert boxes["drop"]["right"] <= width and boxes["card"]["right"] <= width
    facts = browser.find_element(By.ID, "facts").text
    assert "8 x 8 px" in facts and "on its test split" in facts and "parameters" in facts
    auth = ' -H "Authorization: Bearer $IMGCLF_TOKEN"' if token else ""
    assert browser.find_element(By.ID, "curl-one").text == f"curl{auth} -F file=@photo.jpg {server.url}/v1/predict"


def _use_like_a_person(browser, files: dict[str, Path]) -> None:
    """Drop a real photo (bars and Grad-CAM), paste an image, send three at once, then a text file
    and an oversized one (readable messages)."""
    from selenium.webdriver.common.by import By

    _send_by_event(browser, "drop", files["photo"])
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".result .bar"))
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".result figure.cam img"))  # Grad-CAM beside it
    first = browser.find_element(By.CSS_SELECTOR, ".result")
    if first.find_element(By.CSS_SELECTOR, ".label").text == "No label":
        assert "not sure enough" in first.find_element(By.CSS_SELECTOR, ".why").text
    browser.find_element(By.ID, "clear").click()
    _send_by_event(browser, "paste", files["digit"])
    _wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".result .bars")) == 1)
    browser.find_element(By.ID, "clear").click()
    three = "\n".join(str(files[name]) for name in ("photo", "digit", "flower"))
    browser.find_element(By.ID, "file").send_keys(three)
    _wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".result .bars")) == 3)  # one batch, a grid
    browser.find_element(By.ID, "file").send_keys(str(files["text"]))
    message = "notes.txt: this is not an image the server can read"
    _wait(browser, lambda d: message in d.find_element(By.ID, "message").text)
    browser.find_element(By.ID, "file").send_keys(str(files["large"]))
    message = "large.png: this file is too large for the server (the limit is 1 MB)"
    _wait(browser, lambda d: message in d.find_element(By.ID, "message").text)


def test_the_page_reads_well_and_answers_at_desktop_and_phone_widths(digits_bundle, browser, tmp_path):
    from selenium.webdriver.common.by import By

    server = Server(digits_bundle, "--max-body-mb", "1")
    files = _files(tmp_path)
    try:
        for width in WIDTHS:
            browser.set_window_size(width, 1000)
            browser.get(server.url + "/")
            _wait(browser, lambda d: "classes" in d.find_element(By.ID, "model").text)
            _check_layout(browser, server, width, token=False)
            _screenshot(browser, f"page-{width}-before.png")
            _use_like_a_person(browser, files)
    finally:
        server.stop()


def test_the_page_asks_for_the_token_once_and_keeps_it_for_the_tab(digits_bundle, browser, tmp_path):
    from selenium.webdriver.common.by import By

    server = Server(digits_bundle, "--token", TOKEN, "--max-body-mb", "1")
    files = _files(tmp_path)
    try:
        browser.set_window_size(WIDTHS[0], 1000)
        browser.get(server.url + "/")
        _wait(browser, lambda d: d.find_element(By.ID, "auth").is_displayed())
        browser.find_element(By.ID, "token").send_keys("wrong")
        browser.find_element(By.ID, "use-token").click()
        _wait(browser, lambda d: "token was not accepted" in d.find_element(By.ID, "message").text)
        token_field = browser.find_element(By.ID, "token")
        token_field.clear()
        token_field.send_keys(TOKEN)
        browser.find_element(By.ID, "use-token").click()
        _wait(browser, lambda d: "classes" in d.find_element(By.ID, "model").text)
        assert not browser.find_element(By.ID, "auth").is_displayed()
        browser.refresh()  # the same tab: no second question
        _wait(browser, lambda d: "classes" in d.find_element(By.ID, "model").text)
        assert not browser.find_element(By.ID, "auth").is_displayed()
        _check_layout(browser, server, WIDTHS[0], token=True)
        _use_like_a_person(browser, files)
    finally:
        server.stop()


def test_large_image_helper_is_over_the_limit(tmp_path):
    """The oversized file above must really be over 1 MB, or the 413 check proves nothing."""
    buffer = io.BytesIO()
    Image.frombytes("RGB", (800, 800), os.urandom(800 * 800 * 3)).save(buffer, format="PNG")
    assert buffer.tell() > 1024 * 1024


def test_class_names_from_data_are_text_on_the_page(browser, tmp_path):
    """A class folder named ``<img src=x onerror=...>`` (and escapes, markup, a javascript: URL,
    a right-to-left override) is shown as its characters, and nothing in it runs."""
    from selenium.webdriver.common.by import By

    import imgclf
    from test_names import FOLDER_CLASSES, write_hostile_folder

    data = write_hostile_folder(tmp_path / "data")
    bundle = tmp_path / "bundle"
    imgclf.train(str(data), output=bundle, model="simple_cnn", epochs=2, batch_size=8, threads=1)
    server = Server(bundle)
    try:
        browser.set_window_size(WIDTHS[0], 1000)
        browser.get(server.url + "/")
        _wait(browser, lambda d: "classes" in d.find_element(By.ID, "model").text)
        _send_by_event(browser, "drop", data / FOLDER_CLASSES[3] / "000.png")
        _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".result .bar"))
        assert browser.execute_script("return window.__pwned === undefined")
        assert browser.execute_script('return document.querySelectorAll("img[src=x]").length') == 0
        shown = browser.find_element(By.CSS_SELECTOR, ".result").text
        assert any(
            name.strip("\x1b\u202e\u200f") in shown
            for name in ("[bold]loud", FOLDER_CLASSES[3], "javascript:alert(1)", "red", "evil")
        )
    finally:
        server.stop()


def test_a_multi_label_model_shows_every_label_it_gives(browser, tmp_path):
    """An image with two bars, on a model trained on label sets: the card names both labels and
    draws a bar for each label's own probability."""
    import numpy as np
    from selenium.webdriver.common.by import By

    from imgclf.cli.main import main
    from test_multilabel import bars_image, write_bars_csv

    data = write_bars_csv(tmp_path / "data", 240)
    bundle = tmp_path / "bundle"
    assert main(["train", str(data), "--model", "simple_cnn", "--epochs", "15", "--batch-size", "16", "--output",
                 str(bundle)]) == 0  # fmt: skip
    image = tmp_path / "two.png"
    bars_image(["column", "top"], np.random.default_rng(5)).save(image)
    server = Server(bundle)
    try:
        browser.set_window_size(WIDTHS[0], 1000)
        browser.get(server.url + "/")
        _wait(browser, lambda d: "labels (several per image)" in d.find_element(By.ID, "model").text)
        assert "macro-F1" in browser.find_element(By.ID, "facts").text
        _send_by_event(browser, "drop", image)
        _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".result .bar"))
        shown = browser.find_element(By.CSS_SELECTOR, ".result .label").text
        assert sorted(shown.split(" + ")) == ["column", "top"]
        assert len(browser.find_elements(By.CSS_SELECTOR, ".result .bar")) == 4  # top-k: every label here
        _screenshot(browser, "multi-label.png")
    finally:
        server.stop()


def _onnxruntime_web() -> Path | None:
    from imgclf.errors import UsageError
    from imgclf.export.web import find_onnxruntime_web

    try:
        return find_onnxruntime_web()
    except UsageError:
        return None


@pytest.mark.skipif(_onnxruntime_web() is None, reason="needs onnxruntime-web from npm (make test installs it)")
def test_the_web_export_classifies_in_the_browser_as_imgclf_does(browser, tmp_path):
    """``export --format web``: the folder, served by a plain static server, classifies images
    dropped on its page in headless Chromium (onnxruntime-web, offline), with imgclf's answers."""
    import functools
    import http.server
    import json
    import threading

    from selenium.webdriver.common.by import By

    import imgclf
    from conftest import write_class_folder
    from imgclf.cli.main import main

    data = write_class_folder(tmp_path / "data", ["left", "right", "top"], per_class=20, size=20)
    bundle, web = tmp_path / "bundle", tmp_path / "web"
    assert main(["train", str(data), "--model", "simple_cnn", "--epochs", "15", "--batch-size", "16", "--output",
                 str(bundle)]) == 0  # fmt: skip
    assert main(["export", str(bundle), "--format", "web", "--output", str(web)]) == 0
    assert json.loads((web / "contract.json").read_text())["classes"] == ["left", "right", "top"]
    files = sorted(data.rglob("*.png"))[::10][:6]
    expected = [answer["label"] for answer in imgclf.load(bundle).predict(files)]
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(web))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        browser.get(f"http://127.0.0.1:{server.server_port}/index.html")
        _wait(browser, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "yes", 60)
        browser.find_element(By.ID, "file").send_keys("\n".join(str(file) for file in files))
        _wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".result[data-done=yes]")) == len(files), 60)
        shown = [card.find_element(By.CSS_SELECTOR, ".label").text  # in the order given (one at a time)
                 for card in browser.find_elements(By.CSS_SELECTOR, ".result")]  # fmt: skip
        assert shown == [label or "No label" for label in expected]
    finally:
        server.shutdown()
