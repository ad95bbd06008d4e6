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


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = _chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
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


def test_the_page_reads_well_and_answers_at_desktop_and_phone_widths(digits_bundle, browser, tmp_path):
    from selenium.webdriver.common.by import By

    server = Server(digits_bundle, "--max-body-mb", "1")
    photo, digit = _photo(tmp_path), tmp_path / "seven.png"
    digit.write_bytes(digit_png(7)[0])
    text_file = tmp_path / "notes.txt"
    text_file.write_text("not a picture\n" * 10)
    large = tmp_path / "large.png"
    Image.frombytes("RGB", (800, 800), os.urandom(800 * 800 * 3)).save(large)  # ~1.9 MB of noise
    try:
        for width in WIDTHS:
            browser.set_window_size(width, 1000)
            browser.get(server.url + "/")
            _wait(browser, lambda d: "classes" in d.find_element(By.ID, "model").text)
            boxes = _boxes(browser)
            for first, second in (("header", "drop"), ("header", "card"), ("drop", "card"), ("header", "classify")):
                assert not _overlap(boxes[first], boxes[second]), (width, first, second, boxes)
            assert boxes["drop"]["right"] <= width and boxes["card"]["right"] <= width
            facts = browser.find_element(By.ID, "facts").text
            assert "8 x 8 px" in facts and "accuracy" in facts and "on its test split" in facts
            assert (
                "curl -F file=@photo.jpg " + server.url + "/v1/predict" in browser.find_element(By.ID, "curl-one").text
            )
            _screenshot(browser, f"page-{width}-before.png")

            _send_by_event(browser, "drop", photo)  # a real photo, dropped
            _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".result .bar"))
            _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".result figure.cam img"))  # Grad-CAM beside it
            first = browser.find_element(By.CSS_SELECTOR, ".result")
            assert first.find_element(By.CSS_SELECTOR, ".label").text
            if first.find_element(By.CSS_SELECTOR, ".label").text == "No label":
                assert "not sure enough" in first.find_element(By.CSS_SELECTOR, ".why").text
            _screenshot(browser, f"page-{width}-after.png")
            browser.find_element(By.ID, "clear").click()

        _send_by_event(browser, "paste", digit)  # pasted from the clipboard
        _wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".result .bar")) >= 1)
        browser.find_element(By.ID, "clear").click()

        browser.find_element(By.ID, "file").send_keys(
            "\n".join(str(p) for p in (photo, digit, _photo(tmp_path, "flower.jpg")))
        )
        _wait(
            browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".result .bars")) == 3
        )  # one batch, a grid of three

        browser.find_element(By.ID, "file").send_keys(str(text_file))
        _wait(browser, lambda d: "not an image the server can read" in d.find_element(By.ID, "message").text)
        browser.find_element(By.ID, "file").send_keys(str(large))
        _wait(
            browser, lambda d: "too large for the server (the limit is 1 MB)" in d.find_element(By.ID, "message").text
        )
    finally:
        server.stop()


def test_the_page_asks_for_the_token_once_and_keeps_it_for_the_tab(digits_bundle, browser, tmp_path):
    from selenium.webdriver.common.by import By

    server = Server(digits_bundle, "--token", TOKEN)
    digit = tmp_path / "three.png"
    digit.write_bytes(digit_png(3)[0])
    try:
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
        assert "Authorization: Bearer" in browser.find_element(By.ID, "curl-one").text
        browser.refresh()  # the same tab: no second question
        _wait(browser, lambda d: "classes" in d.find_element(By.ID, "model").text)
        assert not browser.find_element(By.ID, "auth").is_displayed()
        browser.find_element(By.ID, "file").send_keys(str(digit))
        _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".result .bar"))
    finally:
        server.stop()


def test_large_image_helper_is_over_the_limit(tmp_path):
    """The oversized file above must really be over 1 MB, or the 413 check proves nothing."""
    buffer = io.BytesIO()
    Image.frombytes("RGB", (800, 800), os.urandom(800 * 800 * 3)).save(buffer, format="PNG")
    assert buffer.tell() > 1024 * 1024
